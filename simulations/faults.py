"""Faults a hostile or broken client can inject: for the tests and the stress benchmark.

- :data:`BAD_UPLOADS`: malformed upload replies, each with the error it must produce. Each
  mutation takes a valid upload (as :func:`fedsieve.shared.protocol.encode_upload` builds it)
  and breaks one thing.
- :data:`CLIENT_FAULTS`: what a client can do wrong besides a malformed upload (crash or go
  silent during screening or training, lie about its training samples), with the exclusion
  reason the server must record.
- :func:`faulty_client_app`: a real ClientApp that uploads its samples and breaks in the way
  one fault names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsieve.client.sdk import SampleFn
from fedsieve.shared import protocol as p


class NoReply(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a ClientApp handler to send no reply at all (a dropped-out client);
    :class:`~fedsieve.simulations.loopback.LoopbackGrid` then delivers nothing."""


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
    BadUpload("inf", _set(p.UPLOAD_RECORD, "x", lambda c: Array(
        np.where(np.arange(_x(c).size).reshape(_x(c).shape) == 7, np.inf,
                 _x(c) / np.float32(255)).astype(np.float32))), "inf"),
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


#: Client faults other than malformed uploads -> regex of the exclusion reason they must get.
CLIENT_FAULTS = {
    "upload-crash": "raised an error while uploading",
    "upload-silent": "no reply to the screening request",
    "train-crash": "train-error: the client raised an error",
    "train-silent": "dropped-out: no reply to the train message",
    "over-report": "over-reported: claims",
}

_BAD_UPLOAD_FAULTS = {f"bad-upload:{b.name}": b for b in BAD_UPLOADS}

#: Every fault :func:`faulty_client_app` can inject.
FAULT_NAMES = (*CLIENT_FAULTS, *_BAD_UPLOAD_FAULTS)


def expected_reason(fault: str) -> str:
    """Regex of the exclusion reason the server must record for ``fault``."""
    if fault in _BAD_UPLOAD_FAULTS:
        return _BAD_UPLOAD_FAULTS[fault].message
    return CLIENT_FAULTS[fault]


def faulty_client_app(fault: str, samples: SampleFn) -> ClientApp:
    """A ClientApp that uploads ``samples(context)`` but breaks the way ``fault`` says.

    Parameters
    ----------
    fault : str
        One of :data:`FAULT_NAMES`.
    samples : callable
        ``samples(context) -> (x, ids)``, the client's local data.
    """
    if fault not in FAULT_NAMES:
        raise ValueError(f"unknown fault {fault!r}; pick one of {', '.join(FAULT_NAMES)}")
    mutate = _BAD_UPLOAD_FAULTS[fault].mutate if fault in _BAD_UPLOAD_FAULTS else None
    app = ClientApp()

    @app.query(p.UPLOAD_ACTION)
    def upload(msg: Message, context: Context) -> Message:
        if fault == "upload-crash":
            raise RuntimeError("injected fault: the client crashed while uploading")
        if fault == "upload-silent":
            raise NoReply
        x, ids = samples(context)
        content = p.encode_upload(x, ids, p.UploadRequest.from_content(msg.content))
        return Message(mutate(content) if mutate else content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if fault == "train-crash":
            raise RuntimeError("injected fault: the client crashed while training")
        if fault == "train-silent":
            raise NoReply
        # over-report (or a fault that should never reach training): claim more than it has.
        claimed = len(samples(context)[1]) + 1_000
        metrics = MetricRecord({"num-examples": claimed, "train-loss": 0.0})
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}),
                       reply_to=msg)

    return app
