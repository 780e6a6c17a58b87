"""load_images reads real files and in-memory datasets as uint8 (N, C, H, W); stable_ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from torch.utils.data import TensorDataset

from fedsieve.shared.data.images import image_digests, images_sha256
from fedsieve.shared.data.sources import LoadedImages, load_images, stable_ids

RNG = np.random.default_rng(0)


def _pixels(n: int, h: int, w: int, c: int | None = None) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _image_folder(root, mode: str, sizes=((12, 10),) * 6, classes=("cat", "dog")):
    """``root/<class>/<i>.png``, images of ``mode`` cycling through ``sizes`` (H, W)."""
    for i, (h, w) in enumerate(sizes):
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = _pixels(1, h, w, None if mode == "L" else 3)[0]
        PILImage.fromarray(pixels, mode).save(folder / f"{i}.png")
    return root


def _hf_dataset(n: int = 6, mode: str = "RGB") -> Dataset:
    images = [PILImage.fromarray(p, mode) for p in _pixels(n, 9, 11, None if mode == "L" else 3)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b", "c"])})
    return Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]},
                             features=features)


def _check(result: LoadedImages, shape: tuple[int, ...], kind: str) -> None:
    assert result.images.shape == shape
    assert result.images.dtype == np.uint8 and result.images.flags.c_contiguous
    assert result.description["kind"] == kind
    assert result.description["count"] == shape[0]
    assert result.description["shape"] == list(shape[1:])
    json.dumps(result.description)
    if result.labels is not None:
        assert result.labels.dtype == np.int64 and result.labels.shape == (shape[0],)


# -- files ----------------------------------------------------------------------------------
def test_npz_with_and_without_labels(tmp_path):
    x, y = _pixels(7, 16, 16, 3), np.arange(7) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez(tmp_path / "u.npz", x=(x / 255).astype(np.float32))
    labelled = load_images(tmp_path / "d.npz")
    _check(labelled, (7, 3, 16, 16), "npz")
    np.testing.assert_array_equal(labelled.images, x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labelled.labels, y)
    assert labelled.description["path"] == str(tmp_path / "d.npz")
    unlabelled = load_images(str(tmp_path / "u.npz"), limit=3)
    _check(unlabelled, (3, 3, 16, 16), "npz")
    assert unlabelled.labels is None and not unlabelled.description["labelled"]


def test_npz_without_x_names_its_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", images=_pixels(2, 8, 8))
    with pytest.raises(ValueError, match=r"\['images'\].*no 'x'"):
        load_images(tmp_path / "d.npz")


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_image_folder(tmp_path, mode, channels):
    result = load_images(_image_folder(tmp_path / "f", mode))
    _check(result, (6, channels, 12, 10), "image-folder")
    assert result.description["classes"] == ["cat", "dog"]
    # ImageFolder lists class by class: cat holds files 0, 2, 4, dog 1, 3, 5.
    np.testing.assert_array_equal(result.labels, [0, 0, 0, 1, 1, 1])
    first = np.asarray(PILImage.open(tmp_path / "f" / "cat" / "0.png"))
    np.testing.assert_array_equal(result.images[0], first.reshape(12, 10, -1).transpose(2, 0, 1))


def test_image_folder_of_grey_and_rgb_reads_rgb(tmp_path):
    _image_folder(tmp_path / "f", "L", sizes=((8, 8),) * 2)
    grey = tmp_path / "f" / "cat" / "0.png"
    PILImage.fromarray(_pixels(1, 8, 8, 3)[0], "RGB").save(tmp_path / "f" / "dog" / "9.png")
    result = load_images(tmp_path / "f")
    assert result.images.shape == (3, 3, 8, 8)
    for channel in result.images[0]:  # the grey image, repeated into three channels
        np.testing.assert_array_equal(channel, np.asarray(PILImage.open(grey)))


def test_mixed_sizes_are_refused_unless_resized(tmp_path):
    root = _image_folder(tmp_path / "f", "RGB", sizes=((12, 10), (12, 10), (16, 16)))
    with pytest.raises(ValueError, match=r"3x12x10 \(2 images\), 3x16x16 \(1 images\).*resize"):
        load_images(root)
    _check(load_images(root, resize=(8, 8)), (3, 3, 8, 8), "image-folder")


def test_hf_dataset_saved_to_disk(tmp_path):
    _hf_dataset().save_to_disk(str(tmp_path / "hf"))
    result = load_images(tmp_path / "hf")
    _check(result, (6, 3, 9, 11), "hf-disk")
    np.testing.assert_array_equal(result.labels, [0, 1, 2, 0, 1, 2])
    assert result.description["classes"] == ["a", "b", "c"]
    assert result.description["image_key"] == "image"
    assert result.description["label_key"] == "label"


def test_hf_dataset_dict_splits(tmp_path):
    DatasetDict({"train": _hf_dataset(6, "L"), "test": _hf_dataset(4, "L")}).save_to_disk(
        str(tmp_path / "dd"))
    train = load_images(tmp_path / "dd")
    _check(train, (6, 1, 9, 11), "hf-disk")
    assert train.description["split"] == "train"
    test = load_images(tmp_path / "dd", split="test")
    assert len(test) == 4 and test.description["split"] == "test"
    with pytest.raises(ValueError, match=r"no split 'valid'.*\['train', 'test'\]"):
        load_images(tmp_path / "dd", split="valid")
    DatasetDict({"a": _hf_dataset(2), "b": _hf_dataset(2)}).save_to_disk(str(tmp_path / "ab"))
    with pytest.raises(ValueError, match=r"splits \['a', 'b'\].*split="):
        load_images(tmp_path / "ab")


def test_hf_columns_by_name_and_missing():
    arrays = _pixels(4, 10, 10, 3)
    ds = Dataset.from_dict({"img": list(arrays), "fine_label": [3, 1, 0, 2]})
    result = load_images(ds)
    _check(result, (4, 3, 10, 10), "hf-dataset")
    np.testing.assert_array_equal(result.images, arrays.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(result.labels, [3, 1, 0, 2])
    no_labels = load_images(Dataset.from_dict({"pixels": list(arrays)}), image_key="pixels")
    assert no_labels.labels is None
    with pytest.raises(ValueError, match=r"no image column among \['pixels'\].*image_key="):
        load_images(Dataset.from_dict({"pixels": list(arrays)}))
    with pytest.raises(ValueError, match=r"no column 'target'.*label_key="):
        load_images(ds, label_key="target")


# -- in-memory objects ----------------------------------------------------------------------
def test_arrays_tensors_and_tuples():
    x = _pixels(5, 20, 20, 3)
    array = load_images(x)
    _check(array, (5, 3, 20, 20), "array")
    assert array.description["sha256"] == images_sha256(x)
    bands = _pixels(5, 13, 16, 16)  # 13 channels: the layout must be named
    with pytest.raises(ValueError, match="layout='NCHW'"):
        load_images(bands)
    _check(load_images(bands, layout="NCHW"), (5, 13, 16, 16), "array")
    tensor = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    from_tensor = load_images(tensor)
    np.testing.assert_array_equal(from_tensor.images, x.transpose(0, 3, 1, 2))
    pair = load_images((x, torch.arange(5)))
    _check(pair, (5, 3, 20, 20), "arrays")
    np.testing.assert_array_equal(pair.labels, np.arange(5))
    with pytest.raises(ValueError, match="one label per image"):
        load_images((x, np.arange(4)))


def test_torch_datasets():
    x = torch.rand(6, 3, 32, 32)
    labelled = load_images(TensorDataset(x, torch.tensor([0, 1, 1, 0, 2, 2])))
    _check(labelled, (6, 3, 32, 32), "torch-dataset")
    np.testing.assert_array_equal(labelled.labels, [0, 1, 1, 0, 2, 2])
    assert labelled.description["type"] == "TensorDataset"
    assert load_images(TensorDataset(x)).labels is None

    class Strings(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return "not an image", 0

    with pytest.raises(ValueError, match="item 0 of the Strings is a str, not an image"):
        load_images(Strings())


def test_unknown_sources_say_what_is_accepted(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"\.txt file.*\.npz"):
        load_images(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="does not exist.*local data only"):
        load_images("uoft-cs/cifar10")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a Hugging Face dataset.*nor an ImageFolder"):
        load_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot read images from a dict"):
        load_images({"x": 1})
    np.savez(tmp_path / "d.npz", x=_pixels(2, 8, 8))
    with pytest.raises(ValueError, match="split='test' applies to Hugging Face datasets only"):
        load_images(tmp_path / "d.npz", split="test")


# -- stable ids -----------------------------------------------------------------------------
def test_stable_ids_are_unique_deterministic_and_order_free():
    x = _pixels(30, 8, 8, 3)
    x = np.concatenate([x, x[:4], x[:1]])  # image 0 three times, images 1-3 twice
    ids = stable_ids(x)
    assert ids.dtype == np.int64 and ids.shape == (35,) and (ids >= 0).all()
    assert len(np.unique(ids)) == 35
    np.testing.assert_array_equal(ids, stable_ids(x.copy()))
    # The first copy's id is the image's digest, in any dtype or layout.
    assert ids[0] == image_digests(x[:1].transpose(0, 3, 1, 2)).view("<u8")[0] & (2**63 - 1)
    np.testing.assert_array_equal(stable_ids((x / 255).astype(np.float32)), ids)
    perm = np.random.default_rng(1).permutation(35)
    shuffled = stable_ids(x[perm])
    # Unique images keep their id; repeats share the same set of ids among themselves.
    once = np.arange(4, 30)
    assert set(shuffled) == set(ids)
    inverse = np.argsort(perm)
    np.testing.assert_array_equal(shuffled[inverse][once], ids[once])
    assert len(stable_ids(np.zeros((0, 8, 8), np.uint8))) == 0
