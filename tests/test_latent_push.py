"""AnoEAN's latent push: the pushed encoder separates what it was shown, and Rt-BiGAN's
``latent-push`` piece adds it as evidence that survives a save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedsieve.shared.data.images import check_images
from fedsieve.shared.detectors import RtBiGAN, load_detector, save_detector
from fedsieve.shared.detectors.bigan import RowSet
from fedsieve.shared.detectors.evidence import DEFAULT_EVIDENCE, LatentPush
from fedsieve.shared.detectors.networks import Encoder, NetConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PUSHED = (*DEFAULT_EVIDENCE, "latent-push")


def test_push_maps_flagged_kind_out_of_the_normal_codes(mnist_train, fashion_train,
                                                        mnist_test, fashion_test):
    torch.manual_seed(0)
    push = LatentPush(Encoder(NetConfig()), seed=0)
    normal = RowSet(check_images(mnist_train.images[:500], "x"), np.arange(500))
    flagged = RowSet(check_images(fashion_train.images[:50], "x"), np.arange(50))
    push.train(normal, flagged, steps=150, gen=torch.Generator().manual_seed(0))
    assert push.center.shape == (32,) and push.precision.shape == (32, 32)
    # Unseen images of both kinds: the pushed distance ranks the flagged kind far out.
    x = check_images(np.concatenate([mnist_test.images[:200], fashion_test.images[:200]]), "x")
    y = np.r_[np.zeros(200), np.ones(200)]
    assert roc_auc_score(y, push.distance(x)) > 0.95
    # Codes of a RowSet and of the same array agree.
    np.testing.assert_allclose(push.codes(normal)[:20], push.codes(normal.pool[:20]))


def test_rtbigan_latent_push_is_one_more_piece_and_round_trips(detector_data, tmp_path):
    d = detector_data
    kw = {"self_training_rounds": 1, "steps_per_round": 20, "random_state": 0}
    plain = RtBiGAN(**kw).fit(d.x, d.trusted)
    det = RtBiGAN(evidence=PUSHED, **kw).fit(d.x, d.trusted)
    assert "latent-push" not in plain.evidence_ and det.evidence_names_[-1] == "latent-push"
    x = check_images(d.x_test, "x")
    assert det._evidence(x).shape[1] == plain._evidence(x).shape[1] + 1
    back = load_detector(save_detector(det, tmp_path / "det"), RtBiGAN)
    np.testing.assert_array_equal(back.decision_function(d.x_test), det.decision_function(d.x_test))
    np.testing.assert_array_equal(back.evidence_["latent-push"].push_.center,
                                  det.evidence_["latent-push"].push_.center)
    # The push's random draws all come from random_state: a refit whatever the global RNG.
    torch.manual_seed(123)
    again = RtBiGAN(evidence=PUSHED, **kw).fit(d.x, d.trusted)
    np.testing.assert_array_equal(again.decision_scores_, det.decision_scores_)
