"""The audit log's pool entries: one per screening, readable by kind beside the others."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedsieve.server.audit import KINDS, AuditLog, read_audit

ESTIMATE = {"estimate": 0.2, "low": 0.15, "high": 0.26, "confidence": 0.95}


def test_pool_entry_round_trips_and_filters_by_kind(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.write_start(1, detector="iforest")
    log.write_samples(1, 7, np.arange(3), np.array([0.1, 0.9, 0.2]), np.array([0, 1, 0]), 0.5)
    log.write_pool(1, np.int64(3), np.int64(1), np.float32(0.5),
                   {k: np.float64(v) for k, v in ESTIMATE.items()},
                   flagged_by={"typicality": np.int64(1), "global": 0})
    log.write_exclusion(1, 8, "failed-screening", "failed-screening: no reply")
    assert "pool" in KINDS
    [pool] = read_audit(tmp_path / "audit.jsonl", "pool")
    assert pool == {"kind": "pool", "round": 1, "uploaded": 3, "flagged": 1, "label_flagged": 0,
                    "flagged_by": {"typicality": 1, "global": 0}, "threshold": 0.5,
                    "contamination": 0.2, "contamination_low": 0.15,
                    "contamination_high": 0.26, "confidence": 0.95}
    # The other kinds read as before, and all entries in the order written.
    assert len(list(read_audit(tmp_path / "audit.jsonl", "sample"))) == 3
    assert [e["node"] for e in read_audit(tmp_path / "audit.jsonl", "client")] == [8]
    assert [e["kind"] for e in read_audit(tmp_path / "audit.jsonl")] == [
        "start", "sample", "sample", "sample", "pool", "client"]
    with pytest.raises(ValueError, match="kind must be one of start, sample, pool, client"):
        list(read_audit(tmp_path / "audit.jsonl", "pools"))


def test_an_empty_pool_has_a_null_threshold(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.write_pool(2, 0, 0, math.nan, {"estimate": 0.0, "low": 0.0, "high": 1.0,
                                       "confidence": 0.95})
    line = (tmp_path / "audit.jsonl").read_text()
    assert json.loads(line)["threshold"] is None and "NaN" not in line
