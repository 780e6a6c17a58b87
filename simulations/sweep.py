"""``fedsieve sweep``: contamination-rate experiments over a grid of federations and defenses.

Every cell of the grid is one ``fedsieve simulate`` run (the real ServerApp and ClientApp in
Flower's simulation engine) and, for the data-filter defenses, one detector-only run: the same
detector fitted on the pooled client data with the ground truth at hand, which gives the test
AUC and the AUC per self-training round that a federated run cannot see. Each cell writes
``cells/<key>/row.json`` when it is done, so a re-run with the same settings skips it; a
failing cell is recorded (``cells/<key>/error.txt``) and the sweep goes on.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from fedsieve.server.factory import build_detector
from fedsieve.shared.config import HarnessSettings, RunSettings, TaskSettings
from fedsieve.simulations.benchmark import FittedScores, detection_test_set
from fedsieve.simulations.machine import machine_info
from fedsieve.simulations.paper_figures import fig3_adaptation, table_one
from fedsieve.simulations.pollution import (
    LABEL_POLICIES,
    PARTITIONS,
    PROFILES,
    federation_for,
)
from fedsieve.simulations.simulate import DEFENSES, ORACLE, settings_for_defense, simulate
from fedsieve.simulations.sweep_report import write_sweep_report


@dataclass(frozen=True)
class Cell:
    """One federated run of the sweep."""

    partition: str
    profile: str
    label_policy: str
    contamination: float
    defense: str
    seed: int

    @property
    def key(self) -> str:
        """Directory name, unique within a sweep."""
        return (f"{self.partition}-{self.profile}-{self.label_policy}-c{self.contamination:g}-"
                f"{self.defense}-s{self.seed}")

    @property
    def group(self) -> tuple[str, str, str]:
        """The federation family the cell belongs to (one table and oracle per group)."""
        return self.partition, self.profile, self.label_policy

    def settings(self, base: RunSettings) -> RunSettings:
        """``base`` with this cell's federation and defense (the oracle: no pollution)."""
        settings = base.replace(partition=self.partition, profile=self.profile,
                                label_policy=self.label_policy,
                                contamination=self.contamination, seed=self.seed)
        return settings_for_defense(settings, "none" if self.defense == ORACLE else self.defense)


@dataclass(frozen=True)
class SweepGrid:
    """What a sweep runs. Every list is crossed with every other; ``seeds`` counts from 0.

    The oracle runs once per (partition, profile, label policy, seed) at contamination 0;
    it is also the "none" defense at contamination 0, which is therefore not run twice.
    """

    contamination: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
    defenses: tuple[str, ...] = ("none", "rtbigan", "iforest", "fedmedian", "krum",
                                 "trimmedavg")
    partitions: tuple[str, ...] = ("iid",)
    profiles: tuple[str, ...] = ("uniform",)
    label_policies: tuple[str, ...] = ("random",)
    seeds: int = 2
    base: RunSettings = field(default_factory=RunSettings)
    paper_figures: bool = True
    #: Scale of the paper-figure fits (1.0 = the detectors' defaults; the quick sweep uses less).
    paper_budget: float = 1.0

    def __post_init__(self) -> None:
        unknown = [d for d in self.defenses if d not in DEFENSES and d != ORACLE]
        if unknown:
            raise ValueError(f"unknown defense(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(DEFENSES)}")
        bad = [c for c in self.contamination if not 0.0 <= c < 1.0]
        if bad:
            raise ValueError(f"contamination rates must be in [0, 1), got {bad}")
        for given, allowed, what in ((self.partitions, PARTITIONS, "partition"),
                                     (self.profiles, PROFILES, "profile"),
                                     (self.label_policies, LABEL_POLICIES, "label policy")):
            if unknown := [v for v in given if v not in allowed]:
                raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from "
                                 f"{', '.join(allowed)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if not (self.contamination and self.defenses and self.partitions and self.profiles
                and self.label_policies):
            raise ValueError("every list of the grid needs at least one value")

    def cells(self) -> list[Cell]:
        """Oracle cells first, then every (federation, contamination, defense, seed)."""
        groups = list(itertools.product(self.partitions, self.profiles, self.label_policies))
        seeds = range(self.seeds)
        oracle = [Cell(p, pr, lp, 0.0, ORACLE, s) for (p, pr, lp), s in
                  itertools.product(groups, seeds)]
        rest = [Cell(p, pr, lp, c, d, s) for (p, pr, lp), c, d, s in
                itertools.product(groups, self.contamination, self.defenses, seeds)
                if d != ORACLE and not (d == "none" and c == 0.0)]
        return oracle + rest

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["base"] = self.base.to_run_config()
        return data


#: The reduced grid of ``fedsieve sweep --quick`` (CI runs it): a few minutes on 2 cores.
QUICK = SweepGrid(
    contamination=(0.0, 0.3),
    defenses=("none", "iforest", "fedmedian"),
    seeds=1,
    base=RunSettings(task=TaskSettings(num_server_rounds=2),
                     harness=HarnessSettings(num_clients=4)),
    paper_budget=0.1,
)


def detector_only(settings: RunSettings, out: Path) -> dict:
    """Fit the cell's detector on the pooled client data, with the ground truth at hand.

    Writes ``out/test_scores.npz`` (scores and labels of the test set) and returns the pool
    and test AUC, the verdict quality on the pool and the pool AUC per self-training round
    (one round for the single-round detectors). The trusted images are the harness's.
    """
    torch.manual_seed(settings.seed)
    federation = federation_for(settings)
    pool, polluted = federation.pooled()
    root = settings.task.data_root or None
    test = detection_test_set(root, root, pollution=settings.harness.pollution)
    x_test, y_test = test.x, test.y
    detector = build_detector(settings.filter)
    started = time.perf_counter()
    detector.fit(pool, federation.trusted_set.images, y_true=polluted)
    fit_seconds = time.perf_counter() - started
    test_scores = detector.decision_function(x_test)
    np.savez_compressed(out / "test_scores.npz", scores=test_scores, y=y_test)
    labels = detector.labels_
    row: dict[str, object] = {
        "test_auc": float(roc_auc_score(y_test, test_scores)),
        "detector_fit_seconds": fit_seconds,
        "rounds_auc": [h["auc"] for h in getattr(detector, "history_", []) if "auc" in h],
    }
    if 0 < polluted.sum() < len(polluted):
        precision, recall, _, _ = precision_recall_fscore_support(
            polluted, labels, average="binary", zero_division=0)
        row |= {"pool_auc": float(roc_auc_score(polluted, detector.decision_scores_)),
                "pool_precision": float(precision), "pool_recall": float(recall)}
    row["pool_normal_flagged"] = float(labels[polluted == 0].mean())
    return row


def run_cell(cell: Cell, base: RunSettings, out: Path) -> dict:
    """Run one cell (federated run, then the detector-only run); returns its result row."""
    settings = cell.settings(base)
    report = simulate(settings, out)
    detection = report["detection"]
    row: dict[str, object] = {
        **asdict(cell), "key": cell.key, "status": "ok",
        "settings": settings.to_run_config(),
        "final_accuracy": report["final_accuracy"],
        "accuracy": {int(r): a for r, a in report["accuracy"].items()},
        "upload_auc": detection.get("auc"),
        "upload_precision": detection.get("precision"),
        "upload_recall": detection.get("recall"),
        "pollution_dropped": detection.get("pollution_dropped"),
        "normal_dropped": detection.get("normal_dropped"),
        "strategy": report.get("strategy", {}),
        "excluded_clients": sum(bool(c["excluded"]) for c in detection.get("clients", [])),
        "screening_seconds": next((h["screening_seconds"] for h in report["filter"]
                                   if h.get("screened")), None),
        "wall_seconds": report["wall_seconds"],
    }
    if settings.filter.filtered:
        row |= detector_only(settings, out)
    return row


#: What runs one cell: ``runner(cell, base, cell_dir)`` -> the cell's result row.
CellRunner = Callable[[Cell, RunSettings, Path], dict]


def run_sweep(grid: SweepGrid, out: Path, *,
              on_cell: Callable[[Cell, str], None] | None = None,
              runner: CellRunner | None = None) -> list[dict]:
    """Run every cell not already done in ``out``; returns one row per cell (failures too).

    Parameters
    ----------
    grid : SweepGrid
        What to run.
    out : Path
        Sweep directory; finished cells live in ``out/cells/<key>/row.json``.
    on_cell : callable, optional
        ``on_cell(cell, status)`` with status ``"start"``, ``"skipped"``, ``"ok"`` or
        ``"failed"``.
    runner : callable, optional
        Runs one cell (default :func:`run_cell`). Its row must carry the cell's
        ``settings`` (``to_run_config()``), by which a re-run recognises a finished cell.
    """
    say = on_cell or (lambda cell, status: None)
    runner = runner or run_cell
    rows = []
    for cell in grid.cells():
        cell_dir = out / "cells" / cell.key
        done = cell_dir / "row.json"
        row = _finished_row(done)
        # Reuse a finished cell only if it ran with the same settings (not a stale grid).
        if row is not None:
            if row.get("settings") == cell.settings(grid.base).to_run_config():
                rows.append(row)
                say(cell, "skipped")
                continue
        say(cell, "start")
        cell_dir.mkdir(parents=True, exist_ok=True)
        (cell_dir / "error.txt").unlink(missing_ok=True)
        try:
            row = runner(cell, grid.base, cell_dir)
        except Exception as error:  # one broken cell must not end a long sweep
            (cell_dir / "error.txt").write_text(traceback.format_exc())
            rows.append({**asdict(cell), "key": cell.key, "status": "failed",
                         "error": f"{type(error).__name__}: {error}"})
            say(cell, "failed")
            continue
        # Write then rename: a sweep killed mid-write leaves no half-written row.json.
        partial = done.with_suffix(".json.partial")
        partial.write_text(json.dumps(row, indent=1))
        partial.replace(done)
        rows.append(row)
        say(cell, "ok")
    return rows


def _finished_row(path: Path) -> dict | None:
    """The row a finished cell saved, or None when there is none or it cannot be read
    (an unreadable row means the cell runs again)."""
    try:
        row = json.loads(path.read_text())
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) else None


#: Scalar columns of ``results.csv`` (accuracy per round follows as ``accuracy_round_<r>``).
CSV_COLUMNS = ("key", "status", "partition", "profile", "label_policy", "contamination",
               "defense", "seed", "final_accuracy", "upload_auc", "upload_precision",
               "upload_recall", "pollution_dropped", "normal_dropped", "excluded_clients",
               "test_auc", "pool_auc", "pool_precision", "pool_recall", "pool_normal_flagged",
               "screening_seconds", "detector_fit_seconds", "wall_seconds", "error")


def write_results(rows: Sequence[dict], out: Path, meta: dict) -> None:
    """``results.json`` (rows and ``meta``) and ``results.csv`` (one line per cell)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": list(rows)}, indent=1))
    rounds = sorted({int(r) for row in rows for r in row.get("accuracy", {})})
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_COLUMNS, *(f"accuracy_round_{r}" for r in rounds)])
        for row in rows:
            accuracy = {int(r): a for r, a in row.get("accuracy", {}).items()}
            writer.writerow([row.get(c, "") if row.get(c) is not None else ""
                             for c in CSV_COLUMNS] + [accuracy.get(r, "") for r in rounds])


def cell_test_scores(grid: SweepGrid, out: Path, group: tuple[str, str, str], *,
                     seed: int) -> FittedScores:
    """Look up the test scores a finished cell's detector-only run saved, for a detector
    that would score exactly the same: same class and parameters (the threshold aside,
    it does not move scores), same federation family, contamination and seed.

    Returns
    -------
    callable
        ``lookup(detector, contamination)`` -> scores of :func:`detection_test_set`, or None.
    """
    def scoring_params(detector) -> tuple[type, dict]:
        # Nested parameters stand for a wrapped estimator (a peer's), which compares by identity.
        params = detector.get_params(deep=True)
        return type(detector), {k: v for k, v in params.items()
                                if not k.startswith("threshold") and not hasattr(v, "get_params")}

    def lookup(detector, contamination: float) -> np.ndarray | None:
        for cell in grid.cells():
            settings = cell.settings(grid.base)
            if (cell.group, cell.seed, cell.contamination) != (group, seed, contamination) \
                    or not settings.filter.filtered:
                continue
            if scoring_params(build_detector(settings.filter)) != scoring_params(detector):
                continue
            cell_dir = out / "cells" / cell.key
            scores = cell_dir / "test_scores.npz"
            done = _finished_row(cell_dir / "row.json") or {}
            if done.get("status") == "ok" and scores.is_file() \
                    and done.get("settings") == settings.to_run_config():
                with np.load(scores) as saved:
                    return saved["scores"]
        return None

    return lookup


def paper_phase(grid: SweepGrid, out: Path) -> dict:
    """Table I / Fig. 4 and Fig. 3 on the first federation family, seed 0; cached in
    ``out/paper.json`` like the cells."""
    cached = out / "paper.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    first = grid.cells()[0]
    settings = first.settings(grid.base).replace(seed=0)
    paper = {"table_one": table_one(settings, out, grid.paper_budget,
                                    fitted=cell_test_scores(grid, out, first.group, seed=0)),
             "fig3": fig3_adaptation(settings, out, grid.paper_budget)}
    cached.write_text(json.dumps(paper, indent=1))
    return paper


def sweep(grid: SweepGrid, out: Path, *, command: str = "",
          on_cell: Callable[[Cell, str], None] | None = None,
          on_phase: Callable[[str], None] | None = None,
          runner: CellRunner | None = None) -> dict:
    """Run (or resume) the whole sweep and write results, plots and ``report.md`` into ``out``.

    ``on_cell`` and ``runner`` are passed to :func:`run_sweep`. Returns the ``results.json``
    content.
    """
    phase = on_phase or (lambda message: None)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = run_sweep(grid, out, on_cell=on_cell, runner=runner)
    paper: dict = {}
    if grid.paper_figures:
        phase("regenerating the paper's Table I, Fig. 3 and Fig. 4")
        try:
            paper = paper_phase(grid, out)
        except Exception as error:  # the grid's results still deserve a report
            (out / "paper-error.txt").write_text(traceback.format_exc())
            paper = {"error": f"{type(error).__name__}: {error}"}
    sources = {}
    for row in rows:
        report = out / "cells" / row["key"] / "report.json"
        if row.get("status") == "ok" and report.is_file():
            sources = json.loads(report.read_text())["data_sources"]
            break
    meta = {"command": command, "grid": grid.to_dict(), "machine": machine_info(),
            "wall_seconds": sum(r.get("wall_seconds", 0) + r.get("detector_fit_seconds", 0)
                                for r in rows) + paper.get("table_one", {}).get("seconds", 0)
            + paper.get("fig3", {}).get("seconds", 0),
            "this_invocation_seconds": time.perf_counter() - started,
            "data_sources": sources, "paper": paper,
            "failed_cells": [r["key"] for r in rows if r.get("status") != "ok"]}
    phase("writing results.csv, results.json, plots and report.md")
    write_results(rows, out, meta)
    write_sweep_report(rows, out, meta)
    return {"meta": meta, "rows": rows}
