"""The audit log: every screening decision, appended and flushed, so every drop is reviewable.

One JSON object per line in ``<run dir>/audit.jsonl``:

- ``{"kind": "sample", "round", "node", "id", "score", "verdict", "threshold"}`` for each
  uploaded sample (verdict 1 = dropped as an anomaly);
- ``{"kind": "client", "round", "node", "decision", "reason", ...}`` for each client-level
  decision (kept, or excluded with the reason).

The file is only ever appended to, and flushed to disk after each round, so a server that
restarts between rounds finds a consistent log and continues it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from logging import WARNING
from pathlib import Path

import numpy as np
from flwr.common.logger import log


class AuditLog:
    """Append-only JSONL writer.

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
        self._append([json.dumps({"kind": "start", "round": server_round,
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "pid": os.getpid(), "fedsieve": fedsieve, **details})])

    def write_samples(self, server_round: int, node_id: int, ids: np.ndarray,
                      scores: np.ndarray, verdicts: np.ndarray, threshold: float) -> None:
        lines = (
            json.dumps({"kind": "sample", "round": server_round, "node": node_id,
                        "id": int(i), "score": float(s), "verdict": int(v),
                        "threshold": float(threshold)})
            for i, s, v in zip(ids, scores, verdicts)
        )
        self._append(lines)

    def write_client(self, server_round: int, node_id: int, decision: str,
                     reason: str = "", **details: float | int | str) -> None:
        self._append([json.dumps({"kind": "client", "round": server_round, "node": node_id,
                                  "decision": decision, "reason": reason, **details})])

    def _append(self, lines) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def read_audit(path: str | Path) -> Iterator[dict]:
    """Iterate over the entries of an audit log (``kind`` says which: sample, client, start)."""
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
