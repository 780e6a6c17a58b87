"""AnoEAN: the estimator contract, the paper's losses and score by hand, a real MNIST fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.utils._param_validation import InvalidParameterError

import fedsieve.shared.detectors.persist
from fedsieve.shared.detectors.anoean import (
    AnoEAN,
    AnoEANEncoder,
    discriminator_loss,
    encoder_loss,
    mahalanobis,
)
from fedsieve.shared.detectors.persist import load_detector, save_detector

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The smallest settings that still train for real.
TINY = {"steps": 3, "batch_size": 16, "width": 4, "z_dim": 4, "random_state": 0}


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.random((n, *shape), dtype=np.float32)


@pytest.fixture(scope="module")
def digits(mnist_train):
    """60 zeros (normal), 10 ones and sevens (labelled anomalies), float32 NCHW."""
    x = mnist_train.images.astype(np.float32)[:, None] / 255
    y = mnist_train.labels
    return x[y == 0][:60], x[np.isin(y, (1, 7))][:10]


# -- the paper's losses and score, by hand ---------------------------------------------------
def test_discriminator_loss_is_eq_1():
    # D = sigmoid(logit): logit 0 -> 1/2, logit ln 3 -> 3/4, logit -ln 3 -> 1/4.
    d_prior = torch.tensor([0.0, math.log(3)])  # -log D: ln 2, ln 4/3 -> mean
    d_normal = torch.tensor([-math.log(3)])  # -log(1 - 1/4) = ln 4/3
    d_anom = torch.tensor([math.log(3), 0.0])  # -log(1 - 3/4) = ln 4, -log(1/2) = ln 2
    expected = ((math.log(2) + math.log(4 / 3)) / 2 + math.log(4 / 3)
                + (math.log(4) + math.log(2)) / 2)
    assert discriminator_loss(d_prior, d_normal, d_anom).item() == pytest.approx(expected)
    # Without anomalies the third term is dropped.
    assert discriminator_loss(d_prior, d_normal, None).item() == pytest.approx(
        (math.log(2) + math.log(4 / 3)) / 2 + math.log(4 / 3))


def test_encoder_loss_is_the_papers_faster_form():
    d_normal = torch.tensor([0.0, -math.log(3)])  # -log D: ln 2, ln 4
    d_anom = torch.tensor([math.log(3)])  # -log(1 - 3/4) = ln 4
    expected = (math.log(2) + math.log(4)) / 2 + math.log(4)
    assert encoder_loss(d_normal, d_anom).item() == pytest.approx(expected)
    assert encoder_loss(d_normal, None).item() == pytest.approx(1.5 * math.log(2))
    # The encoder gains by raising D on normal codes and lowering it on anomalous ones.
    assert encoder_loss(d_normal + 1, d_anom - 1) < encoder_loss(d_normal, d_anom)


def test_score_is_the_mahalanobis_distance_of_eq_3():
    center = np.array([1.0, 0.0])
    precision = np.diag([4.0, 1.0])  # Sigma = diag(1/4, 1)
    codes = np.array([[1.0, 0.0], [2.0, 2.0], [0.0, -1.0]])
    np.testing.assert_allclose(mahalanobis(codes, center, precision),
                               [0.0, math.sqrt(4 + 4), math.sqrt(4 + 1)])


# -- the estimator contract ------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_encoder_is_built_for_the_image_shape(shape):
    enc = AnoEANEncoder(shape, z_dim=5, width=4)
    assert enc(torch.zeros(2, *shape)).shape == (2, 5)


# scikit-learn's estimator checks run on every registry detector in test_detectors.py.
def test_constructor_only_stores_and_fit_validates(digits):
    det = AnoEAN(steps=-1)  # stored, not checked
    assert det.get_params()["steps"] == -1
    with pytest.raises(InvalidParameterError, match="'steps'"):
        det.fit(digits[0])
    with pytest.raises(NotFittedError):
        AnoEAN().decision_function(digits[0])


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_clone_fits_and_scores_with_labelled_anomalies(shape):
    rng = np.random.default_rng(0)
    pool, known, test = _images(rng, 40, shape), _images(rng, 6, shape), _images(rng, 7, shape)
    original = AnoEAN(**TINY)
    det = clone(original).fit(pool, anomalies=known, y_true=np.r_[np.zeros(35), np.ones(5)])
    assert not hasattr(original, "threshold_")
    scores = det.decision_function(test)
    assert scores.shape == (7,) and scores.dtype == np.float64 and np.all(scores >= 0)
    assert det.predict(test).shape == (7,)
    assert det.decision_scores_.shape == det.labels_.shape == (40,)
    assert det.center_.shape == (4,) and det.precision_.shape == (4, 4)
    assert det.labelled_anomalies_ == [6] and len(det.history_) == 1
    assert "auc" in det.history_[0]
    assert det.image_shape_ == shape and det.n_features_in_ == int(np.prod(shape))
    assert isinstance(det.threshold_, float)
    np.testing.assert_array_equal(det.labels_, det.decision_scores_ > det.threshold_)
    assert not [k for k in vars(det) if k.startswith("_")], "no private attributes left"
    with pytest.raises(ValueError, match="anomalies"):
        det.fit(pool, anomalies=_images(rng, 3, (1, 20, 20)))


def test_self_training_replaces_the_labelled_anomalies_each_round():
    rng = np.random.default_rng(1)
    pool = _images(rng, 50, (1, 28, 28))
    calls: list[int] = []
    verdicts: list[np.ndarray] = []

    def callback(d, r):
        calls.append(r)
        verdicts.append(d.labels_.copy())

    # The contamination policy flags the top 20 % of each round's scores.
    det = AnoEAN(**TINY, self_training_rounds=3, threshold_policy="contamination",
                 threshold_value=0.2).fit(pool, pool[:5], callback=callback)
    assert calls == [0, 1, 2] and len(det.history_) == 3
    # Round 0 trains the normal side only; round r the images round r - 1 flagged, which
    # replace (not join) the earlier ones: rounds 0 and 1 flag different images, and round 2
    # still trains with 10, not their union.
    assert [v.sum() for v in verdicts] == [10, 10, 10]
    assert (verdicts[0] | verdicts[1]).sum() > 10
    assert det.labelled_anomalies_ == [0, 10, 10]
    assert det.trusted_scores_.shape == (5,)


def test_deterministic_per_random_state(digits):
    normal, known = digits
    a = AnoEAN(**TINY).fit(normal, anomalies=known).decision_function(normal[:10])
    b = AnoEAN(**TINY).fit(normal, anomalies=known).decision_function(normal[:10])
    c = AnoEAN(**{**TINY, "random_state": 1}).fit(normal, anomalies=known)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c.decision_function(normal[:10]))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_save_load_round_trip_scores_identically(tmp_path, monkeypatch, shape):
    monkeypatch.setitem(fedsieve.shared.detectors.persist.SAVABLE, AnoEAN.__name__, AnoEAN)
    rng = np.random.default_rng(2)
    pool, test = _images(rng, 30, shape), _images(rng, 9, shape)
    det = AnoEAN(**TINY, self_training_rounds=2).fit(pool)
    loaded = load_detector(save_detector(det, tmp_path / "anoean"), AnoEAN)
    assert isinstance(loaded, AnoEAN) and loaded.get_params() == det.get_params()
    np.testing.assert_array_equal(loaded.decision_function(test), det.decision_function(test))
    np.testing.assert_array_equal(loaded.predict(test), det.predict(test))
    assert loaded.threshold_ == det.threshold_
    assert loaded.labelled_anomalies_ == det.labelled_anomalies_
    assert loaded.image_shape_ == shape


# -- a real training run ---------------------------------------------------------------------
def test_training_beats_an_untrained_encoder(mnist_train, mnist_test):
    # Normal: 200 zeros; labelled anomalies: 20 of the digits 1, 4, 7, 9; test: 2,000 official
    # test digits, every non-zero an anomaly (five of the nine digits never seen in training).
    # Measured (seeds 0-2): untrained AUC 0.80-0.90, 40 steps 0.967-0.978.
    x, y = mnist_train.images, mnist_train.labels
    normal, known = x[y == 0][:200], x[np.isin(y, (1, 4, 7, 9))][:20]
    x_test, y_test = mnist_test.images[:2000], (mnist_test.labels[:2000] != 0).astype(int)
    untrained = AnoEAN(steps=0, batch_size=100).fit(normal, anomalies=known)
    det = AnoEAN(steps=40, batch_size=100).fit(normal, anomalies=known)
    auc0 = roc_auc_score(y_test, untrained.decision_function(x_test))
    auc = roc_auc_score(y_test, det.decision_function(x_test))
    assert auc >= 0.94 and auc > auc0 + 0.04, (auc, auc0)
