"""The meta-train and detect commands, end to end on small real data."""

from __future__ import annotations

import json

import numpy as np
import typer
from typer.testing import CliRunner

from fedsieve.shared.cli.detectors import register
from fedsieve.shared.data.datasets import load_fashion_mnist, load_mnist


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_detect_writes_all_outputs(tmp_path):
    mn, fa = load_mnist("train").images, load_fashion_mnist("train").images
    x = np.concatenate([mn[:150], fa[:50]])
    np.savez(tmp_path / "pool.npz", x=x, y_anomaly=np.r_[np.zeros(150), np.ones(50)].astype(int))
    np.savez(tmp_path / "trusted.npz", x=mn[300:310])
    np.savez(tmp_path / "test.npz", x=(load_mnist("test").images[:40] / 255).astype(np.float32))
    out = tmp_path / "out"
    res = CliRunner().invoke(
        _app(),
        [
            "detect",
            "--pool",
            str(tmp_path / "pool.npz"),
            "--trusted",
            str(tmp_path / "trusted.npz"),
            "--test",
            str(tmp_path / "test.npz"),
            "--detector",
            "iforest",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    for name in (
        "scores.npy",
        "verdicts.npy",
        "test_scores.npy",
        "report.json",
        "roc.png",
        "extremes.png",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["pool_metrics"]["auc"] > 0.8
    assert np.load(out / "verdicts.npy").shape == (200,)
    # One number decides IsolationForest's verdicts: every drop is the score's.
    assert report["flagged_by"] == {"score": report["n_flagged"]}
    assert set(np.load(out / "deciding_piece.npy")) == {"score"}
    assert f"by score {report['n_flagged']}" in res.output


def test_detect_takes_its_detectors_from_the_registry(tmp_path):
    from fedsieve.shared.detectors import DETECTORS

    np.savez(tmp_path / "pool.npz", x=load_mnist("train").images[:20])
    res = CliRunner().invoke(_app(), ["detect", "--pool", str(tmp_path / "pool.npz"),
                                      "--detector", "magic", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert all(name in res.output for name in DETECTORS)


def test_detect_rejects_bad_input(tmp_path):
    np.savez(tmp_path / "pool.npz", x=np.zeros((5, 6, 6), np.uint8))
    res = CliRunner().invoke(
        _app(), ["detect", "--pool", str(tmp_path / "pool.npz"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code != 0
    assert "at least 8x8" in res.output


def test_meta_train_writes_checkpoint(tmp_path):
    res = CliRunner().invoke(
        _app(),
        [
            "meta-train",
            "--iterations",
            "2",
            "--inner-steps",
            "2",
            "--holdout-classes",
            "8,9",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert res.exit_code == 0, res.output
    header = json.loads((tmp_path / "m.json").read_text())
    assert header["config"]["holdout_classes"] == [8, 9]
