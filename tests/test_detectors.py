"""Detector API: shapes, validation, determinism, thresholds, and one real training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedsieve.shared.data import load_fashion_mnist, load_mnist
from fedsieve.shared.detectors import (
    EGBAD,
    AnoGAN,
    RtBiGAN,
    check_images,
    compute_threshold,
    gmm_threshold,
    make_detector,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    mn = load_mnist("train").images
    fa = load_fashion_mnist("train").images
    pool = np.concatenate([mn[:400], fa[rng.choice(len(fa), 100, replace=False)]])
    y = np.r_[np.zeros(400), np.ones(100)].astype(int)
    seed = mn[1000:1010]
    test = np.concatenate(
        [load_mnist("test").images[:300], load_fashion_mnist("test").images[:300]]
    )
    y_test = np.r_[np.zeros(300), np.ones(300)].astype(int)
    return pool, y, seed, test, y_test


def small_rtbigan(**kw):
    base = dict(self_training_rounds=1, steps_per_round=20, random_state=0)
    return RtBiGAN(**{**base, **kw})


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 28, 27), np.uint8), "shape"),
        (np.zeros((0, 28, 28), np.uint8), "empty"),
        (np.zeros((3, 28, 28), np.float64), "dtype"),
        (np.full((3, 28, 28), np.nan, np.float32), "NaN"),
        (np.full((3, 28, 28), 2.0, np.float32), "outside"),
        ([[0]], "numpy array"),
    ],
)
def test_invalid_inputs_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        check_images(bad)


def test_accepted_layouts_agree():
    u8 = load_mnist("train").images[:4]
    f = u8.astype(np.float32) / 255
    assert np.array_equal(check_images(u8), check_images(f[:, None]))
    assert check_images(u8).dtype == np.float32


def test_fit_requires_seed_and_fitted_model(data):
    pool, _, _, _, _ = data
    with pytest.raises(ValueError, match="trusted"):
        small_rtbigan().fit(pool)
    with pytest.raises(ValueError, match="not fitted"):
        small_rtbigan().decision_function(pool)
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("nope")


# -- shapes, dtypes, determinism ------------------------------------------------------------
def test_shapes_dtypes_and_determinism(data):
    pool, _, seed, test, _ = data
    a = small_rtbigan().fit(pool, seed)
    b = small_rtbigan().fit(pool, seed)
    s = a.decision_function(test)
    assert s.shape == (len(test),) and s.dtype == np.float64
    assert a.labels_.shape == (len(pool),) and a.labels_.dtype == np.int64
    assert set(np.unique(a.predict(test))) <= {0, 1}
    assert a.decision_scores_.shape == (len(pool),)
    np.testing.assert_array_equal(s, b.decision_function(test))
    assert [h["round"] for h in a.history_] == [0, 1]
    c = small_rtbigan(random_state=1).fit(pool, seed)
    assert not np.array_equal(s, c.decision_function(test))


@pytest.mark.parametrize("name", ["egbad", "anogan", "iforest"])
def test_every_detector_shares_the_api(data, name):
    pool, _, seed, test, _ = data
    kw = {"steps": 5} if name in ("egbad", "anogan") else {}
    if name == "anogan":
        kw["latent_steps"] = 3
    det = make_detector(name, random_state=0, **kw).fit(pool, seed)
    assert det.decision_function(test[:50]).shape == (50,)
    assert det.labels_.shape == (len(pool),)
    assert isinstance(det.threshold_, float)


def test_classes_exported():
    assert isinstance(make_detector("egbad"), EGBAD)
    assert isinstance(make_detector("anogan"), AnoGAN)
    assert make_detector("rtbigan").get_params()["adapt_steps"] == 20


# -- threshold policies on synthetic mixtures -------------------------------------------------
def test_gmm_threshold_splits_a_bimodal_mixture():
    rng = np.random.default_rng(0)
    s = np.r_[rng.lognormal(0, 0.2, 800), rng.lognormal(1.5, 0.2, 200)]
    t = gmm_threshold(s)
    assert 1.3 < t < 3.5
    flagged = s > t
    assert flagged[800:].mean() > 0.98 and flagged[:800].mean() < 0.02


def test_gmm_threshold_keeps_a_clean_pool():
    s = np.random.default_rng(1).lognormal(0, 0.2, 1000)
    assert (s > gmm_threshold(s)).mean() < 0.01


def test_gmm_threshold_uses_seeds_to_keep_a_skewed_clean_pool():
    # A skewed normal population fits two well-separated Gaussians on its own; the seeds
    # (normal by definition) score as high as the upper one, so nothing is anomalous.
    rng = np.random.default_rng(2)
    s = np.r_[rng.lognormal(-0.7, 0.2, 400), rng.lognormal(0.4, 0.5, 600)]
    seeds = np.quantile(s, [0.1, 0.5, 0.99])
    assert (s > gmm_threshold(s)).mean() > 0.2  # without seeds it cuts the pool
    assert (s > gmm_threshold(s, trusted_scores=seeds)).mean() < 0.02
    assert (s > compute_threshold("gmm", s, seeds)).mean() < 0.02
    # Real pollution sits above every seed and is still found.
    polluted = np.r_[s, rng.lognormal(2.5, 0.3, 250)]
    flagged = polluted > gmm_threshold(polluted, trusted_scores=seeds)
    assert flagged[1000:].mean() > 0.95


def test_other_policies():
    s = np.arange(100, dtype=float)
    assert compute_threshold("contamination", s, value=0.1) == pytest.approx(89.1)
    assert compute_threshold("trusted-quantile", s, np.array([1.0, 2.0, 3.0])) == 3.0
    assert compute_threshold("fixed", s, value=42.0) == 42.0
    with pytest.raises(ValueError, match="seeds"):
        compute_threshold("trusted-quantile", s)
    with pytest.raises(ValueError, match="unknown"):
        compute_threshold("median", s)


# -- a real training run ----------------------------------------------------------------------
def test_self_training_beats_an_untrained_model(data):
    pool, y, seed, test, y_test = data
    untrained = RtBiGAN(
        meta_checkpoint=None,
        adapt_steps=0,
        self_training_rounds=0,
        normalize_scores=False,
        pixel_weighting=False,
    ).fit(pool, seed)
    auc0 = roc_auc_score(y_test, untrained.decision_function(test))
    det = RtBiGAN(self_training_rounds=1, steps_per_round=150, random_state=0)
    det.fit(pool, seed, y_true=y)
    auc = roc_auc_score(y_test, det.decision_function(test))
    assert "auc" in det.history_[-1]
    assert auc >= 0.95 and auc > auc0 + 0.1, (auc, auc0)
