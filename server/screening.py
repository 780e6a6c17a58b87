"""Screening: collect the clients' uploads over Flower and score them with the trusted detector.

Uploads are requested with ``query`` messages (:data:`UPLOAD_MESSAGE_TYPE`), one chunk per
message; a client whose reply is missing, carries a Flower error, or breaks the protocol is
marked as failed with the reason, and the others carry on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import NamedTuple

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsieve.shared.images import image_digests
from fedsieve.shared.protocol import (
    REQUEST_RECORD,
    UPLOAD_MESSAGE_TYPE,
    ProtocolError,
    Upload,
    UploadRequest,
    decode_upload,
)


@dataclass
class ClientUpload:
    """Everything one client uploaded in one screening."""

    node_id: int
    x: np.ndarray
    ids: np.ndarray
    num_samples: int
    y: np.ndarray | None = None  # claimed labels, when the client sent them


@dataclass
class ClientVerdict:
    """The detector's decisions for one client."""

    node_id: int
    ids: np.ndarray
    scores: np.ndarray
    verdicts: np.ndarray  # 1 = anomaly, dropped
    num_samples: int
    #: 1 where the label check dropped a sample whose image passed (None: not checked).
    label_flags: np.ndarray | None = None

    @property
    def drop_ids(self) -> np.ndarray:
        return self.ids[self.verdicts == 1]

    @property
    def estimated_contamination(self) -> float:
        """Fraction of the uploaded samples flagged (an estimate for the whole client)."""
        return float(self.verdicts.mean()) if len(self.verdicts) else 0.0

    @property
    def kept(self) -> int:
        """Samples the client may train on: everything but the dropped ids."""
        return self.num_samples - int(self.verdicts.sum())


@dataclass
class Screening:
    """The outcome of one screening round.

    Attributes
    ----------
    server_round : int
        The round that screened.
    verdicts : dict
        Node id -> :class:`ClientVerdict`, for the nodes whose uploads were scored.
    failures : dict
        Node id -> reason, for the nodes that failed screening.
    threshold : float
        The detector's threshold (NaN when nothing was scored).
    contamination : dict
        The estimated pollution share of the pooled uploads with its interval: ``estimate``,
        ``low``, ``high`` (fractions) and ``confidence``; empty until the uploads are scored.
    label_flagged : int
        Samples dropped by the label check alone (their images passed the detector).
    upload_seconds, detector_seconds : float
        Time spent collecting the uploads and fitting the detector.
    """

    server_round: int
    verdicts: dict[int, ClientVerdict] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    threshold: float = float("nan")
    contamination: dict[str, float] = field(default_factory=dict)
    label_flagged: int = 0
    upload_seconds: float = 0.0
    detector_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.upload_seconds + self.detector_seconds

    @property
    def uploaded(self) -> int:
        """Samples scored in this screening, over all nodes."""
        return int(sum(len(v.ids) for v in self.verdicts.values()))

    @property
    def flagged(self) -> int:
        """Samples the detector flagged (verdict 1) in this screening, over all nodes."""
        return int(sum(int(v.verdicts.sum()) for v in self.verdicts.values()))


class PoolScoring(NamedTuple):
    """What :func:`score_pool` returns: the detector's decisions on the pooled uploads."""

    #: Node id -> :class:`ClientVerdict`.
    verdicts: dict[int, ClientVerdict]
    #: The detector's threshold (NaN for an empty pool).
    threshold: float
    #: Estimated pollution share of the pool: ``estimate``, ``low``, ``high``, ``confidence``.
    contamination: dict[str, float]
    #: Samples the label check dropped (their images passed); 0 without a label check.
    label_flagged: int = 0


def collect_uploads(grid: Grid, node_ids: Iterable[int], *, chunk_size: int, fraction: float,
                    sample_seed: int, max_upload: int, timeout: float,
                    image_shape: tuple[int, int, int] | None = None,
                    ) -> tuple[dict[int, ClientUpload], dict[int, str]]:
    """Ask every node for its samples, chunk by chunk.

    ``image_shape`` (C, H, W), when given, travels in every request; a node whose images
    have another shape fails screening with a reason naming both shapes.

    Returns
    -------
    uploads : dict
        node id -> :class:`ClientUpload` for the nodes that answered validly.
    failures : dict
        node id -> reason, for the nodes that did not.
    """
    next_chunk = {int(n): 0 for n in node_ids}
    parts: dict[int, list[Upload]] = {n: [] for n in next_chunk}
    failures: dict[int, str] = {}
    while next_chunk:
        requests = {n: UploadRequest(chunk_index=c, chunk_size=chunk_size, fraction=fraction,
                                     sample_seed=sample_seed + n % 2**31,
                                     image_shape=image_shape)
                    for n, c in next_chunk.items()}
        messages = [Message(RecordDict({REQUEST_RECORD: r.to_record()}),
                            dst_node_id=n, message_type=UPLOAD_MESSAGE_TYPE)
                    for n, r in requests.items()]
        answered = set()
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = int(reply.metadata.src_node_id)
            if node not in next_chunk or node in answered:
                continue
            answered.add(node)
            reason = _check_reply(reply, requests[node], parts[node], max_upload)
            if reason:
                failures[node] = reason
                del next_chunk[node]
                continue
            upload = parts[node][-1]
            if upload.chunk_index + 1 < upload.num_chunks:
                next_chunk[node] += 1
            else:
                del next_chunk[node]
        for node in set(next_chunk) - answered:
            failures[node] = f"no reply to the screening request within {timeout:g} s"
            del next_chunk[node]
    uploads = {}
    for node, chunks in parts.items():
        if node in failures or not chunks:
            continue
        labelled = chunks[0].y is not None
        uploads[node] = ClientUpload(node, np.concatenate([c.x for c in chunks]),
                                     np.concatenate([c.ids for c in chunks]),
                                     chunks[0].num_samples,
                                     np.concatenate([c.y for c in chunks]) if labelled else None)
    for node, reason in failures.items():
        log(WARNING, "fedsieve: node %s failed screening: %s", node, reason)
    return uploads, failures


def _check_reply(reply: Message, request: UploadRequest, previous: list[Upload],
                 max_upload: int) -> str | None:
    """Decode one chunk into ``previous``; the failure reason, or None when it is valid."""
    if reply.has_error():
        return f"the client raised an error while uploading: {reply.error.reason}"
    try:
        upload = decode_upload(reply.content, request, max_upload=max_upload)
    except ProtocolError as err:
        return f"invalid upload: {err}"
    if previous:
        first = previous[0]
        if (upload.num_samples, upload.num_selected) != (first.num_samples, first.num_selected):
            return "invalid upload: counts changed between chunks"
        seen = np.concatenate([p.ids for p in previous])
        if np.isin(upload.ids, seen).any():
            return "invalid upload: duplicate ids across chunks"
        if (upload.y is None) != (first.y is None):
            return "invalid upload: labels sent with some chunks but not others"
    previous.append(upload)
    return None


def score_pool(uploads: dict[int, ClientUpload], trusted_images: np.ndarray,
               make_detector: Callable[[], object],
               make_label_check: Callable[[], object] | None = None) -> PoolScoring:
    """Fit a fresh detector on the pooled uploads and split its verdicts by node.

    The detector is anchored by ``trusted_images``. The pool is ordered by sample id (then
    image content), not by node: node ids are random in Flower, and a detector that draws
    batches by position would otherwise give other verdicts for the same uploads on every run.

    Parameters
    ----------
    uploads : dict
        Node id -> :class:`ClientUpload`.
    trusted_images : numpy.ndarray
        The server's trusted normal images.
    make_detector : callable
        Returns an unfitted detector offering ``fit(X, trusted=...)`` and the fitted
        ``decision_scores_``, ``labels_``, ``threshold_`` and, usually, ``contamination_``.
    make_label_check : callable, optional
        Returns an unfitted label check offering ``fit(X, y)`` and ``labels_``
        (:class:`~fedsieve.shared.detectors.labels.LabelCheck`). It is fitted on the labelled
        uploads whose images the detector kept, and its flags are dropped too.

    Returns
    -------
    PoolScoring
        The per-node verdicts, the detector's threshold and the pool's estimated contamination
        (the detector's ``contamination_`` as plain floats; for a detector without one,
        :func:`~fedsieve.shared.detectors.threshold.estimate_contamination` of its verdicts
        with the default false-drop budget).
    """
    # Imported here: the detectors package loads torch, which a server needs only to fit one.
    from fedsieve.shared.detectors.threshold import DEFAULT_BUDGET, estimate_contamination

    nodes = sorted(uploads)
    if not nodes:
        return PoolScoring({}, float("nan"), _plain(estimate_contamination(0, 0, DEFAULT_BUDGET)))
    ids = np.concatenate([uploads[n].ids for n in nodes])
    pool = np.concatenate([uploads[n].x for n in nodes])
    order = np.lexsort((_content_keys(pool), ids))
    pool = pool[order]
    started = time.perf_counter()
    detector = make_detector().fit(pool, trusted=trusted_images)
    log(INFO, "fedsieve: detector fitted on a pool of %d uploads in %.1f s", len(pool),
        time.perf_counter() - started)
    scores = np.empty(len(order), np.float64)
    labels = np.empty(len(order), np.int64)
    scores[order] = np.asarray(detector.decision_scores_, dtype=np.float64)
    labels[order] = np.asarray(detector.labels_, dtype=np.int64)
    contamination = getattr(detector, "contamination_", None)
    if not contamination:
        contamination = estimate_contamination(int(labels.sum()), len(labels), DEFAULT_BUDGET)
    label_flags = None
    if make_label_check is not None:
        label_flags = _label_flags(uploads, nodes, pool, order, labels, make_label_check)
        labels = labels | label_flags
    bounds = np.cumsum([0] + [len(uploads[n].ids) for n in nodes])
    verdicts = {
        n: ClientVerdict(n, uploads[n].ids, scores[a:b], labels[a:b], uploads[n].num_samples,
                         None if label_flags is None or uploads[n].y is None
                         else label_flags[a:b])
        for n, a, b in zip(nodes, bounds[:-1], bounds[1:])
    }
    contamination = _plain(contamination)
    log(INFO, "fedsieve: estimated pollution of the pool %.1f %% [%.1f %%, %.1f %%]",
        100 * contamination["estimate"], 100 * contamination["low"],
        100 * contamination["high"])
    flagged_by_labels = 0 if label_flags is None else int(label_flags.sum())
    return PoolScoring(verdicts, float(detector.threshold_), contamination, flagged_by_labels)


def _label_flags(uploads: dict[int, ClientUpload], nodes: list[int], pool: np.ndarray,
                 order: np.ndarray, image_labels: np.ndarray,
                 make_label_check: Callable[[], object]) -> np.ndarray:
    """1 for the labelled samples whose image passed but whose label the check contradicts
    (node order, like ``image_labels``); the check sees them in ``pool``'s sample-id order
    (``pool`` is the node-order uploads taken in ``order``)."""
    claimed = np.concatenate([uploads[n].y if uploads[n].y is not None
                              else np.full(len(uploads[n].ids), -1) for n in nodes])
    checked = (claimed[order] >= 0) & (image_labels[order] == 0)  # in pool order
    flags = np.zeros(len(claimed), np.int64)
    if checked.any():
        started = time.perf_counter()
        check = make_label_check().fit(pool[checked], claimed[order][checked])
        flags[order[checked]] = np.asarray(check.labels_, dtype=np.int64)
        log(INFO, "fedsieve: label check on %d labelled uploads flagged %d in %.1f s",
            int(checked.sum()), int(flags.sum()), time.perf_counter() - started)
    return flags


def _plain(contamination: Mapping[str, object]) -> dict[str, float]:
    """``estimate``, ``low``, ``high`` and ``confidence`` as plain Python floats."""
    return {key: float(contamination[key])
            for key in ("estimate", "low", "high", "confidence") if key in contamination}


def _content_keys(images: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each image: orders uploads that share a sample id (clients number
    their samples independently) the same way whichever node sent them."""
    return image_digests(images).view("<u8")
