"""A validated reader for the IDX files MNIST and Fashion-MNIST are published in.

IDX layout: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, one big-endian uint32 per dimension, then the raw data.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

UBYTE = 0x08


class IdxFormatError(ValueError):
    """An IDX file is corrupt, truncated or not the kind of file expected."""


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzip-compressed).

    Parameters
    ----------
    path : str or Path
        The file; a ``.gz`` suffix means gzip.
    ndim : int
        Number of dimensions expected (3 for images, 1 for labels).

    Returns
    -------
    numpy.ndarray
        uint8 array of the shape the header declares.

    Raises
    ------
    IdxFormatError
        Wrong magic number, wrong number of dimensions, truncated or oversized data,
        or a broken gzip stream.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise IdxFormatError(f"{path}: cannot decompress ({err}); the file is corrupt or "
                             "truncated, delete it and fetch it again") from err
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    zero, dtype_code, dims = struct.unpack(">HBB", raw[:4])
    expected_magic = (UBYTE << 8) | ndim
    if zero != 0 or dtype_code != UBYTE or dims != ndim:
        magic = int.from_bytes(raw[:4], "big")
        raise IdxFormatError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned-byte IDX with {ndim} dimension(s)); is this the right file?"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IdxFormatError(f"{path}: truncated header ({len(raw)} of {header_len} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(raw) - header_len
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise IdxFormatError(
            f"{path}: file is {what}: header declares shape {tuple(shape)} = {expected} bytes "
            f"of data, found {got}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path
