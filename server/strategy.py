"""AnomalyFilter: a strategy wrapper that screens client data before any training.

It holds an inner Flower strategy (FedAvg by default) and forwards everything it does not
change, the way Flower's ``DifferentialPrivacyServerSide*`` wrappers do. What it adds:

1. **Screening** (round 1, and every ``screen_every`` rounds after): ``query`` messages ask
   each client for its samples; the trusted detector is fitted on the pooled uploads,
   anchored by the operator's trusted images, and scores every sample.
2. **Verdicts** travel in each client's own train message: an ``ArrayRecord`` of ids to drop.
3. **Exclusion** before aggregation: clients that failed screening, whose estimated
   contamination exceeds ``max_client_contamination``, or that report more training samples
   than they kept never reach the inner strategy. Clients whose training failed or that
   never replied are recorded too (the inner strategy skips them as usual). Each exclusion is
   an :class:`Exclusion`: a reason name of :data:`REASON_CODES` and a one-line message (a
   client's exception is condensed to ``Type: message``, :mod:`fedsieve.server.reasons`).
4. **Audit**: every sample verdict, each screening's pool summary (with the estimated
   pollution share of the pooled uploads and its interval) and every exclusion go to
   ``<run_dir>/audit.jsonl`` (:mod:`fedsieve.server.audit`) when they are decided; per-round
   figures go to :attr:`history` and into the round's train MetricRecord (every key:
   ``docs/operator-guide.md``, "Metrics").
5. **No silent empty model**: a round that aggregates nothing (every client excluded, or no
   reply the inner strategy could use) is logged at ERROR level with its reasons counted by
   name, one example each, and the global model stays the last good one. :meth:`start` never
   returns an empty ``ArrayRecord``: when no round aggregated a model it returns the initial
   arrays, untrained, with an ERROR naming the run's reasons (:attr:`aggregated_rounds` is
   then empty, for code that must refuse such a result).

The training-sample count a client reports is read under the inner strategy's
``weighted_by_key`` (``"num-examples"`` for a strategy without one), as Flower's
``DifferentialPrivacy*`` wrappers do, so ``AnomalyFilter(FedAvg(weighted_by_key="n"))`` checks
the key the inner strategy weights by.

With ``upload_fraction < 1`` only a random fraction of each client's samples is uploaded.
Samples the server never saw get the client-level verdict: the client is kept (and trains on
its unseen samples) when its estimated contamination is within ``max_client_contamination``
and excluded otherwise.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from logging import ERROR, INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from sklearn.base import clone

from fedsieve.server.audit import AuditLog
from fedsieve.server.local import LocalSettings, screen_locally
from fedsieve.server.reasons import (
    REASON_CODES,
    Exclusion,
    client_error,
    describe_node,
    summarize_exclusions,
)
from fedsieve.server.screening import (
    DEFAULT_MAX_FIT_SAMPLES,
    Screening,
    collect_uploads,
    score_pool,
)
from fedsieve.shared.images import check_images, format_shape
from fedsieve.shared.protocol import VERDICT_RECORD, encode_verdicts
from fedsieve.shared.trusted import load_trusted_file, warn_if_few_trusted

__all__ = ["AnomalyFilter", "Exclusion", "MODES", "REASON_CODES"]

#: Where the samples are scored: on the server (the paper's model) or where they live.
MODES = ("upload", "local")
#: The metric key Flower's strategies weight by unless told otherwise.
DEFAULT_WEIGHTED_BY_KEY = "num-examples"


class AnomalyFilter(Strategy):
    """Screen client data with a trusted anomaly detector before the inner strategy aggregates.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy, optional
        The strategy that samples clients and aggregates; ``FedAvg()`` when None. Clients
        report their training-sample count under its ``weighted_by_key``
        (:attr:`weighted_by_key`).
    detector : estimator or callable
        An unfitted fedsieve detector (copied fresh for every screening) or a zero-argument
        callable returning one. It must offer ``fit(X, trusted=...)`` and the fitted
        ``decision_scores_``, ``labels_`` and ``threshold_``.
    trusted_images : numpy.ndarray or path
        The server's trusted normal images (5-10), in any form
        :func:`~fedsieve.shared.images.check_images` reads, or the path of a trusted file
        (read with :func:`~fedsieve.shared.trusted.load_trusted_file`). Their shape (C, H, W)
        is the one the federation's uploads must have: it travels in every screening request,
        and a client that uploads another shape is excluded for the round with a reason
        naming both. Fewer than 5 draws a warning with the measured cost
        (:data:`~fedsieve.shared.trusted.FEW_TRUSTED_COST`).
    screen_every : int, default 0
        Screen again every this many rounds (0: only before the first round).
    upload_fraction : float, default 1.0
        Fraction of each client's samples uploaded (1.0 is the paper's model).
    max_client_contamination : float, default 0.5
        Clients whose estimated contamination is above this are excluded.
    chunk_size : int, default 10_000
        Samples per upload message.
    max_upload : int, default 1_000_000
        Largest upload accepted from one client; larger ones fail screening.
    screening_timeout : float, default 600
        Seconds to wait for each round of upload replies.
    run_dir : path, optional
        Where ``audit.jsonl`` goes; no audit file without it.
    random_state : int, default 0
        Seed of the upload sampling.
    label_check : estimator or callable, optional
        Checks the labels clients upload beside their images (the SDK sends them when its
        ``samples`` callback returns them): an unfitted
        :class:`~fedsieve.shared.detectors.labels.LabelCheck` (copied fresh for every
        screening) or a zero-argument factory. Samples whose image passed but whose label the
        check contradicts are dropped too. None (the default): labels are not checked.
        Upload mode only.
    mode : {"upload", "local"}, default "upload"
        ``"upload"``: clients upload their samples and the server scores them (the paper's
        model). ``"local"``: no image leaves a client. The server adapts the detector on
        the trusted images and ships it; each client scores its own samples and sends back
        their ids and evidence (a few float16 numbers each); the server fits the cut on the
        pooled evidence and the verdicts travel as in upload mode
        (:mod:`fedsieve.server.local`). Needs a savable detector (Rt-BiGAN, EGBAD, AnoGAN,
        ADe-GAN, AGAD, AnoEAN); ``upload_fraction`` and ``label_check`` do not apply.
    local_rounds : int, default 1
        Local mode: rounds of federated self-training (clients train the BiGAN on the
        samples it keeps, the server averages the networks); 0 keeps the detector adapted
        on the trusted images, with its cut fitted on the clients' evidence.
    local_steps : int, default 500
        Local mode: adversarial steps each client trains per round.
    spot_check_rate : float, default 0.0
        Local mode: share of each client's reported samples whose images the server asks
        for, drawn after the report, to verify the client's evidence; a client whose
        evidence gives other verdicts than its images is excluded (``failed-spot-check``).
        0: no image ever leaves a client.
    max_fit_samples : int or None, default DEFAULT_MAX_FIT_SAMPLES
        Upload mode: the detector fits on at most this many uploads (a seeded sample) and
        then scores every upload in batches, so that the server's cost grows with scoring
        alone (:func:`~fedsieve.server.screening.score_pool`). None: fit on every upload.

    Attributes
    ----------
    history : list of dict
        One entry per round: whether it screened (``screened``), the uploads, drops and label
        drops of the round's own screening (0 in rounds that did not screen), the threshold,
        per-node estimated contamination (``estimated_contamination``: node -> flagged share)
        and the partition each node named (``partitions``: node -> partition id) of the latest
        screening, the pool's estimated contamination of the latest screening
        (``contamination``: ``estimate``, ``low``, ``high``, ``confidence``), exclusions
        (``excluded``: node -> reason text, ``excluded_codes``: node -> reason name of
        :data:`REASON_CODES`), the clients aggregated (``aggregated``) and timings;
        ``metrics`` holds what goes into the round's train MetricRecord.
    aggregated_rounds : list of int
        The rounds whose replies the inner strategy aggregated into a new global model.
    audit : AuditLog or None
        The audit log, when ``run_dir`` is given.
    """

    def __init__(self, strategy: Strategy | None = None, detector=None, *,
                 trusted_images: np.ndarray, screen_every: int = 0, upload_fraction: float = 1.0,
                 max_client_contamination: float = 0.5, chunk_size: int = 10_000,
                 max_upload: int = 1_000_000, screening_timeout: float = 600.0,
                 run_dir: str | Path | None = None, random_state: int = 0,
                 label_check=None, mode: str = "upload", local_rounds: int = 1,
                 local_steps: int = 500, spot_check_rate: float = 0.0,
                 max_fit_samples: int | None = DEFAULT_MAX_FIT_SAMPLES) -> None:
        if detector is None:
            raise ValueError("AnomalyFilter needs a detector, e.g. "
                             "fedsieve.shared.detectors.make_detector('rtbigan')")
        if not 0.0 < upload_fraction <= 1.0:
            raise ValueError(f"upload_fraction must be in (0, 1], got {upload_fraction}")
        if not 0.0 <= max_client_contamination <= 1.0:
            raise ValueError("max_client_contamination must be in [0, 1], got "
                             f"{max_client_contamination}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= spot_check_rate <= 1.0:
            raise ValueError(f"spot_check_rate must be in [0, 1], got {spot_check_rate}")
        if local_rounds < 0 or local_steps < 0:
            raise ValueError("local_rounds and local_steps must be >= 0, got "
                             f"{local_rounds} and {local_steps}")
        if mode == "local":
            _check_shippable(detector, label_check, upload_fraction)
        self.strategy = strategy if strategy is not None else FedAvg()
        self.detector = detector
        # Canonical uint8 (k, C, H, W): their shape is the one every upload must have.
        self.trusted_images = _read_trusted(trusted_images)
        warn_if_few_trusted(len(self.trusted_images))
        self.screen_every = screen_every
        self.upload_fraction = upload_fraction
        self.max_client_contamination = max_client_contamination
        self.chunk_size = chunk_size
        self.max_upload = max_upload
        self.screening_timeout = screening_timeout
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.random_state = random_state
        self.label_check = label_check
        self.mode = mode
        self.local_rounds = local_rounds
        self.local_steps = local_steps
        self.spot_check_rate = spot_check_rate
        self.max_fit_samples = max_fit_samples
        self.audit = AuditLog(self.run_dir / "audit.jsonl") if self.run_dir else None
        self.history: list[dict] = []
        self.aggregated_rounds: list[int] = []
        self._run_exclusions: dict[int, Exclusion] = {}  # node -> its latest, over the run
        self._screening: Screening | None = None
        self._allowed: dict[int, int] = {}  # node -> samples it may train on this round
        self._excluded: dict[int, Exclusion] = {}  # this round's
        self._round_seconds = 0.0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the trusted images: the shape every upload must have."""
        return tuple(int(s) for s in self.trusted_images.shape[1:])

    def __repr__(self) -> str:
        return f"AnomalyFilter(strategy={self.strategy!r}, detector={self.detector!r})"

    @property
    def weighted_by_key(self) -> str:
        """The metric key a client's training-sample count is read under: the inner
        strategy's ``weighted_by_key``, or ``"num-examples"`` when it has none."""
        return getattr(self.strategy, "weighted_by_key", DEFAULT_WEIGHTED_BY_KEY)

    def summary(self) -> None:
        log(INFO, "\t├──> fedsieve AnomalyFilter:")
        log(INFO, "\t│\t├── detector: %r", self.detector)
        log(INFO, "\t│\t├── trusted images: %d of %s (C x H x W)", len(self.trusted_images),
            format_shape(self.image_shape))
        log(INFO, "\t│\t├── training-sample count read under: %r", self.weighted_by_key)
        if self.mode == "local":
            log(INFO, "\t│\t├── local screening: %d self-training rounds of %d steps | "
                "spot checks: %.1f %% | screen every: %s", self.local_rounds, self.local_steps,
                100 * self.spot_check_rate, self.screen_every or "first round only")
        else:
            log(INFO, "\t│\t├── upload fraction: %.2f | screen every: %s",
                self.upload_fraction, self.screen_every or "first round only")
        log(INFO, "\t│\t└── max client contamination: %.2f", self.max_client_contamination)
        self.strategy.summary()

    # ------------------------------------------------------------------ the run
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Run Flower's strategy loop (:meth:`flwr.serverapp.strategy.Strategy.start`), and
        never return an empty model.

        Flower keeps the last aggregated model, and an empty ``ArrayRecord`` when no round
        aggregated one. A round that aggregates nothing is already an ERROR with its reasons
        (:meth:`aggregate_train`); when no round aggregated, the result holds
        ``initial_arrays`` (the initial model, untrained) and an ERROR names the reasons of
        the whole run (a WARNING when only some rounds failed). It does not raise, so that the
        run's metrics and history reach the caller; :attr:`aggregated_rounds` says which rounds
        did aggregate.

        Parameters and Returns are those of Flower's ``Strategy.start``.
        """
        self.aggregated_rounds, self._run_exclusions = [], {}
        result = super().start(grid, initial_arrays, num_rounds=num_rounds, timeout=timeout,
                               train_config=train_config, evaluate_config=evaluate_config,
                               evaluate_fn=evaluate_fn)
        if not self.aggregated_rounds:
            result.arrays = initial_arrays
            log(ERROR, "fedsieve: no round of %d aggregated a model, so the result holds the "
                "INITIAL model, untrained. %s", num_rounds, self._run_reasons())
        elif len(self.aggregated_rounds) < num_rounds:
            # Each such round was an ERROR already; the result is a model, if an older one.
            missed = sorted(set(range(1, num_rounds + 1)) - set(self.aggregated_rounds))
            log(WARNING, "fedsieve: %s %s aggregated no model; the result holds round %d's "
                "model. %s", "round" if len(missed) == 1 else "rounds",
                ", ".join(map(str, missed)), self.aggregated_rounds[-1], self._run_reasons())
        return result

    def _run_reasons(self) -> str:
        if not self._run_exclusions:
            return ("No client was excluded: the inner strategy aggregated nothing (no node "
                    "was sampled, or none replied in time).")
        return ("Clients excluded over the run, by their latest reason: "
                f"{summarize_exclusions(self._run_exclusions, self._partitions())}. Every "
                "exclusion is in strategy.history and the audit log.")

    # ------------------------------------------------------------------ training
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        started = time.perf_counter()
        if self.audit is not None and self._screening is None:
            # A (re)started server says so in the log before its first decision.
            self.audit.write_start(server_round, detector=repr(self.detector),
                                   trusted_images=len(self.trusted_images))
        if self._needs_screening(server_round):
            self._screening = self._screen(server_round, grid)
        messages = []
        self._allowed, self._excluded = {}, {}
        for message in self.strategy.configure_train(server_round, arrays, config, grid):
            node = int(message.metadata.dst_node_id)
            exclusion = self._screening_exclusion(node)
            if exclusion:
                self._exclude(server_round, node, exclusion)
                continue
            verdict = self._screening.verdicts[node]
            self._allowed[node] = verdict.kept
            messages.append(self._with_verdicts(message, verdict.drop_ids))
        self._round_seconds = time.perf_counter() - started
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        started = time.perf_counter()
        accepted, answered = [], set()
        count_key = self.weighted_by_key
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if node in answered or node in self._excluded:
                continue  # a second reply, or one from a node that was sent no train message
            answered.add(node)
            if reply.has_error():
                self._exclude(server_round, node, Exclusion(
                    "train-error", "the client raised an error while training: "
                    f"{client_error(reply, node)}"))
                accepted.append(reply)  # the inner strategy logs and skips failures
                continue
            if node not in self._allowed:
                self._exclude(server_round, node, Exclusion(
                    "not-screened", "no verdicts were sent to it"))
                continue
            reported = _reported_count(reply.content, count_key)
            if reported is None:
                self._exclude(server_round, node, Exclusion(
                    "over-reported", "reports no valid training-sample count under "
                    f"{count_key!r} but kept {self._allowed[node]}"))
                continue
            if reported > self._allowed[node]:
                self._exclude(server_round, node, Exclusion(
                    "over-reported", f"claims {reported} training samples under "
                    f"{count_key!r} but kept {self._allowed[node]}; report the samples "
                    "trained on after the server's drops (sieve.kept / sieve.kept_dataset), "
                    "not the local dataset's size"))
                continue
            accepted.append(reply)
        for node in sorted(set(self._allowed) - answered):
            self._exclude(server_round, node, Exclusion(
                "dropped-out", "no reply to the train message (the client disconnected or "
                "timed out)"))
        arrays, metrics = (self.strategy.aggregate_train(server_round, accepted)
                           if accepted else (None, None))
        aggregated = sum(not reply.has_error() for reply in accepted)
        if arrays is None:
            self._log_nothing_aggregated(server_round, aggregated)
        else:
            self.aggregated_rounds.append(server_round)
        self._round_seconds += time.perf_counter() - started
        record = self._record_round(server_round, aggregated if arrays is not None else 0)
        merged = MetricRecord(dict(metrics or {}))
        for key, value in record["metrics"].items():
            merged[key] = value
        return arrays, merged

    def _log_nothing_aggregated(self, server_round: int, usable: int) -> None:
        """The ERROR of a round that produced no model: its exclusions by reason."""
        last = self.aggregated_rounds[-1] if self.aggregated_rounds else 0
        keeps = f"round {last}'s model" if last else "the initial (untrained) model"
        if self._excluded:
            why = (f"all {len(self._excluded)} clients were excluded: "
                   if not usable else f"{len(self._excluded)} clients were excluded: ")
            why += summarize_exclusions(self._excluded, self._partitions())
        else:
            why = "no client's update reached the inner strategy (none sampled or replied)"
        if usable:
            why += f"; the inner strategy aggregated nothing from {usable} updates"
        log(ERROR, "fedsieve: round %d aggregated no model: %s. The global model stays %s.",
            server_round, why, keeps)

    def _partitions(self) -> dict[int, int]:
        return {} if self._screening is None else self._screening.partitions

    # -------------------------------------------------------------- forwarding
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------ helpers
    def _needs_screening(self, server_round: int) -> bool:
        if self._screening is None:
            return True
        return self.screen_every > 0 and (server_round - 1) % self.screen_every == 0

    def _make_detector(self):
        return _fresh(self.detector)

    def _make_label_check(self):
        return _fresh(self.label_check)

    def _local_settings(self) -> LocalSettings:
        return LocalSettings(rounds=self.local_rounds, local_steps=self.local_steps,
                             spot_check_rate=self.spot_check_rate,
                             timeout=self.screening_timeout, max_samples=self.max_upload,
                             seed=self.random_state)

    def _screen(self, server_round: int, grid: Grid) -> Screening:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if self.mode == "local":
            log(INFO, "fedsieve: screening %d nodes where their data lives", len(nodes))
            screening = screen_locally(grid, nodes, self._make_detector(), self.trusted_images,
                                       self._local_settings(), server_round)
            self._audit_screening(screening)
            return screening
        log(INFO, "fedsieve: screening %d nodes (upload fraction %.2f)", len(nodes),
            self.upload_fraction)
        screening = Screening(server_round)
        started = time.perf_counter()
        uploads, screening.failures = collect_uploads(
            grid, nodes, chunk_size=self.chunk_size, fraction=self.upload_fraction,
            sample_seed=self.random_state + server_round, max_upload=self.max_upload,
            timeout=self.screening_timeout, image_shape=self.image_shape)
        screening.upload_seconds = time.perf_counter() - started
        screening.partitions = {n: u.partition for n, u in uploads.items()
                                if u.partition is not None}
        started = time.perf_counter()
        scoring = score_pool(uploads, self.trusted_images, self._make_detector,
                             None if self.label_check is None else self._make_label_check,
                             max_fit_samples=self.max_fit_samples,
                             sample_seed=self.random_state + server_round)
        screening.verdicts, screening.threshold = scoring.verdicts, scoring.threshold
        screening.contamination = scoring.contamination
        screening.label_flagged = scoring.label_flagged
        screening.detector_seconds = time.perf_counter() - started
        self._audit_screening(screening)
        return screening

    def _screening_exclusion(self, node: int) -> Exclusion | None:
        screening = self._screening
        if node in screening.failures:
            return Exclusion(screening.failure_codes.get(node, "failed-screening"),
                             screening.failures[node])
        if node not in screening.verdicts:
            return Exclusion("not-screened", "the node joined after the last screening")
        estimate = screening.verdicts[node].estimated_contamination
        if estimate > self.max_client_contamination:
            return Exclusion("too-polluted", f"estimated contamination {estimate:.3f} exceeds "
                             f"max_client_contamination {self.max_client_contamination:.3f}")
        if screening.verdicts[node].kept <= 0:
            return Exclusion("nothing-kept", "every sample of the node was dropped, or it "
                             "holds none")
        return None

    def _exclude(self, server_round: int, node: int, exclusion: Exclusion) -> None:
        """Leave ``node`` out of this round: remember, log and audit the decision now."""
        self._excluded[node] = exclusion
        self._run_exclusions[node] = exclusion
        log(WARNING, "fedsieve: round %d excludes %s: %s", server_round,
            describe_node(node, self._partitions()), exclusion)
        screening = self._screening
        already_audited = (screening.server_round == server_round
                           and node in screening.failures)  # by _audit_screening
        if self.audit is not None and not already_audited:
            self.audit.write_exclusion(server_round, node, exclusion.code, str(exclusion))

    @staticmethod
    def _with_verdicts(message: Message, drop_ids: np.ndarray) -> Message:
        # The inner strategy may share one RecordDict between nodes: copy before adding.
        content = RecordDict(dict(message.content.items()))
        content[VERDICT_RECORD] = encode_verdicts(drop_ids)
        return Message(content, dst_node_id=message.metadata.dst_node_id,
                       message_type=message.metadata.message_type)

    def _audit_screening(self, screening: Screening) -> None:
        """Write a screening to the audit log: its sample verdicts, then one pool entry (size,
        flagged count, estimated contamination with its interval), then its failures."""
        if self.audit is None:
            return
        for node, verdict in sorted(screening.verdicts.items()):
            self.audit.write_samples(screening.server_round, node, verdict.ids, verdict.scores,
                                     verdict.verdicts, screening.threshold, verdict.label_flags,
                                     verdict.explanation)
        self.audit.write_pool(screening.server_round, screening.uploaded, screening.flagged,
                              screening.threshold, screening.contamination,
                              label_flagged=screening.label_flagged,
                              flagged_by=screening.flagged_by)
        # Every node that failed is recorded at once, sampled for training this round or not.
        for node, reason in sorted(screening.failures.items()):
            exclusion = Exclusion(screening.failure_codes.get(node, "failed-screening"), reason)
            self.audit.write_exclusion(screening.server_round, node, exclusion.code,
                                       str(exclusion))

    def _record_round(self, server_round: int, aggregated: int) -> dict:
        screening = self._screening
        fresh = screening.server_round == server_round
        verdicts = screening.verdicts
        excluded = dict(sorted(self._excluded.items()))
        nodes = sorted(verdicts)
        record = {
            "round": server_round,
            "screened": fresh,
            # Counts are this round's own: a round that did not screen uploaded nothing.
            "uploaded": screening.uploaded if fresh else 0,
            "dropped": screening.flagged if fresh else 0,
            "label_flagged": screening.label_flagged if fresh else 0,
            "flagged_by": screening.flagged_by if fresh else {},
            "threshold": screening.threshold,
            "estimated_contamination": {n: verdicts[n].estimated_contamination for n in nodes},
            "partitions": dict(sorted(screening.partitions.items())),
            "contamination": dict(screening.contamination),
            "excluded": {n: str(e) for n, e in excluded.items()},
            "excluded_codes": {n: e.code for n, e in excluded.items()},
            "aggregated": aggregated,
            "screening_seconds": screening.seconds if fresh else 0.0,
            "upload_seconds": screening.upload_seconds if fresh else 0.0,
            "detector_seconds": screening.detector_seconds if fresh else 0.0,
            "filter_seconds": self._round_seconds,
            "mode": screening.mode,
            "traffic": {n: dict(t) for n, t in sorted(screening.traffic.items())} if fresh
            else {},
            "spot_checked": {n: list(c) for n, c in sorted(screening.spot_checked.items())}
            if fresh else {},
        }
        record["metrics"] = _round_metrics(record, nodes, excluded, screening.partitions)
        self.history.append(record)
        return record


#: Where a node named no partition, the partition lists of the metrics hold this.
NO_PARTITION = -1


def _round_metrics(record: dict, nodes: list[int], excluded: dict[int, Exclusion],
                   partitions: dict[int, int]) -> dict[str, int | float | list]:
    """The round's train MetricRecord entries (every key: ``docs/operator-guide.md``)."""
    by_reason: dict[str, int] = {}
    for exclusion in excluded.values():
        by_reason[exclusion.code] = by_reason.get(exclusion.code, 0) + 1
    return {
        "fedsieve-screened": int(record["screened"]),
        "fedsieve-uploaded": record["uploaded"],
        "fedsieve-dropped": record["dropped"],
        "fedsieve-label-flagged": record["label_flagged"],
        # Which piece of evidence decided each drop: one count per piece that decided any.
        **{f"fedsieve-flagged-by.{piece}": count
           for piece, count in sorted(record["flagged_by"].items()) if count},
        "fedsieve-aggregated": record["aggregated"],
        "fedsieve-excluded": len(excluded),
        # MetricRecords hold numbers only: one count per reason name, present when not 0.
        **{f"fedsieve-excluded.{code}": count for code, count in sorted(by_reason.items())},
        "fedsieve-excluded-nodes": [int(n) for n in excluded],
        "fedsieve-excluded-partitions": [partitions.get(n, NO_PARTITION) for n in excluded],
        "fedsieve-excluded-reasons": [e.number for e in excluded.values()],
        "fedsieve-nodes": nodes,
        "fedsieve-partitions": [partitions.get(n, NO_PARTITION) for n in nodes],
        "fedsieve-contamination": [record["estimated_contamination"][n] for n in nodes],
        **_pool_metrics(record["contamination"]),
        "fedsieve-screening-s": record["screening_seconds"],
        "fedsieve-filter-s": record["filter_seconds"],
    }


def _read_trusted(trusted: object) -> np.ndarray:
    """The trusted images as uint8 (k, C, H, W), from images or a trusted file's path."""
    if isinstance(trusted, str | os.PathLike):
        return load_trusted_file(trusted)
    if not isinstance(trusted, np.ndarray) and not hasattr(trusted, "detach"):
        raise ValueError(
            f"trusted_images must be a numpy array of images or the path of a trusted file "
            f"(read with fedsieve.shared.trusted.load_trusted_file), got "
            f"{type(trusted).__name__}")
    return check_images(trusted, "trusted_images", dtype=np.uint8)


def _check_shippable(detector, label_check, upload_fraction: float) -> None:
    """Local mode ships the detector: it must be savable, and upload-only options unset."""
    from fedsieve.shared.detectors.persist import SAVABLE

    name = type(_fresh(detector)).__name__
    if name not in SAVABLE:
        raise ValueError(f"mode='local' ships the detector to the clients, and a {name} "
                         f"cannot be shipped; use one of {', '.join(SAVABLE)}")
    if label_check is not None or upload_fraction < 1.0:
        raise ValueError("label_check and upload_fraction need uploads: they do not apply "
                         "with mode='local'")


def _fresh(estimator):
    """An unfitted copy of ``estimator`` with the same hyper-parameters (a deep copy for
    non-sklearn ones), or what a zero-argument factory returns."""
    if callable(estimator) and not hasattr(estimator, "fit"):
        return estimator()
    return clone(estimator, safe=False)


def _pool_metrics(contamination: dict[str, float]) -> dict[str, float]:
    """The pool's estimated contamination as MetricRecord scalars (NaN when unknown)."""
    return {f"fedsieve-pool-contamination{suffix}": float(contamination.get(key, math.nan))
            for key, suffix in (("estimate", ""), ("low", "-low"), ("high", "-high"))}


def _reported_count(content: RecordDict, key: str) -> int | None:
    """The training-sample count a reply reports under ``key``; None when it reports none, or
    one that is not a finite non-negative number (a hostile NaN must not crash the server)."""
    for record in content.metric_records.values():
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                return None
            return int(value)
    return None

