"""Faults against the real AnomalyFilter: crashing, silent and lying clients, a server restart
between rounds (the audit log stays consistent), a broken meta checkpoint at start-up."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedsieve.client.app import make_client_app
from fedsieve.server.app import build_strategy
from fedsieve.server.audit import read_audit
from fedsieve.server.strategy import REASON_CODES, AnomalyFilter
from fedsieve.shared.checkpoint import CheckpointError, default_meta_checkpoint
from fedsieve.shared.classifier import DigitNet
from fedsieve.shared.config import RunSettings
from fedsieve.shared.detectors import make_detector
from fedsieve.simulations.faults import CLIENT_FAULTS, expected_reason, faulty_client_app
from fedsieve.simulations.loopback import LoopbackGrid
from fedsieve.simulations.pollution import build_federation

NODES = [11, 22, 33, 44]
FAULTY = NODES[2]


@pytest.fixture(scope="module")
def settings():
    return RunSettings(num_clients=len(NODES), contamination=0.2, seed=2, local_epochs=1)


@pytest.fixture(scope="module")
def federation(settings, mnist_train, fashion_train):
    return build_federation(settings.num_clients, settings.contamination, seed=settings.seed,
                            mnist=mnist_train, fashion=fashion_train)


def make_grid(settings, federation, fault=None):
    app = make_client_app(settings)
    apps = {node: app for node in NODES}
    if fault:
        client = federation.clients[NODES.index(FAULTY)]
        apps[FAULTY] = faulty_client_app(fault, lambda ctx: (client.x, client.ids))
    configs = {n: {"partition-id": i, "num-partitions": len(NODES)} for i, n in enumerate(NODES)}
    return LoopbackGrid(apps, configs)


def make_filter(federation, run_dir):
    return AnomalyFilter(FedAvg(fraction_evaluate=0.0, min_available_nodes=1),
                         make_detector("iforest", random_state=0),
                         trusted_images=federation.trusted_set.images, run_dir=run_dir)


def run_round(strategy, grid, server_round=1):
    torch.manual_seed(0)
    arrays = ArrayRecord(DigitNet().state_dict())
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    return messages, strategy.aggregate_train(server_round, grid.send_and_receive(messages))


def samples(run_dir):
    return [e for e in read_audit(run_dir / "audit.jsonl") if e["kind"] == "sample"]


@pytest.mark.parametrize("fault", sorted(CLIENT_FAULTS))
def test_client_fault_excludes_only_that_client(fault, settings, federation, tmp_path):
    strategy = make_filter(federation, tmp_path)
    messages, (arrays, metrics) = run_round(strategy, make_grid(settings, federation, fault))
    excluded = strategy.history[-1]["excluded"]
    assert list(excluded) == [FAULTY], excluded
    assert re.search(expected_reason(fault), excluded[FAULTY])
    assert arrays is not None  # the three honest clients were aggregated
    assert metrics["fedsieve-excluded-nodes"] == [FAULTY]
    assert metrics["fedsieve-excluded-reasons"] == [REASON_CODES[excluded[FAULTY].split(":")[0]]]
    # Every sample the server received has exactly one verdict; a client that failed
    # screening has none, one that failed later keeps the verdicts it was sent.
    entries = samples(tmp_path)
    uploaded = [c for n, c in zip(NODES, federation.clients)
                if n != FAULTY or fault.startswith("train") or fault == "over-report"]
    assert sorted(e["id"] for e in entries) == sorted(int(i) for c in uploaded for i in c.ids)
    decisions = [(e["node"], e["decision"]) for e in read_audit(tmp_path / "audit.jsonl")
                 if e["kind"] == "client"]
    assert decisions == [(FAULTY, "excluded")]


def test_every_fault_at_once_in_a_larger_federation(settings, mnist_train, fashion_train,
                                                    tmp_path):
    faults = sorted(CLIENT_FAULTS)
    nodes = list(range(1, len(faults) + 4))
    federation = build_federation(len(nodes), 0.2, seed=5, mnist=mnist_train,
                                  fashion=fashion_train)
    app = make_client_app(replace(settings, num_clients=len(nodes), seed=5))
    apps = {n: app for n in nodes}
    for node, fault in zip(nodes, faults):
        client = federation.clients[node - 1]
        apps[node] = faulty_client_app(fault, lambda ctx, c=client: (c.x, c.ids))
    grid = LoopbackGrid(apps, {n: {"partition-id": n - 1, "num-partitions": len(nodes)}
                               for n in nodes})
    strategy = make_filter(federation, tmp_path)
    _, (arrays, _) = run_round(strategy, grid)
    excluded = strategy.history[-1]["excluded"]
    assert set(excluded) == set(nodes[:len(faults)]) and arrays is not None
    for node, fault in zip(nodes, faults):
        assert re.search(expected_reason(fault), excluded[node])


def test_server_restart_between_rounds_keeps_the_audit_log_consistent(settings, federation,
                                                                      tmp_path):
    log = tmp_path / "audit.jsonl"
    run_round(make_filter(federation, tmp_path), make_grid(settings, federation))
    before = log.read_bytes()
    # The server dies in the middle of writing round 2's first line.
    with log.open("ab") as handle:
        handle.write(b'{"kind": "sample", "round": 2, "node": 11, "id"')
    restarted = make_filter(federation, tmp_path)
    _, (arrays, _) = run_round(restarted, make_grid(settings, federation), server_round=2)
    assert arrays is not None
    after = log.read_bytes()
    assert after.startswith(before)  # append-only: round 1 is untouched
    entries = [json.loads(line) for line in after.decode().splitlines()]  # all complete
    assert [e["round"] for e in entries if e["kind"] == "start"] == [1, 2]
    torn = (tmp_path / "audit.jsonl.torn").read_text()
    assert torn.startswith('{"kind": "sample", "round": 2, "node": 11, "id"')
    total = sum(len(c) for c in federation.clients)
    for server_round in (1, 2):  # each screening gave every sample exactly one verdict
        ids = [e["id"] for e in entries if e["kind"] == "sample" and e["round"] == server_round]
        assert len(ids) == len(set(ids)) == total


@pytest.mark.parametrize("damage", ["truncate-weights", "foreign-version", "missing"])
def test_broken_meta_checkpoint_stops_the_server_before_any_client(damage, tmp_path):
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
    settings = RunSettings(detector="rtbigan", checkpoint=str(json_path))
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        build_strategy(settings, 2, tmp_path)
