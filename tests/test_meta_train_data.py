"""``fedsieve meta-train --data``: the real CLI on tiny datasets of another image shape."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fedsieve.shared.detectors.checkpoint import load_meta
from fedsieve.shared.detectors.metatrain import cluster_tasks
from fedsieve.simulations.cli import app

QUICK = ["--iterations", "3", "--inner-steps", "2", "--task-size", "8"]


def _colour_classes(n: int = 60, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 16x16 RGB images (N, H, W, C) in k classes, each class one dominant colour channel."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.integers(0, 60, (n, 16, 16, 3)).astype(np.uint8)
    x[np.arange(n), :, :, y] += 180
    return x, y


def _run(*args: str) -> None:
    result = CliRunner().invoke(app, ["meta-train", *args])
    assert result.exit_code == 0, result.output


def test_meta_train_on_an_npz_of_rgb_classes(tmp_path):
    x, y = _colour_classes()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    _run("--data", str(tmp_path / "d.npz"), *QUICK, "--out", str(tmp_path / "m"))
    model, header = load_meta(tmp_path / "m")
    assert model.cfg.image_shape == (3, 16, 16)
    assert header["data"]["kind"] == "npz"
    assert header["data"]["path"] == str(tmp_path / "d.npz")
    assert header["data"]["count"] == 60 and header["data"]["shape"] == [3, 16, 16]
    assert header["tasks"] == {"kind": "classes", "count": 3, "clusters": None}


def test_meta_train_on_an_image_folder(tmp_path):
    x, y = _colour_classes(n=12, k=2)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = tmp_path / "images" / ("red", "green")[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    _run("--data", str(tmp_path / "images"), *QUICK, "--out", str(tmp_path / "m"))
    model, header = load_meta(tmp_path / "m")
    assert model.cfg.image_shape == (3, 16, 16)
    assert header["data"]["kind"] == "image-folder"
    assert header["data"]["classes"] == ["green", "red"]
    assert header["tasks"]["kind"] == "classes" and header["tasks"]["count"] == 2


def test_meta_train_on_unlabelled_images_uses_clusters(tmp_path):
    x, _ = _colour_classes()
    np.savez(tmp_path / "d.npz", x=x)
    _run("--data", str(tmp_path / "d.npz"), "--clusters", "3", *QUICK,
         "--out", str(tmp_path / "m"))
    model, header = load_meta(tmp_path / "m")
    assert model.cfg.image_shape == (3, 16, 16)
    assert not header["data"]["labelled"]
    assert header["tasks"] == {"kind": "clusters", "count": 3, "clusters": 3}


def test_tasks_classes_needs_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=_colour_classes()[0])
    result = CliRunner().invoke(app, ["meta-train", "--data", str(tmp_path / "d.npz"),
                                      "--tasks", "classes", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2  # a usage error, in a panel that wraps the message
    assert "has no labels; use --tasks clusters" in " ".join(result.output.replace("│", "").split())


def test_cluster_tasks_find_the_colour_classes():
    x, y = _colour_classes()
    ids = cluster_tasks(x, 3, seed=0)
    assert ids.dtype == np.int64 and set(ids) == {0, 1, 2}
    # Each cluster is one colour class, and the clustering is reproducible.
    assert all(len(set(y[ids == c])) == 1 for c in range(3))
    np.testing.assert_array_equal(ids, cluster_tasks(x, 3, seed=0))
    with pytest.raises(ValueError, match="from 1 to the number of images"):
        cluster_tasks(x[:2], 3)
