"""score_pool, the one pipeline for a pool: order, fit rows (all, or a bounded sample that
``max_fit_samples`` draws), fit, score every upload, label check, verdicts; one verdict rule,
one contamination estimator, every drop explained."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedsieve.server.audit import AuditLog, read_audit
from fedsieve.server.screening import DEFAULT_MAX_FIT_SAMPLES, ClientUpload, score_pool
from fedsieve.shared.data.images import check_images
from fedsieve.shared.detectors import RtBiGAN, make_detector
from fedsieve.shared.detectors.labels import LabelCheck
from fedsieve.shared.detectors.threshold import DEFAULT_BUDGET, estimate_contamination


class Recorder:
    """Builds detectors and keeps every one it built (to read what each was fitted on)."""

    def __init__(self, build) -> None:
        self.build = build
        self.made: list = []

    def __call__(self):
        self.made.append(self.build())
        return self.made[-1]


class Brightness:
    """A stand-in detector scoring mean brightness; records what it was fitted on and the
    size of every batch it scored."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def fit(self, X: np.ndarray, trusted: np.ndarray | None = None) -> Brightness:
        self.fitted_on = np.array(X)
        self.decision_scores_ = self.decision_function(X)
        self.batches.clear()
        self.threshold_ = float(np.quantile(self.decision_scores_, 0.8))
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        self.batches.append(len(X))
        return X.reshape(len(X), -1).mean(1).astype(np.float64)

    false_drop_budget = 0.05


def split(x: np.ndarray, nodes: list[int], cuts: list[int], ids: np.ndarray | None = None,
          y: np.ndarray | None = None) -> dict[int, ClientUpload]:
    """``x`` cut at ``cuts`` into one upload per node (ids: ``ids`` or positions)."""
    ids = np.arange(len(x), dtype=np.int64) if ids is None else ids
    edges = [0, *cuts, len(x)]
    return {n: ClientUpload(n, x[a:b], ids[a:b], b - a, None if y is None else y[a:b])
            for n, a, b in zip(nodes, edges[:-1], edges[1:])}


def by_sample(uploads: dict[int, ClientUpload], scoring) -> dict:
    """(id, image bytes) -> (score, verdict): what the verdicts say, whatever the nodes."""
    return {(int(i), bytes(x)): (float(s), int(v))
            for n, cv in scoring.verdicts.items()
            for i, s, v, x in zip(cv.ids, cv.scores, cv.verdicts, uploads[n].x)}


def iforest():
    return make_detector("iforest", random_state=0)


def test_default_is_a_bounded_fit():
    assert isinstance(DEFAULT_MAX_FIT_SAMPLES, int) and DEFAULT_MAX_FIT_SAMPLES >= 1000


def test_bounded_fit_sees_the_sample_only_and_scores_every_upload(detector_data):
    uploads = split(detector_data.x, [4, 8, 2], [170, 330])
    detectors = Recorder(iforest)
    scoring = score_pool(uploads, detector_data.trusted, detectors, max_fit_samples=120,
                         score_batch=64)
    (detector,) = detectors.made
    assert len(detector.decision_scores_) == 120
    assert sorted(scoring.verdicts) == [2, 4, 8]
    flagged = 0
    for node, verdict in scoring.verdicts.items():
        n = len(uploads[node].ids)
        assert verdict.scores.shape == verdict.verdicts.shape == (n,)
        assert np.isfinite(verdict.scores).all()
        np.testing.assert_array_equal(verdict.ids, uploads[node].ids)
        np.testing.assert_array_equal(verdict.verdicts,
                                      (verdict.scores > scoring.threshold).astype(np.int64))
        np.testing.assert_allclose(verdict.scores,
                                   detector.decision_function(uploads[node].x))
        assert verdict.label_flags is None
        flagged += int(verdict.verdicts.sum())
    assert scoring.threshold == detector.threshold_
    assert scoring.contamination == pytest.approx(
        estimate_contamination(flagged, 500, detector.false_drop_budget))
    scores = np.concatenate([scoring.verdicts[n].scores for n in (4, 8, 2)])
    assert roc_auc_score(detector_data.y, scores) > 0.8  # the fit still separates the pool


def test_scoring_is_batched_and_the_fit_gets_a_copy_of_the_sample(detector_data):
    uploads = split(detector_data.x, [1, 2], [300])
    detectors = Recorder(Brightness)
    scoring = score_pool(uploads, detector_data.trusted, detectors, max_fit_samples=50,
                         score_batch=64)
    (detector,) = detectors.made
    assert detector.fitted_on.shape == (50, 28, 28)
    # Every fitted image is an upload; node 1's 300 are scored in 5 batches, node 2's 200 in 4.
    pool = {bytes(x) for x in detector_data.x}
    assert all(bytes(x) in pool for x in detector.fitted_on)
    assert detector.batches == [64] * 4 + [44] + [64] * 3 + [8]
    # The stand-in has no contamination_: its budget corrects the verdicts' share.
    flagged = sum(int(v.verdicts.sum()) for v in scoring.verdicts.values())
    assert scoring.contamination == pytest.approx(estimate_contamination(flagged, 500, 0.05))


def test_sample_and_verdicts_do_not_depend_on_node_ids_or_arrival(detector_data):
    x = detector_data.x
    # Ids collide across nodes (each client numbers its own samples): the content breaks ties.
    ids = np.r_[np.arange(250), np.arange(250)].astype(np.int64)
    first, second = Recorder(iforest), Recorder(iforest)
    a = split(x, [11, 7], [250], ids)
    b = {n: ClientUpload(n, u.x, u.ids, u.num_samples)
         for n, u in zip([90, 3], (a[7], a[11]))}  # relabelled and swapped
    scored_a = score_pool(a, detector_data.trusted, first, max_fit_samples=150)
    scored_b = score_pool(b, detector_data.trusted, second, max_fit_samples=150)
    assert (first.made[0].data_hashes_["pool_sha256"]
            == second.made[0].data_hashes_["pool_sha256"])
    assert scored_a.threshold == scored_b.threshold
    assert by_sample(a, scored_a) == by_sample(b, scored_b)
    assert scored_a.contamination == scored_b.contamination
    # Another seed draws another sample.
    third = Recorder(iforest)
    score_pool(a, detector_data.trusted, third, max_fit_samples=150, sample_seed=1)
    assert (third.made[0].data_hashes_["pool_sha256"]
            != first.made[0].data_hashes_["pool_sha256"])


@pytest.mark.parametrize("max_fit_samples", [500, 10_000])
def test_a_pool_within_the_bound_is_screened_as_without_one(detector_data, max_fit_samples):
    # iforest subsamples by position: the pool's order reaches its verdicts.
    uploads = split(detector_data.x, [6, 3], [260])
    bounded = score_pool(uploads, detector_data.trusted, iforest,
                         max_fit_samples=max_fit_samples)
    unbounded = score_pool(uploads, detector_data.trusted, iforest)
    assert bounded.threshold == unbounded.threshold
    assert bounded.contamination == unbounded.contamination
    for node in uploads:
        np.testing.assert_array_equal(bounded.verdicts[node].scores,
                                      unbounded.verdicts[node].scores)
        np.testing.assert_array_equal(bounded.verdicts[node].verdicts,
                                      unbounded.verdicts[node].verdicts)
    # One upload more than the bound: a bounded fit, on max_fit_samples images.
    detectors = Recorder(iforest)
    score_pool(uploads, detector_data.trusted, detectors, max_fit_samples=499)
    assert len(detectors.made[0].decision_scores_) == 499


def test_bounded_rtbigan_flags_the_pollution(detector_data):
    uploads = split(detector_data.x, [1, 2, 3], [150, 320])
    detectors = Recorder(lambda: RtBiGAN(adapt_steps=1, self_training_rounds=1,
                                         steps_per_round=3, random_state=0))
    scoring = score_pool(uploads, detector_data.trusted, detectors, max_fit_samples=200)
    assert len(detectors.made[0].decision_scores_) == 200
    scores = np.concatenate([scoring.verdicts[n].scores for n in (1, 2, 3)])
    verdicts = np.concatenate([scoring.verdicts[n].verdicts for n in (1, 2, 3)])
    assert roc_auc_score(detector_data.y, scores) > 0.9
    assert verdicts[detector_data.y == 1].mean() > verdicts[detector_data.y == 0].mean()


class RecordingLabelCheck:
    """A stand-in label check: flags every claimed label 0; records what it was fitted on."""

    fitted: list = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> RecordingLabelCheck:
        RecordingLabelCheck.fitted.append((np.array(X), np.array(y)))
        self.labels_ = (np.asarray(y) == 0).astype(np.int64)
        return self


def test_label_check_runs_on_every_labelled_upload_whose_image_passed(detector_data):
    x = detector_data.x
    ids = np.arange(len(x), dtype=np.int64)
    claimed = np.arange(len(x)) % 10
    labelled = split(x, [5, 9], [300], ids, claimed)
    uploads = {5: labelled[5], 9: ClientUpload(9, x[300:], ids[300:], 200)}  # no labels
    RecordingLabelCheck.fitted.clear()
    scoring = score_pool(uploads, detector_data.trusted, Brightness, RecordingLabelCheck,
                         max_fit_samples=100)
    (fitted_x, fitted_y), = RecordingLabelCheck.fitted
    node5, node9 = scoring.verdicts[5], scoring.verdicts[9]
    image_dropped = node5.scores > scoring.threshold
    # The check saw node 5's passed images (all of them, not only the sampled ones), in the
    # pool's id order, with their claimed labels.
    np.testing.assert_array_equal(fitted_x, x[:300][~image_dropped])
    np.testing.assert_array_equal(fitted_y, claimed[:300][~image_dropped])
    assert node9.label_flags is None and node5.label_flags is not None
    expected = ((claimed[:300] == 0) & ~image_dropped).astype(np.int64)
    np.testing.assert_array_equal(node5.label_flags, expected)
    np.testing.assert_array_equal(node5.verdicts, image_dropped.astype(np.int64) | expected)
    assert scoring.label_flagged == int(expected.sum()) > 0


def test_a_real_label_check_still_runs_bounded(detector_data):
    x = detector_data.x[:240]  # digits
    claimed = (np.arange(240) % 3).astype(np.int64)  # labels the images do not support
    uploads = split(x, [1, 2], [120], y=claimed)
    scoring = score_pool(uploads, detector_data.trusted, iforest,
                         lambda: LabelCheck(epochs=1, min_steps=0, random_state=0),
                         max_fit_samples=100)
    for verdict in scoring.verdicts.values():
        assert verdict.label_flags is not None and len(verdict.label_flags) == 120
        assert not verdict.label_flags[verdict.scores > scoring.threshold].any()
    assert scoring.label_flagged == sum(int(v.label_flags.sum())
                                        for v in scoring.verdicts.values())


def test_bounded_fit_needs_decision_function_and_valid_sizes(detector_data):
    class FitOnly(Brightness):
        decision_function = None

        def fit(self, X, trusted=None):
            self.threshold_ = 0.0
            return self

    uploads = split(detector_data.x, [1, 2], [250])
    with pytest.raises(TypeError, match="decision_function"):
        score_pool(uploads, detector_data.trusted, FitOnly, max_fit_samples=10)
    with pytest.raises(ValueError, match="max_fit_samples"):
        score_pool(uploads, detector_data.trusted, Brightness, max_fit_samples=0)
    with pytest.raises(ValueError, match="score_batch"):
        score_pool(uploads, detector_data.trusted, Brightness, max_fit_samples=10,
                   score_batch=0)


def test_empty_pool_is_empty_either_way(detector_data):
    scoring = score_pool({}, detector_data.trusted, Brightness, max_fit_samples=10)
    assert scoring.verdicts == {} and np.isnan(scoring.threshold)
    assert scoring.contamination == estimate_contamination(0, 0, DEFAULT_BUDGET)


# -- the pool's order: verdicts depend on what was uploaded, not on Flower's node ids ---------
def test_verdicts_do_not_depend_on_node_ids(detector_data):
    x = detector_data.x
    # Two clients number their samples alike (0, 1, ...): ids collide across nodes.
    parts = [x[:250], x[250:]]
    results = []
    for nodes in ([11, 7], [3, 90]):
        uploads = {node: ClientUpload(node, part, np.arange(len(part), dtype=np.int64),
                                      len(part)) for node, part in zip(nodes, parts)}
        # Self-training draws batches by position: the pool's order reaches the verdicts.
        scoring = score_pool(uploads, detector_data.trusted, lambda: make_detector(
            "rtbigan", self_training_rounds=1, steps_per_round=40, random_state=0))
        results.append((by_sample(uploads, scoring), scoring.threshold))
    assert results[0] == results[1]
    assert sum(v for _, v in results[0][0].values()) > 0  # the fit really flags something


# -- one contamination estimator ---------------------------------------------------------------
class FlagBright:
    """A stand-in detector: flags images brighter than 100 on average; no ``contamination_``
    unless given one."""

    def __init__(self, contamination: dict | None = None) -> None:
        self.contamination = contamination

    def fit(self, X: np.ndarray, trusted: np.ndarray | None = None) -> FlagBright:
        self.decision_scores_ = X.reshape(len(X), -1).mean(axis=1)
        self.threshold_ = 100.0
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        if self.contamination is not None:
            self.contamination_ = self.contamination
        return self


def bright_uploads() -> dict[int, ClientUpload]:
    """Two nodes, 40 images each; 10 of the 80 are bright."""
    x = np.zeros((80, 28, 28), np.uint8)
    x[::8] = 255
    return {node: ClientUpload(node, x[i * 40:(i + 1) * 40], np.arange(40, dtype=np.int64), 40)
            for i, node in enumerate((5, 9))}


def test_detector_without_an_estimate_gets_one_from_its_verdicts():
    scoring = score_pool(bright_uploads(), np.zeros((2, 28, 28), np.uint8), FlagBright)
    assert sum(int(v.verdicts.sum()) for v in scoring.verdicts.values()) == 10
    assert scoring.contamination == estimate_contamination(10, 80, DEFAULT_BUDGET)
    low, estimate, high = (scoring.contamination[k] for k in ("low", "estimate", "high"))
    assert low <= estimate <= high and estimate == pytest.approx((10 / 80 - 0.01) / 0.99)


def test_the_estimate_is_the_verdicts_with_the_detectors_budget():
    # A detector's own contamination_ is not copied: every path (whole pool, bounded fit,
    # local screening) estimates from the verdicts with the detector's false-drop budget.
    scoring = score_pool(bright_uploads(), np.zeros((2, 28, 28), np.uint8),
                         lambda: FlagBright({"estimate": 0.9, "low": 0.8, "high": 1.0,
                                             "confidence": 0.95}))
    assert scoring.contamination == estimate_contamination(10, 80, DEFAULT_BUDGET)

    class Budgeted(FlagBright):
        false_drop_budget = 0.05

    scoring = score_pool(bright_uploads(), np.zeros((2, 28, 28), np.uint8), Budgeted)
    assert scoring.contamination == pytest.approx(estimate_contamination(10, 80, 0.05))
    assert all(type(v) is float for v in scoring.contamination.values())
    assert set(scoring.verdicts) == {5, 9}


def test_empty_pool_knows_nothing():
    scoring = score_pool({}, np.zeros((2, 28, 28), np.uint8), FlagBright)
    assert scoring.verdicts == {} and math.isnan(scoring.threshold)
    assert (scoring.contamination["low"], scoring.contamination["high"]) == (0.0, 1.0)


# -- every drop explained ----------------------------------------------------------------------
def test_the_audit_log_names_the_deciding_piece_of_every_drop(detector_data, tmp_path):
    d = detector_data
    x = check_images(d.x, dtype=np.uint8)
    uploads = {7: ClientUpload(7, x[:250], np.arange(250), 250),
               9: ClientUpload(9, x[250:], np.arange(250, len(x)), len(x) - 250)}
    trusted = check_images(d.trusted, dtype=np.uint8)
    short = {"self_training_rounds": 1, "steps_per_round": 20, "random_state": 0}
    for bound in (None, 300):  # the whole pool, then a bounded fit that scores every upload
        scored = score_pool(uploads, trusted, lambda: RtBiGAN(**short), max_fit_samples=bound)
        log = AuditLog(tmp_path / f"audit-{bound}.jsonl")
        flagged_by: dict[str, int] = {}
        for node, verdict in scored.verdicts.items():
            log.write_samples(1, node, verdict.ids, verdict.scores, verdict.verdicts,
                              scored.threshold, explanation=verdict.explanation)
            for piece, n in verdict.explanation.flagged_by().items():
                flagged_by[piece] = flagged_by.get(piece, 0) + n
        entries = list(read_audit(log.path, "sample"))
        dropped = [e for e in entries if e["verdict"] == 1]
        assert dropped and all(e["value"] > e["cut"] for e in dropped)
        assert all("piece" not in e for e in entries if e["verdict"] == 0)
        assert sum(flagged_by.values()) == len(dropped)
