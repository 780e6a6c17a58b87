"""The audit log: every screening decision, appended and fsynced, so every drop is reviewable.

One JSON object per line in ``<run dir>/audit.jsonl``; ``kind`` says which:

- ``{"kind": "start", "round", "time", "pid", "fedsieve", ...}`` when a server (re)starts
  deciding (the details name the detector and the number of trusted images);
- ``{"kind": "sample", "round", "node", "id", "score", "verdict", "threshold"}`` for each
  uploaded sample (verdict 1 = dropped as an anomaly, 0 = kept), with ``label_flag`` (1 when
  the label check alone dropped it) where a label check ran on the node's labels; a sample
  the detector dropped also names why: ``piece`` (the piece of evidence that decided),
  its ``value`` and its ``cut`` (on the piece's log scale; ``"score"`` and the threshold
  for a detector scored by one number);
- ``{"kind": "pool", "round", "uploaded", "flagged", "label_flagged", "flagged_by",
  "threshold", "contamination", "contamination_low", "contamination_high", "confidence"}``
  once per screening, after its sample entries: how many samples were scored and flagged
  (by the label check alone: ``label_flagged``; by each piece of evidence:
  ``flagged_by``), and the estimated pollution share of the pooled
  uploads with its ``confidence`` (0.95) Clopper-Pearson interval
  (:func:`fedsieve.shared.detectors.threshold.estimate_contamination`); ``threshold`` is null
  when nothing was scored;
- ``{"kind": "client", "round", "node", "decision": "excluded", "code", "reason"}`` for each
  client left out of a round: ``code`` is one of
  :data:`fedsieve.server.reasons.REASON_CODES` (the reason's name), ``reason`` the one-line
  explanation. Clients are kept unless excluded, so only exclusions are written.

The file is only ever appended to, and every write is flushed and fsynced before it returns:
a screening's sample verdicts are on disk before the train messages carrying them are sent,
and a server that restarts finds a consistent log and continues it. A line cut short by a
crash mid-write is moved to ``audit.jsonl.torn`` when the log is opened again for writing;
:func:`read_audit` skips such a torn last line of a log that was not reopened.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from logging import WARNING
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.common.logger import log

if TYPE_CHECKING:  # the detectors package loads torch
    from fedsieve.shared.detectors.explanation import Explanation

#: The entry kinds an audit log holds.
KINDS = ("start", "sample", "pool", "client")


class AuditLog:
    """Append-only JSONL writer; every write is fsynced before it returns.

    Opening a log whose last line was cut short (a crash mid-write) moves that partial line to
    ``<name>.torn`` and continues after the last complete entry.

    Parameters
    ----------
    path : str or Path
        The ``audit.jsonl`` file; its folder is created.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._set_torn_tail_aside()

    def _set_torn_tail_aside(self) -> None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            keep, end = 0, size  # find the last newline, reading backwards block by block
            while end > 0:
                start = max(0, end - 65536)
                handle.seek(start)
                newline = handle.read(end - start).rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
            handle.seek(keep)
            torn = self.path.with_name(self.path.name + ".torn")
            with torn.open("ab") as aside:
                aside.write(handle.read() + b"\n")
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        log(WARNING, "fedsieve: %s ended in a partial line (a crash mid-write); moved its "
            "%d bytes to %s and continuing after the last complete entry", self.path,
            size - keep, torn)

    def write_start(self, server_round: int, **details: float | int | str) -> None:
        """Record that a server (re)started deciding at ``server_round``."""
        try:
            fedsieve = version("fedsieve")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            fedsieve = "unknown"
        self._append([{"kind": "start", "round": server_round,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(),
                       "fedsieve": fedsieve, **details}])

    def write_samples(self, server_round: int, node_id: int, ids: np.ndarray,
                      scores: np.ndarray, verdicts: np.ndarray, threshold: float,
                      label_flags: np.ndarray | None = None,
                      explanation: Explanation | None = None) -> None:
        """Record one node's sample verdicts (1 = dropped) of a screening; with
        ``label_flags`` (the label check ran on this node's labels) each entry also says
        whether its label was what dropped it (``label_flag``); with ``explanation`` (the
        detector's, of these samples) each sample the detector dropped names the deciding
        piece of evidence, its value and its cut."""
        explained = None if explanation is None else explanation.flagged

        def entries() -> Iterator[dict]:  # one at a time: a node may upload a million samples
            for row, (i, s, v) in enumerate(zip(ids, scores, verdicts)):
                entry = {"kind": "sample", "round": server_round, "node": node_id,
                         "id": int(i), "score": float(s), "verdict": int(v),
                         "threshold": float(threshold)}
                if label_flags is not None:
                    entry["label_flag"] = int(label_flags[row])
                if explained is not None and explained[row]:
                    entry |= explanation.deciding_row(row)
                yield entry

        self._append(entries())

    def write_pool(self, server_round: int, uploaded: int, flagged: int, threshold: float,
                   contamination: Mapping[str, float], *, label_flagged: int = 0,
                   flagged_by: Mapping[str, int] | None = None) -> None:
        """Record a screening's pool: its size, what was flagged and the estimated pollution.

        Parameters
        ----------
        server_round : int
            The round that screened.
        uploaded : int
            Samples scored, over all nodes.
        flagged : int
            Samples flagged as anomalies (the sample entries with verdict 1).
        threshold : float
            The detector's threshold; written as null when it is not finite.
        contamination : mapping
            ``estimate``, ``low``, ``high`` and ``confidence``, as the detector's
            ``contamination_``.
        label_flagged : int
            Of ``flagged``, the samples only the label check dropped.
        flagged_by : mapping, optional
            Piece of evidence -> samples it decided to drop (empty when unknown).
        """
        threshold = float(threshold)
        self._append([{"kind": "pool", "round": server_round, "uploaded": int(uploaded),
                       "flagged": int(flagged), "label_flagged": int(label_flagged),
                       "flagged_by": {k: int(v) for k, v in (flagged_by or {}).items()},
                       "threshold": threshold if math.isfinite(threshold) else None,
                       "contamination": float(contamination["estimate"]),
                       "contamination_low": float(contamination["low"]),
                       "contamination_high": float(contamination["high"]),
                       "confidence": float(contamination["confidence"])}])

    def write_exclusion(self, server_round: int, node_id: int, code: str, reason: str) -> None:
        """Record that ``node_id`` is left out of ``server_round``.

        Parameters
        ----------
        code : str
            The machine-readable reason (a key of ``REASON_CODES``).
        reason : str
            What happened, for a reader of the log.
        """
        self._append([{"kind": "client", "round": server_round, "node": node_id,
                       "decision": "excluded", "code": code, "reason": reason}])

    def _append(self, entries: Iterable[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def read_audit(path: str | Path, kind: str | None = None) -> Iterator[dict]:
    """Iterate over the entries of an audit log, oldest first.

    Parameters
    ----------
    path : str or Path
        The ``audit.jsonl`` file.
    kind : {"start", "sample", "pool", "client"}, optional
        Only entries of this kind; all of them when None.

    Raises
    ------
    ValueError
        A line that is not JSON, other than a torn last line (one without its newline, left by
        a crash mid-write), which is skipped with a warning.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                if not line.endswith("\n"):
                    log(WARNING, "fedsieve: %s ends in a partial line (a crash mid-write); "
                        "skipping it", path)
                    return
                raise ValueError(f"{path}:{number} is not a JSON audit entry: {err}") from err
            if kind is None or entry.get("kind") == kind:
                yield entry

