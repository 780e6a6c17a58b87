"""``fedsieve sweep``: poisoning and contamination-rate experiments, every defense side by side.

A grid is a set of federation *families* (:class:`Family`: what is injected, how it is
labelled, which clients hold it, how the digits are partitioned), each at its contamination
rates, crossed with defenses and seeds. The default grid (:data:`FAMILIES`) holds the
poisoning that hurts an undefended model (a backdoor on a few attacker clients, IID and
non-IID; Fashion-MNIST with mapped labels at skewed majority rates; consistent label flips)
and the paper's protocol as a control.

Every cell of the grid is one ``fedsieve simulate`` run (the real ServerApp and ClientApp in
Flower's simulation engine) and, for the data-filter defenses when ``detector_only`` is set,
one detector-only run: the same detector fitted on the pooled client data with the ground
truth at hand, which gives the test AUC and the AUC per self-training round that a federated
run cannot see. Each cell writes ``cells/<key>/row.json`` when it is done, so a re-run with the
same settings skips it; a failing cell is recorded (``cells/<key>/error.txt``) and the sweep
goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
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
from fedsieve.simulations.poisoning import backdoor_of
from fedsieve.simulations.pollution import (
    PARTITIONS,
    federation_for,
    parse_label_policy,
    parse_profile,
)
from fedsieve.simulations.simulate import ORACLE, parse_defense, settings_for_defense, simulate
from fedsieve.simulations.sweep_report import write_sweep_report
from fedsieve.simulations.zoo import parse_pollution


@dataclass(frozen=True)
class Family:
    """A family of federations: how the clients are polluted (one table and oracle each).

    Attributes
    ----------
    name : str
        Short name, used in cell keys and report headings.
    pollution, label_policy, profile, partition, dirichlet_alpha
        The harness settings (:class:`fedsieve.shared.config.HarnessSettings`).
    contamination : tuple of float, optional
        This family's rates; None: the grid's.
    defenses : tuple of str, optional
        Of the grid's defenses, those this family runs (a short control needs few); None:
        all of them.
    rounds : int, optional
        Federated rounds of this family's runs (very non-IID clients need more); None: the
        grid's.
    about : str
        One line for the report: the threat the family stands for.
    """

    name: str
    pollution: str = "fashion"
    label_policy: str = "random"
    profile: str = "uniform"
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    contamination: tuple[float, ...] | None = None
    defenses: tuple[str, ...] | None = None
    rounds: int | None = None
    about: str = ""

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/ :"):
            raise ValueError(f"family name {self.name!r} must be non-empty, without '/', ':' "
                             "or spaces (it names directories)")
        parse_pollution(self.pollution)
        parse_label_policy(self.label_policy)
        parse_profile(self.profile)
        if self.partition not in PARTITIONS:
            raise ValueError(f"family {self.name}: unknown partition {self.partition!r}; "
                             f"choose from {', '.join(PARTITIONS)}")
        if bad := [c for c in self.contamination or () if not 0.0 <= c < 1.0]:
            raise ValueError(f"family {self.name}: rates must be in [0, 1), got {bad}")
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"family {self.name}: rounds must be at least 1, got "
                             f"{self.rounds}")

    @classmethod
    def crossed(cls, partitions: Sequence[str], profiles: Sequence[str],
                label_policies: Sequence[str], pollution: str = "fashion") -> list[Family]:
        """One family per (partition, profile, label policy), named after them."""
        return [cls(f"{p}-{pr}-{lp}".replace(":", ""), pollution, lp, pr, p)
                for p, pr, lp in itertools.product(partitions, profiles, label_policies)]

    def settings(self, base: RunSettings) -> RunSettings:
        """``base`` with this family's harness (and rounds, when it sets them)."""
        settings = base.replace(pollution=self.pollution, label_policy=self.label_policy,
                                profile=self.profile, partition=self.partition,
                                dirichlet_alpha=self.dirichlet_alpha)
        return settings if self.rounds is None else settings.replace(
            num_server_rounds=self.rounds)


@dataclass(frozen=True)
class Cell:
    """One federated run of the sweep."""

    family: Family
    contamination: float
    defense: str
    seed: int

    @property
    def key(self) -> str:
        """Directory name, unique within a sweep."""
        return f"{self.family.name}-c{self.contamination:g}-{self.defense}-s{self.seed}"

    @property
    def group(self) -> str:
        """The federation family the cell belongs to (one table and oracle per family)."""
        return self.family.name

    def fields(self) -> dict[str, object]:
        """The cell as flat row fields (family, its harness, contamination, defense, seed)."""
        family = asdict(self.family)
        name = family.pop("name")
        del family["contamination"], family["defenses"], family["rounds"], family["about"]
        return {"family": name, **family, "contamination": self.contamination,
                "defense": self.defense, "seed": self.seed}

    def settings(self, base: RunSettings) -> RunSettings:
        """``base`` with this cell's federation and defense (the oracle: no pollution)."""
        settings = self.family.settings(base).replace(contamination=self.contamination,
                                                      seed=self.seed)
        return settings_for_defense(settings, "none" if self.defense == ORACLE else self.defense)


#: Families of the default sweep: poisoning that hurts an undefended model, and a control.
BACKDOOR = Family("backdoor-iid", pollution="trigger:size=3", label_policy="target:0",
                  profile="attackers:3", contamination=(0.2,),
                  about="3 of 10 clients stamp a 3x3 trigger on 20 % of their digits, "
                        "labelled 0 (BadNets)")
#: The paper's own protocol (Fashion-MNIST, random labels, every client alike).
PAPER_PROTOCOL = Family("fashion-random", contamination=(0.4,), defenses=("none", "rtbigan"),
                        about="the paper's protocol: Fashion-MNIST with random labels")
#: The defenses that screen images only, and the aggregators beside them.
IMAGE_DEFENSES = ("none", "rtbigan", "rtbigan+fedmedian", "iforest", "fedmedian", "trimmedavg",
                  "krum", "multikrum", "bulyan")
FAMILIES: dict[str, Family] = {f.name: f for f in (
    BACKDOOR,
    # Dirichlet 0.1 clients pull the model apart: after 5 rounds the clean oracle's accuracy
    # was still climbing (0.86-0.90) and one run to the next differed by up to 25 pp.
    dataclasses.replace(BACKDOOR, name="backdoor-dirichlet", partition="dirichlet",
                        dirichlet_alpha=0.1, rounds=10, defenses=IMAGE_DEFENSES,
                        about="the same backdoor on non-IID clients (Dirichlet alpha 0.1), "
                              "10 rounds"),
    Family("fashion-mapped-skewed", label_policy="mapped", profile="skewed",
           contamination=(0.6,), defenses=IMAGE_DEFENSES,
           about="Fashion-MNIST, classes mapped to digits, skewed rates (60 % mean)"),
    # An image-only filter cannot see a wrong label on a genuine digit; the label check can.
    Family("label-flip", pollution="relabelled", label_policy="mapped", contamination=(0.4,),
           defenses=("none", "rtbigan", "rtbigan+labels", "fedmedian", "multikrum"),
           about="every client adds copies of its own digits with a consistently flipped "
                 "label (40 % of its data)"),
    PAPER_PROTOCOL,
)}


@dataclass(frozen=True)
class SweepGrid:
    """What a sweep runs: every family at its rates, with every defense and seed.

    The oracle runs once per (family, seed) at contamination 0; it is also the "none"
    defense at contamination 0, which is therefore not run twice.
    """

    families: tuple[Family, ...] = tuple(FAMILIES.values())
    contamination: tuple[float, ...] = (0.2,)
    defenses: tuple[str, ...] = (*IMAGE_DEFENSES[:3], "rtbigan+labels", *IMAGE_DEFENSES[3:])
    seeds: int = 2
    # A backdoor needs rounds to take hold: FedAvg's attack success is 0.22 after 3 rounds
    # and 0.97 after 5 (backdoor-iid, seed 0).
    base: RunSettings = field(default_factory=lambda: RunSettings().replace(
        num_server_rounds=5))
    #: Whether filter cells also fit their detector on the pooled data with the ground truth
    #: at hand (test AUC, AUC per self-training round).
    detector_only: bool = False
    paper_figures: bool = True
    #: Scale of the paper-figure fits (1.0 = the detectors' defaults; the quick sweep uses less).
    paper_budget: float = 1.0

    def __post_init__(self) -> None:
        for defense in self.defenses:
            if defense != ORACLE:
                parse_defense(defense)
        bad = [c for c in self.contamination if not 0.0 <= c < 1.0]
        if bad:
            raise ValueError(f"contamination rates must be in [0, 1), got {bad}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if not (self.contamination and self.defenses and self.families):
            raise ValueError("a sweep needs at least one family, rate and defense")
        names = [f.name for f in self.families]
        if len(set(names)) < len(names):
            raise ValueError(f"family names must be unique, got {names}")

    def rates(self, family: Family) -> tuple[float, ...]:
        """The contamination rates ``family`` runs at."""
        return family.contamination or self.contamination

    def cells(self) -> list[Cell]:
        """Oracle cells first, then every (family, contamination, defense, seed)."""
        seeds = range(self.seeds)
        oracle = [Cell(f, 0.0, ORACLE, s) for f, s in itertools.product(self.families, seeds)]
        rest = [Cell(f, c, d, s) for f in self.families
                for c, d, s in itertools.product(self.rates(f), self.defenses, seeds)
                if d != ORACLE and not (d == "none" and c == 0.0)
                and (f.defenses is None or d in f.defenses)]
        return oracle + rest

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["base"] = self.base.to_run_config()
        return data


#: The reduced grid of ``fedsieve sweep --quick`` (CI runs it): a few minutes on 2 cores.
#: A backdoor cell with the filter itself, beside no defense and one robust aggregator.
QUICK = SweepGrid(
    families=(dataclasses.replace(BACKDOOR, profile="attackers:1", contamination=(0.3,),
                                  about="1 of 4 clients stamps a 3x3 trigger on 30 % of its "
                                        "digits, labelled 0 (BadNets)"),),
    defenses=("none", "rtbigan", "fedmedian"),
    seeds=1,
    base=RunSettings(task=TaskSettings(num_server_rounds=3),
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
    # Only MNIST comes from the data root: a folder of IDX files reads as either dataset.
    test = detection_test_set(root, None, pollution=settings.harness.pollution)
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


def run_cell(cell: Cell, base: RunSettings, out: Path, *,
             detector_only_run: bool = True) -> dict:
    """Run one cell (federated run, then for a filter the detector-only run unless
    ``detector_only_run`` is False); returns its result row."""
    settings = cell.settings(base)
    report = simulate(settings, out)
    detection = report["detection"]
    row: dict[str, object] = {
        **cell.fields(), "key": cell.key, "status": "ok",
        "settings": settings.to_run_config(),
        "final_accuracy": report["final_accuracy"],
        "accuracy": {int(r): a for r, a in report["accuracy"].items()},
        "final_attack_success": report.get("final_attack_success"),
        "attack_success": {int(r): a for r, a in report.get("attack_success", {}).items()},
        "final_class_accuracy": report.get("final_class_accuracy"),
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
    if settings.filter.filtered and detector_only_run:
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
    runner = runner or functools.partial(run_cell, detector_only_run=grid.detector_only)
    rows = []
    oracles: dict[str, dict] = {}  # families' clean federations are often the same one
    for cell in grid.cells():
        cell_dir = out / "cells" / cell.key
        done = cell_dir / "row.json"
        settings = cell.settings(grid.base).to_run_config()
        clean = _clean_key(cell, grid.base)
        row = _current_row(cell, grid, out)
        if row is None and clean in oracles:
            source = oracles[clean]
            row = {**source, **cell.fields(), "key": cell.key, "settings": settings,
                   "same_run_as": source.get("same_run_as", source["key"])}
            cell_dir.mkdir(parents=True, exist_ok=True)
            _write_row(done, row)
        if row is not None:
            if clean is not None and row.get("status") == "ok":
                oracles.setdefault(clean, row)
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
            rows.append({**cell.fields(), "key": cell.key, "status": "failed",
                         "error": f"{type(error).__name__}: {error}"})
            say(cell, "failed")
            continue
        _write_row(done, row)
        if clean is not None and row.get("status") == "ok":
            oracles.setdefault(clean, row)
        rows.append(row)
        say(cell, "ok")
    return rows


def _write_row(path: Path, row: dict) -> None:
    """Write then rename: a sweep killed mid-write leaves no half-written row.json."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(row, indent=1))
    partial.replace(path)


def _clean_key(cell: Cell, base: RunSettings) -> str | None:
    """For an oracle cell, what its clean federation depends on (families that differ only in
    their pollution, labels or rates share it); None for other cells and for a held-out
    class, which changes the normal data itself."""
    if cell.defense != ORACLE or parse_pollution(cell.family.pollution).held_out_class is not None:
        return None
    settings = cell.settings(base).replace(pollution="fashion", label_policy="random",
                                           profile="uniform")
    # The oracle's attack success is measured with its family's backdoor, if any.
    backdoor = backdoor_of(cell.family.pollution, cell.family.label_policy)
    return json.dumps([settings.to_run_config(), repr(backdoor)], sort_keys=True)


def _finished_row(path: Path) -> dict | None:
    """The row a finished cell saved, or None when there is none or it cannot be read
    (an unreadable row means the cell runs again)."""
    try:
        row = json.loads(path.read_text())
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) else None


#: Scalar columns of ``results.csv`` (accuracy per round follows as ``accuracy_round_<r>``).
CSV_COLUMNS = ("key", "status", "family", "pollution", "label_policy", "profile", "partition",
               "dirichlet_alpha", "contamination", "defense", "seed", "final_accuracy",
               "final_attack_success", "upload_auc", "upload_precision",
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


def cell_test_scores(grid: SweepGrid, out: Path, group: str, *,
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
                    and same_settings(done.get("settings"), settings):
                with np.load(scores) as saved:
                    return saved["scores"]
        return None

    return lookup


def paper_phase(grid: SweepGrid, out: Path) -> dict:
    """Table I / Fig. 4 and Fig. 3 on the paper's protocol, seed 0: the first family whose
    pollution is Fashion-MNIST (else :data:`PAPER_PROTOCOL`); cached in ``out/paper.json``
    like the cells."""
    cached = out / "paper.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    family = next((f for f in grid.families if f.pollution == "fashion"), PAPER_PROTOCOL)
    first = Cell(family, 0.0, ORACLE, 0)
    settings = first.settings(grid.base).replace(seed=0)
    paper = {"table_one": table_one(settings, out, grid.paper_budget,
                                    fitted=cell_test_scores(grid, out, first.group, seed=0)),
             "fig3": fig3_adaptation(settings, out, grid.paper_budget)}
    cached.write_text(json.dumps(paper, indent=1))
    return paper


def _current_row(cell: Cell, grid: SweepGrid, out: Path) -> dict | None:
    """The row ``cell`` saved in ``out``, if it ran with the grid's settings (a cell of a
    stale grid runs again); None otherwise."""
    row = _finished_row(out / "cells" / cell.key / "row.json")
    if row is None or not same_settings(row.get("settings"), cell.settings(grid.base)):
        return None
    return row


def same_settings(saved: object, settings: RunSettings) -> bool:
    """Whether a row's saved run config is ``settings``. A setting the row predates counts as
    its default: a release that adds an option at its old behaviour keeps finished cells."""
    if not isinstance(saved, dict):
        return False
    defaults = RunSettings().to_run_config()
    current = settings.to_run_config()
    return all(saved.get(key, defaults.get(key)) == current.get(key, defaults.get(key))
               for key in saved.keys() | current.keys())


def finished_rows(grid: SweepGrid, out: Path) -> list[dict]:
    """The rows of the cells already finished in ``out`` with the grid's settings, in grid
    order (what a sweep cut short has to show)."""
    return [row for cell in grid.cells() if (row := _current_row(cell, grid, out)) is not None]


def sweep(grid: SweepGrid, out: Path, *, command: str = "",
          on_cell: Callable[[Cell, str], None] | None = None,
          on_phase: Callable[[str], None] | None = None,
          runner: CellRunner | None = None, report_only: bool = False) -> dict:
    """Run (or resume) the whole sweep and write results, plots and ``report.md`` into ``out``.

    ``on_cell`` and ``runner`` are passed to :func:`run_sweep`. With ``report_only`` nothing
    runs: the report shows the cells finished so far (and the paper figures if they are),
    and says how many are missing. Returns the ``results.json`` content.
    """
    phase = on_phase or (lambda message: None)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = (finished_rows(grid, out) if report_only
            else run_sweep(grid, out, on_cell=on_cell, runner=runner))
    cells, done = grid.cells(), {r["key"] for r in rows}
    paper: dict = {}
    if report_only:
        cached = out / "paper.json"
        paper = json.loads(cached.read_text()) if cached.is_file() else {}
    elif grid.paper_figures:
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
            # A shared oracle row ran once.
            "wall_seconds": sum(r.get("wall_seconds", 0) + r.get("detector_fit_seconds", 0)
                                for r in rows if "same_run_as" not in r)
            + paper.get("table_one", {}).get("seconds", 0)
            + paper.get("fig3", {}).get("seconds", 0),
            "this_invocation_seconds": time.perf_counter() - started,
            "data_sources": sources, "paper": paper,
            "failed_cells": [r["key"] for r in rows if r.get("status") != "ok"],
            "cells": len(cells),
            "missing_cells": [c.key for c in cells if c.key not in done]}
    phase("writing results.csv, results.json, plots and report.md")
    write_results(rows, out, meta)
    write_sweep_report(rows, out, meta)
    return {"meta": meta, "rows": rows}
