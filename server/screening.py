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
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsieve.server.reasons import client_error
from fedsieve.shared.data.images import image_digests
from fedsieve.shared.protocol.upload import (
    REQUEST_RECORD,
    UPLOAD_MESSAGE_TYPE,
    ProtocolError,
    Upload,
    UploadRequest,
    decode_upload,
    read_partition,
)

if TYPE_CHECKING:  # the detectors package loads torch, which a server needs only to fit one
    from fedsieve.shared.detectors.explanation import Explanation


@dataclass
class ClientUpload:
    """Everything one client uploaded in one screening."""

    node_id: int
    x: np.ndarray
    ids: np.ndarray
    num_samples: int
    y: np.ndarray | None = None  # claimed labels, when the client sent them
    partition: int | None = None  # the partition id the client named, when it named one


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
    #: Why each sample got its verdict (the deciding piece of evidence, its value and cut);
    #: None for a detector that does not explain itself.
    explanation: Explanation | None = None

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
    mode : {"upload", "local"}
        Whether the clients uploaded their samples or scored them where they live
        (:mod:`fedsieve.server.local`).
    failure_codes : dict
        Node id -> exclusion code of a failure other than ``"failed-screening"`` (a failed
        spot check).
    traffic : dict
        Node id -> ``{"down": bytes, "up": bytes}`` the local screening's messages carried.
    spot_checked : dict
        Node id -> (samples verified, disagreements) of the local screening's spot checks.
    partitions : dict
        Node id -> the partition id the node named in its replies (Flower's
        ``node_config["partition-id"]``, :func:`~fedsieve.shared.protocol.tag_partition`),
        for the nodes that named one.
    """

    server_round: int
    verdicts: dict[int, ClientVerdict] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    threshold: float = float("nan")
    contamination: dict[str, float] = field(default_factory=dict)
    label_flagged: int = 0
    upload_seconds: float = 0.0
    detector_seconds: float = 0.0
    mode: str = "upload"
    failure_codes: dict[int, str] = field(default_factory=dict)
    traffic: dict[int, dict[str, int]] = field(default_factory=dict)
    spot_checked: dict[int, tuple[int, int]] = field(default_factory=dict)
    partitions: dict[int, int] = field(default_factory=dict)

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

    @property
    def flagged_by(self) -> dict[str, int]:
        """How many samples each piece of evidence decided to drop, over all nodes (empty
        when the detector does not explain itself; the label check's drops are
        ``label_flagged``)."""
        counts: dict[str, int] = {}
        for verdict in self.verdicts.values():
            if verdict.explanation is not None:
                for piece, n in verdict.explanation.flagged_by().items():
                    counts[piece] = counts.get(piece, 0) + n
        return counts


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
        node id -> :class:`ClientUpload` for the nodes that answered validly (with the
        partition id each named, :attr:`ClientUpload.partition`).
    failures : dict
        node id -> reason, for the nodes that did not.
    """
    next_chunk = {int(n): 0 for n in node_ids}
    parts: dict[int, list[Upload]] = {n: [] for n in next_chunk}
    failures: dict[int, str] = {}
    partitions: dict[int, int] = {}
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
            partition = None if reply.has_error() else read_partition(reply.content)
            if partition is not None:
                partitions[node] = partition
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
                                     np.concatenate([c.y for c in chunks]) if labelled else None,
                                     partitions.get(node))
    for node, reason in failures.items():
        log(WARNING, "fedsieve: node %s failed screening: %s", node, reason)
    return uploads, failures


def _check_reply(reply: Message, request: UploadRequest, previous: list[Upload],
                 max_upload: int) -> str | None:
    """Decode one chunk into ``previous``; the failure reason, or None when it is valid."""
    if reply.has_error():
        return ("the client raised an error while uploading: "
                f"{client_error(reply, int(reply.metadata.src_node_id))}")
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


#: Recommended ``max_fit_samples`` for a server screening uploads (:func:`score_pool`): the
#: detector is fitted on a seeded sample of at most this many uploads and scores the rest, so
#: that the server's cost grows with scoring alone. Measured with the default Rt-BiGAN on 2
#: cores shared with other jobs (``benchmarks/results/upload-scaling.md``): 100,000 uploads
#: screened in 112-130 s against 160 s fitting on all of them (CPU 110-118 s against 160 s),
#: pool AUC 0.9991 against 0.9992; the fit adds ~630 MiB to the server's memory at any pool
#: size (10,000: ~400 MiB and the same AUC there, but that benchmark's pools repeat ~5,000
#: distinct images, so it cannot show what a larger sample buys on a diverse pool; 40,000:
#: ~1.1 GiB, 128 s).
DEFAULT_MAX_FIT_SAMPLES = 20_000


def score_pool(uploads: dict[int, ClientUpload], trusted_images: np.ndarray,
               make_detector: Callable[[], object],
               make_label_check: Callable[[], object] | None = None, *,
               max_fit_samples: int | None = None, score_batch: int = 4096,
               sample_seed: int = 0) -> PoolScoring:
    """Fit a fresh detector on the pooled uploads (or a bounded sample of them) and split its
    verdicts by node.

    One pipeline, in six steps:

    1. **order** the pool by sample id (then image content), not by node: node ids are random
       in Flower, and a detector that draws batches by position would otherwise give other
       verdicts for the same uploads on every run;
    2. **choose the fit rows**: every upload, or, when the pool holds more than
       ``max_fit_samples``, a seeded sample of that many;
    3. **fit** the detector on them, anchored by ``trusted_images`` (a copy of just those
       images);
    4. **score every upload**: a fit on the whole pool has scored it already
       (``decision_scores_``); after a bounded fit every upload, the fitted ones included, is
       scored once, node by node in batches of ``score_batch`` images;
    5. **label check** (optional) on the labelled uploads whose image passed;
    6. **verdicts**: an upload is dropped when its score exceeds the detector's ``threshold_``
       or the label check flags it.

    A self-training detector scores its whole fitting pool in every round (Rt-BiGAN: 4
    times) and holds it as float32, so a bounded fit keeps the server's time growing with
    scoring alone (which torch spreads over its threads, ``torch.set_num_threads``), and its
    memory with the uploads themselves: the pool is never converted to float32 as a whole.

    Parameters
    ----------
    uploads : dict
        Node id -> :class:`ClientUpload`.
    trusted_images : numpy.ndarray
        The server's trusted normal images.
    make_detector : callable
        Returns an unfitted detector offering ``fit(X, trusted=...)`` and the fitted
        ``decision_scores_`` and ``threshold_``; a bounded fit also needs
        ``decision_function(X)`` (higher = more anomalous). A fedsieve detector also explains
        each verdict (``explain``: the deciding piece of evidence, kept in the verdicts).
    make_label_check : callable, optional
        Returns an unfitted label check offering ``fit(X, y)`` and ``labels_``
        (:class:`~fedsieve.shared.detectors.labels.LabelCheck`). It is fitted on the labelled
        uploads whose images the detector kept, and its flags are dropped too. A bounded fit
        does not bound it: it judges every such upload, not only the sampled ones (a label
        check is transductive; it cannot judge pairs it was not fitted on). LabelCheck's
        own training is bounded (``max_train``) but it holds the checked images as float32,
        so its memory grows with the labelled pool.
    max_fit_samples : int, optional
        Most uploads the detector is fitted on; None fits on the whole pool. The sample is
        drawn over the pool in its (sample id, image content) order, so it depends on what
        was uploaded, not on the node ids or the order of arrival, and is the same on every
        run with the same ``sample_seed``. :data:`DEFAULT_MAX_FIT_SAMPLES` is the measured
        recommendation.
    score_batch : int, default 4096
        Images per scoring call when the fit is bounded: only this many are ever converted
        to float32 at once.
    sample_seed : int, default 0
        Seed of the bounded fit's sample (:func:`numpy.random.default_rng`).

    Returns
    -------
    PoolScoring
        The per-node verdicts, the detector's threshold and the pool's estimated
        contamination (:func:`~fedsieve.shared.detectors.threshold.estimate_contamination`
        of the detector's verdicts on the whole pool, with its false-drop budget, the
        default one when it has none).

    Raises
    ------
    ValueError
        ``max_fit_samples`` or ``score_batch`` below 1.
    TypeError
        A bounded fit whose detector has no ``decision_function``.
    """
    if max_fit_samples is not None and int(max_fit_samples) < 1:
        raise ValueError(f"max_fit_samples must be at least 1 (or None), got {max_fit_samples}")
    if int(score_batch) < 1:
        raise ValueError(f"score_batch must be at least 1, got {score_batch}")
    nodes = sorted(uploads)
    if not nodes:
        return PoolScoring({}, float("nan"), pool_contamination(None, np.zeros(0, np.int64)))
    # Rows are numbered in node order (the uploads of ``nodes`` one after the other), as in
    # the verdicts; the pool order is an index array over them.
    bounds = np.cumsum([0] + [len(uploads[n].ids) for n in nodes])
    total = int(bounds[-1])
    order = _pool_order(uploads, nodes)
    bounded = max_fit_samples is not None and total > int(max_fit_samples)
    fit_rows = order
    if bounded:
        fit_rows = order[np.sort(np.random.default_rng(sample_seed).choice(
            total, int(max_fit_samples), replace=False))]
    detector = make_detector()
    if bounded and not callable(getattr(detector, "decision_function", None)):
        raise TypeError(f"{type(detector).__name__} has no decision_function: a bounded fit "
                        "(max_fit_samples) scores the uploads it was not fitted on with it")
    started = time.perf_counter()
    detector = detector.fit(_gather_rows(uploads, nodes, bounds, fit_rows),
                            trusted=trusted_images)
    log(INFO, "fedsieve: detector fitted on %s in %.1f s",
        f"a sample of {len(fit_rows)} of {total} uploads (seed {sample_seed})" if bounded
        else f"a pool of {total} uploads", time.perf_counter() - started)
    if bounded:
        scores, explanation = _score_rows(detector, uploads, nodes, int(score_batch))
    else:
        scores, explanation = _fitted_rows(detector, order)
    threshold = float(detector.threshold_)
    labels = (scores > threshold).astype(np.int64)  # the one verdict rule
    contamination = pool_contamination(detector, labels)
    label_flags = None
    if make_label_check is not None:
        label_flags = _label_flags(uploads, nodes, bounds, order, labels, make_label_check)
        labels = labels | label_flags
    verdicts = {
        n: ClientVerdict(n, uploads[n].ids, scores[a:b], labels[a:b], uploads[n].num_samples,
                         None if label_flags is None or uploads[n].y is None
                         else label_flags[a:b],
                         None if explanation is None else explanation.take(slice(a, b)))
        for n, a, b in zip(nodes, bounds[:-1], bounds[1:])
    }
    log(INFO, "fedsieve: estimated pollution of the pool %.1f %% [%.1f %%, %.1f %%]",
        100 * contamination["estimate"], 100 * contamination["low"],
        100 * contamination["high"])
    flagged_by_labels = 0 if label_flags is None else int(label_flags.sum())
    return PoolScoring(verdicts, threshold, contamination, flagged_by_labels)


def pool_contamination(detector: object | None, labels: np.ndarray) -> dict[str, float]:
    """The pool's estimated pollution share from its verdicts (1 = dropped), corrected for the
    detector's false-drop budget (``false_drop_budget``; the default one for a detector
    without it), as plain floats: ``estimate``, ``low``, ``high``, ``confidence``."""
    # Imported here: the detectors package loads torch, which a server needs only to fit one.
    from fedsieve.shared.detectors.threshold import DEFAULT_BUDGET, estimate_contamination

    budget = float(getattr(detector, "false_drop_budget", DEFAULT_BUDGET))
    return _plain(estimate_contamination(int(np.sum(labels)), len(labels), budget))


def _pool_order(uploads: dict[int, ClientUpload], nodes: list[int]) -> np.ndarray:
    """Pool position -> node-order row: by sample id, then image content."""
    ids = np.concatenate([uploads[n].ids for n in nodes])
    keys = np.concatenate([_content_keys(uploads[n].x) for n in nodes])
    return np.lexsort((keys, ids))


def _fitted_rows(detector, order: np.ndarray) -> tuple[np.ndarray, Explanation | None]:
    """The scores (node order) a fit on the whole pool (in ``order``) already gave, and
    their explanation when the detector explains itself."""
    scores = np.empty(len(order), np.float64)
    scores[order] = np.asarray(detector.decision_scores_, dtype=np.float64)
    explain = getattr(detector, "explain_fitted", None)
    if not callable(explain):
        return scores, None
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return scores, explain().take(back)


def _score_rows(detector, uploads: dict[int, ClientUpload], nodes: list[int],
                score_batch: int) -> tuple[np.ndarray, Explanation | None]:
    """Score every upload (node order) in batches of ``score_batch`` images, with the
    explanation when the detector explains itself."""
    import torch

    from fedsieve.shared.detectors.explanation import Explanation

    explain = getattr(detector, "explain", None)
    started = time.perf_counter()
    parts = []
    for node in nodes:
        x = uploads[node].x
        for a in range(0, len(x), score_batch):
            batch = x[a:a + score_batch]
            parts.append(explain(batch) if callable(explain)
                         else np.asarray(detector.decision_function(batch), dtype=np.float64))
    total = sum(len(uploads[n].x) for n in nodes)
    seconds = time.perf_counter() - started
    log(INFO, "fedsieve: scored %d uploads in %.1f s (%.0f uploads/s, batches of %d, %d torch "
        "threads)", total, seconds, total / max(seconds, 1e-9), score_batch,
        torch.get_num_threads())
    if not callable(explain):
        return np.concatenate(parts), None
    explanation = Explanation.concatenate(parts)
    return explanation.scores, explanation


def _gather_rows(uploads: dict[int, ClientUpload], nodes: list[int], bounds: np.ndarray,
                 rows: np.ndarray) -> np.ndarray:
    """The images of ``rows`` (node-order row numbers, see ``bounds``), in that order: one
    array of just those images."""
    first = uploads[nodes[0]].x
    out = np.empty((len(rows), *first.shape[1:]), first.dtype)
    owner = np.searchsorted(bounds, rows, side="right") - 1
    for i, node in enumerate(nodes):
        where = np.flatnonzero(owner == i)
        if len(where):
            out[where] = uploads[node].x[rows[where] - bounds[i]]
    return out


def _label_flags(uploads: dict[int, ClientUpload], nodes: list[int], bounds: np.ndarray,
                 order: np.ndarray, image_labels: np.ndarray,
                 make_label_check: Callable[[], object]) -> np.ndarray:
    """1 for the labelled samples whose image passed but whose label the check contradicts
    (node order, like ``image_labels``). The check sees them in the pool's order (``order``:
    pool position -> node-order row), gathered from the nodes' own arrays."""
    claimed = np.concatenate([uploads[n].y if uploads[n].y is not None
                              else np.full(len(uploads[n].ids), -1) for n in nodes])
    rows = order[(claimed[order] >= 0) & (image_labels[order] == 0)]
    flags = np.zeros(len(claimed), np.int64)
    if len(rows):
        started = time.perf_counter()
        check = make_label_check().fit(_gather_rows(uploads, nodes, bounds, rows),
                                       claimed[rows])
        flags[rows] = np.asarray(check.labels_, dtype=np.int64)
        log(INFO, "fedsieve: label check on %d labelled uploads flagged %d in %.1f s",
            len(rows), int(flags.sum()), time.perf_counter() - started)
    return flags


def _plain(contamination: Mapping[str, object]) -> dict[str, float]:
    """``estimate``, ``low``, ``high`` and ``confidence`` as plain Python floats."""
    return {key: float(contamination[key])
            for key in ("estimate", "low", "high", "confidence") if key in contamination}


def _content_keys(images: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each image: orders uploads that share a sample id (clients number
    their samples independently) the same way whichever node sent them."""
    return image_digests(images).view("<u8")
