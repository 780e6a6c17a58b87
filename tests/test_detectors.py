"""Detector API: the estimator contract, validation, determinism, thresholds, real training."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pyod.models.deep_svdd import DeepSVDD
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.utils import estimator_checks
from sklearn.utils._param_validation import InvalidParameterError

from fedsieve.shared.data.images import check_images
from fedsieve.shared.detectors import (
    DETECTORS,
    EGBAD,
    AnoGAN,
    BaseDetector,
    GANDetector,
    PeerAdapter,
    PoolGAN,
    RtBiGAN,
    Training,
    compute_threshold,
    gmm_threshold,
    make_detector,
)
from fedsieve.simulations.zoo import Trigger

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The smallest settings that still train each registry detector for real.
TINY = {
    "rtbigan": {"self_training_rounds": 1, "steps_per_round": 20},
    "egbad": {"steps": 5},
    "anogan": {"steps": 5, "latent_steps": 3},
    "iforest": {"estimator__n_estimators": 20},
    "deepsvdd": {"estimator__epochs": 1},
    "adegan": {"steps": 5, "batch_size": 16},
    "agad": {"width": 4, "latent_dim": 8, "steps": 3, "refine_steps": 2, "batch_size": 8},
    "anoean": {"steps": 3, "batch_size": 16},
}
PUBLIC_CLASSES = (BaseDetector, GANDetector, PoolGAN, RtBiGAN, EGBAD, AnoGAN, PeerAdapter)


def tiny(name: str, **kw) -> BaseDetector:
    return make_detector(name, **{"random_state": 0, **TINY[name], **kw})


@pytest.fixture(scope="module")
def fitted(detector_data):
    """Every registry detector: the unfitted original, its clone fitted with ``y_true`` and a
    callback, and the callback's calls."""
    d = detector_data
    out = {}
    for name in DETECTORS:
        original = tiny(name)
        det = clone(original)
        calls: list[tuple[object, int]] = []
        det.fit(d.x, d.trusted, y_true=d.y, callback=lambda det, r, c=calls: c.append((det, r)))
        out[name] = original, det, calls
    return out


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 28), np.uint8), "shape"),
        (np.zeros((3, 5, 5), np.uint8), "at least 8x8"),
        (np.zeros((3, 3, 4, 4), np.uint8), "cannot tell whether the channels"),
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


def test_accepted_layouts_agree(mnist_train):
    u8 = mnist_train.images[:4]
    f = u8.astype(np.float32) / 255
    assert np.array_equal(check_images(u8), check_images(f[:, None]))
    assert check_images(u8).dtype == np.float32 and check_images(u8).shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(check_images(f, dtype=np.uint8), u8[:, None])
    assert check_images(np.zeros((0, 28, 28), np.uint8), allow_empty=True).shape == (0, 1, 28, 28)


def test_unfitted_detectors_raise_not_fitted_error(detector_data):
    for name in DETECTORS:
        det = make_detector(name)
        with pytest.raises(NotFittedError):
            det.decision_function(detector_data.x_test[:5])
        with pytest.raises(NotFittedError):
            det.predict(detector_data.x_test[:5])


def test_fit_requires_trusted_images(detector_data):
    with pytest.raises(ValueError, match="trusted"):
        tiny("rtbigan").fit(detector_data.x)
    with pytest.raises(ValueError, match="trusted"):
        tiny("iforest", threshold_policy="trusted-quantile").fit(detector_data.x)
    with pytest.raises(ValueError, match="one label per pool image"):
        tiny("iforest").fit(detector_data.x, y_true=detector_data.y[:10])


@pytest.mark.parametrize("name", ["rtbigan", "egbad", "anogan"])
def test_bad_hyper_parameters_are_named_at_fit(detector_data, name):
    det = make_detector(name, alpha=1.5)  # the constructor only stores
    with pytest.raises(InvalidParameterError, match=r"'alpha'.*range \[0(\.0)?, 1(\.0)?\]"):
        det.fit(detector_data.x, detector_data.trusted)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_unknown_threshold_policy_is_named_at_fit(detector_data, name):
    with pytest.raises(InvalidParameterError, match="'threshold_policy'.*'median'"):
        make_detector(name, threshold_policy="median").fit(detector_data.x, detector_data.trusted)
    with pytest.raises(ValueError, match="threshold_value"):
        make_detector(name, threshold_policy="fixed").fit(detector_data.x, detector_data.trusted)


def test_registry_is_the_one_list_of_names():
    assert list(DETECTORS) == ["rtbigan", "egbad", "anogan", "iforest", "deepsvdd", "adegan",
                               "agad", "anoean"]
    assert isinstance(make_detector("Rt-BiGAN"), RtBiGAN)
    assert isinstance(make_detector("egbad"), EGBAD)
    assert isinstance(make_detector("anogan"), AnoGAN)
    assert make_detector("rtbigan").get_params()["adapt_steps"] == 20
    with pytest.raises(ValueError, match="unknown detector 'nope'.*rtbigan, egbad"):
        make_detector("nope")
    with pytest.raises(TypeError):
        RtBiGAN("default")  # keyword-only


# -- the estimator contract on every registry detector ----------------------------------------
@pytest.mark.parametrize("name", list(DETECTORS))
@pytest.mark.parametrize("check", [
    estimator_checks.check_parameters_default_constructible,
    estimator_checks.check_no_attributes_set_in_init,
    estimator_checks.check_get_params_invariance,
    estimator_checks.check_set_params,
    estimator_checks.check_estimator_cloneable,
    estimator_checks.check_estimator_repr,
], ids=lambda check: check.__name__)
def test_scikit_learn_api_checks(name, check):
    check(name, make_detector(name))


@pytest.mark.parametrize("name", list(DETECTORS))
def test_clone_fits_and_the_original_stays_unfitted(fitted, detector_data, name):
    original, det, _ = fitted[name]
    assert det is not original and type(det) is type(original)
    assert repr(det) == repr(original)
    with pytest.raises(NotFittedError):
        original.decision_function(detector_data.x_test[:5])
    s = det.decision_function(detector_data.x_test[:50])
    assert s.shape == (50,) and s.dtype == np.float64 and np.isfinite(s).all()
    assert det.labels_.shape == (len(detector_data.x),) and det.labels_.dtype == np.int64
    assert isinstance(det.threshold_, float) and det.n_features_in_ == 784
    np.testing.assert_array_equal(det.predict(detector_data.x_test[:50]),
                                  (s > det.threshold_).astype(np.int64))
    np.testing.assert_array_equal(det.labels_, det.decision_scores_ > det.threshold_)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_fit_params_reach_every_detector(fitted, name):
    _, det, calls = fitted[name]
    assert det.history_ and all("auc" in h for h in det.history_)
    assert 0.0 <= det.history_[-1]["auc"] <= 1.0
    assert [r for _, r in calls] == [h["round"] for h in det.history_]
    assert all(d is det for d, _ in calls)
    assert det.history_[-1]["threshold"] == det.threshold_
    assert det.data_hashes_["pool_sha256"] and det.data_hashes_["trusted_sha256"]
    assert not [k for k in vars(det) if k.startswith("_") and not k.startswith("__")], \
        "no temporary private attributes are left behind"


def test_callback_sees_each_round_as_it_scores(detector_data):
    d = detector_data
    seen = []

    def record(det, rnd):
        seen.append((rnd, det.threshold_, det.decision_function(d.x_test[:20])))

    det = tiny("rtbigan", self_training_rounds=2, training={"stop_tol": 0.0}).fit(d.x, d.trusted,
                                                                     callback=record)
    assert [r for r, _, _ in seen] == [0, 1, 2]
    assert seen[-1][1] == det.threshold_
    np.testing.assert_array_equal(seen[-1][2], det.decision_function(d.x_test[:20]))
    assert not np.array_equal(seen[0][2], seen[-1][2])  # the model changed between rounds


class _CountingRtBiGAN(RtBiGAN):
    """Rt-BiGAN that logs each scoring pass's batch size (for the scoring-once test): its
    calibrated score goes through ``_evidence``, the paper's score through ``_score``."""

    def _score(self, X):
        if self.calibration_ is None:
            self.events.append(("score", len(X)))
        return super()._score(X)

    def _evidence(self, X):
        self.events.append(("score", len(X)))
        return super()._evidence(X)


class _CountingEGBAD(EGBAD):
    def _score(self, X):
        self.events.append(("score", len(X)))
        return super()._score(X)


@pytest.mark.parametrize("cls, kw", [(_CountingRtBiGAN, TINY["rtbigan"]),
                                     (_CountingEGBAD, TINY["egbad"])])
def test_fit_scores_the_pool_once_per_round(detector_data, cls, kw):
    d = detector_data
    det = cls(random_state=0, **kw)
    det.events = []
    det.fit(d.x, d.trusted, callback=lambda det, r: det.events.append(("round", r)))
    ends = [i for i, e in enumerate(det.events) if e[0] == "round"]
    assert len(ends) == len(det.history_)
    assert ends[-1] == len(det.events) - 1, "nothing is scored after the last round"
    last = det.events[(ends[-2] + 1 if len(ends) > 1 else 0):ends[-1]]
    assert last.count(("score", len(d.x))) == 1
    # Calibrated evidence scores the trusted images twice: to anchor the cuts, then as the
    # round's trusted scores (10 images).
    assert 1 <= last.count(("score", len(d.trusted))) <= 2


# -- the peers -------------------------------------------------------------------------------
def test_peer_adapter_is_a_meta_estimator(detector_data):
    d = detector_data
    det = make_detector("iforest")
    params = det.get_params(deep=True)
    assert isinstance(params["estimator"], IsolationForest)
    assert params["estimator__n_estimators"] == 200 and params["estimator__n_jobs"] == 1
    det.set_params(estimator__n_estimators=30, random_state=3).fit(d.x)
    assert det.estimator_.random_state == 3 and det.estimator_.n_estimators == 30
    assert det.estimator.random_state is None and not hasattr(det.estimator, "estimators_")
    # The same scores as the estimator it builds today, fitted by hand.
    ref = IsolationForest(n_estimators=30, random_state=3, n_jobs=1)
    flat = d.x.reshape(len(d.x), -1).astype(np.float32) / 255
    np.testing.assert_array_equal(det.decision_scores_, -ref.fit(flat).score_samples(flat))
    default = PeerAdapter().fit(d.x)
    assert isinstance(default.estimator_, IsolationForest) and default.estimator is None
    assert default.estimator_.n_estimators == 200


def test_pyod_deepsvdd_through_the_adapter(detector_data, fitted):
    d = detector_data
    det = fitted["deepsvdd"][1]
    est = det.estimator_
    assert isinstance(est, DeepSVDD) and est.random_state == 0
    assert (est.n_features, est.batch_size, est.preprocessing) == (784, 128, False)
    assert make_detector("deepsvdd").get_params()["estimator__epochs"] == 10
    # PyOD's orientation is kept: higher = more anomalous, inverted digits far above digits.
    digits = d.x_test[:200]
    x = np.concatenate([digits, 255 - digits[:40]])
    s = det.decision_function(x)
    flat = x.reshape(len(x), -1).astype(np.float32) / 255
    np.testing.assert_array_equal(s, est.decision_function(flat))
    assert roc_auc_score(np.r_[np.zeros(200), np.ones(40)], s) > 0.9
    assert set(np.unique(det.predict(x))) <= {0, 1}
    assert 0 < det.labels_.sum() < len(d.x)


# -- determinism -----------------------------------------------------------------------------
def test_rtbigan_is_deterministic_per_random_state(detector_data, fitted):
    d = detector_data
    a = fitted["rtbigan"][1]
    b = tiny("rtbigan").fit(d.x, d.trusted)
    np.testing.assert_array_equal(a.decision_function(d.x_test), b.decision_function(d.x_test))
    np.testing.assert_array_equal(a.decision_scores_, b.decision_scores_)
    assert [h["round"] for h in a.history_] == [0, 1]
    c = tiny("rtbigan", random_state=1).fit(d.x, d.trusted)
    assert not np.array_equal(a.decision_scores_, c.decision_scores_)


# -- docstrings ------------------------------------------------------------------------------
def _attributes_section(doc: str) -> str:
    match = re.search(r"\n\s*Attributes\n\s*-+\n(.*?)(\n\s*[A-Z][a-z]+\n\s*-+\n|\Z)", doc, re.S)
    assert match, "no Attributes section"
    return match.group(1)


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda c: c.__name__)
def test_every_public_detector_class_documents_itself(cls):
    doc = cls.__doc__
    assert doc and "Parameters\n" in doc and "Attributes\n" in doc
    attributes = _attributes_section(doc)
    for name in ("decision_scores_", "threshold_", "labels_", "history_", "n_features_in_"):
        assert name in attributes, (cls.__name__, name)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_attributes_sections_name_every_fitted_attribute(fitted, name):
    det = fitted[name][1]
    attributes = _attributes_section(type(det).__doc__)
    fitted_names = [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]
    assert fitted_names
    missing = [k for k in fitted_names if not re.search(rf"\b{k}(?!\w)", attributes)]
    assert missing == [], f"{type(det).__name__} does not document {missing}"


def test_anomaly_map_shows_where_an_image_is_anomalous(fitted, detector_data):
    det = fitted["rtbigan"][1]
    digits = detector_data.x_test[:20]
    stamped = Trigger(size=4, position="bottom-right", margin=1).apply(digits)
    plain, marked = det.anomaly_map(digits), det.anomaly_map(stamped)
    assert plain.shape == (20, 28, 28) and plain.dtype == np.float32
    # The map sums to the score's L_G: the same residual, not a picture of something else.
    lg, _ = det._losses(check_images(digits))
    np.testing.assert_allclose(plain.reshape(20, -1).sum(1), lg, rtol=1e-4)
    # The patch raises the residual where it is, far more than anywhere else.
    extra = marked - plain
    patch = extra[:, 23:27, 23:27].sum((1, 2))
    elsewhere = np.abs(extra).sum((1, 2)) - np.abs(extra[:, 23:27, 23:27]).sum((1, 2))
    assert (patch > elsewhere).mean() >= 0.8
    with pytest.raises(NotImplementedError, match="no encoder"):
        fitted["anogan"][1].anomaly_map(digits)
    with pytest.raises(NotFittedError):
        clone(det).anomaly_map(digits)


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


def test_gmm_threshold_uses_trusted_scores_to_keep_a_skewed_clean_pool():
    # A skewed normal population fits two well-separated Gaussians on its own; the trusted
    # images (normal by definition) score as high as the upper one, so nothing is anomalous.
    rng = np.random.default_rng(2)
    s = np.r_[rng.lognormal(-0.7, 0.2, 400), rng.lognormal(0.4, 0.5, 600)]
    trusted = np.quantile(s, [0.1, 0.5, 0.99])
    assert (s > gmm_threshold(s)).mean() > 0.2  # without trusted scores it cuts the pool
    assert (s > gmm_threshold(s, trusted_scores=trusted)).mean() < 0.02
    assert (s > compute_threshold("gmm", s, trusted)).mean() < 0.02
    # Real pollution sits above every trusted score and is still found.
    polluted = np.r_[s, rng.lognormal(2.5, 0.3, 250)]
    flagged = polluted > gmm_threshold(polluted, trusted_scores=trusted)
    assert flagged[1000:].mean() > 0.95


def test_other_policies():
    s = np.arange(100, dtype=float)
    assert compute_threshold("contamination", s, value=0.1) == pytest.approx(89.1)
    assert compute_threshold("trusted-quantile", s, np.array([1.0, 2.0, 3.0])) == 3.0
    assert compute_threshold("fixed", s, value=42.0) == 42.0
    with pytest.raises(ValueError, match="trusted images"):
        compute_threshold("trusted-quantile", s)
    with pytest.raises(ValueError, match="unknown"):
        compute_threshold("median", s)


# -- a real training run ----------------------------------------------------------------------
def test_self_training_beats_an_untrained_model(detector_data):
    d = detector_data
    untrained = RtBiGAN(
        meta_checkpoint=None,
        adapt_steps=0,
        self_training_rounds=0,
        training=Training(normalize_scores=False, pixel_weighting=False),
    ).fit(d.x, d.trusted)
    auc0 = roc_auc_score(d.y_test, untrained.decision_function(d.x_test))
    det = RtBiGAN(self_training_rounds=1, steps_per_round=150, random_state=0)
    det.fit(d.x, d.trusted, y_true=d.y)
    auc = roc_auc_score(d.y_test, det.decision_function(d.x_test))
    assert "auc" in det.history_[-1]
    assert auc >= 0.95 and auc > auc0 + 0.1, (auc, auc0)
