"""Faults against the real AnomalyFilter: every malformed upload and client fault at once (each
excludes exactly its sender, with the right code), a server restart between rounds (the audit
log stays consistent), a broken meta checkpoint at start-up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedsieve.client.app import make_client_app
from fedsieve.server import UploadScreening
from fedsieve.server.audit import read_audit
from fedsieve.server.factory import build_strategy
from fedsieve.server.strategy import REASON_CODES, AnomalyFilter
from fedsieve.shared.config import FilterSettings
from fedsieve.shared.detectors import make_detector
from fedsieve.shared.detectors.checkpoint import CheckpointError, default_meta_checkpoint
from fedsieve.shared.task.classifier import DigitNet
from fedsieve.simulations.faults import (
    CLIENT_FAULTS,
    FAULT_NAMES,
    expected_code,
    expected_reason,
    faulty_client_app,
)
from fedsieve.simulations.loopback import LoopbackGrid

NODES = [11, 22, 33, 44]


def make_filter(federation, run_dir):
    return AnomalyFilter(FedAvg(fraction_evaluate=0.0, min_available_nodes=1),
                         UploadScreening(make_detector("iforest", random_state=0),
                                         federation.trusted_set.images), run_dir=run_dir)


def run_round(strategy, grid, server_round=1):
    torch.manual_seed(0)
    arrays = ArrayRecord(DigitNet().state_dict())
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    return messages, strategy.aggregate_train(server_round, grid.send_and_receive(messages))


def audit(run_dir, kind):
    return list(read_audit(run_dir / "audit.jsonl", kind))


def write_client(path: Path, x, y, ids) -> dict:
    np.savez(path, x=x, y=y, ids=ids)
    return {"data-path": str(path)}


# -- everything at once --------------------------------------------------------------------------
HONEST = 3


@pytest.fixture(scope="module")
def crowd(federation_builder):
    """One client per fault, one whose data is all pollution, then the honest ones."""
    rates = [0.2] * len(FAULT_NAMES) + [1.0] + [0.2] * HONEST
    return federation_builder(len(rates), rates=rates, seed=5)


def test_every_fault_at_once_excludes_exactly_its_sender(crowd, small_settings, tmp_path):
    """Every malformed upload and client fault in one federation, beside a client whose data is
    all pollution, one that holds no samples, and (round 2) one that joins after screening:
    each is excluded with its own code, every other client is kept."""
    nodes = list(range(1, len(crowd.clients) + 1))
    faulty = dict(zip(nodes, FAULT_NAMES))
    polluted, honest = nodes[len(FAULT_NAMES)], nodes[len(FAULT_NAMES) + 1:]
    empty, late = nodes[-1] + 1, nodes[-1] + 2
    app = make_client_app(small_settings)
    apps, configs = {}, {}
    for node, client in zip(nodes, crowd.clients):
        if node in faulty:
            apps[node] = faulty_client_app(faulty[node], lambda ctx, c=client: (c.x, c.ids))
        else:
            apps[node] = app
            configs[node] = write_client(tmp_path / f"client_{node}.npz",
                                         **client.public_arrays())
    apps[empty] = app
    configs[empty] = write_client(tmp_path / "empty.npz", np.empty((0, 28, 28), np.uint8),
                                  np.empty(0, np.int64), np.empty(0, np.int64))
    grid = LoopbackGrid(apps, configs)
    strategy = make_filter(crowd, tmp_path)

    expected = {node: expected_code(fault) for node, fault in faulty.items()}
    expected |= {polluted: "too-polluted", empty: "nothing-kept"}
    messages, (arrays, metrics) = run_round(strategy, grid)
    record = strategy.history[-1]
    assert record["excluded_codes"] == dict(sorted(expected.items()))
    for node, fault in faulty.items():
        assert re.search(expected_reason(fault), record["excluded"][node]), (fault, record)
    # The honest clients, and the faulty ones that only fail later, are sent their verdicts;
    # only the honest ones are aggregated.
    trains = {n for n, f in faulty.items() if expected_code(f) != "failed-screening"}
    assert {m.metadata.dst_node_id for m in messages} == set(honest) | trains
    assert arrays is not None and metrics["fedsieve-excluded-nodes"] == sorted(expected)
    assert metrics["fedsieve-excluded-reasons"] == [REASON_CODES[expected[n]]
                                                    for n in sorted(expected)]
    # Every sample the server received has exactly one verdict; a client that failed
    # screening has none.
    screened = [c for n, c in zip(nodes, crowd.clients)
                if expected.get(n) != "failed-screening"]
    assert sorted(e["id"] for e in audit(tmp_path, "sample")) == sorted(
        int(i) for c in screened for i in c.ids)
    entries = audit(tmp_path, "client")
    assert sorted((e["node"], e["code"], e["reason"]) for e in entries) == sorted(
        (n, expected[n], record["excluded"][n]) for n in expected)

    # Round 2, no new screening: a node that joined since is not screened; the rest as before.
    grid.add_node(late, app, configs[honest[0]])
    _, (arrays, _) = run_round(strategy, grid, server_round=2)
    assert strategy.history[-1]["excluded_codes"] == dict(sorted(
        (expected | {late: "not-screened"}).items()))
    assert arrays is not None
    # Every reason an upload-mode round can give (spot checks are local mode's:
    # tests/test_local_screening.py).
    assert set(REASON_CODES) - {"failed-spot-check"} == set(
        strategy.history[-1]["excluded_codes"].values())


# -- one fault in each phase, in a small federation ----------------------------------------------
@pytest.mark.parametrize("fault", ["upload-crash", "train-crash"])
def test_client_fault_excludes_only_that_client(fault, small_settings, compact_federation,
                                                compact_federation_files, tmp_path):
    faulty, client = NODES[2], compact_federation.clients[2]
    apps = {n: make_client_app(small_settings) for n in NODES}
    apps[faulty] = faulty_client_app(fault, lambda ctx: (client.x, client.ids))
    grid = LoopbackGrid(apps, {n: {"data-path": str(p)}
                               for n, p in zip(NODES, compact_federation_files)})
    strategy = make_filter(compact_federation, tmp_path)
    messages, (arrays, metrics) = run_round(strategy, grid)
    record = strategy.history[-1]
    assert record["excluded_codes"] == {faulty: CLIENT_FAULTS[fault].code}
    assert re.search(CLIENT_FAULTS[fault].message, record["excluded"][faulty])
    assert arrays is not None  # the three honest clients were aggregated
    assert metrics["fedsieve-excluded-reasons"] == [REASON_CODES[CLIENT_FAULTS[fault].code]]
    # A client that failed screening has no verdicts; one that failed later keeps the
    # verdicts it was sent.
    uploaded = [c for n, c in zip(NODES, compact_federation.clients)
                if n != faulty or fault == "train-crash"]
    assert sorted(e["id"] for e in audit(tmp_path, "sample")) == sorted(
        int(i) for c in uploaded for i in c.ids)
    assert [(e["node"], e["code"]) for e in audit(tmp_path, "client")] == [
        (faulty, CLIENT_FAULTS[fault].code)]


# -- restarts and start-up -----------------------------------------------------------------------
def test_server_restart_between_rounds_keeps_the_audit_log_consistent(
        small_settings, compact_federation, compact_federation_files, tmp_path):
    log = tmp_path / "audit.jsonl"
    app = make_client_app(small_settings)
    grid = LoopbackGrid({n: app for n in NODES}, {n: {"data-path": str(p)}
                                                  for n, p in zip(NODES, compact_federation_files)})
    run_round(make_filter(compact_federation, tmp_path), grid)
    before = log.read_bytes()
    # The server dies in the middle of writing round 2's first line.
    torn = b'{"kind": "sample", "round": 2, "node": 11, "id"'
    with log.open("ab") as handle:
        handle.write(torn)
    # A reader of the crashed log skips the torn line.
    assert list(read_audit(log)) == [json.loads(line) for line in before.decode().splitlines()]
    restarted = make_filter(compact_federation, tmp_path)
    _, (arrays, _) = run_round(restarted, grid, server_round=2)
    assert arrays is not None
    after = log.read_bytes()
    assert after.startswith(before)  # append-only: round 1 is untouched
    entries = [json.loads(line) for line in after.decode().splitlines()]  # all complete
    assert entries == list(read_audit(log))
    assert [e["round"] for e in entries if e["kind"] == "start"] == [1, 2]
    assert (tmp_path / "audit.jsonl.torn").read_bytes().startswith(torn)
    total = sum(len(c) for c in compact_federation.clients)
    for server_round in (1, 2):  # each screening gave every sample exactly one verdict
        ids = [e["id"] for e in entries if e["kind"] == "sample" and e["round"] == server_round]
        assert len(ids) == len(set(ids)) == total


def test_a_broken_line_inside_the_audit_log_is_an_error(tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_text('{"kind": "start", "round": 1}\n{"kind": "sam\n{"kind": "start", "round": 2}\n')
    with pytest.raises(ValueError, match=r"audit.jsonl:2 is not a JSON audit entry"):
        list(read_audit(log))


@pytest.mark.parametrize("damage", ["truncate-weights", "foreign-version", "missing"])
def test_broken_meta_checkpoint_stops_the_server_before_any_client(damage, compact_federation,
                                                                  tmp_path):
    source = default_meta_checkpoint()
    json_path, weights = tmp_path / "meta.json", tmp_path / "meta.safetensors"
    header = json.loads(source.read_text())
    weights_bytes = source.with_suffix(".safetensors").read_bytes()
    if damage == "truncate-weights":
        weights_bytes = weights_bytes[: len(weights_bytes) // 3]
    if damage == "foreign-version":
        header["format_version"] = 99
    if damage != "missing":
        json_path.write_text(json.dumps(header))
        weights.write_bytes(weights_bytes)
    settings = FilterSettings(detector="rtbigan", checkpoint=str(json_path))
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        build_strategy(settings, 2, tmp_path, trusted_images=compact_federation.trusted_set.images)
