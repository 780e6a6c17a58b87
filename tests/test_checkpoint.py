"""Checkpoints: round trip, refusal of corrupt/incompatible/pickle files, shipped meta-model."""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
import re

import numpy as np
import pytest
import torch
from conftest import REPO
from sklearn.exceptions import NotFittedError

from fedsieve.shared.detectors import EGBAD, RtBiGAN, load_detector, save_detector
from fedsieve.shared.detectors.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    default_meta_checkpoint,
    load_meta,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(mnist_train, fashion_train):
    pool = np.concatenate([mnist_train.images[:200], fashion_train.images[:50]])
    trusted = mnist_train.images[500:510]
    det = RtBiGAN(self_training_rounds=1, steps_per_round=10, random_state=0).fit(pool, trusted)
    return det, pool


def test_round_trip_gives_identical_scores(fitted, tmp_path):
    det, pool = fitted
    jpath = save_detector(det, tmp_path / "det")
    back = load_detector(jpath, RtBiGAN)
    assert isinstance(back, RtBiGAN) and back.get_params() == det.get_params()
    np.testing.assert_array_equal(det.decision_function(pool), back.decision_function(pool))
    np.testing.assert_array_equal(back.predict(pool), det.labels_)
    assert back.threshold_ == det.threshold_ and back.history_ == det.history_
    assert back.meta_info_["weights_sha256"] == det.meta_info_["weights_sha256"]
    header = json.loads(jpath.read_text())
    assert header["format_version"] == FORMAT_VERSION == 1
    assert header["data"]["pool_sha256"] and header["data"]["trusted_sha256"]
    with pytest.raises(CheckpointError, match="not a EGBAD"):
        load_detector(jpath, EGBAD)


def test_egbad_round_trip(fitted, tmp_path):
    _, pool = fitted
    det = EGBAD(steps=5, random_state=0).fit(pool)
    back = load_detector(save_detector(det, tmp_path / "egbad"))
    assert isinstance(back, EGBAD)
    np.testing.assert_array_equal(det.decision_function(pool), back.decision_function(pool))


def test_unfitted_detector_is_not_saved(tmp_path):
    with pytest.raises(NotFittedError):
        save_detector(RtBiGAN(), tmp_path / "det")


def test_parameters_outside_their_range_refused(fitted, tmp_path):
    det, _ = fitted
    jpath = save_detector(det, tmp_path / "det")
    header = json.loads(jpath.read_text())
    header["params"]["alpha"] = 1.5
    jpath.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="alpha"):
        load_detector(jpath)
    header["params"] = {"no_such_parameter": 1}
    jpath.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="parameters"):
        load_detector(jpath)


def test_truncated_weights_refused(fitted, tmp_path):
    det, _ = fitted
    jpath = save_detector(det, tmp_path / "det")
    w = tmp_path / "det.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_detector(jpath)


def test_incompatible_version_and_bad_json_refused(fitted, tmp_path):
    det, _ = fitted
    jpath = save_detector(det, tmp_path / "det")
    header = json.loads(jpath.read_text())
    header["format_version"] = 99
    jpath.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="format_version"):
        load_detector(jpath)
    jpath.write_text(jpath.read_text()[:20])
    with pytest.raises(CheckpointError, match="JSON"):
        load_detector(jpath)


def test_pickle_checkpoint_refused(fitted, tmp_path):
    det, _ = fitted
    jpath = save_detector(det, tmp_path / "det")
    w = tmp_path / "det.safetensors"
    torch.save(det.model_.state_dict(), w)  # a pickle where safetensors belongs
    with pytest.raises(CheckpointError):
        load_detector(jpath)
    header = json.loads(jpath.read_text())
    header["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    jpath.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_detector(jpath)
    (tmp_path / "p.json").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_detector(tmp_path / "p")


def test_shipped_meta_checkpoint_loads_and_scores(mnist_train, mnist_test):
    path = default_meta_checkpoint()
    model, header = load_meta(path)
    assert header["kind"] == "meta" and "meta-train" in header["command"]
    assert path.stat().st_size + path.with_suffix(".safetensors").stat().st_size < 5_000_000
    with pytest.raises(CheckpointError, match="not a saved"):
        load_detector(path)
    trusted = mnist_train.images[:10]
    det = RtBiGAN(self_training_rounds=0).fit(trusted, trusted)
    assert np.isfinite(det.decision_function(mnist_test.images[:20])).all()


def test_no_load_path_can_unpickle():
    """No module of the package calls a loader that unpickles (torch.load, pickle, joblib,
    np.load with allow_pickle=True)."""
    unsafe = re.compile(r"torch\.load\(|pickle\.loads?\(|joblib\.load\(|allow_pickle\s*=\s*True")
    hits = [f"{path.relative_to(REPO)}:{n}"
            for folder in ("shared", "server", "client", "simulations")
            for path in (REPO / folder).rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1) if unsafe.search(line)]
    assert hits == []


def test_checkpoint_and_detectors_import_each_other_at_module_top_only():
    """The file format knows nothing of the detectors (no cycle hidden in a function-local
    import): checkpoint.py imports only the networks, and no detector module imports
    fedsieve inside a function."""

    def fedsieve_imports(path):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        return [(node.module, id(node) in top) for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedsieve")]

    assert fedsieve_imports(REPO / "shared" / "detectors" / "checkpoint.py") == [
        ("fedsieve.shared.detectors.networks", True)]
    local = [(path.name, module) for path in (REPO / "shared" / "detectors").rglob("*.py")
             for module, at_top in fedsieve_imports(path) if not at_top]
    assert local == []
