"""Rt-BiGAN's two-sided global score: pollution simpler than the normal data (the reverse
protocol: Fashion-MNIST normal, MNIST digits as pollution)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedsieve.shared.data.images import check_images
from fedsieve.shared.detectors import RtBiGAN, load_detector, make_detector, save_detector
from fedsieve.shared.detectors.evidence import DEFAULT_EVIDENCE

#: Two real fits (~30 s): in CI and --run-slow, out of the quick suite.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SHORT = {"self_training_rounds": 1, "steps_per_round": 60, "random_state": 0}
EVIDENCE = {False: DEFAULT_EVIDENCE,
            True: ("global", "global-from-below", *DEFAULT_EVIDENCE[1:])}


@pytest.fixture(scope="module")
def reverse_task(mnist_train, mnist_test, fashion_train, fashion_test):
    """800 clothes + 200 digits in the pool, 10 trusted clothes, 300 + 300 test images."""
    rng = np.random.default_rng(0)
    clothes = rng.permutation(len(fashion_train.images))
    digits = rng.permutation(len(mnist_train.images))[:200]
    pool = np.concatenate([fashion_train.images[clothes[:800]], mnist_train.images[digits]])
    test = np.concatenate([fashion_test.images[:300], mnist_test.images[:300]])
    return {"pool": pool, "pool_y": np.r_[np.zeros(800), np.ones(200)],
            "trusted": fashion_train.images[clothes[800:810]],
            "test": test, "test_y": np.r_[np.zeros(300), np.ones(300)]}


@pytest.fixture(scope="module")
def fitted_pair(reverse_task):
    t = reverse_task
    return {two: make_detector("rtbigan", evidence=EVIDENCE[two], **SHORT)
            .fit(t["pool"], t["trusted"]) for two in (False, True)}


def test_the_negated_global_score_is_one_more_piece(fitted_pair, reverse_task):
    one, two = fitted_pair[False], fitted_pair[True]
    x = check_images(reverse_task["test"][:20])
    ev = two._evidence(x)
    assert ev.shape[1] == one._evidence(x).shape[1] + 1
    np.testing.assert_allclose(ev[:, 1], -ev[:, 0])
    assert two.calibration_.cuts.shape == (ev.shape[1],)


def test_simpler_pollution_ranks_as_anomalous_only_when_two_sided(fitted_pair, reverse_task):
    t = reverse_task
    auc = {two: roc_auc_score(t["test_y"], det.decision_function(t["test"]))
           for two, det in fitted_pair.items()}
    # One-sided, digits reconstruct better than any clothes: ranked the most normal of all.
    assert auc[False] < 0.5
    assert auc[True] > 0.6 and auc[True] > auc[False] + 0.2


def test_checkpoints_keep_the_piece_and_0_2_ones_load(fitted_pair, reverse_task, tmp_path):
    test = reverse_task["test"][:50]
    two = fitted_pair[True]
    path = save_detector(two, tmp_path / "two")
    np.testing.assert_array_equal(load_detector(path).decision_function(test),
                                  two.decision_function(test))
    # A fedsieve 0.2 checkpoint named its pieces by switches and kept the atlas check at the
    # header's top level: it loads, and scores as it did.
    path = save_detector(two, tmp_path / "old")
    header = json.loads(path.read_text())
    params = header["params"]
    del params["evidence"], params["training"]
    params |= {"two_sided": True, "local_window": 0, "typicality": True,
               "detached_ink": True, "reachability": True, "latent_push": False,
               "core_width": 1.0, "batch_size": 32}
    header["atlas_fit"] = header.pop("evidence")["reachability"]["atlas_fit"]
    path.write_text(json.dumps(header))
    old = load_detector(path, RtBiGAN)
    assert old.evidence_names_ == ["global", "global-from-below", "typicality", "detached-ink"]
    np.testing.assert_array_equal(old.decision_function(test), two.decision_function(test))


def test_the_0_2_keywords_still_work_with_a_warning(fitted_pair):
    with pytest.warns(FutureWarning, match="evidence="):
        old = RtBiGAN(two_sided=True, core_width=0.5, **SHORT)
    assert list(old.evidence) == list(EVIDENCE[True])
    assert old.training.core_width == 0.5 and old.training.batch_size == 32
    with pytest.raises(TypeError, match="unexpected keyword"):
        RtBiGAN(two_side=True)
