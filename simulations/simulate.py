"""``fedsieve simulate``: the real ServerApp and ClientApp in Flower's simulation engine.

The run itself never sees ground truth: the ServerApp writes ``audit.jsonl`` and
``result.json`` into the run directory. Afterwards this module rebuilds the same federation
(deterministic from the settings), joins its pollution flags to the audit log by sample id and
writes ``report.json``, plots and ``report.md``.

The ServerApp gets the harness's trusted images explicitly: they are written to
``<run dir>/trusted.npz`` and passed as its ``trusted-file`` (unless the settings name one).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fedsieve.shared.config import AGGREGATORS, RunSettings
from fedsieve.shared.detectors import DETECTORS
from fedsieve.simulations.pollution import Federation, federation_for
from fedsieve.simulations.report import detection_report, write_simulation_report

#: The named defenses: (inner aggregator, detector). Any ``<detector>+<aggregator>`` also
#: names one (a data filter composed with a robust aggregator, e.g. ``rtbigan+fedmedian``).
DEFENSES = {
    "none": ("fedavg", "none"),
    **{name: ("fedavg", name) for name in DETECTORS},
    **{name: (name, "none") for name in AGGREGATORS if name != "fedavg"},
}
#: Label of the clean oracle in sweeps and benchmarks: the same clients without pollution,
#: plain FedAvg (the "none" defense at contamination 0).
ORACLE = "oracle"
#: The part of a defense name that adds the label check to its data filter
#: (``rtbigan+labels``, ``rtbigan+labels+fedmedian``).
LABELS = "labels"


def parse_defense(defense: str) -> tuple[str, str]:
    """(inner aggregator, detector) of a defense name: one of :data:`DEFENSES` or
    ``<detector>+<aggregator>``, either with ``+labels`` after the detector
    (:func:`checks_labels`).

    Raises
    ------
    ValueError
        An unknown name; the message lists the named defenses and the composed form.
    """
    name = _without_labels(defense)
    if name in DEFENSES and (name == defense or DEFENSES[name][1] != "none"):
        return DEFENSES[name]
    detector, plus, aggregator = name.partition("+")
    if plus and DEFENSES.get(detector, ("", "none"))[1] != "none" and aggregator in AGGREGATORS:
        return aggregator, detector
    raise ValueError(f"unknown defense {defense!r}; choose one of {', '.join(DEFENSES)}, or "
                     f"compose a detector with an aggregator ({', '.join(AGGREGATORS)}) as "
                     "e.g. rtbigan+fedmedian, and add the label check to a detector as "
                     "rtbigan+labels or rtbigan+labels+fedmedian")


def checks_labels(defense: str) -> bool:
    """Whether ``defense`` adds the label check to its data filter (``<detector>+labels``)."""
    return _without_labels(defense) != defense


def _without_labels(defense: str) -> str:
    first, plus, rest = defense.partition("+")
    if not plus:
        return defense
    second, plus, aggregator = rest.partition("+")
    return first + plus + aggregator if second == LABELS else defense


def settings_for_defense(settings: RunSettings, defense: str) -> RunSettings:
    """``settings`` with the aggregator, detector and label check that ``defense`` names
    (:func:`parse_defense`, :func:`checks_labels`)."""
    aggregator, detector = parse_defense(defense)
    return settings.replace(aggregator=aggregator, detector=detector,
                            label_check=checks_labels(defense))


def run_federation(settings: RunSettings, run_dir: Path, *, federation: Federation | None = None,
                   verbose: bool = False) -> dict:
    """Run the apps in Flower's simulation engine; returns the ServerApp's ``result.json``.

    The clients' files are written once (from ``federation``, or the one the settings
    describe) into a temporary ``federation-dir``, so the simulated ClientApps load their
    partition instead of each rebuilding the whole federation. Without a ``trusted-file`` in
    the settings, the federation's trusted set is written to ``run_dir/trusted.npz`` and the
    ServerApp reads it from there.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("audit.jsonl", "result.json"):
        (run_dir / stale).unlink(missing_ok=True)
    federation = federation or federation_for(settings)
    if settings.filter.filtered and not settings.filter.trusted_file:
        trusted = run_dir / "trusted.npz"
        federation.trusted_set.save(trusted)
        settings = settings.replace(trusted_file=str(trusted))
    with tempfile.TemporaryDirectory(dir=run_dir, prefix="clients-") as clients:
        for i, client in enumerate(federation.clients):
            np.savez(Path(clients) / f"client_{i}.npz", **client.public_arrays())
        _run_apps(settings.replace(run_dir=str(run_dir), federation_dir=clients), verbose)
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        raise RuntimeError(f"the simulation ended without {result_path}; rerun with "
                           "--verbose to see Flower's log")
    return json.loads(result_path.read_text())


def _run_apps(settings: RunSettings, verbose: bool) -> None:
    # Imported here: Ray and the apps (torch) are slow to load and only a run needs them.
    from fedsieve.client.app import make_client_app
    from fedsieve.server.app import make_server_app
    from fedsieve.simulations.engine import run_apps
    from fedsieve.simulations.poisoning import backdoor_probe

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    # One CPU per ClientApp actor: both cores work; Ray quietly, without its dashboard.
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"include_dashboard": False, "log_to_driver": verbose,
                             "logging_level": "error"}}
    # Flower's simulation engine without its deprecated wrapper (simulations/engine.py).
    run_apps(make_server_app(settings, probe=backdoor_probe(settings)), make_client_app(settings),
             num_supernodes=settings.harness.num_clients, backend_config=backend,
             verbose=verbose)


def simulate(settings: RunSettings, out: Path, *, progress=None, verbose: bool = False) -> dict:
    """Run one federated simulation and write its report into ``out``.

    Parameters
    ----------
    settings : RunSettings
        Federation, defense and training settings.
    out : Path
        Run directory: ``audit.jsonl``, ``result.json``, ``report.json``, ``report.md``, plots.
    progress : callable, optional
        ``progress(message)`` is called at each phase.
    """
    say = progress or (lambda message: None)
    say("building the polluted federation")
    federation = federation_for(settings)
    say(f"running {settings.task.num_server_rounds} rounds on {settings.harness.num_clients} "
        f"simulated clients (aggregator {settings.filter.aggregator}, detector "
        f"{settings.filter.detector})")
    started = time.perf_counter()
    result = run_federation(settings, out, federation=federation, verbose=verbose)
    wall = time.perf_counter() - started
    say("joining the audit log with the ground truth")
    detection = detection_report(federation, out / "audit.jsonl")
    last = str(settings.task.num_server_rounds)
    report = {
        "settings": settings.to_run_config(),
        "wall_seconds": wall,
        "strategy": result.get("strategy", {}),
        "accuracy": result["accuracy"],
        "final_accuracy": result["accuracy"][last],
        "class_accuracy": result.get("class_accuracy", {}),
        "final_class_accuracy": result.get("class_accuracy", {}).get(last),
        "attack_success": result.get("attack_success", {}),
        "final_attack_success": result.get("attack_success", {}).get(last),
        "loss": result["loss"],
        "round_seconds": result["round_seconds"],
        "filter": result["filter"],
        "detection": detection,
        "data_sources": {**{k: v.to_dict() for k, v in federation.sources.items()},
                         "test": result["test_data"]},
        "federation": federation.summary(),
    }
    say("writing plots and report.md")
    write_simulation_report(report, out)
    return report
