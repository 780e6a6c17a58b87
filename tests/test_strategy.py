"""AnomalyFilter against real ClientApps over an in-process grid: routing, audit, forwarding,
the inner strategy's weighting key, and representative exclusions.

Every client fault and malformed upload at once is in ``test_faults.py``; each malformed upload
is checked at the decoder in ``test_protocol.py``. The clean round that several tests read runs
the default Rt-BiGAN (its drops must be mostly pollution); everywhere else the detector is a
cheap IsolationForest, since its quality is not what those tests check.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, Strategy

from fedsieve.client import FedSieve
from fedsieve.client.app import make_client_app
from fedsieve.server import UploadScreening
from fedsieve.server.audit import read_audit
from fedsieve.server.strategy import REASON_CODES, AnomalyFilter, Exclusion
from fedsieve.shared.detectors import make_detector
from fedsieve.shared.detectors.labels import LabelCheck
from fedsieve.shared.protocol.upload import (
    UPLOAD_ACTION,
    VERDICT_RECORD,
    UploadRequest,
    decode_verdicts,
    encode_upload,
)
from fedsieve.shared.task.classifier import DigitNet, train_local
from fedsieve.simulations.faults import BAD_UPLOADS, faulty_client_app
from fedsieve.simulations.loopback import LoopbackGrid
from fedsieve.simulations.pollution import ID_STRIDE

NODES = [101, 202, 303, 404]
BAD_BY_NAME = {b.name: b for b in BAD_UPLOADS}


def make_grid(settings, files, apps=None):
    """The four clients of ``compact_federation`` as real example ClientApps; ``apps`` replaces
    some of them."""
    app = make_client_app(settings)
    apps = {node: app for node in NODES} | (apps or {})
    return LoopbackGrid(apps, {node: {"data-path": str(path)} for node, path in zip(NODES, files)})


def make_filter(federation, run_dir, inner=None, detector=None, screen_every=0, **options):
    """An upload-mode filter; ``options`` go to its UploadScreening."""
    inner = inner or FedAvg(fraction_evaluate=0.0, min_available_nodes=1)
    screening = UploadScreening(detector or make_detector("iforest", random_state=0),
                                federation.trusted_set.images, **options)
    return AnomalyFilter(inner, screening, run_dir=run_dir, screen_every=screen_every)


def initial_arrays():
    torch.manual_seed(0)
    return ArrayRecord(DigitNet().state_dict())


def run_round(strategy, grid, server_round=1):
    """One training round; returns the train messages, the replies and the aggregate."""
    messages = list(strategy.configure_train(server_round, initial_arrays(), ConfigRecord(),
                                             grid))
    replies = list(grid.send_and_receive(messages))
    return messages, replies, strategy.aggregate_train(server_round, replies)


def audit(run_dir, kind):
    return list(read_audit(run_dir / "audit.jsonl", kind))


def client_data(federation, node):
    client = federation.clients[NODES.index(node)]
    return client.x, client.ids


# -- one clean round with the default detector, shared by the tests that only read it -----------
@pytest.fixture(scope="module")
def clean_round(small_settings, compact_federation, compact_federation_files, tmp_path_factory):
    """Every client honest; the default Rt-BiGAN (shipped meta checkpoint, self-training)."""
    run_dir = tmp_path_factory.mktemp("clean-round")
    strategy = make_filter(compact_federation, run_dir,
                           detector=make_detector("rtbigan", random_state=0))
    messages, replies, (arrays, metrics) = run_round(
        strategy, make_grid(small_settings, compact_federation_files))
    return SimpleNamespace(strategy=strategy, messages=messages, replies=replies, arrays=arrays,
                           metrics=metrics, run_dir=run_dir)


def test_verdicts_routed_to_their_own_node(clean_round, compact_federation):
    assert len(clean_round.messages) == len(NODES) and clean_round.arrays is not None
    for message in clean_round.messages:
        node = message.metadata.dst_node_id
        drops = message.content[VERDICT_RECORD]["drop-ids"].numpy()
        # Every id a node is told to drop is one of its own samples.
        assert (drops // ID_STRIDE == NODES.index(node)).all()
        assert message.content["arrays"] is not None and "config" in message.content
    metrics = clean_round.metrics
    assert metrics["fedsieve-uploaded"] == sum(len(c) for c in compact_federation.clients)
    assert metrics["fedsieve-excluded"] == 0 and clean_round.strategy.history[-1]["excluded"] == {}


def test_pool_contamination_is_recorded_with_its_interval(clean_round, compact_federation):
    record, metrics = clean_round.strategy.history[-1], clean_round.metrics
    estimate = record["contamination"]
    assert set(estimate) == {"estimate", "low", "high", "confidence"}
    assert all(type(v) is float for v in estimate.values())
    assert 0.0 <= estimate["low"] <= estimate["estimate"] <= estimate["high"] <= 1.0
    assert estimate["confidence"] == 0.95
    # The compact federation is 20 % polluted and the default detector finds most of it.
    truth = compact_federation.ground_truth()
    assert abs(estimate["estimate"] - np.mean(list(truth.values()))) < 0.05
    assert (metrics["fedsieve-pool-contamination"], metrics["fedsieve-pool-contamination-low"],
            metrics["fedsieve-pool-contamination-high"]) == (
        estimate["estimate"], estimate["low"], estimate["high"])
    # The per-node estimates are still the flagged shares.
    assert set(record["estimated_contamination"]) == set(NODES)


def test_default_rtbigan_drops_mostly_pollution(clean_round, compact_federation):
    truth = compact_federation.ground_truth()
    verdicts = {e["id"]: e["verdict"] for e in audit(clean_round.run_dir, "sample")}
    dropped = [truth[i] for i, verdict in verdicts.items() if verdict == 1]
    assert np.mean(dropped) > 0.9  # precision: what is dropped is pollution
    assert sum(dropped) > 0.8 * sum(truth.values())  # recall: most pollution is dropped


def test_audit_log_matches_the_drops(clean_round, compact_federation):
    entries = audit(clean_round.run_dir, "sample")
    assert len(entries) == sum(len(c) for c in compact_federation.clients)
    assert len({e["id"] for e in entries}) == len(entries)  # one verdict per id
    for message in clean_round.messages:
        node = message.metadata.dst_node_id
        sent = set(message.content[VERDICT_RECORD]["drop-ids"].numpy().tolist())
        logged = {e["id"] for e in entries if e["node"] == node and e["verdict"] == 1}
        assert sent == logged
    assert all((e["score"] > e["threshold"]) == (e["verdict"] == 1) for e in entries)
    assert audit(clean_round.run_dir, "client") == []  # nobody was excluded
    [pool] = audit(clean_round.run_dir, "pool")  # one per screening
    estimate = clean_round.strategy.history[-1]["contamination"]
    dropped = [e for e in entries if e["verdict"] == 1]
    by_piece = {p: sum(e["piece"] == p for e in dropped) for p in {e["piece"] for e in dropped}}
    assert all(e["value"] > e["cut"] for e in dropped)  # the deciding piece is past its cut
    assert {p: n for p, n in pool.pop("flagged_by").items() if n} == by_piece
    assert pool == {"kind": "pool", "round": 1, "uploaded": len(entries),
                    "flagged": sum(e["verdict"] for e in entries), "label_flagged": 0,
                    "threshold": entries[0]["threshold"],
                    "contamination": estimate["estimate"],
                    "contamination_low": estimate["low"],
                    "contamination_high": estimate["high"], "confidence": 0.95}
    assert pool["contamination_low"] <= pool["contamination"] <= pool["contamination_high"]
    [start] = audit(clean_round.run_dir, "start")
    assert start["round"] == 1 and start["trusted_images"] == len(
        compact_federation.trusted_set.images)


def test_aggregate_is_the_inner_strategys(clean_round):
    # Aggregating the same replies with the bare inner strategy gives the same model.
    plain, _ = FedAvg().aggregate_train(1, clean_round.replies)
    for key in plain:
        np.testing.assert_allclose(clean_round.arrays[key].numpy(), plain[key].numpy(),
                                   rtol=1e-5)
    assert clean_round.metrics["train-loss"] > 0


def test_evaluation_is_forwarded(small_settings, compact_federation, compact_federation_files):
    inner = FedAvg(fraction_evaluate=1.0, min_available_nodes=1, min_evaluate_nodes=1)
    strategy = make_filter(compact_federation, None, inner=inner)
    grid = make_grid(small_settings, compact_federation_files)
    evaluate = list(strategy.configure_evaluate(1, initial_arrays(), ConfigRecord(), grid))
    assert {m.metadata.message_type for m in evaluate} == {"evaluate"}
    assert sorted(m.metadata.dst_node_id for m in evaluate) == NODES


# -- the inner strategy's weighting key ----------------------------------------------------------
def weighted_by_n_app(federation, node, key="n"):
    """A user's ClientApp that trains for real and reports its sample count under ``key``."""
    app = ClientApp()
    sieve = FedSieve(app, lambda ctx: client_data(federation, node), weighted_by_key=key)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = federation.clients[NODES.index(node)]
        x, y = sieve.kept(msg, client.ids, client.x, client.y)
        model = DigitNet()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss = train_local(model, x, y, epochs=1, seed=node)
        return sieve.reply(msg, ArrayRecord(model.state_dict()), num_examples=len(x),
                           metrics={"train-loss": loss})

    return app


def test_follows_the_inner_strategys_weighting_key(compact_federation, tmp_path):
    liar = NODES[3]
    apps = {node: weighted_by_n_app(compact_federation, node) for node in NODES[:3]}
    apps[liar] = faulty_client_app("over-report", lambda ctx: client_data(compact_federation, liar),
                                   weighted_by_key="n")
    strategy = make_filter(compact_federation, tmp_path,
                           inner=FedAvg(fraction_evaluate=0.0, min_available_nodes=1,
                                        weighted_by_key="n"))
    assert strategy.weighted_by_key == "n"
    messages, replies, (arrays, metrics) = run_round(strategy, LoopbackGrid(apps))
    assert len(messages) == len(NODES)
    # The honest clients are aggregated, weighted by "n"; the one claiming more than it kept
    # under "n" is still excluded.
    assert strategy.history[-1]["excluded_codes"] == {liar: "over-reported"}
    assert "under 'n'" in strategy.history[-1]["excluded"][liar]
    kept = {m.metadata.dst_node_id: len(client_data(compact_federation, m.metadata.dst_node_id)[1])
            - len(m.content[VERDICT_RECORD]["drop-ids"].numpy()) for m in messages}
    honest = [r for r in replies if r.metadata.src_node_id != liar]
    assert {r.metadata.src_node_id: r.content["metrics"]["n"] for r in honest} == {
        n: kept[n] for n in NODES[:3]}
    plain, _ = FedAvg(weighted_by_key="n").aggregate_train(1, honest)
    for key in plain:
        np.testing.assert_allclose(arrays[key].numpy(), plain[key].numpy(), rtol=1e-5)
    assert metrics["fedsieve-excluded-nodes"] == [liar] and metrics["train-loss"] > 0


class NoWeightingKey(Strategy):
    """A strategy with no ``weighted_by_key``: it delegates everything to a FedAvg."""

    def __init__(self) -> None:
        self._inner = FedAvg()

    def summary(self) -> None:
        self._inner.summary()

    def configure_train(self, *args):
        return self._inner.configure_train(*args)

    def aggregate_train(self, *args):
        return self._inner.aggregate_train(*args)

    def configure_evaluate(self, *args):
        return self._inner.configure_evaluate(*args)

    def aggregate_evaluate(self, *args):
        return self._inner.aggregate_evaluate(*args)


def test_weighting_key_defaults_to_num_examples(compact_federation):
    assert not hasattr(NoWeightingKey(), "weighted_by_key")
    assert make_filter(compact_federation, None, inner=NoWeightingKey()).weighted_by_key == \
        "num-examples"
    assert make_filter(compact_federation, None).weighted_by_key == "num-examples"


# -- exclusions ----------------------------------------------------------------------------------
def test_exclusion_codes_are_checked():
    exclusion = Exclusion("over-reported", "claims 9 training samples but kept 3")
    assert exclusion.number == REASON_CODES["over-reported"]
    assert str(exclusion) == "over-reported: claims 9 training samples but kept 3"
    with pytest.raises(ValueError, match="unknown exclusion code"):
        Exclusion("over-reporting", "a typo")


def test_excludes_silent_hostile_and_lying_clients(small_settings, compact_federation,
                                                   compact_federation_files, tmp_path):
    liar = ClientApp()
    sieve = FedSieve(liar, lambda ctx: client_data(compact_federation, NODES[1]))

    @liar.train()
    def over_report(msg: Message, context: Context) -> Message:
        return sieve.reply(msg, msg.content["arrays"], num_examples=10_000)

    broken = ClientApp()

    @broken.query(UPLOAD_ACTION)
    def bad_upload(msg: Message, context: Context) -> Message:
        content = encode_upload(*client_data(compact_federation, NODES[2]),
                                UploadRequest.from_content(msg.content))
        content["fedsieve.upload_meta"]["protocol"] = 99
        return Message(content, reply_to=msg)

    grid = make_grid(small_settings, compact_federation_files, {NODES[1]: liar, NODES[2]: broken})
    grid.silent.add(NODES[3])
    strategy = make_filter(compact_federation, tmp_path)
    messages, _, (arrays, metrics) = run_round(strategy, grid)
    assert sorted(m.metadata.dst_node_id for m in messages) == [NODES[0], NODES[1]]
    record = strategy.history[-1]
    assert record["excluded_codes"] == {NODES[1]: "over-reported", NODES[2]: "failed-screening",
                                        NODES[3]: "failed-screening"}
    assert "claims 10000 training samples" in record["excluded"][NODES[1]]
    assert "protocol version 99" in record["excluded"][NODES[2]]
    assert "no reply" in record["excluded"][NODES[3]]
    assert arrays is not None  # the honest client was aggregated
    assert metrics["fedsieve-excluded-nodes"] == NODES[1:]
    assert metrics["fedsieve-excluded-reasons"] == [3, 1, 1]  # integer codes are a contract
    # The audit log carries the same code and reason text.
    entries = {e["node"]: e for e in audit(tmp_path, "client")}
    assert {n: (e["code"], e["reason"]) for n, e in entries.items()} == {
        n: (record["excluded_codes"][n], record["excluded"][n]) for n in NODES[1:]}
    assert all(e["decision"] == "excluded" and e["round"] == 1 for e in entries.values())


def test_invalid_sample_counts_are_excluded_not_fatal(small_settings, compact_federation,
                                                     compact_federation_files, tmp_path):
    """A NaN, infinite or negative count must neither crash the server nor weight the mean."""
    def claiming(node, claim):
        app = ClientApp()
        FedSieve(app, lambda ctx: client_data(compact_federation, node))

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            metrics = MetricRecord({"num-examples": claim})
            return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}),
                           reply_to=msg)

        return app

    claims = {NODES[1]: float("nan"), NODES[2]: float("inf"), NODES[3]: -5}
    apps = {node: claiming(node, claim) for node, claim in claims.items()}
    strategy = make_filter(compact_federation, tmp_path)
    _, _, (arrays, _) = run_round(strategy, make_grid(small_settings, compact_federation_files,
                                                      apps))
    record = strategy.history[-1]
    assert record["excluded_codes"] == dict.fromkeys(NODES[1:], "over-reported")
    assert all("no valid training-sample count under 'num-examples'" in reason
               for reason in record["excluded"].values())
    assert arrays is not None  # the honest client alone


@pytest.mark.parametrize("name", ["nan", "duplicate-ids"])
def test_bad_upload_excludes_only_its_sender(name, small_settings, compact_federation,
                                             compact_federation_files, tmp_path):
    bad, hostile = BAD_BY_NAME[name], NODES[2]
    app = faulty_client_app(f"bad-upload:{name}", lambda ctx: client_data(compact_federation,
                                                                         hostile))
    grid = make_grid(small_settings, compact_federation_files, {hostile: app})
    strategy = make_filter(compact_federation, tmp_path)
    messages, _, (arrays, metrics) = run_round(strategy, grid)
    record = strategy.history[-1]
    assert record["excluded_codes"] == {hostile: "failed-screening"}
    assert re.search(bad.message, record["excluded"][hostile])
    assert metrics["fedsieve-excluded-nodes"] == [hostile] and arrays is not None
    assert {m.metadata.dst_node_id for m in messages} == set(NODES) - {hostile}
    # Every honest sample still has exactly one verdict; the hostile node has none.
    honest = [c for i, c in enumerate(compact_federation.clients) if NODES[i] != hostile]
    assert sorted(e["id"] for e in audit(tmp_path, "sample")) == sorted(
        int(i) for c in honest for i in c.ids)
    assert [(e["node"], e["code"]) for e in audit(tmp_path, "client")] == [
        (hostile, "failed-screening")]


def test_upload_over_the_cap_excludes_its_sender(small_settings, compact_federation,
                                                 compact_federation_files, tmp_path):
    cap = min(len(c) for c in compact_federation.clients)
    too_big = {NODES[i] for i, c in enumerate(compact_federation.clients) if len(c) > cap}
    assert 0 < len(too_big) < len(NODES)  # the partition makes clients of unequal size
    strategy = make_filter(compact_federation, tmp_path, max_upload=cap)
    _, _, (arrays, _) = run_round(strategy, make_grid(small_settings, compact_federation_files))
    record = strategy.history[-1]
    assert record["excluded_codes"] == dict.fromkeys(sorted(too_big), "failed-screening")
    assert arrays is not None
    assert all("exceeds the server's cap" in reason for reason in record["excluded"].values())


def test_user_style_client_app_trains_on_kept_samples(compact_federation, tmp_path):
    """The README integration: a user's own ClientApp with the SDK added."""
    seen = {}
    client = compact_federation.clients[0]
    app = ClientApp()
    sieve = FedSieve(app, samples=lambda ctx: (client.x, client.ids))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        x, y, ids = sieve.kept(msg, client.ids, client.x, client.y, client.ids)
        seen["ids"] = ids
        seen["subset"] = len(sieve.kept_dataset(msg, client.ids, list(range(len(client)))))
        return sieve.reply(msg, msg.content["arrays"], num_examples=len(x))

    strategy = make_filter(compact_federation, tmp_path)
    messages, _, (arrays, _) = run_round(strategy, LoopbackGrid({7: app, 8: app}))
    drops = messages[0].content[VERDICT_RECORD]["drop-ids"].numpy()
    assert len(drops) > 0 and not np.isin(seen["ids"], drops).any()
    assert len(seen["ids"]) == seen["subset"] == len(client) - len(drops)
    assert arrays is not None


def test_upload_fraction_and_rescreening(small_settings, compact_federation,
                                         compact_federation_files, tmp_path):
    grid = make_grid(small_settings, compact_federation_files)
    strategy = make_filter(compact_federation, tmp_path, upload_fraction=0.25, screen_every=1,
                           chunk_size=50)
    run_round(strategy, grid, server_round=1)
    first = audit(tmp_path, "sample")
    total = sum(len(c) for c in compact_federation.clients)
    assert abs(len(first) - 0.25 * total) <= len(NODES)  # a quarter of every client, seeded
    queries = [m for m in grid.sent if m.metadata.message_type.startswith("query")]
    assert len(queries) > len(NODES)  # chunks of 50 need several requests per node
    run_round(strategy, grid, server_round=2)
    assert [h["screened"] for h in strategy.history] == [True, True]
    samples = audit(tmp_path, "sample")
    assert {e["round"] for e in samples} == {1, 2}
    # One pool entry per screening, summing up that screening's sample verdicts.
    pools = audit(tmp_path, "pool")
    assert [p["round"] for p in pools] == [1, 2]
    for pool, record in zip(pools, strategy.history):
        mine = [e for e in samples if e["round"] == pool["round"]]
        assert pool["uploaded"] == len(mine) == record["uploaded"]
        assert pool["flagged"] == sum(e["verdict"] == 1 for e in mine) == record["dropped"]
        assert pool["contamination_low"] <= pool["contamination"] <= pool["contamination_high"]
        assert pool["contamination"] == record["contamination"]["estimate"]


def test_label_check_drops_are_routed_audited_and_counted(small_settings, compact_federation,
                                                          compact_federation_files, tmp_path):
    # The example ClientApp uploads its labels; the label check reads them.
    grid = make_grid(small_settings, compact_federation_files)
    strategy = make_filter(compact_federation, tmp_path,
                           label_check=LabelCheck(epochs=1, min_steps=0, random_state=0))
    messages, _, (_, metrics) = run_round(strategy, grid)
    flagged = strategy.history[0]["label_flagged"]
    assert metrics["fedsieve-label-flagged"] == flagged > 0
    [pool] = audit(tmp_path, "pool")
    assert pool["label_flagged"] == flagged
    samples = audit(tmp_path, "sample")
    assert all("label_flag" in s for s in samples)
    assert sum(s["label_flag"] for s in samples) == flagged
    assert all(s["verdict"] == 1 for s in samples if s["label_flag"])
    # Every label drop reaches its own node's train message.
    dropped = {m.metadata.dst_node_id: set(decode_verdicts(m.content)) for m in messages}
    assert all(s["id"] in dropped[s["node"]] for s in samples if s["label_flag"])
