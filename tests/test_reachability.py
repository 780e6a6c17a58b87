"""Reachability evidence: a walk from known-normal images over the pool's neighbour graph,
the meta-model's atlas, and Rt-BiGAN's use of both."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedsieve.shared.data.images import check_images
from fedsieve.shared.detectors import RtBiGAN, load_detector, save_detector
from fedsieve.shared.detectors.checkpoint import (
    default_meta_checkpoint,
    load_meta,
    load_meta_atlas,
    save_meta,
)
from fedsieve.shared.detectors.evidence.reachability import (
    ATLAS_SIZE,
    MAX_SIDE,
    Reachability,
    atlas_fits,
    atlas_sample,
    reach_features,
)
from fedsieve.shared.detectors.rtbigan import MetaModelWarning

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHORT = {"self_training_rounds": 1, "steps_per_round": 40, "random_state": 0}


def _f(images: np.ndarray) -> np.ndarray:
    return check_images(images)


@pytest.fixture(scope="module")
def reverse(mnist_train, fashion_train, mnist_test, fashion_test):
    """Fashion-MNIST normal, MNIST digits as pollution: 600 + 150 in the pool, 10 trusted
    clothes, a 300-image atlas of other clothes, 200 + 200 test images."""
    rng = np.random.default_rng(0)
    clothes = rng.permutation(len(fashion_train.images))
    digits = rng.permutation(len(mnist_train.images))[:150]
    return {
        "pool": _f(np.concatenate([fashion_train.images[clothes[:600]],
                                   mnist_train.images[digits]])),
        "pool_y": np.r_[np.zeros(600), np.ones(150)],
        "trusted": _f(fashion_train.images[clothes[600:610]]),
        "atlas": _f(fashion_train.images[clothes[610:910]]),
        "test": _f(np.concatenate([fashion_test.images[:200], mnist_test.images[:200]])),
        "test_y": np.r_[np.zeros(200), np.ones(200)],
    }


def test_features_ignore_colour_and_shrink_large_images():
    rng = np.random.default_rng(0)
    grey = rng.random((4, 1, 20, 20), dtype=np.float32)
    tinted = grey * np.array([0.2, 1.0, 0.5], np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(reach_features(tinted), reach_features(grey), atol=1e-6)
    big = reach_features(rng.random((2, 3, 96, 64), dtype=np.float32))
    assert big.shape == (2, MAX_SIDE * round(64 * MAX_SIDE / 96))  # 96x64 -> 32x21
    np.testing.assert_allclose(np.linalg.norm(big, axis=1), 1.0, rtol=1e-5)


def test_digits_among_clothes_are_hard_to_reach(reverse):
    t = reverse
    graph = Reachability.fit(t["pool"], np.concatenate([t["trusted"], t["atlas"]]))
    # Digits reconstruct better than clothes, but few edges lead to them from the clothes.
    assert roc_auc_score(t["pool_y"], graph.score(t["pool"])) > 0.97
    assert roc_auc_score(t["test_y"], graph.score(t["test"])) > 0.97


def test_a_node_is_scored_like_a_new_image(reverse):
    t = reverse
    graph = Reachability.fit(t["pool"], t["trusted"])
    # A pool image leaves itself out, so it scores exactly as its copy would: a slightly
    # moved copy is not itself and takes its own node among its neighbours instead.
    own = graph.score(t["pool"][:50])
    np.testing.assert_array_equal(own, graph.score(t["pool"][:50].copy()))
    assert graph.score(t["pool"][:0]).shape == (0,)


def test_the_graph_samples_a_large_pool(reverse):
    t = reverse
    graph = Reachability.fit(t["pool"], t["trusted"], graph_pool=200, seed=3)
    assert len(graph.features) == 200 + len(t["trusted"])
    assert graph.features.dtype == np.float16
    again = Reachability.fit(t["pool"], t["trusted"], graph_pool=200, seed=3)
    np.testing.assert_array_equal(graph.node_scores, again.node_scores)


def test_the_atlas_check_tells_the_kind_of_data(reverse, mnist_train):
    t = reverse
    assert atlas_fits(t["trusted"], t["atlas"])[0]
    digits = _f(mnist_train.images[:10])
    fits, distance, reference = atlas_fits(digits, t["atlas"])
    assert not fits and distance > reference


def test_atlas_sample_leaves_out_held_out_classes(mnist_train):
    atlas = atlas_sample(mnist_train.images, mnist_train.labels, exclude=(3,), size=50, seed=1)
    assert atlas.shape == (50, 1, 28, 28) and atlas.dtype == np.uint8
    threes = {im.tobytes() for im in mnist_train.images[mnist_train.labels == 3]}
    assert not any(im[0].tobytes() in threes for im in atlas)


def test_meta_checkpoints_carry_their_atlas(tmp_path, mnist_train):
    model, _ = load_meta(default_meta_checkpoint())
    # The shipped meta-model has none: the default detector is the one measured before.
    assert load_meta_atlas(default_meta_checkpoint()) is None
    atlas = check_images(mnist_train.images[:20], dtype=np.uint8)
    path = save_meta(model, tmp_path / "m", {"data": "test"}, atlas=atlas)
    np.testing.assert_array_equal(load_meta_atlas(path), atlas)
    with pytest.raises(ValueError, match="uint8"):
        save_meta(model, tmp_path / "bad", {}, atlas=atlas.astype(np.float32))


def test_rtbigan_leaves_the_piece_out_without_a_fitting_atlas(reverse, tmp_path, mnist_train):
    t = reverse
    # The atlas is read and checked before self-training: adapting alone shows the choice.
    adapted = {**SHORT, "self_training_rounds": 0}
    det = RtBiGAN(**adapted).fit(t["pool"], t["trusted"])  # the shipped meta-model: no atlas
    assert det.left_out_["reachability"].atlas_fit_ is None
    assert "reachability" not in det.evidence_names_
    model, _ = load_meta(default_meta_checkpoint())
    digits = save_meta(model, tmp_path / "digits", {}, atlas=check_images(
        mnist_train.images[:ATLAS_SIZE], dtype=np.uint8))
    det = RtBiGAN(meta_checkpoint=str(digits), **adapted)
    with pytest.warns(MetaModelWarning, match="reachability evidence is left out"):
        det.fit(t["pool"], t["trusted"])  # clothes, but an atlas of digits
    assert det.left_out_["reachability"].atlas_fit_["fits"] is False
    assert "reachability" not in det.evidence_names_


def test_rtbigan_with_an_atlas_of_its_data(reverse, tmp_path):
    t = reverse
    model, _ = load_meta(default_meta_checkpoint())
    # The shipped weights (digits) with an atlas of clothes: the piece needs only the atlas.
    meta = save_meta(model, tmp_path / "meta", {}, atlas=(t["atlas"] * 255).round()
                     .astype(np.uint8))
    det = RtBiGAN(meta_checkpoint=str(meta), **SHORT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetaModelWarning)
        det.fit(t["pool"], t["trusted"])
    names = det.evidence_names_
    assert names[-1] == "reachability" and det.calibration_.cuts.shape == (len(names),)
    assert roc_auc_score(t["test_y"], det.decision_function(t["test"])) > 0.9
    plain = RtBiGAN(meta_checkpoint=str(meta), evidence=["global", "typicality", "detached-ink"],
                    **SHORT)
    plain.fit(t["pool"], t["trusted"])
    assert roc_auc_score(t["test_y"], plain.decision_function(t["test"])) < 0.6
    digits = t["pool_y"] == 1
    assert det.labels_[digits].mean() > plain.labels_[digits].mean() + 0.2
    assert det.labels_[~digits].mean() < 0.05
    save_detector(det, tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    np.testing.assert_array_equal(loaded.decision_function(t["test"]),
                                  det.decision_function(t["test"]))
    assert (loaded.evidence_["reachability"].atlas_fit_
            == det.evidence_["reachability"].atlas_fit_)
