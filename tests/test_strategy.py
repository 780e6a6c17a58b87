"""AnomalyFilter against real ClientApps over an in-process grid: routing, exclusion, audit."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from fedsieve.client import FedSieve
from fedsieve.client.app import make_client_app
from fedsieve.server.audit import read_audit
from fedsieve.server.strategy import AnomalyFilter
from fedsieve.shared.classifier import DigitNet
from fedsieve.shared.config import RunSettings
from fedsieve.shared.detectors import make_detector
from fedsieve.shared.protocol import UPLOAD_ACTION, VERDICT_RECORD, encode_upload
from fedsieve.simulations.faults import BAD_UPLOADS
from fedsieve.simulations.loopback import LoopbackGrid
from fedsieve.simulations.pollution import ID_STRIDE, build_federation

NODES = [101, 202, 303, 404]


@pytest.fixture(scope="module")
def settings():
    return RunSettings(num_clients=len(NODES), contamination=0.2, seed=1, local_epochs=1)


@pytest.fixture(scope="module")
def federation(settings, mnist_train, fashion_train):
    return build_federation(settings.num_clients, settings.contamination, seed=settings.seed,
                            mnist=mnist_train, fashion=fashion_train)


def make_grid(settings, apps=None):
    app = make_client_app(settings)
    apps = {node: app for node in NODES} | (apps or {})
    configs = {node: {"partition-id": i, "num-partitions": len(NODES)}
               for i, node in enumerate(NODES)}
    return LoopbackGrid(apps, configs)


def make_filter(federation, tmp_path, **kwargs):
    return AnomalyFilter(FedAvg(fraction_evaluate=0.0, min_available_nodes=1),
                         make_detector("iforest", random_state=0),
                         trusted_images=federation.trusted_set.images, run_dir=tmp_path, **kwargs)


def initial_arrays():
    torch.manual_seed(0)
    return ArrayRecord(DigitNet().state_dict())


def run_round(strategy, grid, server_round=1):
    messages = list(strategy.configure_train(server_round, initial_arrays(), ConfigRecord(),
                                             grid))
    replies = grid.send_and_receive(messages)
    return messages, strategy.aggregate_train(server_round, replies)


def test_verdicts_routed_to_their_own_node(settings, federation, tmp_path):
    grid = make_grid(settings)
    strategy = make_filter(federation, tmp_path)
    messages, (arrays, metrics) = run_round(strategy, grid)
    assert len(messages) == len(NODES) and arrays is not None
    for message in messages:
        node = message.metadata.dst_node_id
        drops = message.content[VERDICT_RECORD]["drop-ids"].numpy()
        # Every id a node is told to drop is one of its own samples.
        assert (drops // ID_STRIDE == NODES.index(node)).all()
        assert message.content["arrays"] is not None and "config" in message.content
    assert metrics["fedsieve-uploaded"] == sum(len(c) for c in federation.clients)
    assert metrics["fedsieve-excluded"] == 0
    # Most of the pollution is dropped (IsolationForest under the default threshold finds ~80 %
    # of it, see benchmarks/results/detection.md), and most of what is dropped is pollution.
    truth = federation.ground_truth()
    dropped = [e["id"] for e in read_audit(tmp_path / "audit.jsonl") if e.get("verdict") == 1]
    assert sum(truth[i] for i in dropped) > 0.7 * sum(truth.values())
    assert np.mean([truth[i] for i in dropped]) > 0.5


def test_audit_log_matches_the_drops(settings, federation, tmp_path):
    grid = make_grid(settings)
    strategy = make_filter(federation, tmp_path)
    messages, _ = run_round(strategy, grid)
    entries = [e for e in read_audit(tmp_path / "audit.jsonl") if e["kind"] == "sample"]
    assert len(entries) == sum(len(c) for c in federation.clients)
    assert len({e["id"] for e in entries}) == len(entries)  # one verdict per id
    for message in messages:
        node = message.metadata.dst_node_id
        sent = set(message.content[VERDICT_RECORD]["drop-ids"].numpy().tolist())
        logged = {e["id"] for e in entries if e["node"] == node and e["verdict"] == 1}
        assert sent == logged
    assert all((e["score"] > e["threshold"]) == (e["verdict"] == 1) for e in entries)


def test_forwards_what_it_does_not_change(settings, federation, tmp_path):
    grid = make_grid(settings)
    inner = FedAvg(fraction_evaluate=1.0, min_available_nodes=1, min_evaluate_nodes=1)
    strategy = AnomalyFilter(inner, make_detector("iforest", random_state=0),
                             trusted_images=federation.trusted_set.images)
    evaluate = list(strategy.configure_evaluate(1, initial_arrays(), ConfigRecord(), grid))
    assert {m.metadata.message_type for m in evaluate} == {"evaluate"}
    assert len(evaluate) == len(NODES)
    messages, (arrays, metrics) = run_round(strategy, grid)
    # Re-aggregating the same replies with the bare inner strategy gives the same model.
    replies = grid.send_and_receive(messages)
    plain, _ = FedAvg().aggregate_train(1, replies)
    for key in plain:
        np.testing.assert_allclose(arrays[key].numpy(), plain[key].numpy(), rtol=1e-5)
    assert metrics["train-loss"] > 0


def test_excludes_silent_hostile_and_polluted_clients(settings, federation, tmp_path):
    liar = ClientApp()
    FedSieve(liar, lambda ctx: (federation.clients[1].x, federation.clients[1].ids))

    @liar.train()
    def over_report(msg: Message, context: Context) -> Message:
        return FedSieve.reply(msg, msg.content["arrays"], num_examples=10_000)

    broken = ClientApp()

    @broken.query(UPLOAD_ACTION)
    def bad_upload(msg: Message, context: Context) -> Message:
        content = encode_upload(federation.clients[2].x, federation.clients[2].ids,
                                replace_request(msg))
        content["fedsieve.upload_meta"]["protocol"] = 99
        return Message(content, reply_to=msg)

    grid = make_grid(settings, {NODES[1]: liar, NODES[2]: broken})
    grid.silent.add(NODES[3])
    strategy = make_filter(federation, tmp_path)
    messages, (arrays, metrics) = run_round(strategy, grid)
    assert sorted(m.metadata.dst_node_id for m in messages) == [NODES[0], NODES[1]]
    excluded = strategy.history[-1]["excluded"]
    assert set(excluded) == {NODES[1], NODES[2], NODES[3]}
    assert excluded[NODES[1]].startswith("over-reported")
    assert "protocol version 99" in excluded[NODES[2]]
    assert "no reply" in excluded[NODES[3]]
    assert arrays is not None  # the honest client was aggregated
    assert sorted(metrics["fedsieve-excluded-nodes"]) == sorted(NODES[1:])
    reasons = {e["node"]: e["reason"] for e in read_audit(tmp_path / "audit.jsonl")
               if e["kind"] == "client"}
    assert set(reasons) == set(NODES[1:])


def hostile_app(federation, mutate):
    """A client whose upload reply is built from real data, then broken by ``mutate``."""
    app = ClientApp()

    @app.query(UPLOAD_ACTION)
    def upload(msg: Message, context: Context) -> Message:
        client = federation.clients[2]
        return Message(mutate(encode_upload(client.x, client.ids, replace_request(msg))),
                       reply_to=msg)

    return app


@pytest.mark.parametrize("bad", BAD_UPLOADS, ids=[b.name for b in BAD_UPLOADS])
def test_bad_upload_excludes_only_its_sender(bad, settings, federation, tmp_path):
    grid = make_grid(settings, {NODES[2]: hostile_app(federation, bad.mutate)})
    strategy = make_filter(federation, tmp_path)
    messages, (arrays, metrics) = run_round(strategy, grid)
    excluded = strategy.history[-1]["excluded"]
    assert list(excluded) == [NODES[2]] and re.search(bad.message, excluded[NODES[2]])
    assert metrics["fedsieve-excluded-nodes"] == [NODES[2]] and arrays is not None
    assert {m.metadata.dst_node_id for m in messages} == set(NODES) - {NODES[2]}
    # Every honest sample still has exactly one verdict; the hostile node has none.
    entries = [e for e in read_audit(tmp_path / "audit.jsonl") if e["kind"] == "sample"]
    honest = [c for i, c in enumerate(federation.clients) if i != 2]
    assert sorted(e["id"] for e in entries) == sorted(int(i) for c in honest for i in c.ids)
    reasons = [e for e in read_audit(tmp_path / "audit.jsonl") if e["kind"] == "client"]
    assert [(e["node"], e["decision"]) for e in reasons] == [(NODES[2], "excluded")]


def test_upload_over_the_cap_excludes_its_sender(settings, federation, tmp_path):
    cap = min(len(c) for c in federation.clients)
    too_big = {NODES[i] for i, c in enumerate(federation.clients) if len(c) > cap}
    assert 0 < len(too_big) < len(NODES)  # the partition makes clients of unequal size
    strategy = make_filter(federation, tmp_path, max_upload=cap)
    _, (arrays, _) = run_round(strategy, make_grid(settings))
    excluded = strategy.history[-1]["excluded"]
    assert set(excluded) == too_big and arrays is not None
    assert all("cap" in reason for reason in excluded.values())


def replace_request(msg):
    from fedsieve.shared.protocol import UploadRequest

    return UploadRequest.from_content(msg.content)


def test_too_polluted_client_is_excluded(settings, mnist_train, fashion_train, tmp_path):
    rates = [0.1, 0.1, 0.1, 1.0]
    polluted = build_federation(4, rates=rates, seed=1, mnist=mnist_train,
                                fashion=fashion_train)
    # Clients rebuild the same federation from these settings via explicit data files.
    configs = {}
    for i, (node, client) in enumerate(zip(NODES, polluted.clients)):
        path = tmp_path / f"client_{i}.npz"
        np.savez(path, **client.public_arrays())
        configs[node] = {"data-path": str(path)}
    grid = LoopbackGrid({n: make_client_app(settings) for n in NODES}, configs)
    strategy = make_filter(polluted, tmp_path, max_client_contamination=0.5)
    messages, _ = run_round(strategy, grid)
    excluded = strategy.history[-1]["excluded"]
    assert list(excluded) == [NODES[3]] and excluded[NODES[3]].startswith("too-polluted")
    assert NODES[3] not in {m.metadata.dst_node_id for m in messages}


def test_user_style_client_app_trains_on_kept_samples(federation, tmp_path):
    """The README integration: a user's own ClientApp with the SDK added."""
    seen = {}
    app = ClientApp()
    sieve = FedSieve(app, samples=lambda ctx: (federation.clients[0].x, federation.clients[0].ids))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        x, y, ids = sieve.kept(msg, federation.clients[0].ids, federation.clients[0].x,
                               federation.clients[0].y, federation.clients[0].ids)
        seen["ids"] = ids
        subset = sieve.kept_dataset(msg, federation.clients[0].ids,
                                    list(range(len(federation.clients[0]))))
        seen["subset"] = len(subset)
        return sieve.reply(msg, msg.content["arrays"], num_examples=len(x))

    grid = LoopbackGrid({7: app, 8: app})
    strategy = make_filter(federation, tmp_path)
    messages, (arrays, metrics) = run_round(strategy, grid)
    drops = messages[0].content[VERDICT_RECORD]["drop-ids"].numpy()
    assert len(drops) > 0 and not np.isin(seen["ids"], drops).any()
    assert len(seen["ids"]) == seen["subset"] == len(federation.clients[0]) - len(drops)
    assert arrays is not None


def test_upload_fraction_and_rescreening(settings, federation, tmp_path):
    grid = make_grid(settings)
    strategy = make_filter(federation, tmp_path, upload_fraction=0.25, screen_every=1,
                           chunk_size=50)
    run_round(strategy, grid, server_round=1)
    first = [e for e in read_audit(tmp_path / "audit.jsonl") if e["kind"] == "sample"]
    total = sum(len(c) for c in federation.clients)
    assert abs(len(first) - 0.25 * total) <= len(NODES)  # a quarter of every client, seeded
    queries = [m for m in grid.sent if m.metadata.message_type.startswith("query")]
    assert len(queries) > len(NODES)  # chunks of 50 need several requests per node
    run_round(strategy, grid, server_round=2)
    assert [h["screened"] for h in strategy.history] == [True, True]
    rounds = {e["round"] for e in read_audit(tmp_path / "audit.jsonl") if e["kind"] == "sample"}
    assert rounds == {1, 2}
