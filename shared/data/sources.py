"""Where a user's images come from: local files and in-memory datasets as one image batch.

:func:`load_images` reads

- an ``.npz`` file with an array ``x`` (images) and optionally ``y`` (integer labels);
- a directory in torchvision ``ImageFolder`` layout (one subfolder of images per class);
- a directory written by Hugging Face ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
  (a ``DatasetDict`` is read one split at a time);
- in memory: a numpy array or torch tensor of images, a tuple ``(x, y)``, a Hugging Face
  ``datasets.Dataset`` or ``DatasetDict`` (a flwr-datasets ``FederatedDataset.load_partition``
  returns a ``Dataset``), or a map-style ``torch.utils.data.Dataset`` whose items are
  ``(image, label)`` or an image (a PIL image, a tensor (C, H, W) or an array);

and returns an :class:`LoadedImages`: the images in the canonical uint8 (N, C, H, W) form of
:func:`~fedsieve.shared.data.images.check_images`, their labels when the source has any, and a
JSON-able description of what was read (for reports and checkpoints).

Only local paths and objects are read; nothing is ever downloaded (save a hub dataset with
``save_to_disk`` first). PIL images are read as grey (one channel) when every image of the
source is grey (mode ``"L"`` or ``"1"``), else as RGB: grey images then repeat into three
channels and other modes (RGBA, palette, CMYK, ...) go through PIL's ``convert("RGB")``.
Integer pixels in 0-255 are read as uint8 and float64 pixels as float32 (in [0, 1]).
Images of different sizes are refused unless ``resize=(H, W)`` is given, which resizes every
image (bilinear, antialiased) with torchvision.

:func:`stable_ids` gives each image an id derived from its content, so that the same data
gets the same ids every time it is loaded, in any order: the ids a client uploads and the ids
it later filters its training data by agree without the user keeping an id column.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsieve.shared.data.images import check_images, format_shape, image_digests

__all__ = ["IMAGE_KEYS", "LABEL_KEYS", "LoadedImages", "load_images", "stable_ids"]

#: Column names taken for the images of a Hugging Face dataset without an ``Image`` column.
IMAGE_KEYS = ("image", "img", "pixel_values", "x")
#: Column names taken for the labels when no column is a ``ClassLabel``.
LABEL_KEYS = ("label", "labels", "fine_label", "y")
#: Files ``save_to_disk`` writes: a Dataset's, then a DatasetDict's.
_HF_DATASET_FILES = ("dataset_info.json", "state.json")
_HF_DICT_FILE = "dataset_dict.json"
#: Items decoded per Hugging Face batch (bounds the PIL images alive at once).
_BATCH = 256
_MASK63 = np.uint64(2**63 - 1)
_SOURCES = ("pass a path to an .npz file (arrays x and optional y), an ImageFolder directory "
            "(one subfolder of images per class), a directory written by Hugging Face "
            "save_to_disk, or in memory a numpy array / torch tensor of images, a tuple "
            "(x, y), a Hugging Face Dataset or a torch Dataset of (image, label) or image items")


@dataclass(frozen=True)
class LoadedImages:
    """Images read by :func:`load_images`, their labels, and what was read.

    Attributes
    ----------
    images : numpy.ndarray
        uint8 (N, C, H, W), C-contiguous.
    labels : numpy.ndarray or None
        int64 (N,) class indices (>= 0), or None when the source has no labels.
    description : dict
        JSON-able: ``kind`` (``"npz"``, ``"image-folder"``, ``"hf-disk"``, ``"hf-dataset"``,
        ``"torch-dataset"``, ``"array"`` or ``"arrays"``), ``path`` (None in memory), ``split``,
        ``count``, ``shape`` ([C, H, W]), ``classes`` (class names when known), ``labelled``,
        ``sha256`` (of the uint8 images, as :func:`~fedsieve.shared.data.images.images_sha256`),
        and what else the kind names (columns, the object's type, ``limit``, ``resize``).
    """

    images: np.ndarray
    labels: np.ndarray | None
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def load_images(
    source: Any,
    *,
    split: str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
    layout: str | None = None,
    limit: int | None = None,
    resize: tuple[int, int] | None = None,
) -> LoadedImages:
    """Read images (and labels) from a file, directory or in-memory dataset.

    Parameters
    ----------
    source : str, os.PathLike or object
        What to read (see the module docstring).
    split : str, optional
        The split of a Hugging Face ``DatasetDict``; defaults to ``"train"`` when it has one.
        Other sources have no splits and refuse it.
    image_key, label_key : str, optional
        The image and label columns of a Hugging Face dataset. By default the image column is
        the one whose feature is ``datasets.Image``, else the first of :data:`IMAGE_KEYS`; the
        label column is the first ``ClassLabel`` column, else the first of
        :data:`LABEL_KEYS`; with none the images are unlabelled. A label column holding only
        -1 (Hugging Face's "no label") reads as no labels.
    layout : {"NCHW", "NHWC"}, optional
        The layout of 4-D arrays and 3-D items whose channel axis cannot be read from their
        shape (see :func:`~fedsieve.shared.data.images.check_images`).
    limit : int, optional
        Read only the first ``limit`` images in the source's order (an ImageFolder lists its
        classes one after another, so a limit may leave later classes out).
    resize : (int, int), optional
        Resize every image to (H, W) (bilinear, antialiased); needed for sources whose images
        differ in size.

    Returns
    -------
    LoadedImages

    Raises
    ------
    ValueError
        A path that is missing or of no known kind, a missing split or column, images of
        different sizes (without ``resize``), an item that is not an image, or labels that
        are not one non-negative integer per image; the message says what was found and what
        to pass instead.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if resize is not None:
        resize = _check_resize(resize)
    opts = _Options(split, image_key, label_key, layout, limit, resize)
    if isinstance(source, str | os.PathLike):
        images, labels, desc = _from_path(Path(os.path.abspath(source)), opts)
    else:
        images, labels, desc = _from_object(source, opts)
    if labels is not None:
        labels = _check_labels(labels, len(images), desc.get("label_key") or "labels")
    desc.update({"count": int(len(images)), "shape": [int(s) for s in images.shape[1:]],
                 "labelled": labels is not None, "limit": limit,
                 "resize": None if resize is None else list(resize),
                 # The bytes images_sha256 hashes, without re-reading a layout that (with
                 # more than 4 channels) only the caller knows.
                 "sha256": hashlib.sha256(images.tobytes()).hexdigest()})
    desc.setdefault("classes", None)
    json.dumps(desc)  # the description goes into reports: fail here, not there
    return LoadedImages(images, labels, desc)


def stable_ids(images: Any, *, layout: str | None = None) -> np.ndarray:
    """Sample ids derived from image content: int64 (N,), non-negative, all different.

    An image's id is its 8-byte BLAKE2b digest (:func:`~fedsieve.shared.data.images.image_digests`
    of the uint8 (C, H, W) image) masked to 63 bits, so the same image has the same id in any
    order, dtype or layout. The k-th repeat of a byte-identical image (k >= 1, counted in the
    given order) gets the digest re-hashed with k instead, so that no two samples share an id
    (the wire protocol refuses duplicates); the ids of a set with repeats are therefore the
    same set in any order, and the same list for the same order.

    Parameters
    ----------
    images : array-like
        Any batch :func:`~fedsieve.shared.data.images.check_images` reads (possibly empty).
    layout : {"NCHW", "NHWC"}, optional
        As in :func:`~fedsieve.shared.data.images.check_images`.

    Raises
    ------
    ValueError
        ``images`` is not a valid batch of images.
    """
    x = check_images(images, "images", dtype=np.uint8, allow_empty=True, layout=layout)
    if not len(x):  # image_digests cannot reshape an empty batch
        return np.empty(0, np.int64)
    ids = image_digests(x).view("<u8") & _MASK63
    round_ = 0
    while True:  # one round re-hashes all repeats; further rounds only after a 63-bit collision
        rank = _occurrence_rank(ids)
        repeats = np.flatnonzero(rank)
        if not len(repeats):
            return ids.astype(np.int64)
        round_ += 1
        ids[repeats] = [_rehash(int(ids[i]), int(rank[i]), round_) for i in repeats]


def _occurrence_rank(values: np.ndarray) -> np.ndarray:
    """For each entry, how many equal entries come before it."""
    n = len(values)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]] if n else np.empty(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - start
    return rank


def _rehash(value: int, rank: int, round_: int) -> np.uint64:
    data = value.to_bytes(8, "little") + rank.to_bytes(8, "little") + round_.to_bytes(4, "little")
    digest = np.frombuffer(hashlib.blake2b(data, digest_size=8).digest(), "<u8")[0]
    return digest & _MASK63


# -- options and checks ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    split: str | None
    image_key: str | None
    label_key: str | None
    layout: str | None
    limit: int | None
    resize: tuple[int, int] | None


def _check_resize(resize: Any) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in resize)
    except (TypeError, ValueError):
        raise ValueError(f"resize must be (H, W), two integers, got {resize!r}") from None
    if min(h, w) < 8:
        raise ValueError(f"resize must be at least (8, 8), got {(h, w)}")
    return h, w


def _check_labels(labels: Any, n: int, name: str) -> np.ndarray:
    if hasattr(labels, "detach") and hasattr(labels, "numpy"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{name} has shape {y.shape}; give one label per image, shape ({n},)")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} has dtype {y.dtype}; labels must be integer class indices "
                         "(encode names as 0, 1, ...)")
    if n and y.min() < 0:
        raise ValueError(f"{name} holds negative labels (min {y.min()}); labels must be class "
                         "indices >= 0")
    return np.ascontiguousarray(y, dtype=np.int64)


def _no_option(opts: _Options, kind: str, *names: str) -> None:
    """Refuse options that mean nothing for ``kind`` (silently ignoring one hides a mistake)."""
    for name in names:
        if getattr(opts, name) is not None:
            raise ValueError(f"{name}={getattr(opts, name)!r} applies to Hugging Face datasets "
                             f"only, not to {kind}; leave it out")


def _coerce_dtype(x: np.ndarray, name: str) -> np.ndarray:
    """Integer pixels in 0-255 as uint8 and wider floats as float32, for check_images."""
    if x.dtype == np.uint8 or x.dtype == np.float32:
        return x
    if np.issubdtype(x.dtype, np.integer) and x.dtype != bool:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{name} holds integers in [{x.min()}, {x.max()}]; integer pixels "
                             "must lie in 0-255 (scale them, or pass float32 in [0, 1])")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    return x  # check_images names the dtype and what it takes


def _batch(x: Any, name: str, opts: _Options) -> np.ndarray:
    """A whole array of images as uint8 (N, C, H, W), limited and resized as asked."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be an array of images, got {type(x).__name__}; "
                         f"{_SOURCES}")
    if opts.limit is not None:
        x = x[:opts.limit]
    images = check_images(_coerce_dtype(x, name), name, dtype=np.uint8, layout=opts.layout)
    # check_images' float -> uint8 path keeps a transposed input's strides: make it C order.
    return resize_images(np.ascontiguousarray(images), opts.resize)


def resize_images(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (N, C, H, W) ``images`` resized to ``size`` (H, W), bilinear and antialiased
    (unchanged when ``size`` is None or already theirs)."""
    if size is None or images.shape[-2:] == size:
        return images
    import torch
    from torchvision.transforms.v2.functional import resize

    out = resize(torch.from_numpy(images), list(size), antialias=True)
    return np.ascontiguousarray(out.numpy())


# -- paths ----------------------------------------------------------------------------------
def _from_path(path: Path, opts: _Options) -> tuple[np.ndarray, np.ndarray | None, dict]:
    if not path.exists():
        raise ValueError(f"{path} does not exist; fedsieve reads local data only (save a hub "
                         "dataset with save_to_disk first); " + _SOURCES)
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"{path} is a {path.suffix or 'suffix-less'} file; of files only "
                             ".npz is read (arrays x and optional y)")
        return _from_npz(path, opts)
    if (path / _HF_DICT_FILE).is_file() or any((path / f).is_file() for f in _HF_DATASET_FILES):
        from datasets import load_from_disk

        images, labels, desc = _from_hf(load_from_disk(str(path)), opts)
        return images, labels, {**desc, "kind": "hf-disk", "path": str(path)}
    if any(p.is_dir() for p in path.iterdir()):
        return _from_image_folder(path, opts)
    raise ValueError(f"{path} is a directory but neither a Hugging Face dataset written by "
                     f"save_to_disk (no {', '.join((*_HF_DATASET_FILES, _HF_DICT_FILE))}) nor "
                     "an ImageFolder (no class subfolders); " + _SOURCES)


def _from_npz(path: Path, opts: _Options) -> tuple[np.ndarray, np.ndarray | None, dict]:
    _no_option(opts, "an .npz file", "split", "image_key", "label_key")
    try:
        with np.load(path, allow_pickle=False) as f:
            names = list(f.files)
            x = f["x"] if "x" in names else None
            y = f["y"] if "y" in names else None
    except (OSError, EOFError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read {path} as an .npz file (numpy.savez, no pickled "
                         f"objects): {exc}") from exc
    if x is None:
        raise ValueError(f"{path} holds arrays {sorted(names)} but no 'x' (images); save the "
                         "images as x (and integer labels as y)")
    images = _batch(x, f"{path.name} x", opts)
    if y is not None and opts.limit is not None:
        y = y[:opts.limit]
    return images, y, {"kind": "npz", "path": str(path), "split": None,
                       "label_key": None if y is None else "y"}


def _from_image_folder(path: Path, opts: _Options) -> tuple[np.ndarray, np.ndarray, dict]:
    from torchvision.datasets import ImageFolder

    _no_option(opts, "an ImageFolder", "split", "image_key", "label_key")
    try:
        folder = ImageFolder(str(path), loader=_open_image)
    except FileNotFoundError as exc:  # no class folder, or no image file in them
        raise ValueError(f"{path} is not a readable ImageFolder: {exc}; an ImageFolder has one "
                         "subfolder per class holding image files (.png, .jpg, ...)") from exc
    n = len(folder) if opts.limit is None else min(opts.limit, len(folder))
    names = [folder.samples[i][0] for i in range(n)]
    images = _stack((folder.loader(p) for p in names), names, opts)
    labels = np.asarray(folder.targets[:n], dtype=np.int64)
    return images, labels, {"kind": "image-folder", "path": str(path), "split": None,
                            "classes": list(folder.classes), "label_key": None}


def _open_image(path: str):
    """ImageFolder's loader, keeping grey images grey (torchvision's default makes RGB)."""
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    return img


# -- in-memory objects ----------------------------------------------------------------------
def _from_object(obj: Any, opts: _Options) -> tuple[np.ndarray, np.ndarray | None, dict]:
    kind = type(obj).__name__
    if _is_hf(obj):
        images, labels, desc = _from_hf(obj, opts)
        return images, labels, {**desc, "kind": "hf-dataset", "path": None}
    if isinstance(obj, np.ndarray) or (hasattr(obj, "detach") and hasattr(obj, "numpy")):
        _no_option(opts, f"a {kind}", "split", "image_key", "label_key")
        return _batch(obj, "images", opts), None, {"kind": "array", "path": None, "split": None,
                                                   "type": kind}
    if isinstance(obj, tuple):
        _no_option(opts, "a tuple (x, y)", "split", "image_key", "label_key")
        if len(obj) != 2:
            raise ValueError(f"a tuple source must be (x, y), images and labels; got a tuple "
                             f"of {len(obj)}")
        x, y = obj
        images = _batch(x, "x", opts)
        if opts.limit is not None:
            y = y[:opts.limit]
        return images, y, {"kind": "arrays", "path": None, "split": None, "type": "tuple",
                           "label_key": "y"}
    if _is_torch_dataset(obj):
        return _from_torch(obj, opts)
    raise ValueError(f"cannot read images from a {kind}; {_SOURCES}")


def _is_hf(obj: Any) -> bool:
    try:
        from datasets import Dataset, DatasetDict
    except ImportError:  # pragma: no cover - datasets comes with flwr-datasets
        return False
    return isinstance(obj, Dataset | DatasetDict)


def _is_torch_dataset(obj: Any) -> bool:
    from torch.utils.data import Dataset

    return isinstance(obj, Dataset)


def _from_torch(ds: Any, opts: _Options) -> tuple[np.ndarray, np.ndarray | None, dict]:
    kind = type(ds).__name__
    _no_option(opts, f"a torch {kind}", "split", "image_key", "label_key")
    try:
        total = len(ds)
    except TypeError:
        raise ValueError(f"the torch {kind} has no len(); pass a map-style dataset (items by "
                         "index), e.g. collect an IterableDataset into a TensorDataset") from None
    n = total if opts.limit is None else min(opts.limit, total)
    labels: list[int] = []
    first: list[str] = []  # the form of item 0, which every item must share

    def images() -> Iterator[Any]:
        for i in range(n):
            item = ds[i]
            size = len(item) if isinstance(item, tuple | list) else 0
            if size > 2:
                raise ValueError(f"item {i} of the {kind} is a {type(item).__name__} of {size}; "
                                 "items must be (image, label) or an image")
            form = ("an image", "a 1-tuple (image,)", "a pair (image, label)")[size]
            if not first:
                first.append(form)
            elif form != first[0]:
                raise ValueError(f"item {i} of the {kind} is {form} but item 0 is {first[0]}; "
                                 "items must all be (image, label) or all images")
            if size == 2:
                labels.append(_label(item[1], f"the label of item {i} of the {kind}"))
            yield item[0] if size else item

    x = _stack(images(), _Names(f"item {{}} of the {kind}"), opts)
    classes = getattr(ds, "classes", None)
    if not (isinstance(classes, Sequence) and all(isinstance(c, str) for c in classes)):
        classes = None
    return x, np.asarray(labels, np.int64) if labels else None, {
        "kind": "torch-dataset", "path": None, "split": None, "type": kind,
        "classes": None if classes is None else list(classes), "label_key": None}


def _label(value: Any, name: str) -> int:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} is {value!r} ({type(value).__name__}); labels must be "
                         "integer class indices")
    return int(value)


# -- Hugging Face ---------------------------------------------------------------------------
def _from_hf(ds: Any, opts: _Options) -> tuple[np.ndarray, np.ndarray | None, dict]:
    from datasets import ClassLabel, DatasetDict, Image

    split = opts.split
    if isinstance(ds, DatasetDict):
        splits = list(ds)
        if split is None:
            if "train" not in splits:
                raise ValueError(f"the dataset has splits {splits} and none is 'train'; name "
                                 "one with split=")
            split = "train"
        if split not in ds:
            raise ValueError(f"the dataset has no split {split!r}; its splits are {splits}")
        ds = ds[split]
    else:
        own = None if ds.split is None else str(ds.split)
        if split is not None and split != own:
            raise ValueError(f"split={split!r} was asked but the source is a single Dataset "
                             f"(split {own!r}), not a DatasetDict; leave split out")
        split = own
    features = ds.features
    image_key = opts.image_key or _image_column(features, Image)
    if image_key not in features:
        raise ValueError(f"the dataset has no column {image_key!r}; its columns are "
                         f"{list(features)}; pass image_key=")
    label_key = opts.label_key or _label_column(features, ClassLabel, image_key)
    if label_key is not None and label_key not in features:
        raise ValueError(f"the dataset has no column {label_key!r}; its columns are "
                         f"{list(features)}; pass label_key= or leave it out")
    if opts.limit is not None:
        ds = ds.select(range(min(opts.limit, len(ds))))
    feature = features[image_key]
    if isinstance(feature, Image) and not feature.decode:
        ds = ds.cast_column(image_key, Image())  # stored undecoded: decode to PIL here
        feature = ds.features[image_key]
    # Read as stored: a format or transform set on the dataset (e.g. random augmentation)
    # would make the images, and the ids derived from them, change from one read to the next.
    fmt = None if isinstance(feature, Image) else "numpy"
    column = ds.select_columns([image_key]).with_format(fmt)
    items = (item for batch in column.iter(batch_size=_BATCH) for item in batch[image_key])
    images = _stack(items, _Names(f"row {{}} of column {image_key!r}"), opts)
    labels, classes = None, None
    if label_key is not None:
        labels = np.asarray(ds.with_format("numpy", columns=[label_key])[:][label_key])
        if len(labels) and np.issubdtype(labels.dtype, np.integer) and (labels == -1).all():
            labels, label_key = None, None  # Hugging Face's "no label" for unlabelled splits
        elif labels.dtype.kind in "USO":
            raise ValueError(f"label column {label_key!r} holds {labels.dtype} values, not "
                             f"class indices; encode it (dataset.class_encode_column("
                             f"{label_key!r})) or pass another label_key=")
        elif isinstance(features[label_key], ClassLabel):
            classes = list(features[label_key].names)
    return images, labels, {"split": split, "image_key": image_key, "label_key": label_key,
                            "classes": classes, "columns": list(features)}


def _image_column(features: Any, image_type: type) -> str:
    for name, feature in features.items():
        if isinstance(feature, image_type):
            return name
    for name in IMAGE_KEYS:
        if name in features:
            return name
    raise ValueError(f"found no image column among {list(features)} (no datasets.Image "
                     f"feature, none named {', '.join(IMAGE_KEYS)}); pass image_key=")


def _label_column(features: Any, class_label: type, image_key: str) -> str | None:
    for name, feature in features.items():
        if isinstance(feature, class_label):
            return name
    return next((name for name in LABEL_KEYS if name in features and name != image_key), None)


# -- items ----------------------------------------------------------------------------------
class _Names:
    """Names of items by position, without building a list of them."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def __getitem__(self, i: int) -> str:
        return self.pattern.format(i)


def _stack(items: Iterable[Any], names: Sequence[str] | _Names, opts: _Options) -> np.ndarray:
    """Items (PIL images, arrays or tensors) as one uint8 (N, C, H, W) batch."""
    arrays = []
    for i, item in enumerate(items):
        arrays.append(resize_images(_item_array(item, names[i], opts.layout)[None], opts.resize)[0])
    if not arrays:
        raise ValueError("the source holds no images; pass at least one")
    channels = {a.shape[0] for a in arrays}
    if channels == {1, 3}:  # grey among colour images: repeat grey into RGB, as PIL does
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    shapes: dict[tuple[int, ...], int] = {}
    for a in arrays:
        shapes[a.shape] = shapes.get(a.shape, 0) + 1
    if len(shapes) > 1:
        first = next(i for i, a in enumerate(arrays) if a.shape != arrays[0].shape)
        found = ", ".join(f"{format_shape(s)} ({k} images)" for s, k in shapes.items())
        raise ValueError(
            f"the images differ in shape (C x H x W): {found}; {names[first]} is the first "
            f"unlike {names[0]}. fedsieve needs one image shape: resize them with "
            "resize=(H, W) (--resize HxW on the command line)"
            + ("" if len(channels) == 1 else ", and give them one channel count"))
    return np.stack(arrays)


def _item_array(item: Any, name: str, layout: str | None) -> np.ndarray:
    """One image (PIL, array or tensor) as uint8 (C, H, W)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - a torchvision dependency
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        if item.mode == "1":
            item = item.convert("L")
        elif item.mode != "L" and item.mode != "RGB":
            item = item.convert("RGB")
        a = np.asarray(item)
        return np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    if hasattr(item, "detach") and hasattr(item, "numpy"):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray) or item.dtype == object or item.ndim not in (2, 3):
        what = (f"an array of shape {item.shape} and dtype {item.dtype}"
                if isinstance(item, np.ndarray) else f"a {type(item).__name__}")
        raise ValueError(f"{name} is {what}, not an image; items must be PIL images, or arrays "
                         "/ tensors shaped (H, W), (C, H, W) or (H, W, C)")
    return check_images(_coerce_dtype(item, name)[None], name, dtype=np.uint8, layout=layout)[0]
