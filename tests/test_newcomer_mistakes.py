"""A newcomer's two mistakes through Flower's simulation engine (issue 32): each excludes every
client, and each must end in one clear ERROR within the first round and never in an empty model.

The ClientApps are users' own apps with the fedsieve SDK, training DigitNet for real
(:func:`fedsieve.simulations.faults.newcomer_client_app`); the ServerApp wraps FedAvg in the
AnomalyFilter and keeps what ``start`` returns.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsieve.server import AnomalyFilter, UploadScreening
from fedsieve.server.audit import read_audit
from fedsieve.shared.detectors import make_detector
from fedsieve.shared.task.classifier import DigitNet
from fedsieve.simulations.faults import NEWCOMER_MISTAKES, newcomer_client_app

pytestmark = pytest.mark.slow

ROUNDS = 2


def run(mistake: str, federation, tmp_path) -> dict:
    """Run the mistake's ClientApps and a filtered FedAvg ServerApp in Flower's simulation
    engine; returns the initial arrays, the strategy and the result ``start`` returned."""
    from fedsieve.simulations.engine import run_apps

    for i, client in enumerate(federation.clients):
        np.savez(tmp_path / f"client_{i}.npz", **client.public_arrays())
    torch.manual_seed(0)
    out = {"initial": ArrayRecord(DigitNet().state_dict())}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = len(federation.clients)
        strategy = AnomalyFilter(
            FedAvg(fraction_evaluate=0.0, min_available_nodes=nodes, min_train_nodes=nodes),
            UploadScreening(make_detector("iforest", random_state=0),
                            federation.trusted_set.images), run_dir=tmp_path / "run")
        out["strategy"] = strategy
        out["result"] = strategy.start(grid=grid, initial_arrays=out["initial"],
                                       num_rounds=ROUNDS)

    run_apps(server, newcomer_client_app(mistake, str(tmp_path)),
             num_supernodes=len(federation.clients),
             backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                             "init_args": {"include_dashboard": False,
                                           "logging_level": "error"}})
    assert "result" in out, "the ServerApp did not finish"
    return out


def check_loud_and_not_empty(out: dict, mistake: str, caplog) -> str:
    """The checks both mistakes share; returns round 1's ERROR."""
    result, strategy = out["result"], out["strategy"]
    # Never an empty model: the initial one is handed back.
    assert len(result.arrays) == len(out["initial"]) > 0
    for key in out["initial"]:
        np.testing.assert_array_equal(result.arrays[key].numpy(), out["initial"][key].numpy())
    assert strategy.aggregated_rounds == []
    messages = [r.getMessage() for r in caplog.records]
    errors = [r.getMessage() for r in caplog.records
              if r.levelno == logging.ERROR and r.getMessage().startswith("fedsieve")]
    first = [e for e in errors if e.startswith("fedsieve: round 1 ")]
    assert len(first) == 1, errors  # one clear message for round 1 ...
    # ... logged before round 2 starts, naming the reason and what is wrong.
    assert messages.index(first[0]) < messages.index(f"[ROUND 2/{ROUNDS}]")
    code, reason = NEWCOMER_MISTAKES[mistake].code, NEWCOMER_MISTAKES[mistake].message
    assert first[0].startswith(f"fedsieve: round 1 aggregated no model: all 4 clients were "
                               f"excluded: {code}: 4 clients, e.g. ")
    assert re.search(reason, first[0]), first[0]
    assert any(e.startswith(f"fedsieve: no round of {ROUNDS} aggregated a model, so the result "
                            "holds the INITIAL model") for e in errors)
    # The audit log's reasons are one clean line each.
    entries = list(read_audit(strategy.run_dir / "audit.jsonl", "client"))
    assert {e["round"] for e in entries} == {1, 2} and {e["code"] for e in entries} == {code}
    for entry in entries:
        assert re.search(reason, entry["reason"])
        assert "\n" not in entry["reason"] and "\x1b" not in entry["reason"]
        assert "Traceback" not in entry["reason"] and len(entry["reason"]) < 700
    return first[0]


def test_images_as_float64_0_255_say_so_in_round_1(compact_federation, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="flwr"):
        out = run("float64-0-255", compact_federation, tmp_path)
    error = check_loud_and_not_empty(out, "float64-0-255", caplog)
    # The client's exception, condensed, with the fix.
    assert ("the client raised an error while uploading: ValueError: local samples has dtype "
            "float64 with values in [0, 255]") in error
    assert "convert with x.astype(np.uint8)" in error
    assert "\x1b" not in error and "Traceback" not in error and "ray::" not in error


def test_num_examples_counted_before_screening_says_so_in_round_1(compact_federation, tmp_path,
                                                                    caplog):
    with caplog.at_level(logging.INFO, logger="flwr"):
        out = run("count-before-screening", compact_federation, tmp_path)
    error = check_loud_and_not_empty(out, "count-before-screening", caplog)
    strategy = out["strategy"]
    # The example names the client by its partition, with its real counts.
    partitions = strategy.history[0]["partitions"]
    assert sorted(partitions.values()) == [0, 1, 2, 3]
    node, partition = re.search(r"e\.g\. partition (\d+) \(node (\d+)\)", error).group(2, 1)
    client = compact_federation.clients[int(partition)]
    assert partitions[int(node)] == int(partition)
    dropped = sum(e["verdict"] for e in read_audit(strategy.run_dir / "audit.jsonl", "sample")
                  if e["node"] == int(node))
    assert (f"claims {len(client)} training samples under 'num-examples' but kept "
            f"{len(client) - dropped}; report the samples trained on after the server's drops"
            ) in error
    metrics = out["result"].train_metrics_clientapp[1]
    assert metrics["fedsieve-excluded.over-reported"] == 4
    assert sorted(metrics["fedsieve-excluded-partitions"]) == [0, 1, 2, 3]
