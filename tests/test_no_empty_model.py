"""Rounds that aggregate nothing are loud, and a run never ends in an empty model.

Real ClientApps over the in-process grid, driven by ``AnomalyFilter.start`` (Flower's strategy
loop): a round where every client is excluded is one ERROR naming the reasons, the global model
stays the last good one, and a run in which no round aggregated returns the initial arrays with
an ERROR. The same two newcomer mistakes through Flower's simulation engine are in
``test_newcomer_mistakes.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from fedsieve.client import FedSieve
from fedsieve.server import UploadScreening
from fedsieve.server.strategy import REASON_CODES, AnomalyFilter
from fedsieve.shared.detectors import make_detector
from fedsieve.shared.task.classifier import DigitNet, train_local
from fedsieve.simulations.loopback import LoopbackGrid

NODES = [101, 202, 303, 404]


def user_app(client, *, report_all: bool = False, fail_in_round: int | None = None) -> ClientApp:
    """A user's ClientApp with the SDK: trains DigitNet on the kept samples for real.

    ``report_all``: reports the local dataset's size instead of the kept count (the
    newcomer's mistake, in a reply built by hand: ``sieve.reply`` refuses the count before
    sending); ``fail_in_round``: raises while training in that round.
    """
    app = ClientApp()
    sieve = FedSieve(app, lambda ctx: (client.x, client.ids))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if msg.content["config"]["server-round"] == fail_in_round:
            raise RuntimeError("disk full while saving the checkpoint")
        x, y = sieve.kept(msg, client.ids, client.x, client.y)
        model = DigitNet()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        train_local(model, x, y, epochs=1, seed=0)
        if report_all:
            return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                       "metrics": MetricRecord({"num-examples": len(client.x)})}),
                           reply_to=msg)
        return sieve.reply(msg, ArrayRecord(model.state_dict()), num_examples=len(x))

    return app


def grid_of(federation, **kwargs) -> LoopbackGrid:
    apps = {node: user_app(client, **kwargs)
            for node, client in zip(NODES, federation.clients)}
    return LoopbackGrid(apps, {node: {"partition-id": i} for i, node in enumerate(NODES)})


def make_filter(federation, run_dir) -> AnomalyFilter:
    return AnomalyFilter(FedAvg(fraction_evaluate=0.0, min_available_nodes=1),
                         UploadScreening(make_detector("iforest", random_state=0),
                                         federation.trusted_set.images), run_dir=run_dir)


def initial_arrays() -> ArrayRecord:
    torch.manual_seed(0)
    return ArrayRecord(DigitNet().state_dict())


def same_arrays(a: ArrayRecord, b: ArrayRecord) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def fedsieve_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and r.getMessage().startswith("fedsieve")]


def test_a_run_where_every_client_over_reports_returns_the_initial_model_loudly(
        compact_federation, tmp_path, caplog):
    strategy = make_filter(compact_federation, tmp_path)
    initial = initial_arrays()
    with caplog.at_level(logging.INFO, logger="flwr"):
        result = strategy.start(grid=grid_of(compact_federation, report_all=True),
                                initial_arrays=initial, num_rounds=2)
    # Never an empty model: the initial one, and the run says so.
    assert len(result.arrays) > 0 and same_arrays(result.arrays, initial)
    assert strategy.aggregated_rounds == []
    errors = fedsieve_errors(caplog)
    assert len(errors) == 3  # one per round, one for the run
    sizes = [len(c) for c in compact_federation.clients]
    first = errors[0]
    assert first.startswith("fedsieve: round 1 aggregated no model: all 4 clients were "
                            "excluded: over-reported: 4 clients, e.g. partition 0 (node 101): "
                            f"claims {sizes[0]} training samples under 'num-examples' but kept ")
    assert "report the samples trained on after the server's drops" in first
    assert first.endswith("The global model stays the initial (untrained) model.")
    assert errors[2].startswith("fedsieve: no round of 2 aggregated a model, so the result "
                                "holds the INITIAL model, untrained.")
    assert "over-reported: 4 clients" in errors[2]
    # Round 1's ERROR comes before round 2 starts.
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index(first) < messages.index("[ROUND 2/2]")
    metrics = result.train_metrics_clientapp[1]
    assert metrics["fedsieve-excluded.over-reported"] == 4
    assert metrics["fedsieve-aggregated"] == 0
    assert metrics["fedsieve-excluded-partitions"] == [0, 1, 2, 3]


def test_a_failed_round_keeps_the_last_good_model(compact_federation, tmp_path, caplog):
    strategy = make_filter(compact_federation, tmp_path)
    models = {}

    def remember(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        models[server_round] = arrays
        return MetricRecord({})

    with caplog.at_level(logging.INFO, logger="flwr"):
        result = strategy.start(grid=grid_of(compact_federation, fail_in_round=2),
                                initial_arrays=initial_arrays(), num_rounds=2,
                                evaluate_fn=remember)
    assert strategy.aggregated_rounds == [1]
    assert not same_arrays(models[1], models[0])  # round 1 trained
    assert same_arrays(result.arrays, models[1]) and same_arrays(models[2], models[1])
    errors = fedsieve_errors(caplog)
    assert len(errors) == 1
    assert errors[0] == (
        "fedsieve: round 2 aggregated no model: all 4 clients were excluded: train-error: 4 "
        "clients, e.g. partition 0 (node 101): the client raised an error while training: "
        "RuntimeError: disk full while saving the checkpoint. The global model stays round 1's "
        "model.")
    assert any(r.levelno == logging.WARNING and r.getMessage().startswith(
        "fedsieve: round 2 aggregated no model; the result holds round 1's model. Clients "
        "excluded over the run, by their latest reason: train-error: 4 clients")
        for r in caplog.records)
    # Per-round counts are the round's own: round 2 did not screen, so it uploaded nothing.
    first, second = (result.train_metrics_clientapp[r] for r in (1, 2))
    assert first["fedsieve-screened"] == 1 and second["fedsieve-screened"] == 0
    assert first["fedsieve-uploaded"] == sum(len(c) for c in compact_federation.clients)
    assert first["fedsieve-dropped"] > 0
    assert (second["fedsieve-uploaded"], second["fedsieve-dropped"]) == (0, 0)
    assert (first["fedsieve-aggregated"], second["fedsieve-aggregated"]) == (4, 0)
    # Clients are named by the partition they hold, beside Flower's node ids.
    assert first["fedsieve-nodes"] == NODES and first["fedsieve-partitions"] == [0, 1, 2, 3]
    assert second["fedsieve-excluded.train-error"] == 4
    assert "fedsieve-excluded.over-reported" not in second  # only reasons that happened
    assert second["fedsieve-excluded-reasons"] == [REASON_CODES["train-error"]] * 4
    assert [h["partitions"] for h in strategy.history] == [dict(zip(NODES, range(4)))] * 2


def test_a_round_with_some_clients_left_is_not_an_error(compact_federation, tmp_path, caplog):
    apps = {node: user_app(client) for node, client in zip(NODES, compact_federation.clients)}
    apps[NODES[0]] = user_app(compact_federation.clients[0], report_all=True)
    strategy = make_filter(compact_federation, tmp_path)
    with caplog.at_level(logging.INFO, logger="flwr"):
        result = strategy.start(grid=LoopbackGrid(apps), initial_arrays=initial_arrays(),
                                num_rounds=1)
    assert strategy.aggregated_rounds == [1] and fedsieve_errors(caplog) == []
    metrics = result.train_metrics_clientapp[1]
    assert metrics["fedsieve-excluded.over-reported"] == 1 and metrics["fedsieve-aggregated"] == 3
    # Nodes that named no partition are -1 in the partition lists.
    assert metrics["fedsieve-partitions"] == [-1] * 4


@pytest.fixture
def caplog(caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    return caplog
