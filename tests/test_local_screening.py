"""Local screening: the detector goes to the clients, and no image comes back.

The round tests drive the AnomalyFilter through real example ClientApps (in process, with
:class:`~fedsieve.simulations.loopback.LoopbackGrid`) and inspect every message each way (the
one with federated self-training is marked slow: ~1 min); the slowest runs Flower's
simulation engine in local mode.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from sklearn.metrics import roc_auc_score

from fedsieve.client.app import make_client_app
from fedsieve.client.sdk import FedSieve
from fedsieve.client.task import load_local_data
from fedsieve.server import AnomalyFilter, LocalScreening
from fedsieve.server.audit import read_audit
from fedsieve.server.factory import build_screening
from fedsieve.server.local import content_bytes
from fedsieve.shared.config import FilterSettings, RunSettings
from fedsieve.shared.detectors import RtBiGAN, make_detector
from fedsieve.shared.detectors.checkpoint import CheckpointError
from fedsieve.shared.detectors.persist import detector_from_bytes, detector_to_bytes
from fedsieve.shared.protocol.local import (
    SCORE_ACTION,
    SCORES_RECORD,
    SELF_TRAIN_ACTION,
    SPOT_CHECK_ACTION,
    decode_scores,
    decode_update,
    encode_scores,
    encode_update,
    message_type,
)
from fedsieve.shared.protocol.upload import UPLOAD_MESSAGE_TYPE, VERDICT_RECORD, ProtocolError
from fedsieve.shared.task.classifier import DigitNet
from fedsieve.simulations.loopback import LoopbackGrid
from fedsieve.simulations.pollution import ID_STRIDE

NODES = [101, 202, 303, 404]
#: Small enough for a plain pytest: adaptation, one federated round of 300 steps a client.
LOCAL = {"local_rounds": 1, "local_steps": 300}


class RecordingGrid(LoopbackGrid):
    """A LoopbackGrid that keeps every reply beside every message it delivered."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.replies += replies
        return replies


def make_grid(settings, files, apps=None, nodes=NODES) -> RecordingGrid:
    app = make_client_app(settings)
    apps = {node: app for node in nodes} | (apps or {})
    return RecordingGrid(apps, {n: {"data-path": str(p)} for n, p in zip(nodes, files)})


def run_round(strategy, grid):
    torch.manual_seed(0)
    messages = list(strategy.configure_train(1, ArrayRecord(DigitNet().state_dict()),
                                             ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages))
    return messages, strategy.aggregate_train(1, replies)


def local_filter(federation, run_dir, **options):
    """A local-mode filter; ``options`` go to its LocalScreening."""
    screening = LocalScreening(make_detector("rtbigan", random_state=0),
                               federation.trusted_set.images, **{**LOCAL, **options})
    return AnomalyFilter(FedAvg(fraction_evaluate=0.0, min_available_nodes=1), screening,
                         run_dir=run_dir)


@pytest.fixture(scope="module")
def local_round(small_settings, compact_federation, compact_federation_files,
                tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local-round")
    strategy = local_filter(compact_federation, run_dir)
    grid = make_grid(small_settings, compact_federation_files)
    messages, (arrays, metrics) = run_round(strategy, grid)
    return SimpleNamespace(strategy=strategy, grid=grid, messages=messages, arrays=arrays,
                           run_dir=run_dir)


# -- the detector's side --------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_rtbigan(detector_data):
    d = detector_data
    return RtBiGAN(self_training_rounds=1, steps_per_round=20, random_state=0).fit(
        d.x, d.trusted)


def test_cut_fitted_on_pooled_evidence_gives_the_fit_verdicts(fitted_rtbigan, detector_data):
    det = fitted_rtbigan
    labels, scores = det.labels_.copy(), det.decision_scores_.copy()
    evidence = det.score_evidence(detector_data.x)
    assert evidence.shape == (len(detector_data.x), len(det.evidence_names_))
    # As the clients send it: float16, split over clients, in another order.
    order = np.random.default_rng(0).permutation(len(evidence))
    refit = detector_from_bytes(*detector_to_bytes(det))
    refit.fit_cut(evidence[order].astype(np.float16), detector_data.trusted)
    assert np.mean(refit.labels_ == labels[order]) >= 0.995
    assert abs(roc_auc_score(detector_data.y[order], refit.decision_scores_)
               - roc_auc_score(detector_data.y, scores)) < 0.002
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        refit.fit_cut(evidence[:, :2], detector_data.trusted)


def test_shipped_detector_scores_as_the_server_does(fitted_rtbigan, detector_data):
    weights, header = detector_to_bytes(fitted_rtbigan)
    shipped = detector_from_bytes(weights, header)
    np.testing.assert_allclose(shipped.decision_function(detector_data.x_test[:64]),
                               fitted_rtbigan.decision_function(detector_data.x_test[:64]),
                               rtol=1e-6)
    for bad in (weights[:100], b"\x00" * 64):
        with pytest.raises(CheckpointError, match="unreadable"):
            detector_from_bytes(bad, header)
    with pytest.raises(CheckpointError):
        detector_from_bytes(weights, "{not json")


# -- the wire -------------------------------------------------------------------------------
def test_score_reports_are_validated():
    ids = np.arange(5, dtype=np.int64)
    good = encode_scores(ids, np.zeros((5, 3)), 5)
    assert decode_scores(good, 3).evidence.shape == (5, 3)
    with pytest.raises(ProtocolError, match=r"shape \(5, 2\)"):
        decode_scores(good, 2)
    evidence = np.zeros((5, 3))
    evidence[2, 1] = np.nan
    with pytest.raises(ProtocolError, match="NaN"):
        decode_scores(encode_scores(ids, evidence, 5), 3)
    with pytest.raises(ProtocolError, match="duplicate ids"):
        decode_scores(encode_scores(np.zeros(5, np.int64), np.zeros((5, 3)), 5), 3)
    with pytest.raises(ProtocolError, match="num-samples"):
        decode_scores(encode_scores(ids, np.zeros((5, 3)), 7), 3)
    with pytest.raises(ProtocolError, match="lacks the 'fedsieve"):
        decode_scores(RecordDict({}), 3)


def test_a_clients_training_seed_comes_from_its_data_not_its_node():
    from fedsieve.shared.detectors.federated import data_seed

    ids = np.arange(1_000, 1_300, dtype=np.int64)
    seed = data_seed(7, ids)
    assert seed == data_seed(7, ids[::-1]) and 0 <= seed < 2**63  # any order of the same ids
    assert len({seed, data_seed(8, ids), data_seed(7, ids[1:])}) == 3


def test_self_training_updates_are_validated(fitted_rtbigan):
    from fedsieve.shared.detectors.checkpoint import model_tensors

    reference = model_tensors(fitted_rtbigan.model_)
    shape = fitted_rtbigan.image_shape_
    residual = torch.ones(shape)
    assert decode_update(encode_update(reference, residual, 40), reference, shape).num_normal == 40
    name = next(iter(reference))
    wrong = dict(reference) | {name: torch.zeros(3)}
    with pytest.raises(ProtocolError, match=f"{name!r}"):
        decode_update(encode_update(wrong, residual, 40), reference, shape)
    poisoned = dict(reference) | {name: torch.full_like(reference[name], float("nan"))}
    with pytest.raises(ProtocolError, match="NaN"):
        decode_update(encode_update(poisoned, residual, 40), reference, shape)
    with pytest.raises(ProtocolError, match="residual-sum"):
        decode_update(encode_update(reference, -residual, 40), reference, shape)


def test_local_mode_needs_a_shippable_detector(compact_federation):
    trusted = compact_federation.trusted_set.images
    with pytest.raises(ValueError, match="PeerAdapter cannot be shipped; use one of"):
        LocalScreening(make_detector("iforest"), trusted)
    with pytest.raises(TypeError, match="upload_fraction"):
        LocalScreening(make_detector("rtbigan"), trusted, upload_fraction=0.5)
    # The run config holds both modes' keys: local mode refuses the upload options set.
    for upload_option in ({"upload_fraction": 0.5}, {"label_check": True}):
        settings = FilterSettings(mode="local", **upload_option)
        with pytest.raises(ValueError, match="needs uploads: it does not apply with "
                                             "mode='local'"):
            build_screening(settings, make_detector("rtbigan"), trusted)
    with pytest.raises(ValueError, match="mode must be one of upload, local, got 'cloud'"):
        build_screening(FilterSettings.from_run_config({"mode": "cloud"}),
                        make_detector("rtbigan"), trusted)


# -- a round in local mode --------------------------------------------------------------------
@pytest.mark.slow
def test_no_image_leaves_a_client(local_round, compact_federation):
    grid = local_round.grid
    kinds = {m.metadata.message_type for m in grid.sent}
    assert UPLOAD_MESSAGE_TYPE not in kinds and message_type(SPOT_CHECK_ACTION) not in kinds
    assert {message_type(SCORE_ACTION), message_type(SELF_TRAIN_ACTION)} <= kinds
    samples = {node: len(client) for node, client in zip(NODES, compact_federation.clients)}
    detector_size = max(len(a.data) for m in grid.sent
                        if m.metadata.message_type == message_type(SCORE_ACTION)
                        for r in m.content.array_records.values() for a in r.values())
    up = dict.fromkeys(NODES, 0)
    for reply in grid.replies:
        node = int(reply.metadata.src_node_id)
        up[node] += content_bytes(reply.content)
        for name, record in reply.content.array_records.items():
            for key, array in record.items():
                # No uint8 array, nothing of an image batch's shape: ids, float16 evidence,
                # the networks' weights, a residual sum over many images, the model.
                assert array.dtype != "uint8", (name, key)
                assert not (len(array.shape) == 4 and tuple(array.shape[1:]) == (1, 28, 28)), \
                    (name, key, array.shape)
                if name == SCORES_RECORD and key == "evidence":
                    assert array.dtype == "float16" and array.shape[0] == samples[node]
    for node in NODES:
        # One model update, two score reports (14 B a sample each), the trained classifier.
        assert up[node] <= 2 * detector_size + 2 * 16 * samples[node], node
    history = local_round.strategy.history[-1]
    assert history["mode"] == "local" and set(history["traffic"]) == set(NODES)


@pytest.mark.slow
def test_local_verdicts_drop_the_pollution(local_round, compact_federation):
    truth = compact_federation.ground_truth()
    entries = list(read_audit(local_round.run_dir / "audit.jsonl", "sample"))
    assert len(entries) == len(truth)  # every sample got one verdict, as in upload mode
    polluted = np.array([truth[e["id"]] for e in entries], bool)
    dropped = np.array([e["verdict"] for e in entries], bool)
    assert roc_auc_score(polluted, [e["score"] for e in entries]) > 0.99
    assert dropped[polluted].mean() > 0.9 and dropped[~polluted].mean() < 0.05
    for message in local_round.messages:
        node = message.metadata.dst_node_id
        drops = message.content[VERDICT_RECORD]["drop-ids"].numpy()
        assert (drops // ID_STRIDE == NODES.index(node)).all()
    assert local_round.arrays is not None


@pytest.mark.slow
def test_local_verdicts_do_not_depend_on_node_ids(local_round, small_settings,
                                                  compact_federation, compact_federation_files,
                                                  tmp_path):
    """Flower draws node ids at random: the same federation under other ids (in another
    order) trains and screens to the very same verdicts."""
    others = [9_000_000_000_000_000_001, 77, 5_000_000_017, 3]
    strategy = local_filter(compact_federation, tmp_path)
    run_round(strategy, make_grid(small_settings, compact_federation_files, nodes=others))

    def verdicts(run_dir):
        return {e["id"]: (e["verdict"], e["score"])
                for e in read_audit(run_dir / "audit.jsonl", "sample")}

    assert verdicts(tmp_path) == verdicts(local_round.run_dir)


class ForgingSieve(FedSieve):
    """Drops nothing of its own: reports its pollution's evidence as that of its cleanest
    samples, so the server tells it to keep everything."""

    def _score(self, msg, context):
        reply = super()._score(msg, context)
        record = reply.content[SCORES_RECORD]
        evidence = record["evidence"].numpy().astype(np.float64)
        # The detector's verdicts, recomputed as the server will: forge every flagged row.
        from fedsieve.shared.protocol.local import LocalRequest

        detector = LocalRequest.from_content(msg.content).detector()
        flagged = detector.scores_from_evidence(evidence) > detector.threshold_
        evidence[flagged] = evidence[~flagged].min(axis=0)
        content = encode_scores(record["ids"].numpy(), evidence, len(evidence))
        return Message(content, reply_to=msg)


def forging_app(settings) -> ClientApp:
    app = ClientApp()
    ForgingSieve(app, lambda context: (lambda d: (d.x, d.ids))(
        load_local_data(context, settings)))
    return app


def test_spot_checks_exclude_a_client_that_forges_its_report(
        small_settings, compact_federation, compact_federation_files, tmp_path):
    liar = NODES[2]
    strategy = local_filter(compact_federation, tmp_path, local_rounds=0,
                            spot_check_rate=0.1)
    grid = make_grid(small_settings, compact_federation_files,
                     {liar: forging_app(small_settings)})
    messages, _ = run_round(strategy, grid)
    assert liar not in {m.metadata.dst_node_id for m in messages}
    record = strategy.history[-1]
    assert record["excluded_codes"] == {liar: "failed-spot-check"}
    assert "spot check" in record["excluded"][liar] and "reported" in record["excluded"][liar]
    checked = record["spot_checked"]
    assert set(checked) == set(NODES) and all(c[1] == 0 for n, c in checked.items() if n != liar)
    assert checked[liar][1] > 0
    exclusions = list(read_audit(tmp_path / "audit.jsonl", "client"))
    assert [(e["node"], e["code"]) for e in exclusions] == [(liar, "failed-spot-check")]
    # Spot checks upload images, and only the share asked for.
    spot = [r for r in grid.replies if "fedsieve.spot" in r.content.array_records]
    for reply in spot:
        node = int(reply.metadata.src_node_id)
        assert len(reply.content["fedsieve.spot"]["x"].numpy()) == int(np.ceil(
            0.1 * len(compact_federation.clients[NODES.index(node)])))


def test_a_client_without_the_sdk_is_excluded_not_fatal(
        small_settings, compact_federation, compact_federation_files, tmp_path):
    bare = ClientApp()
    strategy = local_filter(compact_federation, tmp_path, local_rounds=0)
    messages, (arrays, _) = run_round(strategy, make_grid(
        small_settings, compact_federation_files, {NODES[0]: bare}))
    assert len(messages) == len(NODES) - 1 and arrays is not None
    record = strategy.history[-1]
    assert record["excluded_codes"] == {NODES[0]: "failed-screening"}
    assert "scoring its samples" in record["excluded"][NODES[0]]


@pytest.mark.slow
def test_simulation_engine_in_local_mode(tmp_path):
    from fedsieve.simulations.simulate import settings_for_defense, simulate

    settings = settings_for_defense(RunSettings().replace(
        num_clients=3, contamination=0.2, num_server_rounds=1, seed=2, mode="local",
        local_rounds=1, local_steps=300, spot_check_rate=0.05), "rtbigan")
    report = simulate(settings, tmp_path)
    detection = report["detection"]
    assert detection["uploads"] == sum(c["samples"] for c in report["federation"]["clients"])
    assert detection["auc"] > 0.995 and detection["pollution_dropped"] > 0.9
    assert detection["normal_dropped"] < 0.03
    import json

    record = json.loads((tmp_path / "result.json").read_text())["filter"][0]
    assert record["mode"] == "local" and record["excluded"] == {}
    assert len(record["traffic"]) == 3 and all(c[1] == 0 for c in record["spot_checked"].values())
