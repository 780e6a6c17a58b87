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
from fedsieve.shared.protocol import upload as p


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


#: The two mistakes a newcomer made adding fedsieve to a working Flower app (issue 32), each
#: of which excluded every client: :func:`newcomer_client_app` makes them.
NEWCOMER_MISTAKES = {
    # Images handed to the SDK as float64 in 0-255 (neither uint8 nor float32 in [0, 1]).
    "float64-0-255": ClientFault(
        "failed-screening", r"ValueError: local samples has dtype float64 with values in "
                            r"\[\d+, 255\]"),
    # num-examples reported as the local dataset's size, not the samples trained on (the
    # Flower app's own reply, kept when the SDK was added).
    "count-before-screening": ClientFault(
        "over-reported", r"claims \d+ training samples under 'num-examples' but kept \d+"),
}


def newcomer_client_app(mistake: str, data_dir: str) -> ClientApp:
    """A user's ClientApp with the fedsieve SDK that trains the example DigitNet for real on
    the samples the server kept, but makes ``mistake`` (a key of :data:`NEWCOMER_MISTAKES`).

    Each node reads ``<data_dir>/client_<partition-id>.npz`` (``x`` uint8, ``y``, ``ids``),
    its ``partition-id`` being Flower's ``node_config`` entry (set in simulation).
    """
    if mistake not in NEWCOMER_MISTAKES:
        raise ValueError(f"unknown mistake {mistake!r}; pick one of "
                         f"{', '.join(NEWCOMER_MISTAKES)}")
    from fedsieve.client.sdk import FedSieve
    from fedsieve.shared.task.classifier import DigitNet, train_local

    def load(context: Context) -> dict[str, np.ndarray]:
        partition = int(context.node_config["partition-id"])
        with np.load(f"{data_dir}/client_{partition}.npz") as data:
            return {key: data[key] for key in ("x", "y", "ids")}

    def samples(context: Context):
        data = load(context)
        x = data["x"].astype(np.float64) if mistake == "float64-0-255" else data["x"]
        return x, data["ids"]

    app = ClientApp()
    sieve = FedSieve(app, samples)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from flwr.app import ArrayRecord

        data = load(context)
        x, y = sieve.kept(msg, data["ids"], data["x"], data["y"])
        model = DigitNet()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss = train_local(model, x, y, epochs=1, seed=0)
        if mistake == "count-before-screening":
            # The app's reply from before fedsieve, counting the whole local dataset.
            metrics = MetricRecord({"num-examples": len(data["x"]), "train-loss": loss})
            return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                       "metrics": metrics}), reply_to=msg)
        return sieve.reply(msg, ArrayRecord(model.state_dict()), num_examples=len(x),
                           metrics={"train-loss": loss})

    return app
