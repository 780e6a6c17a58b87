"""Checkpoints: round trip, refusal of corrupt/incompatible/pickle files, shipped meta-model."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from fedsieve.shared.checkpoint import (
    CheckpointError,
    default_meta_checkpoint,
    load_detector,
    load_meta,
)
from fedsieve.shared.data import load_fashion_mnist, load_mnist
from fedsieve.shared.detectors import EGBAD, RtBiGAN

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fitted():
    pool = np.concatenate(
        [load_mnist("train").images[:200], load_fashion_mnist("train").images[:50]]
    )
    seed = load_mnist("train").images[500:510]
    det = RtBiGAN(self_training_rounds=1, steps_per_round=10, random_state=0).fit(pool, seed)
    return det, pool


def test_round_trip_gives_identical_scores(fitted, tmp_path):
    det, pool = fitted
    jpath = det.save(tmp_path / "det")
    back = RtBiGAN.load(jpath)
    np.testing.assert_array_equal(det.decision_function(pool), back.decision_function(pool))
    assert back.threshold_ == det.threshold_
    header = json.loads(jpath.read_text())
    assert header["format_version"] == 1 and header["data"]["pool_sha256"]
    with pytest.raises(ValueError, match="not a EGBAD"):
        EGBAD.load(jpath)


def test_truncated_weights_refused(fitted, tmp_path):
    det, _ = fitted
    jpath = det.save(tmp_path / "det")
    w = tmp_path / "det.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_detector(jpath)


def test_incompatible_version_and_bad_json_refused(fitted, tmp_path):
    det, _ = fitted
    jpath = det.save(tmp_path / "det")
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
    jpath = det.save(tmp_path / "det")
    w = tmp_path / "det.safetensors"
    torch.save(det.model_.state_dict(), w)  # a pickle where safetensors belongs
    with pytest.raises(CheckpointError):
        load_detector(jpath)
    header = json.loads(jpath.read_text())
    header["weights_sha256"] = __import__("hashlib").sha256(w.read_bytes()).hexdigest()
    jpath.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_detector(jpath)
    (tmp_path / "p.json").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_detector(tmp_path / "p")


def test_shipped_meta_checkpoint_loads_and_scores():
    path = default_meta_checkpoint()
    model, header = load_meta(path)
    assert header["kind"] == "meta" and "meta-train" in header["command"]
    assert path.stat().st_size + path.with_suffix(".safetensors").stat().st_size < 5_000_000
    seed = load_mnist("train").images[:10]
    det = RtBiGAN(self_training_rounds=0).fit(seed, seed)
    assert np.isfinite(det.decision_function(load_mnist("test").images[:20])).all()


def test_no_load_path_can_unpickle():
    """No module of the package calls a loader that unpickles (torch.load, pickle, joblib,
    np.load with allow_pickle=True)."""
    import re

    from conftest import REPO

    unsafe = re.compile(r"torch\.load\(|pickle\.loads?\(|joblib\.load\(|allow_pickle\s*=\s*True")
    hits = [f"{path.relative_to(REPO)}:{n}"
            for folder in ("shared", "server", "client", "simulations")
            for path in (REPO / folder).rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1) if unsafe.search(line)]
    assert hits == []
