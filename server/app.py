"""The example ServerApp: the MNIST classifier trained with FedAvg (or a robust peer) wrapped
in the AnomalyFilter.

``app`` reads its settings from Flower's run config (``[tool.flwr.app.config]``, overridable
with ``flwr run . --run-config``); :func:`make_server_app` builds the same app around explicit
settings, which is what ``fedsieve simulate`` uses. Results land in the run directory:
``audit.jsonl`` (every decision) and ``result.json`` (per-round metrics and filter history).

The strategy comes from the library's :mod:`fedsieve.server.factory`; only the example task
lives here: training and evaluating the classifier, and, when no ``trusted-file`` is set,
standing in MNIST digits for the operator's trusted images (with a warning).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from torch import nn

from fedsieve.server.factory import (
    build_strategy,
    describe_strategy,
    load_trusted_images,
    wait_for_nodes,
)
from fedsieve.server.ordering import ContentOrderedGrid
from fedsieve.shared.config import RunSettings
from fedsieve.shared.data.trusted import draw_trusted_indices
from fedsieve.shared.task.classifier import evaluate_classes
from fedsieve.shared.task.example_data import example_classifier, example_test_set, load_dataset

#: ``probe(model)`` -> extra metrics of the global model, evaluated each round beside accuracy.
ModelProbe = Callable[[nn.Module], dict[str, float]]


def make_server_app(settings: RunSettings | None = None, *,
                    probe: ModelProbe | None = None) -> ServerApp:
    """A ServerApp running :func:`run_server`; ``settings`` None means: read the run config.

    ``probe`` adds metrics of the global model to each round's evaluation (``fedsieve
    simulate`` passes the attack success of a backdoor federation).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = settings or RunSettings.from_run_config(context.run_config)
        run_dir = Path(run.filter.run_dir or f"runs/run-{context.run_id}")
        run_server(grid, run, run_dir, probe=probe)

    return app


def example_trusted_images(settings: RunSettings) -> np.ndarray | None:
    """The trusted images of the example app: the ``trusted-file`` when one is set, otherwise
    ``trusted-size`` MNIST training digits drawn with the run's seed (the draw the simulation
    harness keeps out of every client), announced with a WARNING. None without a data filter.
    """
    if not settings.filter.filtered:
        return None
    if settings.filter.trusted_file:
        return load_trusted_images(settings.filter)
    size, seed = settings.harness.trusted_size, settings.seed
    log(WARNING, "fedsieve example app: no trusted-file is set, so %d %s training images "
        "drawn with seed %d stand in for the operator's trusted images "
        "(fedsieve.shared.data.trusted.draw_trusted_indices). A deployment sets trusted-file.",
        size, settings.task.dataset, seed)
    train = load_dataset(settings.task.dataset, "train", root=settings.task.data_root or None)
    return train.images[draw_trusted_indices(train.labels, size, seed)]


def run_server(grid: Grid, settings: RunSettings, run_dir: Path, *,
               probe: ModelProbe | None = None) -> Result:
    """Train the example classifier with the configured strategy; write ``result.json``.

    Each round the global model is evaluated on the clean test split: loss, accuracy, the
    accuracy of every class (``accuracy-class-<k>``) and what ``probe`` adds.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    # First, before building a detector draws from the same generator: every defense (and
    # the clean oracle) starts from the same initial model for a given seed.
    model = example_classifier(settings.task)
    trusted = example_trusted_images(settings)  # a bad trusted file stops us before waiting
    num_nodes = wait_for_nodes(grid, settings.filter.min_nodes)
    strategy = build_strategy(settings.filter, num_nodes, run_dir, trusted_images=trusted)
    test = example_test_set(settings.task)
    round_times: dict[int, float] = {}
    clock = [time.perf_counter()]

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        now = time.perf_counter()
        round_times[server_round] = now - clock[0]
        clock[0] = now
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy, per_class = evaluate_classes(model, test.images, test.labels,
                                                     device=settings.filter.device)
        metrics = {"loss": loss, "accuracy": accuracy,
                   **{f"accuracy-class-{k}": float(a) for k, a in enumerate(per_class)}}
        return MetricRecord({**metrics, **(probe(model) if probe else {})})

    started = time.perf_counter()
    result = strategy.start(
        # Replies aggregated in content order, not arrival order: identical runs give
        # identical models.
        grid=ContentOrderedGrid(grid), initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=settings.task.num_server_rounds,
        train_config=ConfigRecord({"lr": settings.task.learning_rate}),
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
        "class_accuracy": {r: [m[f"accuracy-class-{k}"] for k in range(10)]
                           for r, m in result.evaluate_metrics_serverapp.items()},
        "attack_success": {r: m["attack-success"]
                           for r, m in result.evaluate_metrics_serverapp.items()
                           if "attack-success" in m},
        "train_metrics": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "filter": getattr(strategy, "history", []),
    }
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    log(INFO, "fedsieve: results in %s", run_dir)
    return result


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


app = make_server_app()
