"""Faults a hostile or broken client can inject: for the tests and the stress benchmark.

- :data:`BAD_UPLOADS`: malformed upload replies, each with the error it must produce. Each
  mutation takes a valid upload (as :func:`fedsieve.shared.protocol.encode_upload` builds it)
  and breaks one thing.
- :data:`CLIENT_FAULTS`: what a client can do wrong besides a malformed upload (crash or go
  silent during screening or training, lie about its training samples), with the exclusion
  the server must record.
- :func:`faulty_client_app`: a real ClientApp that uploads its samples and breaks in the way
  one fault names; :func:`expected_code` and :func:`expected_reason` say how the server must
  exclude it.
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
    """A malformed upload: ``mutate`` breaks a valid one; the decoder's error matches
    ``message`` (a regex), and the server excludes the sender as ``failed-screening``."""

    name: str
    mutate: Callable[[RecordDict], RecordDict]
    message: str


@dataclass(frozen=True)
class ClientFault:
    """How the server must exclude a faulty client: the exclusion ``code`` (a key of
    ``fedsieve.server.strategy.REASON_CODES``) and a regex its message matches."""

    code: str
    message: str


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
              "unknown fedsieve protocol version 99"),
    BadUpload("negative-count", _set(p.UPLOAD_META, "num-samples", lambda c: -1),
              "num-samples -1 is negative or absurd"),
    BadUpload("absurd-count", _set(p.UPLOAD_META, "num-samples", lambda c: 10**12),
              "num-samples 1000000000000 is negative or absurd"),
    BadUpload("wrong-message", _set(p.UPLOAD_META, "chunk-index", lambda c: 1),
              "reply is for chunk 1 but chunk 0 was asked"),
    BadUpload("wrong-dtype", _set(p.UPLOAD_RECORD, "x",
                                  lambda c: Array(_x(c).astype(np.int16))), "has dtype int16"),
    BadUpload("wrong-shape", _set(p.UPLOAD_RECORD, "x",
                                  lambda c: Array(np.ascontiguousarray(_x(c)[:, :, :27]))),
              r"uploaded images are 1x27x28 \(C x H x W\) but the server's detector takes "
              r"1x28x28"),
    BadUpload("out-of-range", _set(p.UPLOAD_RECORD, "x", lambda c: Array(
        np.full(_x(c).shape, 2.0, np.float32))), r"outside \[0, 1\]"),
    BadUpload("nan", _set(p.UPLOAD_RECORD, "x", lambda c: Array(
        np.full(_x(c).shape, np.nan, np.float32))), "contains NaN or inf"),
    BadUpload("inf", _set(p.UPLOAD_RECORD, "x", lambda c: Array(
        np.where(np.arange(_x(c).size).reshape(_x(c).shape) == 7, np.inf,
                 _x(c) / np.float32(255)).astype(np.float32))), "contains NaN or inf"),
    BadUpload("ids-length", _set(p.UPLOAD_RECORD, "ids", lambda c: Array(_ids(c)[:-1].copy())),
              r"\d+ samples but \d+ ids"),
    BadUpload("duplicate-ids", _set(p.UPLOAD_RECORD, "ids",
                                    lambda c: Array(np.zeros_like(_ids(c)))), "duplicate ids"),
    BadUpload("missing-meta", lambda c: RecordDict({p.UPLOAD_RECORD: c[p.UPLOAD_RECORD]}),
              f"lacks the '{p.UPLOAD_META}' record"),
    BadUpload("meta-wrong-type", lambda c: RecordDict({
        p.UPLOAD_RECORD: c[p.UPLOAD_RECORD], p.UPLOAD_META: MetricRecord({"protocol": 1})}),
        f"'{p.UPLOAD_META}' must be a ConfigRecord, got MetricRecord"),
]


#: Client faults other than malformed uploads -> the exclusion they must get.
CLIENT_FAULTS = {
    "upload-crash": ClientFault("failed-screening", "raised an error while uploading"),
    "upload-silent": ClientFault("failed-screening", "no reply to the screening request"),
    "train-crash": ClientFault("train-error", "the client raised an error while training"),
    "train-silent": ClientFault("dropped-out", "no reply to the train message"),
    "over-report": ClientFault("over-reported", "claims \\d+ training samples"),
}

_BAD_UPLOAD_FAULTS = {f"bad-upload:{b.name}": b for b in BAD_UPLOADS}

#: Every fault :func:`faulty_client_app` can inject.
FAULT_NAMES = (*CLIENT_FAULTS, *_BAD_UPLOAD_FAULTS)


def expected_code(fault: str) -> str:
    """The exclusion code the server must record for ``fault`` (one of :data:`FAULT_NAMES`)."""
    if fault in _BAD_UPLOAD_FAULTS:
        return "failed-screening"
    return CLIENT_FAULTS[fault].code


def expected_reason(fault: str) -> str:
    """Regex of the exclusion reason the server must record for ``fault``."""
    if fault in _BAD_UPLOAD_FAULTS:
        return _BAD_UPLOAD_FAULTS[fault].message
    return CLIENT_FAULTS[fault].message


def faulty_client_app(fault: str, samples: SampleFn, *,
                      weighted_by_key: str = "num-examples") -> ClientApp:
    """A ClientApp that uploads ``samples(context)`` but breaks the way ``fault`` says.

    Parameters
    ----------
    fault : str
        One of :data:`FAULT_NAMES`.
    samples : callable
        ``samples(context) -> (x, ids)``, the client's local data.
    weighted_by_key : str, default "num-examples"
        The metric key its train reply reports the (inflated) sample count under: the server
        strategy's ``weighted_by_key``.
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
        metrics = MetricRecord({weighted_by_key: claimed, "train-loss": 0.0})
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}),
                       reply_to=msg)

    return app
