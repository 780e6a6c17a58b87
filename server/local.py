"""Local screening: the detector goes to the clients; their evidence, never their images,
comes back.

The server adapts its detector on the trusted images, ships it to every client
(:data:`~fedsieve.shared.protocol.local.SCORE_ACTION`), and each client replies with the ids
of its samples and each sample's evidence (a few float16 numbers). The server pools the
evidence of every client and refits the cut on it (:meth:`~fedsieve.shared.detectors.
BaseDetector.fit_cut`), as a fit on the pooled images would have cut them; the verdicts then
travel in the train messages as in upload mode. Optionally:

- **federated self-training** (``rounds`` > 0): each round the clients train the BiGAN on
  the samples the current detector keeps and the server averages the networks
  (:mod:`fedsieve.shared.detectors.federated`), then the clients score again;
- **spot checks** (``spot_check_rate`` > 0): after a client's report, the server draws a
  random share of the ids it reported, asks for those images, scores them itself and
  excludes the client when the verdicts its reported evidence implies disagree with the
  server's own beyond float16 rounding (a forged report).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsieve.server.ordering import reply_digest
from fedsieve.server.reasons import client_error
from fedsieve.server.screening import ClientVerdict, Screening, pool_contamination
from fedsieve.shared.protocol.local import (
    SCORE_ACTION,
    SELF_TRAIN_ACTION,
    SPOT_CHECK_ACTION,
    ScoreReport,
    decode_scores,
    decode_spot_check,
    decode_update,
    encode_detector,
    message_type,
    spot_check_request,
)
from fedsieve.shared.protocol.upload import ProtocolError, read_partition


@dataclass(frozen=True)
class LocalSettings:
    """How a local screening runs.

    Attributes
    ----------
    rounds : int
        Rounds of federated self-training (0: the detector adapted on the trusted images
        only, its cut refitted on the clients' evidence).
    local_steps : int
        Adversarial steps each client trains per round.
    spot_check_rate : float
        Share of each client's reported samples whose images are asked for and verified (0:
        no image ever leaves a client).
    spot_check_margin : float
        Disagreements within this distance of the threshold (score units) are float16
        rounding, not lies.
    timeout : float
        Seconds to wait for each round of replies.
    max_samples : int
        Largest local dataset accepted from one client.
    seed : int
        Seed of the spot checks' draws and the clients' training.
    """

    rounds: int = 1
    local_steps: int = 500
    spot_check_rate: float = 0.0
    spot_check_margin: float = 0.05
    timeout: float = 600.0
    max_samples: int = 1_000_000
    seed: int = 0


def screen_locally(grid: Grid, nodes: list[int], detector, trusted: np.ndarray,
                   settings: LocalSettings, server_round: int) -> Screening:
    """Screen every node's data where it lives; returns the :class:`Screening` whose verdicts
    the AnomalyFilter sends in the train messages.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        Where the nodes are.
    nodes : list of int
        The nodes to screen.
    detector : BaseDetector
        An unfitted, savable detector (:data:`~fedsieve.shared.detectors.persist.SAVABLE`).
    trusted : numpy.ndarray
        The trusted images, uint8 (k, C, H, W).
    settings : LocalSettings
    server_round : int
        The round that screens (seeds the draws).
    """
    from fedsieve.shared.detectors.federated import merge_updates

    screening = Screening(server_round, mode="local")
    run = _Exchange(grid, settings.timeout, screening)
    started = time.perf_counter()
    # No self-training on a pool the server does not have, and no evidence that keeps pool
    # images' features (it is shipped to every client): the detector says which parameters.
    detector.set_params(**detector.local_screening_params())
    detector.fit(trusted, trusted=trusted)
    live = list(nodes)
    reports = _score(run, live, detector, settings)
    detector.fit_cut(_pooled(reports), trusted)
    for rnd in range(settings.rounds):
        live = [n for n in live if n not in screening.failures]
        updates = _self_train(run, live, detector, settings, server_round, rnd)
        trained = merge_updates(detector, list(updates.values()), trusted)
        log(INFO, "fedsieve: federated self-training round %d: %d clients trained on %d "
            "samples", rnd + 1, len(updates), trained)
        live = [n for n in live if n not in screening.failures]
        reports = _score(run, live, detector, settings)
        detector.fit_cut(_pooled(reports), trusted)
    screening.detector_seconds = time.perf_counter() - started
    scores = {}
    for node, report in reports.items():
        explanation = detector.explain_evidence(report.evidence)
        scores[node] = explanation.scores
        screening.verdicts[node] = ClientVerdict(
            node, report.ids, explanation.scores, explanation.flagged.astype(np.int64),
            report.num_samples, explanation=explanation)
    screening.threshold = float(detector.threshold_)
    screening.contamination = pool_contamination(detector, np.concatenate(
        [v.verdicts for v in screening.verdicts.values()] or [np.zeros(0, np.int64)]))
    if settings.spot_check_rate > 0:
        _spot_check(run, detector, reports, scores, settings, server_round)
    log(INFO, "fedsieve: local screening of %d nodes: %d samples, %d flagged, %s",
        len(screening.verdicts), screening.uploaded, screening.flagged, _traffic_line(screening))
    return screening


# -- the exchanges ---------------------------------------------------------------------------
class _Exchange:
    """Send one message per node, collect the replies, count the bytes, record failures."""

    def __init__(self, grid: Grid, timeout: float, screening: Screening) -> None:
        self.grid, self.timeout, self.screening = grid, timeout, screening

    def send(self, contents: Mapping[int, RecordDict], action: str,
             decode: Callable[[int, RecordDict], object], what: str) -> dict[int, object]:
        messages = [Message(content, dst_node_id=node, message_type=message_type(action))
                    for node, content in contents.items()]
        for node, content in contents.items():
            self._count(node, "down", content)
        out: dict[int, object] = {}
        # In content order: the merged self-training update sums floats in this order.
        for reply in sorted(self.grid.send_and_receive(messages, timeout=self.timeout),
                            key=reply_digest):
            node = int(reply.metadata.src_node_id)
            if node not in contents or node in out or node in self.screening.failures:
                continue
            if reply.has_error():
                self.fail(node, f"the client raised an error while {what}: "
                          f"{client_error(reply, node)}")
                continue
            self._count(node, "up", reply.content)
            partition = read_partition(reply.content)
            if partition is not None:
                self.screening.partitions[node] = partition
            try:
                out[node] = decode(node, reply.content)
            except ProtocolError as err:
                self.fail(node, f"invalid reply while {what}: {err}")
        for node in set(contents) - set(out) - set(self.screening.failures):
            self.fail(node, f"no reply while {what} within {self.timeout:g} s")
        return out

    def fail(self, node: int, reason: str, code: str = "failed-screening") -> None:
        log(WARNING, "fedsieve: node %s failed local screening: %s", node, reason)
        self.screening.failures[node] = reason
        self.screening.failure_codes[node] = code
        self.screening.verdicts.pop(node, None)

    def _count(self, node: int, way: str, content: RecordDict) -> None:
        traffic = self.screening.traffic.setdefault(node, {"down": 0, "up": 0})
        traffic[way] += content_bytes(content)


def content_bytes(content: RecordDict) -> int:
    """Bytes a message's content carries: array payloads plus config values (strings at
    their length, numbers at 8 bytes)."""
    total = 0
    for record in content.array_records.values():
        total += sum(len(array.data) for array in record.values())
    for record in content.config_records.values():
        for value in record.values():
            values = value if isinstance(value, list) else [value]
            total += sum(len(v) if isinstance(v, str | bytes) else 8 for v in values)
    for record in content.metric_records.values():
        total += 8 * sum(len(v) if isinstance(v, list) else 1 for v in record.values())
    return total


def _detector_content(detector, **config) -> RecordDict:
    from fedsieve.shared.detectors.persist import detector_to_bytes

    return encode_detector(*detector_to_bytes(detector), **config)


def _score(run: _Exchange, nodes: list[int], detector, settings: LocalSettings
           ) -> dict[int, ScoreReport]:
    content = _detector_content(detector)
    width = detector.evidence_width
    return run.send({n: content for n in nodes}, SCORE_ACTION,
                    lambda node, reply: decode_scores(reply, width,
                                                      max_samples=settings.max_samples),
                    "scoring its samples")


def _self_train(run: _Exchange, nodes: list[int], detector, settings: LocalSettings,
                server_round: int, rnd: int) -> dict:
    from fedsieve.shared.detectors.checkpoint import model_tensors

    reference = model_tensors(detector.model_)
    shape = tuple(detector.image_shape_)
    # One seed for every client: each joins it with a digest of its own sample ids
    # (federated.data_seed), not with its node id, which Flower draws at random.
    content = _detector_content(
        detector, steps=int(settings.local_steps), **{"first-round": rnd == 0},
        seed=int(settings.seed * 1_000_003 + server_round * 1009 + rnd * 101))
    contents = {n: content for n in nodes}
    return run.send(contents, SELF_TRAIN_ACTION,
                    lambda node, reply: decode_update(reply, reference, shape,
                                                      settings.max_samples),
                    "self-training the detector")


def _pooled(reports: Mapping[int, ScoreReport]) -> np.ndarray:
    """Every report's evidence in a deterministic order: by sample id, then evidence, never
    by node (node ids are random in Flower)."""
    nodes = sorted(reports)
    if not nodes:
        raise RuntimeError("no client returned a valid score report: nothing to cut; see the "
                           "failures above")
    ids = np.concatenate([reports[n].ids for n in nodes])
    evidence = np.concatenate([reports[n].evidence for n in nodes])
    return evidence[np.lexsort((*evidence.T[::-1], ids))]


def _spot_check(run: _Exchange, detector, reports: Mapping[int, ScoreReport],
                scores: Mapping[int, np.ndarray], settings: LocalSettings,
                server_round: int) -> None:
    """Ask each node for a random share of the samples it reported, score their images
    here, and exclude the nodes whose reported evidence gives other verdicts."""
    threshold = float(detector.threshold_)
    asked: dict[int, np.ndarray] = {}
    for node, report in reports.items():
        if node in run.screening.failures or not len(report.ids):
            continue
        k = min(len(report.ids), max(1, math.ceil(settings.spot_check_rate * len(report.ids))))
        rng = np.random.default_rng([settings.seed, server_round, node % 2**32])
        asked[node] = np.sort(rng.choice(len(report.ids), size=k, replace=False))
    shape = tuple(detector.image_shape_)
    images = run.send(
        {n: spot_check_request(reports[n].ids[rows]) for n, rows in asked.items()},
        SPOT_CHECK_ACTION,
        lambda node, reply: decode_spot_check(reply, reports[node].ids[asked[node]], shape),
        "answering a spot check")
    for node, x in images.items():
        rows = asked[node]
        own = detector.decision_function(x, layout="NCHW")
        reported = scores[node][rows]
        wrong = ((own > threshold) != (reported > threshold)) & (
            np.abs(own - threshold) > settings.spot_check_margin)
        run.screening.spot_checked[node] = (len(rows), int(wrong.sum()))
        if wrong.any():
            first = int(np.flatnonzero(wrong)[0])
            run.fail(node, f"spot check: {int(wrong.sum())} of {len(rows)} samples' images "
                     "get another verdict than the client's reported evidence (id "
                     f"{int(reports[node].ids[rows[first]])}: score {own[first]:.3g} on its "
                     f"image, {reported[first]:.3g} reported; threshold {threshold:.3g})",
                     code="failed-spot-check")


def _traffic_line(screening: Screening) -> str:
    down = sum(t["down"] for t in screening.traffic.values())
    up = sum(t["up"] for t in screening.traffic.values())
    return f"{down / 1e6:.1f} MB sent, {up / 1e6:.2f} MB received"
