"""AnomalyFilter: a strategy wrapper that screens client data before any training.

It holds an inner Flower strategy (FedAvg by default) and forwards everything it does not
change, the way Flower's ``DifferentialPrivacyServerSide*`` wrappers do. What it adds:

1. **Screening** (round 1, and every ``screen_every`` rounds after), by the screening object
   it holds: :class:`~fedsieve.server.UploadScreening` asks each client for its samples, fits
   the trusted detector on the pooled uploads, anchored by the operator's trusted images,
   and scores every sample; :class:`~fedsieve.server.LocalScreening` ships the detector to
   the clients, which score their samples where they live.
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
"""

from __future__ import annotations

import inspect
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterable
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from fedsieve.server.audit import AuditLog
from fedsieve.server.modes import MODES, make_screening
from fedsieve.server.reasons import (
    REASON_CODES,
    Exclusion,
    client_error,
    describe_node,
    summarize_exclusions,
)
from fedsieve.server.screening import Screening
from fedsieve.server.screening_mode import ScreeningMode
from fedsieve.server.upload_screening import UploadScreening
from fedsieve.shared.data.images import format_shape
from fedsieve.shared.protocol.upload import VERDICT_RECORD, encode_verdicts

__all__ = ["AnomalyFilter", "Exclusion", "REASON_CODES"]

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
    screening : UploadScreening or LocalScreening
        How the clients' samples are screened, with the detector, the trusted images and the
        options of that way: :class:`~fedsieve.server.UploadScreening` (clients upload their
        samples and the server scores them; the paper's model) or
        :class:`~fedsieve.server.LocalScreening` (the detector goes to the clients; no image
        leaves one).
    max_client_contamination : float, default 0.5
        Clients whose estimated contamination is above this are excluded.
    screen_every : int, default 0
        Screen again every this many rounds (0: only before the first round).
    run_dir : path, optional
        Where ``audit.jsonl`` goes; no audit file without it.
    **deprecated
        The keywords of fedsieve 0.1 (``detector`` as the second argument or by name,
        ``trusted_images``, ``mode``, ``upload_fraction``, ...): for one release they still
        build the equivalent screening object, with a ``FutureWarning`` naming the new
        spelling.

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

    Raises
    ------
    ValueError
        No screening, or ``max_client_contamination`` or ``screen_every`` out of range.
    TypeError
        Options of the screening given to the wrapper beside a screening object.

    Examples
    --------
    >>> from flwr.serverapp.strategy import FedAvg
    >>> from fedsieve.server import AnomalyFilter, UploadScreening
    >>> from fedsieve.shared.detectors import make_detector
    >>> strategy = AnomalyFilter(FedAvg(), UploadScreening(make_detector("rtbigan"),
    ...                                                    "trusted.npz"),
    ...                          run_dir="runs/prod")  # doctest: +SKIP
    """

    def __init__(self, strategy: Strategy | None = None, screening: ScreeningMode | None = None,
                 *, max_client_contamination: float = 0.5, screen_every: int = 0,
                 run_dir: str | Path | None = None, **deprecated: Any) -> None:
        if deprecated or (screening is not None and not isinstance(screening, ScreeningMode)):
            screening = _deprecated_screening(screening, deprecated)
        if screening is None:
            raise ValueError("AnomalyFilter needs a screening: e.g. AnomalyFilter(strategy, "
                             "UploadScreening(make_detector('rtbigan'), 'trusted.npz')) "
                             "(fedsieve.server.UploadScreening or LocalScreening)")
        if not 0.0 <= max_client_contamination <= 1.0:
            raise ValueError("max_client_contamination must be in [0, 1], got "
                             f"{max_client_contamination}")
        if (not isinstance(screen_every, numbers.Integral) or isinstance(screen_every, bool)
                or screen_every < 0):
            raise ValueError(f"screen_every must be an integer >= 0 (0: only before the first "
                             f"round), got {screen_every!r}")
        self.strategy = strategy if strategy is not None else FedAvg()
        self.screening = screening
        self.max_client_contamination = max_client_contamination
        self.screen_every = int(screen_every)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.audit = AuditLog(self.run_dir / "audit.jsonl") if self.run_dir else None
        self.history: list[dict] = []
        self.aggregated_rounds: list[int] = []
        self._run_exclusions: dict[int, Exclusion] = {}  # node -> its latest, over the run
        self._latest: Screening | None = None  # the latest screening's outcome
        self._allowed: dict[int, int] = {}  # node -> samples it may train on this round
        self._excluded: dict[int, Exclusion] = {}  # this round's
        self._round_seconds = 0.0

    def __repr__(self) -> str:
        return f"AnomalyFilter(strategy={self.strategy!r}, screening={self.screening!r})"

    @property
    def weighted_by_key(self) -> str:
        """The metric key a client's training-sample count is read under: the inner
        strategy's ``weighted_by_key``, or ``"num-examples"`` when it has none."""
        return getattr(self.strategy, "weighted_by_key", DEFAULT_WEIGHTED_BY_KEY)

    def summary(self) -> None:
        screening = self.screening
        log(INFO, "\t├──> fedsieve AnomalyFilter:")
        log(INFO, "\t│\t├── detector: %r", screening.detector)
        log(INFO, "\t│\t├── trusted images: %d of %s (C x H x W)",
            len(screening.trusted_images), format_shape(screening.image_shape))
        log(INFO, "\t│\t├── training-sample count read under: %r", self.weighted_by_key)
        log(INFO, "\t│\t├── %s | screen every: %s", screening.describe(),
            self.screen_every or "first round only")
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
        if self.audit is not None and self._latest is None:
            # A (re)started server says so in the log before its first decision.
            self.audit.write_start(server_round, detector=repr(self.screening.detector),
                                   trusted_images=len(self.screening.trusted_images))
        if self._needs_screening(server_round):
            self._latest = self._screen(server_round, grid)
        messages = []
        self._allowed, self._excluded = {}, {}
        for message in self.strategy.configure_train(server_round, arrays, config, grid):
            node = int(message.metadata.dst_node_id)
            exclusion = self._screening_exclusion(node)
            if exclusion:
                self._exclude(server_round, node, exclusion)
                continue
            verdict = self._latest.verdicts[node]
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
        return {} if self._latest is None else self._latest.partitions

    # -------------------------------------------------------------- forwarding
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------ helpers
    def _needs_screening(self, server_round: int) -> bool:
        if self._latest is None:
            return True
        return self.screen_every > 0 and (server_round - 1) % self.screen_every == 0

    def _screen(self, server_round: int, grid: Grid) -> Screening:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        screening = self.screening.screen(grid, nodes, server_round)
        self._audit_screening(screening)
        return screening

    def _screening_exclusion(self, node: int) -> Exclusion | None:
        screening = self._latest
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
        screening = self._latest
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
        screening = self._latest
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



# -- the keywords of fedsieve 0.1, for one release -------------------------------------------
#: What ``AnomalyFilter(...)`` took before screening objects: keyword -> its name on the
#: screening object (``mode`` picks the class; ``detector`` and ``trusted_images`` are its
#: first two arguments).
_DEPRECATED = {name: name for name in (
    "detector", "trusted_images", "mode", "upload_fraction", "chunk_size", "max_upload",
    "random_state", "label_check", "local_rounds", "local_steps", "spot_check_rate",
    "max_fit_samples")} | {"screening_timeout": "timeout"}


def _deprecated_screening(detector: object, keywords: dict[str, Any]) -> ScreeningMode:
    """The screening object that ``AnomalyFilter(strategy, detector, trusted_images=...,
    mode=..., ...)`` describes, with one FutureWarning naming the new spelling."""
    unknown = sorted(set(keywords) - set(_DEPRECATED))
    if unknown:
        raise TypeError(f"AnomalyFilter() got an unexpected keyword argument {unknown[0]!r}")
    if isinstance(detector, ScreeningMode):
        names = [repr(k) if _DEPRECATED[k] == k else f"{k!r} (there: {_DEPRECATED[k]})"
                 for k in keywords]
        raise TypeError(f"AnomalyFilter got {', '.join(names)} beside a screening object: "
                        f"pass the screening's options to {type(detector).__name__}(...), "
                        "and keep max_client_contamination, screen_every and run_dir on the "
                        "AnomalyFilter")
    options = {_DEPRECATED[k]: v for k, v in keywords.items()}
    if "detector" in options:
        if detector is not None:
            raise TypeError("AnomalyFilter() got multiple values for argument 'detector'")
        detector = options.pop("detector")
    if "trusted_images" not in options:
        raise TypeError(f"AnomalyFilter takes a screening object, not a "
                        f"{type(detector).__name__}: AnomalyFilter(strategy, "
                        "UploadScreening(detector, trusted_images)) (or LocalScreening)")
    mode = options.pop("mode", "upload")
    cls = MODES.get(mode, UploadScreening)
    takes = inspect.signature(cls).parameters
    new = ", ".join(["detector", "trusted_images"]
                    + [f"{k}=..." for k in options if k in takes and k != "trusted_images"])
    warnings.warn(
        "AnomalyFilter(strategy, detector, trusted_images=..., mode=..., ...) is deprecated "
        "and stops working in the next fedsieve release; write "
        f"AnomalyFilter(strategy, {cls.__name__}({new}), max_client_contamination=..., "
        "screen_every=..., run_dir=...) (fedsieve.server)", FutureWarning, stacklevel=3)
    return make_screening(mode, detector, options.pop("trusted_images"), **options)
