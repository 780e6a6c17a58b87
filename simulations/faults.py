"""Malformed uploads a hostile or broken client can send, with the error each must produce.

Each mutation takes a valid upload (as :func:`fedsieve.shared.protocol.encode_upload` builds
it) and breaks one thing; used by the decoder tests and by the strategy tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, MetricRecord, RecordDict

from fedsieve.shared import protocol as p


@dataclass(frozen=True)
class BadUpload:
    name: str
    mutate: Callable[[RecordDict], RecordDict]
    message: str  # regex the error must match


def _set(record: str, key: str, value: Callable) -> Callable[[RecordDict], RecordDict]:
    def mutate(content: RecordDict) -> RecordDict:
        content[record][key] = value(content)
        return content

    return mutate


def _x(content: RecordDict) -> np.ndarray:
    return content[p.UPLOAD_RECORD]["x"].numpy()


def _ids(content: RecordDict) -> np.ndarray:
    return content[p.UPLOAD_RECORD]["ids"].numpy()


BAD_UPLOADS = [
    BadUpload("unknown-protocol", _set(p.UPLOAD_META, "protocol", lambda c: 99),
              "unknown fedsieve protocol version"),
    BadUpload("negative-count", _set(p.UPLOAD_META, "num-samples", lambda c: -1),
              "negative or absurd"),
    BadUpload("absurd-count", _set(p.UPLOAD_META, "num-samples", lambda c: 10**12),
              "negative or absurd"),
    BadUpload("wrong-message", _set(p.UPLOAD_META, "chunk-index", lambda c: 1),
              "wrong message"),
    BadUpload("wrong-dtype", _set(p.UPLOAD_RECORD, "x",
                                  lambda c: Array(_x(c).astype(np.int16))), "has dtype int16"),
    BadUpload("wrong-shape", _set(p.UPLOAD_RECORD, "x",
                                  lambda c: Array(np.ascontiguousarray(_x(c)[:, :, :27]))),
              "has shape"),
    BadUpload("out-of-range", _set(p.UPLOAD_RECORD, "x", lambda c: Array(
        np.full(_x(c).shape, 2.0, np.float32))), r"outside \[0, 1\]"),
    BadUpload("nan", _set(p.UPLOAD_RECORD, "x", lambda c: Array(
        np.full(_x(c).shape, np.nan, np.float32))), "NaN"),
    BadUpload("ids-length", _set(p.UPLOAD_RECORD, "ids", lambda c: Array(_ids(c)[:-1].copy())),
              r"\d+ samples but \d+ ids"),
    BadUpload("duplicate-ids", _set(p.UPLOAD_RECORD, "ids",
                                    lambda c: Array(np.zeros_like(_ids(c)))), "duplicate"),
    BadUpload("missing-meta", lambda c: RecordDict({p.UPLOAD_RECORD: c[p.UPLOAD_RECORD]}),
              "lacks the"),
    BadUpload("meta-wrong-type", lambda c: RecordDict({
        p.UPLOAD_RECORD: c[p.UPLOAD_RECORD], p.UPLOAD_META: MetricRecord({"protocol": 1})}),
        "must be a"),
]
