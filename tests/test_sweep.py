"""``fedsieve sweep``: cell bookkeeping, resume, defense wiring, report from a real quick sweep."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsieve.server.app import build_strategy, describe_strategy
from fedsieve.shared.config import RunSettings
from fedsieve.simulations.cli import app
from fedsieve.simulations.simulate import DEFENSES
from fedsieve.simulations.sweep import ORACLE, QUICK, SweepGrid, run_sweep, sweep

EXPECTED = {  # defense -> (aggregating strategy, detector class or "")
    "none": ("FedAvg", ""), "rtbigan": ("FedAvg", "RtBiGAN"), "egbad": ("FedAvg", "EGBAD"),
    "anogan": ("FedAvg", "AnoGAN"), "iforest": ("FedAvg", "PeerAdapter(iforest)"),
    "deepsvdd": ("FedAvg", "PeerAdapter(deepsvdd)"), "fedmedian": ("FedMedian", ""),
    "krum": ("Krum", ""), "trimmedavg": ("FedTrimmedAvg", ""),
}


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
    oracle = oracles[0].settings(RunSettings(contamination=0.3))
    assert (oracle.contamination, oracle.aggregator, oracle.detector) == (0.0, "fedavg", "none")


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
def test_each_defense_builds_the_strategy_it_names(defense, tmp_path):
    cell = replace(QUICK.cells()[0], defense=defense, contamination=0.2)
    strategy = build_strategy(cell.settings(QUICK.base), 4, tmp_path)
    described = describe_strategy(strategy)
    assert (described["aggregator"], described["detector"]) == EXPECTED[defense]


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = CliRunner().invoke(app, ["sweep", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


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


def test_rerun_skips_finished_cells_and_redoes_a_stale_one(quick_sweep):
    # A cell finished under other settings (e.g. an older grid) is run again, not reused.
    redo = QUICK.cells()[-1]
    done = quick_sweep / "cells" / redo.key / "row.json"
    row = json.loads(done.read_text())
    row["settings"]["local-epochs"] += 1
    done.write_text(json.dumps(row))
    events = []
    run_sweep(QUICK, quick_sweep, on_cell=lambda cell, status: events.append((cell.key, status)))
    started = [key for key, status in events if status == "start"]
    assert started == [redo.key]
    assert sum(status == "skipped" for _, status in events) == len(QUICK.cells()) - 1
    assert json.loads(done.read_text())["settings"] == redo.settings(QUICK.base).to_run_config()


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    # 99 % pollution of 2 clients needs more Fashion-MNIST images than exist: that cell fails.
    grid = SweepGrid(contamination=(0.99,), defenses=("none",), seeds=1, paper_figures=False,
                     base=RunSettings(num_clients=2, num_server_rounds=1))
    result = sweep(grid, tmp_path)
    failed = [r for r in result["rows"] if r["status"] == "failed"]
    assert [r["key"] for r in failed] == ["iid-uniform-random-c0.99-none-s0"]
    assert "Fashion-MNIST" in failed[0]["error"]
    assert (tmp_path / "cells" / failed[0]["key"] / "error.txt").is_file()
    assert result["rows"][0]["status"] == "ok"  # the oracle still ran
    assert "Failed cells" in (tmp_path / "report.md").read_text()


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
