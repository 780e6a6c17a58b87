"""ContentOrderedGrid: FedAvg's aggregate depends on the replies, not on their arrival order."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from fedsieve.server import ContentOrderedGrid
from fedsieve.server.ordering import reply_digest
from fedsieve.simulations.loopback import LoopbackGrid

NODES = [11, 22, 33, 44, 55, 66]


def random_update_app() -> ClientApp:
    """A client whose update is a fixed function of its node id: float32 weights of very
    different magnitudes, so that summing them in another order changes the last bits."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        rng = np.random.default_rng(context.node_id)
        weights = (rng.standard_normal(4096) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(weights)}),
                                   "metrics": MetricRecord({"num-examples": 7 + context.node_id})}),
                       reply_to=msg)

    return app


class ArrivalOrderGrid(LoopbackGrid):
    """Replies in a seeded random order, as they arrive from a real federation."""

    def __init__(self, order_seed: int) -> None:
        app = random_update_app()
        super().__init__({node: app for node in NODES})
        self.order_seed = order_seed

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        order = np.random.default_rng(self.order_seed).permutation(len(replies))
        return [replies[i] for i in order]


def aggregate(grid) -> np.ndarray:
    strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=1)
    arrays = ArrayRecord({"w": Array(np.zeros(4096, np.float32))})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages))
    aggregated, _ = strategy.aggregate_train(1, replies)
    return aggregated["w"].numpy()


def test_arrival_order_changes_fedavg_bits_and_content_order_does_not():
    raw = [aggregate(ArrivalOrderGrid(seed)) for seed in range(4)]
    assert any(not np.array_equal(raw[0], other) for other in raw[1:])  # the problem is real
    ordered = [aggregate(ContentOrderedGrid(ArrivalOrderGrid(seed))) for seed in range(4)]
    for other in ordered[1:]:
        np.testing.assert_array_equal(ordered[0], other)
    np.testing.assert_allclose(ordered[0], raw[0], rtol=1e-5, atol=1e-4)  # the same average


def test_digest_separates_contents_and_error_replies():
    grid = ArrivalOrderGrid(0)
    strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=1)
    messages = list(strategy.configure_train(1, ArrayRecord({"w": Array(np.zeros(1, np.float32))}),
                                             ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages))
    digests = {reply_digest(r) for r in replies}
    assert len(digests) == len(NODES)
    assert reply_digest(replies[0]) == reply_digest(replies[0])
    wrapped = ContentOrderedGrid(grid)
    assert sorted(wrapped.get_node_ids()) == NODES
    assert [reply_digest(r) for r in wrapped.send_and_receive(messages)] == sorted(digests)
