"""An in-process Grid: real ClientApps, real messages, no network.

:class:`LoopbackGrid` delivers each message straight to a real ClientApp and returns its real
reply, or a Flower error reply when the app raises, as Flower's engines do. A node that raises
:class:`~fedsieve.simulations.faults.NoReply`, or is listed in ``silent``, does not answer at
all (a dropped-out or timed-out client). The strategy tests and the stress benchmark use it to
drive :class:`~fedsieve.server.AnomalyFilter` through hundreds of clients in one process;
Flower's simulation engine and a real SuperLink are exercised by ``fedsieve simulate`` and the
deployment test.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedsieve.simulations.faults import NoReply


def set_server_identity() -> None:
    """What a running ServerApp has: the identity messages are created under."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


class LoopbackGrid(Grid):
    """Delivers messages to ``apps[node_id]``; nodes in ``silent`` never answer.

    Parameters
    ----------
    apps : dict
        node id -> ClientApp.
    node_configs : dict, optional
        node id -> the node's ``node_config`` (e.g. ``partition-id`` or ``data-path``).
    run_config : dict, optional
        The run config every node's Context carries.
    """

    def __init__(self, apps: dict[int, ClientApp], node_configs: dict[int, dict] | None = None,
                 run_config: dict | None = None) -> None:
        set_server_identity()
        self.apps: dict[int, ClientApp] = {}
        self.contexts: dict[int, Context] = {}
        self.silent: set[int] = set()
        self.sent: list[Message] = []
        self._run_config = run_config or {}
        for node, app in apps.items():
            self.add_node(node, app, (node_configs or {}).get(node))

    def add_node(self, node_id: int, app: ClientApp, node_config: dict | None = None) -> None:
        """Connect a node (at any time: e.g. one that joins after the server screened)."""
        self.apps[node_id] = app
        self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config=node_config or {},
                                         state=RecordDict(), run_config=self._run_config)

    def set_run(self, run) -> None:  # pragma: no cover - not used by strategies
        self._run = run

    @property
    def run(self):  # pragma: no cover
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            node = message.metadata.dst_node_id
            if node in self.silent:
                continue
            try:
                reply = self.apps[node](message, self.contexts[node])
            except NoReply:
                continue
            except Exception as err:  # what Flower turns into an error reply
                reply = Message(Error(code=1, reason=f"{type(err).__name__}: {err}"),
                                reply_to=message)
            replies.append(reply)
        return replies
