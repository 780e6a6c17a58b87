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
from collections.abc import Iterator
from pathlib import Path

import numpy as np


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
    """Iterate over the entries of an audit log."""
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
