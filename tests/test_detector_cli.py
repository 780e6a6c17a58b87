"""The meta-train and detect commands, end to end on small real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
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


@pytest.mark.slow  # the CLI's default label check: at least 500 steps a fold, about a minute
def test_detect_checks_claimed_labels_when_the_pool_has_them(tmp_path):
    mnist = load_mnist("train")
    pick = np.random.default_rng(0).permutation(len(mnist.labels))[:1200]
    x, y = mnist.images[pick], mnist.labels[pick].astype(np.int64)
    flip = np.random.default_rng(1).random(len(y)) < 0.2
    claimed = np.where(flip, (y + 3) % 10, y)  # a consistent flip of a fifth of the claims
    np.savez(tmp_path / "pool.npz", x=x[:1000], y=claimed[:1000],
             y_anomaly=flip[:1000].astype(int))
    np.savez(tmp_path / "test.npz", x=x[1000:], y=claimed[1000:],
             y_anomaly=flip[1000:].astype(int))
    np.savez(tmp_path / "trusted.npz", x=x[1000:1010])

    def detect(*extra: str) -> tuple[dict, object]:
        out = tmp_path / "-".join(("out", *extra))
        res = CliRunner().invoke(_app(), [
            "detect", "--pool", str(tmp_path / "pool.npz"), "--trusted",
            str(tmp_path / "trusted.npz"), "--test", str(tmp_path / "test.npz"),
            "--detector", "iforest", "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        return json.loads((out / "report.json").read_text()), out

    report, out = detect()
    verdicts, deciding = np.load(out / "verdicts.npy"), np.load(out / "deciding_piece.npy")
    by_labels = deciding == "labels"
    # The pairs the image detector let through are checked; a contradicted claim is a drop.
    assert report["flagged_by"]["labels"] == report["labels"]["flagged"] == by_labels.sum()
    assert verdicts[by_labels].all() and by_labels[flip[:1000]].mean() >= 0.6
    assert by_labels[~flip[:1000]].mean() <= 0.05
    label_scores = np.load(out / "label_scores.npy")
    assert np.isnan(label_scores[(verdicts == 1) & ~by_labels]).all()  # dropped by image
    # The test pairs are judged by the same classifiers.
    pair_scores = np.load(out / "test_label_scores.npy")
    assert pair_scores[flip[1000:]].mean() > pair_scores[~flip[1000:]].mean()
    assert report["test_metrics"]["recall"] >= 0.6
    # Without the check, y is ignored: the images alone.
    plain, plain_out = detect("--no-labels")
    assert "labels" not in plain["flagged_by"] and plain["labels"] is None
    assert not (plain_out / "label_scores.npy").exists()


def test_detect_refuses_claimed_labels_that_are_not_integers(tmp_path):
    x = load_mnist("train").images[:50]
    np.savez(tmp_path / "pool.npz", x=x, y=np.zeros(50))
    res = CliRunner().invoke(_app(), ["detect", "--pool", str(tmp_path / "pool.npz"),
                                      "--detector", "iforest", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "claimed class labels" in res.output


def test_detect_says_when_a_test_files_labels_cannot_be_checked(tmp_path):
    mnist = load_mnist("train")
    np.savez(tmp_path / "pool.npz", x=mnist.images[:60])  # images alone: no classes learnt
    np.savez(tmp_path / "test.npz", x=mnist.images[60:80], y=mnist.labels[60:80].astype(int))
    res = CliRunner().invoke(_app(), ["detect", "--pool", str(tmp_path / "pool.npz"), "--test",
                                      str(tmp_path / "test.npz"), "--detector", "iforest",
                                      "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "the test file's y is not checked" in res.output
    assert not (tmp_path / "o" / "test_label_scores.npy").exists()
    assert (tmp_path / "o" / "test_verdicts.npy").is_file()
