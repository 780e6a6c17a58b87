"""The wire protocol of local screening: the detector goes to the clients, evidence comes back.

In local mode (``AnomalyFilter(strategy, LocalScreening(...))``) no image leaves a client
unless the operator asks for spot checks. Three ``query`` actions, each answered by the client SDK
(:class:`fedsieve.client.FedSieve`):

:data:`SCORE_ACTION`
    The server ships its fitted detector (:func:`encode_detector`: safetensors bytes in an
    ``ArrayRecord`` named :data:`DETECTOR_RECORD`, its JSON header in the request's
    ``ConfigRecord``). The client scores its own samples and replies with
    :data:`SCORES_RECORD`: ``ids`` (int64 (n,)) and ``evidence`` (float16 (n, K), the
    detector's :meth:`~fedsieve.shared.detectors.BaseDetector.score_evidence`);
    :data:`LOCAL_META` carries the protocol version and the local sample count.
:data:`SELF_TRAIN_ACTION`
    Federated self-training: with the detector comes the number of local ``steps``, a
    ``seed`` and whether it is the ``first-round``; the client trains the BiGAN on the
    samples the detector keeps and replies with :data:`UPDATE_RECORD`: the networks'
    weights (``model.*``) and ``residual-sum`` (C, H, W), and ``num-normal`` in
    :data:`LOCAL_META`.
:data:`SPOT_CHECK_ACTION`
    Verification of a client's own evidence: the request names some of the ids the client
    reported (:data:`SPOT_IDS_RECORD`), drawn after its report arrived; the client uploads
    those samples' images (``x``, uint8 (k, C, H, W), and ``ids``) in :data:`SPOT_RECORD`.

The ids to drop reach each client in its train message as in upload mode
(:data:`~fedsieve.shared.protocol.VERDICT_RECORD`).

Everything a client sends is untrusted: the ``decode_*`` functions either return valid
values or raise :class:`~fedsieve.shared.protocol.ProtocolError` naming what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsieve.shared.data.images import check_images, format_shape
from fedsieve.shared.protocol.upload import (
    MAX_LOCAL_SAMPLES,
    PROTOCOL_VERSION,
    ProtocolError,
    require_record,
)

SCORE_ACTION = "fedsieve_score"
SELF_TRAIN_ACTION = "fedsieve_self_train"
SPOT_CHECK_ACTION = "fedsieve_spot_check"
DETECTOR_RECORD = "fedsieve.detector"
LOCAL_REQUEST = "fedsieve.local_request"
LOCAL_META = "fedsieve.local_meta"
SCORES_RECORD = "fedsieve.scores"
UPDATE_RECORD = "fedsieve.update"
SPOT_IDS_RECORD = "fedsieve.spot_ids"
SPOT_RECORD = "fedsieve.spot"
#: Evidence travels as float16: 2 bytes a piece, about 3 significant digits of a log-score,
#: finer than the 1,024-bin histogram the cut is read from.
EVIDENCE_DTYPE = np.float16


def message_type(action: str) -> str:
    """The Flower message type of a fedsieve query action."""
    return f"query.{action}"


# -- server -> client ------------------------------------------------------------------------
def encode_detector(weights: bytes, header: str, **config: int | float | str) -> RecordDict:
    """A request carrying the detector (:func:`~fedsieve.shared.detectors.persist.
    detector_to_bytes` output) and the action's settings."""
    request = ConfigRecord({"protocol": PROTOCOL_VERSION, "detector-header": header,
                            **config})
    return RecordDict({DETECTOR_RECORD: ArrayRecord(
        {"weights": Array(np.frombuffer(weights, dtype=np.uint8))}), LOCAL_REQUEST: request})


@dataclass(frozen=True)
class LocalRequest:
    """What a client reads from a local-mode request."""

    weights: bytes
    header: str
    config: ConfigRecord

    def detector(self, device: str | None = None):
        """The shipped detector, ready to score on ``device`` (this node's: see
        :func:`~fedsieve.shared.devices.context_device`; None keeps the server's setting).

        Raises
        ------
        ProtocolError
            The detector cannot be read (the message names why).
        ValueError
            ``device`` is not available on this node.
        """
        from fedsieve.shared.detectors.checkpoint import CheckpointError
        from fedsieve.shared.detectors.persist import detector_from_bytes

        try:
            return detector_from_bytes(self.weights, self.header, device=device)
        except CheckpointError as exc:
            raise ProtocolError(str(exc)) from exc

    @classmethod
    def from_content(cls, content: RecordDict) -> LocalRequest:
        """Read a local-mode request on the client."""
        config = require_record(content, LOCAL_REQUEST, ConfigRecord)
        version = config.get("protocol")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"server speaks fedsieve protocol {version}, this client "
                                f"speaks {PROTOCOL_VERSION}; upgrade fedsieve on one side")
        weights = require_record(content, DETECTOR_RECORD, ArrayRecord)["weights"].numpy()
        return cls(weights.tobytes(), str(config["detector-header"]), config)


def spot_check_request(ids: np.ndarray) -> RecordDict:
    """Ask a client for the images of ``ids``."""
    return RecordDict({SPOT_IDS_RECORD: ArrayRecord(
        {"ids": Array(np.ascontiguousarray(ids, dtype=np.int64))}),
        LOCAL_REQUEST: ConfigRecord({"protocol": PROTOCOL_VERSION})})


def requested_ids(content: RecordDict) -> np.ndarray:
    """The ids a spot-check request names (client side)."""
    ids = require_record(content, SPOT_IDS_RECORD, ArrayRecord)["ids"].numpy()
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise ProtocolError(f"spot-check ids must be 1-D int64, got {ids.dtype} {ids.shape}")
    return ids


# -- client -> server ------------------------------------------------------------------------
def encode_scores(ids: np.ndarray, evidence: np.ndarray, num_samples: int) -> RecordDict:
    """A client's score report: its ids and each sample's evidence (float16)."""
    arrays = ArrayRecord({
        "ids": Array(np.ascontiguousarray(ids, dtype=np.int64)),
        "evidence": Array(np.ascontiguousarray(evidence, dtype=EVIDENCE_DTYPE))})
    return RecordDict({SCORES_RECORD: arrays, LOCAL_META: _meta(num_samples)})


@dataclass(frozen=True)
class ScoreReport:
    """A validated score report: ids (int64, unique) and evidence (float64 (n, K))."""

    ids: np.ndarray
    evidence: np.ndarray
    num_samples: int


def decode_scores(content: RecordDict, width: int, *,
                  max_samples: int = MAX_LOCAL_SAMPLES) -> ScoreReport:
    """Validate a score report with ``width`` pieces of evidence per sample.

    Raises
    ------
    ProtocolError
        Anything but ids and finite evidence of the expected width, one row per id.
    """
    return _guard(lambda: _decode_scores(content, width, max_samples))


def _decode_scores(content: RecordDict, width: int, max_samples: int) -> ScoreReport:
    num_samples = _num(content, "num-samples", max_samples)
    arrays = require_record(content, SCORES_RECORD, ArrayRecord)
    ids = _ids(arrays, num_samples)
    evidence = arrays["evidence"].numpy() if "evidence" in arrays else None
    if evidence is None or evidence.dtype != EVIDENCE_DTYPE or evidence.shape != (len(ids),
                                                                                   width):
        got = "none" if evidence is None else f"{evidence.dtype} {evidence.shape}"
        raise ProtocolError(f"evidence must be float16 of shape ({len(ids)}, {width}), got "
                            f"{got}")
    evidence = evidence.astype(np.float64)
    if not np.isfinite(evidence).all():
        raise ProtocolError("evidence holds NaN or infinite values")
    if len(ids) != num_samples:
        raise ProtocolError(f"{len(ids)} scored samples but num-samples is {num_samples}")
    return ScoreReport(ids, evidence, num_samples)


def encode_update(state: dict[str, torch.Tensor], residual_sum: torch.Tensor | None,
                  num_normal: int) -> RecordDict:
    """A client's federated self-training update."""
    arrays = ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy())
                          for k, v in state.items()})
    if residual_sum is not None:
        arrays["residual-sum"] = Array(residual_sum.detach().cpu().contiguous().numpy())
    meta = _meta(0)
    meta["num-normal"] = int(num_normal)
    return RecordDict({UPDATE_RECORD: arrays, LOCAL_META: meta})


def decode_update(content: RecordDict, reference: dict[str, torch.Tensor],
                  image_shape: tuple[int, int, int], max_samples: int = MAX_LOCAL_SAMPLES):
    """Validate a self-training update against the shipped weights ``reference``.

    Returns
    -------
    fedsieve.shared.detectors.federated.LocalUpdate

    Raises
    ------
    ProtocolError
        Missing or extra tensors, another shape or dtype than the shipped ones, non-finite
        weights, or a residual sum that is not (C, H, W), finite and non-negative.
    """
    from fedsieve.shared.detectors.federated import LocalUpdate

    def decode() -> LocalUpdate:
        num_normal = _num(content, "num-normal", max_samples)
        arrays = require_record(content, UPDATE_RECORD, ArrayRecord)
        names = set(arrays.keys()) - {"residual-sum"}
        if names != set(reference):
            raise ProtocolError(f"update tensors differ from the shipped networks: missing "
                                f"{sorted(set(reference) - names)[:3]}, extra "
                                f"{sorted(names - set(reference))[:3]}")
        state = {}
        for name, ref in reference.items():
            value = arrays[name].numpy()
            if value.shape != tuple(ref.shape) or str(value.dtype) != str(ref.dtype).removeprefix(
                    "torch."):
                raise ProtocolError(f"update tensor {name!r} is {value.dtype} "
                                    f"{value.shape}, the shipped one {ref.dtype} "
                                    f"{tuple(ref.shape)}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ProtocolError(f"update tensor {name!r} holds NaN or infinite values")
            state[name] = torch.from_numpy(np.array(value))
        residual = None
        if num_normal > 0:
            if "residual-sum" not in arrays:
                raise ProtocolError("an update that trained on samples needs residual-sum")
            residual = arrays["residual-sum"].numpy()
            if (residual.shape != tuple(image_shape) or residual.dtype.kind != "f"
                    or not np.isfinite(residual).all() or (residual < 0).any()):
                raise ProtocolError(f"residual-sum must be finite, non-negative, of shape "
                                    f"{tuple(image_shape)}; got {residual.dtype} "
                                    f"{residual.shape}")
            residual = torch.from_numpy(np.array(residual, dtype=np.float32))
        return LocalUpdate(state, num_normal, residual)

    return _guard(decode)


def encode_spot_check(x: np.ndarray, ids: np.ndarray) -> RecordDict:
    """A client's answer to a spot check: the asked samples' images (uint8 (k, C, H, W))."""
    return RecordDict({SPOT_RECORD: ArrayRecord({
        "x": Array(check_images(x, "spot-check samples", dtype=np.uint8, allow_empty=True,
                                layout="NCHW")),
        "ids": Array(np.ascontiguousarray(ids, dtype=np.int64))}),
        LOCAL_META: _meta(len(ids))})


def decode_spot_check(content: RecordDict, asked: np.ndarray,
                      image_shape: tuple[int, int, int]) -> np.ndarray:
    """The images of the ``asked`` ids, in that order (uint8 (k, C, H, W)).

    Raises
    ------
    ProtocolError
        Other ids than asked, or images of another shape.
    """

    def decode() -> np.ndarray:
        arrays = require_record(content, SPOT_RECORD, ArrayRecord)
        ids = _ids(arrays, len(asked))
        if len(ids) != len(asked) or not np.array_equal(np.sort(ids), np.sort(asked)):
            raise ProtocolError("the spot check's answer holds other samples than were asked")
        x = check_images(arrays["x"].numpy(), "spot-check x", dtype=np.uint8,
                         allow_empty=True, layout="NCHW")
        if x.shape[1:] != tuple(image_shape) or len(x) != len(ids):
            raise ProtocolError(f"spot-check images must be {len(ids)} of "
                                f"{format_shape(image_shape)}, got {x.shape}")
        return x[np.argsort(ids)][np.argsort(np.argsort(asked))]

    return _guard(decode)


# -- helpers ---------------------------------------------------------------------------------
def _meta(num_samples: int) -> ConfigRecord:
    return ConfigRecord({"protocol": PROTOCOL_VERSION, "num-samples": int(num_samples)})


def _num(content: RecordDict, key: str, limit: int) -> int:
    meta = require_record(content, LOCAL_META, ConfigRecord)
    if meta.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(f"unknown fedsieve protocol version {meta.get('protocol')!r} "
                            f"(server speaks {PROTOCOL_VERSION}); upgrade fedsieve on the client")
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ProtocolError(f"{key!r} must be an integer in 0..{limit}, got {value!r}")
    return value


def _ids(arrays: ArrayRecord, limit: int) -> np.ndarray:
    if "ids" not in arrays:
        raise ProtocolError("the reply lacks its ids")
    ids = arrays["ids"].numpy()
    if ids.dtype != np.int64 or ids.ndim != 1 or len(ids) > limit:
        raise ProtocolError(f"ids must be 1-D int64 (at most {limit}), got {ids.dtype} "
                            f"{ids.shape}")
    if len(np.unique(ids)) != len(ids):
        raise ProtocolError("the reply holds duplicate ids; every sample needs its own id")
    return ids


def _guard(decode):
    try:
        return decode()
    except ProtocolError:
        raise
    except Exception as err:  # noqa: BLE001 - anything else a hostile record triggers
        raise ProtocolError(f"malformed reply: {type(err).__name__}: {err}") from err
