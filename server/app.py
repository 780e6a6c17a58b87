"""The fedsieve ServerApp: FedAvg (or a robust peer) wrapped in the AnomalyFilter.

``app`` reads its settings from Flower's run config (``[tool.flwr.app.config]``, overridable
with ``flwr run . --run-config``); :func:`make_server_app` builds the same app around explicit
settings, which is what ``fedsieve simulate`` uses. Results land in the run directory:
``audit.jsonl`` (every decision) and ``result.json`` (per-round metrics and filter history).
"""

from __future__ import annotations

import json
import time
from logging import INFO
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, Result, Strategy

from fedsieve.server.strategy import AnomalyFilter
from fedsieve.shared.classifier import DigitNet, evaluate
from fedsieve.shared.config import DETECTORS_NONE, RunSettings
from fedsieve.shared.data import load_mnist
from fedsieve.shared.trusted import load_trusted_file, draw_trusted_indices


def make_server_app(settings: RunSettings | None = None) -> ServerApp:
    """A ServerApp running :func:`run_server`; ``settings`` None means: read the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = settings or RunSettings.from_run_config(context.run_config)
        run_dir = Path(run.run_dir or f"runs/run-{context.run_id}")
        run_server(grid, run, run_dir)

    return app


def make_aggregator(settings: RunSettings, num_nodes: int = 2) -> Strategy:
    """The inner strategy: Flower's FedAvg or one of its robust aggregators."""
    common = {"fraction_evaluate": 0.0, "min_available_nodes": num_nodes,
              "min_train_nodes": min(2, num_nodes)}
    if settings.aggregator == "fedmedian":
        return FedMedian(**common)
    if settings.aggregator == "krum":
        # Krum tolerates f byzantine nodes with n > 2f + 2; assume the largest such f.
        return Krum(num_malicious_nodes=max(0, (num_nodes - 3) // 2), **common)
    if settings.aggregator == "trimmedavg":
        return FedTrimmedAvg(beta=0.2, **common)
    return FedAvg(**common)


def make_detector(settings: RunSettings):
    """The trusted detector named by the settings (unfitted)."""
    from fedsieve.shared.detectors import make_detector as by_name

    detector = by_name(settings.detector, threshold_policy=settings.threshold_policy,
                       random_state=settings.seed)
    # alpha and the meta checkpoint only mean something to the GAN detectors.
    extra = {"alpha": settings.alpha, "meta_checkpoint": settings.checkpoint or "default"}
    params = detector.get_params()
    return detector.set_params(**{k: v for k, v in extra.items() if k in params})


def trusted_seeds(settings: RunSettings) -> np.ndarray:
    """The operator's seed file, or the seeded draw the simulation harness also uses."""
    if settings.trusted_file:
        return load_trusted_file(settings.trusted_file)
    train = load_mnist("train", root=settings.data_root or None)
    return train.images[draw_trusted_indices(train.labels, settings.trusted_size,
                                             settings.seed)]


def build_strategy(settings: RunSettings, num_nodes: int, run_dir: Path) -> Strategy:
    """The inner aggregator, wrapped in the AnomalyFilter unless the detector is ``none``."""
    inner = make_aggregator(settings, num_nodes)
    if settings.detector == DETECTORS_NONE:
        return inner
    detector = make_detector(settings)
    check_meta_checkpoint(detector)
    return AnomalyFilter(inner, detector, trusted_images=trusted_seeds(settings),
                         screen_every=settings.screen_every,
                         upload_fraction=settings.upload_fraction,
                         max_client_contamination=settings.max_client_contamination,
                         run_dir=run_dir, random_state=settings.seed)


def check_meta_checkpoint(detector) -> None:
    """Load the detector's meta checkpoint once now, so that a missing, corrupt or foreign
    file stops the server before any client is contacted (not mid-screening).

    Raises
    ------
    fedsieve.shared.checkpoint.CheckpointError
        Naming the file and what is wrong with it.
    """
    from fedsieve.shared.checkpoint import default_meta_checkpoint, load_meta

    path = detector.get_params().get("meta_checkpoint")
    if path is None:
        return
    load_meta(default_meta_checkpoint() if str(path) == "default" else path)


def wait_for_nodes(grid: Grid, minimum: int, timeout: float = 600.0) -> int:
    """Block until ``minimum`` nodes are connected (screening needs them all); returns the count."""
    deadline = time.monotonic() + timeout
    while (count := len(list(grid.get_node_ids()))) < minimum:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count} of the {minimum} nodes (min-nodes) connected "
                               f"within {timeout:.0f} s")
        log(INFO, "fedsieve: waiting for nodes: %d of %d connected", count, minimum)
        time.sleep(1.0)
    return count


def run_server(grid: Grid, settings: RunSettings, run_dir: Path) -> Result:
    """Train the example classifier with the configured strategy; write ``result.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    num_nodes = wait_for_nodes(grid, settings.min_nodes)
    strategy = build_strategy(settings, num_nodes, run_dir)
    test = load_mnist("test", root=settings.data_root or None)
    model = DigitNet()
    round_times: dict[int, float] = {}
    clock = [time.perf_counter()]

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        now = time.perf_counter()
        round_times[server_round] = now - clock[0]
        clock[0] = now
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test.images, test.labels)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    started = time.perf_counter()
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=settings.num_server_rounds,
        train_config=ConfigRecord({"lr": settings.learning_rate}),
        evaluate_fn=central_evaluate,
    )
    summary = {
        "settings": settings.to_run_config(),
        "test_data": test.source.to_dict(),
        "num_nodes": num_nodes,
        "strategy": describe_strategy(strategy),
        "wall_seconds": time.perf_counter() - started,
        "round_seconds": round_times,
        "accuracy": {r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()},
        "loss": {r: m["loss"] for r, m in result.evaluate_metrics_serverapp.items()},
        "train_metrics": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "filter": getattr(strategy, "history", []),
    }
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    log(INFO, "fedsieve: results in %s", run_dir)
    return result


def describe_strategy(strategy: Strategy) -> dict[str, str]:
    """What actually ran: the aggregating strategy and the data filter (if any)."""
    if isinstance(strategy, AnomalyFilter):
        detector = type(strategy.detector).__name__
        if getattr(strategy.detector, "name", None):  # peers: which library estimator
            detector += f"({strategy.detector.name})"
        return {"aggregator": type(strategy.strategy).__name__,
                "filter": type(strategy).__name__, "detector": detector}
    return {"aggregator": type(strategy).__name__, "filter": "", "detector": ""}


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


app = make_server_app()
