"""Short real runs in Flower's simulation engine: the harness scored against its ground truth,
and the client SDK's counting and screened evaluation."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsieve.client import FedSieve
from fedsieve.server import AnomalyFilter, UploadScreening
from fedsieve.shared.config import RunSettings
from fedsieve.shared.data.images import check_images
from fedsieve.simulations.engine import run_apps
from fedsieve.simulations.pollution import federation_for
from fedsieve.simulations.simulate import settings_for_defense, simulate


@pytest.mark.slow
def test_simulate_filters_and_reports(tmp_path):
    settings = settings_for_defense(RunSettings().replace(
        num_clients=3, contamination=0.2, num_server_rounds=2, seed=2), "iforest")
    report = simulate(settings, tmp_path)
    assert set(report["accuracy"]) == {"0", "1", "2"}
    assert report["final_accuracy"] > 0.5
    detection = report["detection"]
    assert detection["screened"] and detection["uploads"] == sum(
        c["samples"] for c in report["federation"]["clients"])
    assert detection["auc"] > 0.9 and detection["pollution_dropped"] > 0.6
    assert [c["true_polluted"] for c in detection["clients"]] == [
        c["polluted"] for c in report["federation"]["clients"]]
    for name in ("audit.jsonl", "result.json", "report.json", "report.md", "accuracy.png",
                 "clients.png", "roc.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "Screening of the uploads" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["detector"] == "iforest"
    # The ServerApp screened with the harness's own trusted set, handed over as a file.
    ran = json.loads((tmp_path / "result.json").read_text())["settings"]
    assert ran["trusted-file"] == str(tmp_path / "trusted.npz")
    with np.load(tmp_path / "trusted.npz") as trusted:
        # Saved in the canonical (N, C, H, W) layout the server reads back.
        expected = check_images(federation_for(settings).trusted_set.images, dtype=np.uint8)
        np.testing.assert_array_equal(trusted["x"], expected)


def test_defense_names_pick_the_strategy():
    base = RunSettings()
    assert settings_for_defense(base, "none").filter.detector == "none"
    krum = settings_for_defense(base, "krum").filter
    assert (krum.aggregator, krum.detector) == ("krum", "none")
    with pytest.raises(ValueError, match="unknown defense 'magic'"):
        settings_for_defense(base, "magic")


# -- the SDK in a real simulation: counts and evaluation on the kept samples -----------------
class _Bright:
    """A stand-in detector: an image brighter than mid-grey is an anomaly."""

    def fit(self, X: np.ndarray, trusted: np.ndarray | None = None) -> _Bright:
        self.decision_scores_ = X.reshape(len(X), -1).mean(1).astype(np.float64)
        self.threshold_ = 128.0
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        return self


def _sdk_client_app() -> ClientApp:
    """Partition p holds 12 dark images (ids p*100 + 0..11) and p + 1 bright ones after them.
    Training keeps what the server kept and lets the SDK count; evaluation reports the ids
    it evaluated on, screened (the default) and not."""
    # Everything the handlers use is built here: Ray pickles the app by value.
    app = ClientApp()

    def local(context: Context) -> tuple[np.ndarray, np.ndarray]:
        p = int(context.node_config["partition-id"])
        n_bright = p + 1
        x = np.zeros((12 + n_bright, 1, 28, 28), np.uint8)
        x[12:] = 255
        return x, p * 100 + np.arange(12 + n_bright, dtype=np.int64)

    sieve = FedSieve(app, local)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        x, ids = local(context)
        sieve.kept(msg, ids, x)
        return sieve.reply(msg, msg.content["arrays"],
                           metrics={"partition": int(context.node_config["partition-id"])})

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _, ids = local(context)
        (screened,) = sieve.kept(msg, ids, ids)
        (every,) = sieve.kept(msg, ids, ids, screened=False)
        metrics = MetricRecord({"num-examples": len(screened), "evaluated": len(screened),
                                "evaluated-id-sum": int(screened.sum()),
                                "unscreened": len(every),
                                "partition": int(context.node_config["partition-id"])})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


@pytest.mark.slow
def test_the_sdk_counts_and_evaluates_on_the_kept_samples_in_a_simulation(tmp_path,
                                                                         monkeypatch):
    seen = {"train": [], "evaluate": [], "deprecated": []}
    # run_apps goes around Flower's deprecated run_simulation wrapper (and its warning).
    wrapper_module = importlib.import_module("flwr.simulation.run_simulation")
    monkeypatch.setattr(wrapper_module, "warn_deprecated_feature", seen["deprecated"].append)

    class Recording(FedAvg):
        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            seen["train"] += [dict(r.content["metrics"]) for r in replies if not r.has_error()]
            return super().aggregate_train(server_round, replies)

        def aggregate_evaluate(self, server_round, replies):
            replies = list(replies)
            seen["evaluate"] += [dict(r.content["metrics"]) for r in replies
                                 if not r.has_error()]
            return super().aggregate_evaluate(server_round, replies)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        inner = Recording(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=3,
                          min_train_nodes=3, min_evaluate_nodes=3)
        strategy = AnomalyFilter(inner, UploadScreening(lambda: _Bright(),
                                                        np.zeros((5, 1, 28, 28), np.uint8)),
                                 run_dir=tmp_path)
        strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(2, np.float32)]),
                       num_rounds=2)

    run_apps(server, _sdk_client_app(), num_supernodes=3,
             backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                             "init_args": {"include_dashboard": False}})
    assert seen["deprecated"] == []
    # Every client trained in both rounds and reported its kept samples, 12 each.
    assert sorted(m["partition"] for m in seen["train"]) == [0, 0, 1, 1, 2, 2]
    assert all(m["num-examples"] == 12 for m in seen["train"])
    # Its evaluation saw the same 12 dark images, not the p + 1 bright ones the server dropped.
    assert sorted(m["partition"] for m in seen["evaluate"]) == [0, 0, 1, 1, 2, 2]
    for m in seen["evaluate"]:
        p = m["partition"]
        assert m["evaluated"] == 12 and m["evaluated-id-sum"] == 12 * p * 100 + sum(range(12))
        assert m["unscreened"] == 12 + p + 1
    dropped = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sum(e.get("verdict", 0) for e in dropped if e.get("kind") == "sample") == 6
