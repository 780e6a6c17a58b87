"""fedsieve's wire protocol: record names, versions, and validation of uploads.

Screening is a Flower ``query`` message with action :data:`UPLOAD_ACTION`. The server's
request carries a ``ConfigRecord`` named :data:`REQUEST_RECORD`; the client's reply carries
the samples in an ``ArrayRecord`` named :data:`UPLOAD_RECORD` (``x``: uint8 (N, C, H, W),
the canonical form of :func:`~fedsieve.shared.data.images.check_images`; a grey (N, H, W) or a
float32 upload in [0, 1] from an older client is read too; ``ids``: int64 (N,); optionally
``y``: the claimed labels, int64 (N,), which a server with a label check reads) and a
``ConfigRecord`` named :data:`UPLOAD_META` (protocol version, local sample count, chunk
position). The request names the image shape (C, H, W) the server's detector takes
(``image-shape``, that of its trusted images): a client whose images have another shape fails
with a message saying so, and an upload of another shape is refused. Verdicts travel back inside
each client's own ``train`` message as an ``ArrayRecord`` named :data:`VERDICT_RECORD` holding the
ids to drop. A client's screening replies may carry a :data:`NODE_RECORD` naming the partition
it holds (:func:`tag_partition`), a label the server's logs and metrics use.

Everything a client sends is untrusted: :func:`decode_upload` either returns a valid
:class:`Upload` or raises :class:`ProtocolError` naming what was wrong; it never raises
anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsieve.shared.data.images import check_images, format_shape

PROTOCOL_VERSION = 1
UPLOAD_ACTION = "fedsieve_upload"
UPLOAD_MESSAGE_TYPE = f"query.{UPLOAD_ACTION}"
REQUEST_RECORD = "fedsieve.request"
UPLOAD_RECORD = "fedsieve.upload"
UPLOAD_META = "fedsieve.upload_meta"
VERDICT_RECORD = "fedsieve.verdicts"
#: A ConfigRecord beside a client's screening replies naming the partition it holds (Flower's
#: ``node_config["partition-id"]``, which simulations set): the server's logs and metrics
#: name clients by it, since Flower's node ids are random 64-bit numbers.
NODE_RECORD = "fedsieve.node"
PARTITION_KEY = "partition-id"
#: Local datasets larger than this are refused as absurd.
MAX_LOCAL_SAMPLES = 10_000_000
#: Largest class label an upload may claim (labels are class indices).
MAX_LABEL = 1_000_000


class ProtocolError(ValueError):
    """A client's message broke the fedsieve protocol; the message says how."""


@dataclass(frozen=True)
class UploadRequest:
    """What the server asks for: which chunk, how large, which fraction of the samples, and
    the image shape (C, H, W) it takes (None: any)."""

    chunk_index: int = 0
    chunk_size: int = 10_000
    fraction: float = 1.0
    sample_seed: int = 0
    protocol: int = PROTOCOL_VERSION
    image_shape: tuple[int, int, int] | None = None

    def to_record(self) -> ConfigRecord:
        record = ConfigRecord({"protocol": self.protocol, "chunk-index": self.chunk_index,
                               "chunk-size": self.chunk_size, "fraction": float(self.fraction),
                               "sample-seed": self.sample_seed})
        if self.image_shape is not None:
            record["image-shape"] = [int(s) for s in self.image_shape]
        return record

    @classmethod
    def from_content(cls, content: RecordDict) -> UploadRequest:
        """Read the request on the client side."""
        record = require_record(content, REQUEST_RECORD, ConfigRecord)
        version = _int(record, "protocol")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"server speaks fedsieve protocol {version}, this client "
                                f"speaks {PROTOCOL_VERSION}; upgrade fedsieve on one side")
        shape = record.get("image-shape")
        if shape is not None:
            shape = tuple(int(s) for s in shape)
            if len(shape) != 3:
                raise ProtocolError(f"image-shape must be (C, H, W), got {shape}")
        return cls(chunk_index=_int(record, "chunk-index"), chunk_size=_int(record, "chunk-size"),
                   fraction=float(record["fraction"]), sample_seed=_int(record, "sample-seed"),
                   image_shape=shape)


@dataclass(frozen=True)
class Upload:
    """One validated chunk of a client's upload.

    Attributes
    ----------
    x : numpy.ndarray
        uint8 images (n, C, H, W); float and grey (n, H, W) uploads are converted.
    ids : numpy.ndarray
        int64 local sample ids, unique.
    num_samples : int
        The client's whole local dataset size.
    num_selected : int
        How many samples the client selected for upload in total (all chunks).
    chunk_index, num_chunks : int
        Where this chunk sits.
    y : numpy.ndarray or None
        int64 claimed labels, one per sample, when the client sent them.
    """

    x: np.ndarray
    ids: np.ndarray
    num_samples: int
    num_selected: int
    chunk_index: int
    num_chunks: int
    y: np.ndarray | None = None


def select_for_upload(ids: np.ndarray, request: UploadRequest) -> np.ndarray:
    """Positions a client uploads: all of them, or a seeded random ``fraction`` (at least one)."""
    n = len(ids)
    if request.fraction >= 1.0 or n == 0:
        return np.arange(n)
    k = max(1, int(round(request.fraction * n)))
    rng = np.random.default_rng(request.sample_seed)
    return np.sort(rng.choice(n, size=k, replace=False))


def encode_upload(x: np.ndarray, ids: np.ndarray, request: UploadRequest,
                  y: np.ndarray | None = None, *, layout: str | None = None) -> RecordDict:
    """Build a client's reply content for ``request`` from its local samples and ids, and
    their claimed labels ``y`` when given (a server with a label check uses them).

    ``x`` is any batch :func:`~fedsieve.shared.data.images.check_images` reads (``layout`` as
    there); the chunk travels as uint8 (n, C, H, W).

    Raises
    ------
    ValueError
        Unreadable images, a count mismatch between images, ids and labels, or images of
        another shape than the server's ``request.image_shape``.
    """
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    ids = np.asarray(ids)
    if len(x) != len(ids):
        raise ValueError(f"{len(x)} samples but {len(ids)} ids; give one id per sample")
    if y is not None:
        y = np.asarray(y)
        if y.shape != ids.shape or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be one integer per sample: shape {ids.shape}, got "
                             f"{y.dtype} {y.shape}")
    selected = select_for_upload(ids, request)
    num_chunks = max(1, math.ceil(len(selected) / request.chunk_size))
    part = selected[request.chunk_index * request.chunk_size:
                    (request.chunk_index + 1) * request.chunk_size]
    images = check_images(x[part], "local samples", dtype=np.uint8, allow_empty=True,
                          layout=layout)
    if request.image_shape is not None and images.shape[1:] != tuple(request.image_shape):
        raise ValueError(
            f"the local samples are {format_shape(images.shape[1:])} images (C x H x W) but "
            f"the server's detector takes {format_shape(request.image_shape)}; resize or "
            "convert them before uploading (or pass layout= when the channels were misread)")
    arrays = ArrayRecord({"x": Array(images),
                          "ids": Array(np.ascontiguousarray(ids[part], dtype=np.int64))})
    if y is not None:
        arrays["y"] = Array(np.ascontiguousarray(y[part], dtype=np.int64))
    meta = ConfigRecord({"protocol": PROTOCOL_VERSION, "num-samples": len(ids),
                         "num-selected": len(selected), "chunk-index": request.chunk_index,
                         "num-chunks": num_chunks})
    return RecordDict({UPLOAD_RECORD: arrays, UPLOAD_META: meta})


def decode_upload(content: RecordDict, request: UploadRequest, *,
                  max_upload: int = 1_000_000) -> Upload:
    """Validate a client's reply to ``request``.

    Parameters
    ----------
    content : RecordDict
        The reply's content.
    request : UploadRequest
        What the server asked; the reply must answer this chunk.
    max_upload : int
        Largest number of samples accepted from one client in total.

    Returns
    -------
    Upload
        With images of ``request.image_shape`` when the request names one.

    Raises
    ------
    ProtocolError
        For anything but a valid upload.
    """
    try:
        return _decode_upload(content, request, max_upload)
    except ProtocolError:
        raise
    except Exception as err:  # noqa: BLE001 - anything else a hostile record triggers
        raise ProtocolError(f"malformed upload: {type(err).__name__}: {err}") from err


def _decode_upload(content: RecordDict, request: UploadRequest, max_upload: int) -> Upload:
    if not isinstance(content, RecordDict):
        raise ProtocolError(f"reply content is {type(content).__name__}, not a RecordDict")
    meta = require_record(content, UPLOAD_META, ConfigRecord)
    version = _int(meta, "protocol")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unknown fedsieve protocol version {version} (server speaks "
                            f"{PROTOCOL_VERSION}); upgrade fedsieve on the client")
    num_samples = _int(meta, "num-samples")
    num_selected = _int(meta, "num-selected")
    chunk_index = _int(meta, "chunk-index")
    num_chunks = _int(meta, "num-chunks")
    if not 0 <= num_samples <= MAX_LOCAL_SAMPLES:
        raise ProtocolError(f"num-samples {num_samples} is negative or absurd "
                            f"(limit {MAX_LOCAL_SAMPLES})")
    if not 0 <= num_selected <= num_samples:
        raise ProtocolError(f"num-selected {num_selected} is outside 0..num-samples "
                            f"({num_samples})")
    if num_selected > max_upload:
        raise ProtocolError(f"upload of {num_selected} samples exceeds the server's cap of "
                            f"{max_upload}; raise max_upload or lower upload_fraction")
    if chunk_index != request.chunk_index:
        raise ProtocolError(f"reply is for chunk {chunk_index} but chunk "
                            f"{request.chunk_index} was asked: a reply to the wrong message")
    expected_chunks = max(1, math.ceil(num_selected / request.chunk_size))
    if num_chunks != expected_chunks:
        raise ProtocolError(f"num-chunks {num_chunks} does not match {num_selected} samples in "
                            f"chunks of {request.chunk_size} ({expected_chunks})")
    arrays = require_record(content, UPLOAD_RECORD, ArrayRecord)
    missing = {"x", "ids"} - set(arrays.keys())
    if missing:
        raise ProtocolError(f"upload lacks array(s) {sorted(missing)}")
    try:
        x = check_images(arrays["x"].numpy(), "uploaded x", dtype=np.uint8, allow_empty=True,
                         layout="NCHW")
    except ValueError as err:
        raise ProtocolError(str(err)) from err
    if request.image_shape is not None and x.shape[1:] != tuple(request.image_shape):
        raise ProtocolError(
            f"uploaded images are {format_shape(x.shape[1:])} (C x H x W) but the server's "
            f"detector takes {format_shape(request.image_shape)} (its trusted images' shape)")
    ids = arrays["ids"].numpy()
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise ProtocolError(f"ids must be a 1-D int64 array, got {ids.dtype} {ids.shape}")
    if len(ids) != len(x):
        raise ProtocolError(f"{len(x)} samples but {len(ids)} ids in the upload")
    expected = min(request.chunk_size, num_selected - chunk_index * request.chunk_size)
    if len(ids) != expected:
        raise ProtocolError(f"chunk {chunk_index} holds {len(ids)} samples, expected {expected}")
    if len(np.unique(ids)) != len(ids):
        raise ProtocolError("upload holds duplicate ids; every sample needs its own id")
    y = None
    if "y" in arrays:
        y = arrays["y"].numpy()
        if y.dtype != np.int64 or y.shape != ids.shape:
            raise ProtocolError(f"labels y must be a 1-D int64 array with one label per id, "
                                f"got {y.dtype} {y.shape}")
        if len(y) and not 0 <= y.min() <= y.max() <= MAX_LABEL:
            raise ProtocolError(f"labels y must lie in 0..{MAX_LABEL}, got {y.min()}..{y.max()}")
    return Upload(x, ids, num_samples, num_selected, chunk_index, num_chunks, y)


def tag_partition(content: RecordDict, node_config: Mapping[str, object]) -> RecordDict:
    """``content`` with the :data:`NODE_RECORD` naming the node's partition, when its
    ``node_config`` (Flower's ``Context.node_config``) holds a whole ``partition-id``."""
    partition = node_config.get(PARTITION_KEY)
    if isinstance(partition, int | np.integer) and not isinstance(partition, bool) \
            and 0 <= int(partition) < 2**63:
        content[NODE_RECORD] = ConfigRecord({PARTITION_KEY: int(partition)})
    return content


def read_partition(content: RecordDict) -> int | None:
    """The partition id a client's reply names (:func:`tag_partition`); None when it names
    none or an invalid one (a label only: it never fails a reply)."""
    try:
        value = content[NODE_RECORD][PARTITION_KEY]
    except Exception:  # noqa: BLE001 - absent, or not a record: no label
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def encode_verdicts(drop_ids: np.ndarray) -> ArrayRecord:
    """The record a client's train message carries: ids it must drop."""
    return ArrayRecord({"drop-ids": Array(np.ascontiguousarray(drop_ids, dtype=np.int64))})


def decode_verdicts(content: RecordDict) -> np.ndarray:
    """Ids to drop from a train message's content (empty when the server sent none)."""
    if VERDICT_RECORD not in content.array_records:
        return np.empty(0, np.int64)
    ids = content.array_records[VERDICT_RECORD]["drop-ids"].numpy()
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise ProtocolError(f"drop-ids must be 1-D int64, got {ids.dtype} {ids.shape}")
    return ids


def require_record(content: RecordDict, name: str, kind: type):
    """The record ``name`` of a message's ``content``, which must be a ``kind``
    (``ArrayRecord``, ``ConfigRecord``, ...); :class:`ProtocolError` otherwise."""
    if not isinstance(content, RecordDict) or name not in content:
        raise ProtocolError(f"reply lacks the {name!r} record; is the fedsieve SDK "
                            "(fedsieve.client.FedSieve) registered on the ClientApp?")
    record = content[name]
    if not isinstance(record, kind):
        raise ProtocolError(f"{name!r} must be a {kind.__name__}, got {type(record).__name__}")
    return record


def _int(record: ConfigRecord, key: str) -> int:
    if key not in record:
        raise ProtocolError(f"missing key {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{key!r} must be an integer, got {value!r}")
    return value
