"""The false-drop budget policy, the contamination estimate and the extra evidence (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsieve.shared.detectors import RtBiGAN, load_detector, save_detector
from fedsieve.shared.detectors.evidence import (
    STATISTICS,
    EvidenceCalibration,
    detached_ink,
    image_statistics,
    robust_center_scale,
    typicality,
)
from fedsieve.shared.detectors.threshold import (
    budget_threshold,
    compute_threshold,
    estimate_contamination,
    normal_mode_cut,
)


def _mixture(n_normal: int, n_anomal: int, seed: int, normal: str = "lognormal"):
    """Positive scores: a normal population and, above it, a separated anomalous one."""
    rng = np.random.default_rng(seed)
    if normal == "lognormal":
        x0 = rng.lognormal(0.0, 0.25, n_normal)
    elif normal == "heavy":  # heavy right tail: Student-t with 3 dof on the log scale
        x0 = np.exp(0.2 * rng.standard_t(3, n_normal))
    else:  # "skewed": a gamma, unimodal with a long right tail
        x0 = rng.gamma(4.0, 0.25, n_normal)
    x1 = rng.lognormal(2.0, 0.2, n_anomal)
    trusted = x0[:10]
    return np.r_[x0, x1], np.r_[np.zeros(n_normal), np.ones(n_anomal)].astype(bool), trusted


@pytest.mark.parametrize("normal", ["lognormal", "heavy", "skewed"])
def test_budget_keeps_a_clean_pool(normal):
    scores, _, trusted = _mixture(4000, 0, seed=1, normal=normal)
    t = budget_threshold(scores, trusted, rate=0.01)
    assert np.mean(scores > t) <= 0.011  # no second population: only the budget is spent


@pytest.mark.parametrize("share", [0.05, 0.2, 0.8])
def test_budget_finds_pollution_at_any_share_within_budget(share):
    n_anomal = int(4000 * share)
    scores, anomal, trusted = _mixture(4000 - n_anomal, n_anomal, seed=2)
    t = compute_threshold("budget", scores, trusted, 0.01)
    flagged = scores > t
    assert flagged[anomal].mean() >= 0.99
    # 1 % nominal; the quantile is taken on the estimated normal part, so it stays near it
    assert flagged[~anomal].mean() <= 0.02


def test_budget_does_not_follow_a_majority_to_its_mode():
    """80 % pollution forms the densest peak; the climb starts at the trusted images."""
    scores, anomal, trusted = _mixture(800, 3200, seed=3)
    cut, mode = normal_mode_cut(np.log(scores), np.log(trusted), 0.01)[:2]
    assert abs(mode) < 0.3  # the normal log-mode is 0, the pollution's is 2
    assert (np.log(scores[anomal]) > cut).mean() >= 0.99


@pytest.mark.parametrize("seed", [0, 1])
def test_budget_finds_a_normal_shoulder_under_a_majority(seed):
    """87 % pollution overlapping the normal tail: no valley, the normal data only a shoulder
    of the pollution's peak (the climb from the trusted images ends on the pollution). The
    quantile of the whole pool would flag 1 % of it; the mixture cut flags most pollution
    and keeps the budget."""
    rng = np.random.default_rng(seed)
    normal, pollution = rng.normal(0.0, 0.3, 520), rng.normal(1.6, 0.5, 3480)
    found = normal_mode_cut(np.r_[normal, pollution], normal[:10], 0.01)
    assert found.depth == 1.0  # no valley: the shoulder case
    assert (normal > found.cut).mean() <= 0.02
    assert (pollution > found.cut).mean() >= 0.8
    assert abs(found.mode) < 0.3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_budget_finds_a_second_population_spread_thin(seed):
    """A small pool (310 normal values, 78 polluted ones spread evenly over two units): the
    pollution never rises by ten images in one place, which alone once made the cut fall back
    to the pool's quantile and flag 4 % of it (issue 34); it holds far more images than the
    valley's level would, so the valley before it is the cut."""
    rng = np.random.default_rng(seed)
    normal, pollution = rng.normal(0.0, 0.3, 310), rng.uniform(1.6, 3.6, 78)
    found = normal_mode_cut(np.r_[normal, pollution], normal[:10], 0.01)
    assert found.depth < 1.0
    assert (pollution > found.cut).mean() >= 0.95 and (normal > found.cut).mean() <= 0.01


def test_calibration_keeps_a_valley_when_the_other_pieces_take_most_of_its_population():
    """78 polluted images spread thin above the normal tail of one piece (a valley on the
    whole pool), 64 of them flagged by a second piece too: cut again on what the second
    piece leaves, the first piece sees only the 14 others, too few to form a valley, and
    its budget quantile lay above most of them (issue 34: 9-16 of 78 let through this way
    at ~100 samples a client). The valley it showed before is kept."""
    found, normal_dropped = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        normal = rng.normal(0.0, 0.3, (310, 2))
        pollution = np.c_[rng.uniform(1.0, 2.6, 78),
                          np.r_[rng.uniform(1.5, 2.5, 64), rng.normal(0.0, 0.3, 14)]]
        pool = np.concatenate([normal, pollution])
        score = EvidenceCalibration.fit(pool, normal[:10], 0.01).combine(pool)
        found.append((score[310:] > 0).mean())
        normal_dropped.append((score[:310] > 0).mean())
    assert np.mean(found) >= 0.98 and min(found) >= 0.9  # before: mean 0.90, worst 0.83
    assert max(normal_dropped) <= 0.02


@pytest.mark.parametrize("seed", range(5))
def test_calibration_keeps_no_valley_that_lies_inside_the_normal_tail(seed):
    """A trigger-patch-like pool: 20 % pollution overlapping a right-skewed piece's normal
    tail, and all of it far above a point-mass piece (detached ink). On the whole pool the
    first piece shows a valley inside its normal tail; once the second piece flags the whole
    pollution, that valley lies where the normal data has not thinned out and is not kept
    (kept, it dropped 6-9 % of the normal values; the pollution grid's trigger patch 6.5 %)."""
    rng = np.random.default_rng(seed)
    n, m = 4000, 1000
    normal = np.c_[rng.gumbel(0.0, 0.25, n), rng.normal(0.7, 0.25, n),
                   np.where(rng.random(n) < 0.97, 0.0, rng.uniform(0.05, 0.6, n))]
    pollution = np.c_[rng.normal(1.0, 0.15, m), rng.normal(0.7, 0.25, m),
                      rng.uniform(1.5, 3.0, m)]
    score = EvidenceCalibration.fit(np.r_[normal, pollution], normal[:10], 0.01).combine(
        np.r_[normal, pollution])
    assert (score[n:] > 0).mean() >= 0.99 and (score[:n] > 0).mean() <= 0.01


def test_the_joint_evidence_finds_what_stands_out_a_little_on_two_pieces():
    """78 polluted images a little above the normal tail of one piece (0.6-1.2 at a normal SD
    of 0.3), 62 of them far above it on a second piece and 16 a little above there too: each
    piece alone lets most of the 16 through; added up in robust SDs (the joint evidence)
    they form a second population. The detached-ink-like third piece, a point mass, is left
    out of the sum."""
    found, alone, normal_dropped = [], [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        normal = np.c_[rng.normal(0.0, 0.3, (310, 2)),
                       np.where(rng.random(310) < 0.97, 0.0, rng.uniform(0.1, 3.0, 310))]
        pollution = np.c_[rng.uniform(0.6, 1.2, 78),
                          np.r_[rng.uniform(1.5, 2.5, 62), rng.uniform(0.6, 1.2, 16)],
                          np.zeros(78)]
        pool = np.concatenate([normal, pollution])
        cal = EvidenceCalibration.fit(pool, normal[:10], 0.01)
        assert cal.joint is None or list(cal.joint) == [1.0, 1.0, 0.0]
        back = EvidenceCalibration.from_array(cal.as_array())
        np.testing.assert_array_equal(back.combine(pool), cal.combine(pool))
        score = cal.combine(pool)
        found.append((score[310:] > 0).mean())
        alone.append((cal.calibrate(pool)[310:].max(axis=1) > 0).mean())
        normal_dropped.append((score[:310] > 0).mean())
    assert np.mean(found) >= 0.9 and np.mean(alone) <= 0.85  # measured: 0.94 and 0.83
    assert np.mean(normal_dropped) <= 0.01


@pytest.mark.parametrize("n", [388, 5000])
@pytest.mark.parametrize("shape", ["gumbel", "log-gamma", "student-t"])
def test_budget_finds_no_second_population_in_a_skewed_clean_pool(n, shape):
    """Long right tails of clean pools, small and large, are not taken for a spread second
    population: they lose the budget."""
    rng = np.random.default_rng(n)
    values = {"gumbel": lambda: rng.gumbel(0, 0.3, n),
              "log-gamma": lambda: np.log(rng.gamma(2.0, 1.0, n)),
              "student-t": lambda: 0.3 * rng.standard_t(4, n)}[shape]()
    found = normal_mode_cut(values, values[:10], 0.01)
    assert (values > found.cut).mean() <= 0.011


def test_budget_majority_cut_leaves_a_clean_pool_alone():
    """The mixture cut needs more than half the pool above every trusted value, which a
    clean pool shows with probability 2^-10: a skewed clean pool still loses only the budget."""
    rng = np.random.default_rng(7)
    values = np.log(rng.gamma(4.0, 0.25, 4000))
    found = normal_mode_cut(values, values[:10], 0.01)
    assert (values > found.cut).mean() <= 0.011


@pytest.mark.parametrize("n_pollution", [0, 60, 1000])
def test_budget_on_zero_inflated_values_cuts_inside_the_tail(n_pollution):
    """97 % of normal values exactly 0, the rest a tail starting at a smallest step (as a
    share of detached ink is): the empty stretch after the point mass is no valley, and a
    concentrated population in the tail is still found."""
    rng = np.random.default_rng(4)
    # The tail: dense just after its smallest step, then thin out to 3.
    tail = 0.08 + np.where(rng.random(6000) < 0.6, rng.exponential(0.1, 6000),
                           rng.uniform(0, 3, 6000))
    normal = np.where(rng.random(6000) < 0.97, 0.0, tail)
    pollution = rng.normal(2.5, 0.05, n_pollution)
    values = np.r_[normal, pollution]
    cut = normal_mode_cut(values, np.zeros(10), 0.01).cut
    assert (normal > cut).mean() <= 0.011  # only the budget, not the whole 3 % tail
    assert n_pollution == 0 or (pollution > cut).mean() >= 0.95


def test_budget_valley_is_the_low_point_beyond_the_floor():
    """Pollution spread flat from inside the normal tail (a dip just before it, left of
    mode + 2 SD), then a concentrated population: the valley before that population is the
    low point *beyond* the floor; the dip left of the floor must not hide it (the cut then
    jumped past the population and flagged 5 % of it)."""
    rng = np.random.default_rng(5)
    normal = rng.normal(0, 1, 4000)
    spread_out, population = rng.uniform(1.85, 3.0, 600), rng.normal(3.3, 0.05, 1000)
    cut = normal_mode_cut(np.r_[normal, spread_out, population], normal[:10], 0.01).cut
    assert (population > cut).mean() >= 0.99
    assert (normal > cut).mean() <= 0.01


def _split_normal(rng, n: int, left: float, right: float) -> np.ndarray:
    """Values with their mode at 0, spread ``left`` SDs on its left and ``right`` on its right."""
    side = rng.random(n) < left / (left + right)
    return np.where(side, -np.abs(rng.normal(0, left, n)), np.abs(rng.normal(0, right, n)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_normal", [310, 1190])
def test_budget_finds_the_valley_of_a_normal_mode_skewed_left(seed, n_normal):
    """A normal mode spread 0.94 on its left, 0.35 on its right (a log-distance after
    self-training), pollution (20 %) peaking at 2: the floor, 2 left-side SDs above the mode,
    lies on the pollution's peak; the empty valley at 1 must still be found (it was not,
    and 1.5 % of the pollution was flagged: issue 34's compact federation at 53 %)."""
    rng = np.random.default_rng(seed)
    normal = _split_normal(rng, n_normal, 0.94, 0.35)
    pollution = rng.normal(2.0, 0.45, n_normal // 4)
    found = normal_mode_cut(np.r_[normal, pollution], normal[:10], 0.01 / 3)
    assert found.depth < 1.0
    assert (pollution > found.cut).mean() >= 0.9 and (normal > found.cut).mean() <= 0.01


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("n_normal", [1190, 3190])
def test_budget_cuts_at_the_low_point_when_the_floor_lies_on_the_rising_edge(seed, n_normal):
    """A normal mode spread 0.8 on its left, 0.45 on its right, pollution (20 %) at
    1.9 +- 0.2: the floor, 2 left-side SDs above the mode, lies on the pollution's rising
    edge, right of the density's low point. The cut is the low point, not the floor (at the
    floor up to 11 % of the pollution passed: issue 34, ~1,000 samples a client, seed 2)."""
    rng = np.random.default_rng(seed)
    normal = _split_normal(rng, n_normal, 0.8, 0.45)
    pollution = rng.normal(1.9, 0.2, n_normal // 4)
    found = normal_mode_cut(np.r_[normal, pollution], normal[:10], 0.01 / 3)
    assert found.cut < 0.0 + 2 * 0.8  # left of the floor
    assert (pollution > found.cut).mean() >= 0.95 and (normal > found.cut).mean() <= 0.01


@pytest.mark.parametrize("n", [388, 5000])
def test_budget_finds_no_valley_in_a_clean_mode_skewed_left(n):
    values = _split_normal(np.random.default_rng(n), n, 0.94, 0.35)
    found = normal_mode_cut(values, values[:10], 0.01)
    assert found.depth == 1.0 and (values > found.cut).mean() <= 0.011


def test_budget_rejects_a_budget_out_of_range():
    with pytest.raises(ValueError, match="false-drop budget"):
        compute_threshold("budget", np.ones(10), None, 0.7)


def test_contamination_estimate_covers_the_truth():
    est = estimate_contamination(n_flagged=1010, n=5000, rate=0.01)
    assert est["low"] <= est["estimate"] <= est["high"]
    assert est["low"] <= 0.2 <= est["high"]  # 1,000 anomalies + ~1 % of 4,000 normals
    clean = estimate_contamination(n_flagged=40, n=4000, rate=0.01)
    assert clean["estimate"] == 0.0 and clean["high"] < 0.01


def test_typicality_sees_degenerate_frames(mnist_train):
    digits = mnist_train.images[:600].astype(np.float32) / 255
    frames = np.stack([np.zeros((28, 28)), np.ones((28, 28)), np.full((28, 28), 0.5),
                       1.0 - digits[0]]).astype(np.float32)
    pool = np.concatenate([digits, np.repeat(frames, 150, axis=0)])  # 50 % degenerate
    stats = image_statistics(pool)
    assert stats.shape == (len(pool), len(STATISTICS))
    center, scale = robust_center_scale(stats, image_statistics(digits[:10]))
    t = typicality(stats, center, scale)
    assert t[len(digits):].min() > np.quantile(t[:len(digits)], 0.99)


def test_normal_statistics_stay_with_the_trusted_images_under_a_majority():
    """87 % of the pool with statistics overlapping the normal ones but centred elsewhere: a
    wide trimmed re-estimate drifts towards them, the mode-seeking centre does not."""
    rng = np.random.default_rng(8)
    normal = rng.normal(0.0, 1.0, (520, len(STATISTICS)))
    pollution = rng.normal(2.0, 1.0, (3480, len(STATISTICS)))
    center, scale = robust_center_scale(np.r_[normal, pollution], normal[:10])
    assert np.abs(center).max() < 0.35
    assert (scale < 2.0).all()


def test_detached_ink_is_the_ink_beside_the_largest_blob():
    images = np.zeros((3, 28, 28), np.float32)
    images[:, 8:20, 12:15] = 1.0  # a stroke: 36 units of ink
    images[1, 23:26, 23:26] = 1.0  # a 3x3 patch apart from it: 9 more
    images[2, 20:23, 12:15] = 1.0  # the same patch touching the stroke: one blob
    np.testing.assert_allclose(detached_ink(images), [0.0, 9 / 45, 0.0])
    assert detached_ink(np.zeros((1, 28, 28), np.float32))[0] == 0.0  # no ink at all


def test_normal_core_leaves_out_pollution_under_the_cut():
    """Self-training's normal core: pollution that no cut separates yet (it overlaps the
    normal tail) mostly stays out, most normal data stays in."""
    rng = np.random.default_rng(4)
    normal = rng.normal(0.0, 0.3, (3000, 2))
    pollution = rng.normal(0.6, 0.3, (1000, 2))  # above the mode, inside the normal tail
    pool = np.concatenate([normal, pollution])
    cal = EvidenceCalibration.fit(pool, normal[:10], 0.01)
    core = cal.core(pool, 1.0)
    assert core[:3000].mean() >= 0.5  # ~0.84 per piece if the mode and spread were exact
    assert core[3000:].mean() <= 0.1
    assert np.allclose(cal.modes, 0.0, atol=0.15) and (cal.spreads > 0.15).all()


def test_calibration_finds_on_the_score_what_no_piece_finds_alone():
    """78 polluted images a little above the normal tail on both of two pieces (310 normal
    values each): often neither piece's density doubles again after its valley, and their
    quantile cuts flag a few percent of the pollution (issue 34, seed 4 at ~100 samples a
    client); on the score, the largest calibrated piece, they form a second population."""
    found, normal_dropped = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        normal, pollution = rng.normal(0.0, 0.3, (310, 2)), rng.uniform(0.6, 1.6, (78, 2))
        pool = np.concatenate([normal, pollution])
        if any(normal_mode_cut(pool[:, j], normal[:10, j], 0.005).depth < 1.0
               for j in range(2)):
            continue  # a piece finds them alone
        score = EvidenceCalibration.fit(pool, normal[:10], 0.01).combine(pool)
        found.append((score[310:] > 0).mean())
        normal_dropped.append((score[:310] > 0).mean())
    assert len(found) >= 5
    # The pollution starts 2 SDs above the normal mode, where a Gaussian sheds 2.3 %: a cut
    # at the density's low point there may drop that much in one draw (7 of 310).
    assert np.mean(found) >= 0.8 and np.mean(normal_dropped) <= 0.01
    assert max(normal_dropped) <= 0.025


@pytest.mark.parametrize("n", [388, 5000])
@pytest.mark.parametrize("shape", ["gumbel", "log-gamma", "student-t"])
def test_calibration_finds_nothing_on_the_score_of_skewed_clean_pieces(n, shape):
    """Clean pieces with long right tails show no second population on the score either:
    the pool loses the budget."""
    rng = np.random.default_rng(n)
    pool = {"gumbel": lambda: rng.gumbel(0, 0.3, (n, 3)),
            "log-gamma": lambda: np.log(rng.gamma(2.0, 1.0, (n, 3))),
            "student-t": lambda: 0.3 * rng.standard_t(4, (n, 3))}[shape]()
    cal = EvidenceCalibration.fit(pool, pool[:10], 0.01)
    assert (cal.combine(pool) > 0).mean() <= 0.011


@pytest.mark.slow
def test_black_frames_and_triggers_score_above_every_trusted_image(mnist_train, tmp_path):
    """After a small real fit with the default evidence, a black frame and a digit with a
    3x3 white patch each score above every trusted image and are dropped; the calibration
    persists."""
    digits = mnist_train.images[:900]
    trusted = mnist_train.images[1000:1010]
    black = np.zeros((100, 28, 28), np.uint8)
    trig = mnist_train.images[1100:1200].copy()
    trig[:, 23:26, 23:26] = 255
    pool = np.concatenate([digits, black, trig])
    det = RtBiGAN(self_training_rounds=1, steps_per_round=150, random_state=0).fit(pool, trusted)
    top_trusted = det.trusted_scores_.max()
    assert det.decision_function(np.zeros((1, 28, 28), np.uint8))[0] > top_trusted
    fresh = mnist_train.images[1300:1340].copy()
    fresh[:, 23:26, 23:26] = 255
    assert np.median(det.decision_function(fresh)) > top_trusted
    assert det.labels_[900:1000].mean() == 1.0  # every black frame dropped
    # and the triggered digits: by their detached ink, so not the few whose strokes reach
    # the patch (one blob then) after this short fit
    assert det.labels_[1000:].mean() >= 0.8
    assert det.labels_[:900].mean() <= 0.03
    # 200 of 1,100 are anomalies; the estimate runs low by the patches not flagged
    truth = 200 / len(pool)
    assert det.contamination_["low"] <= truth <= det.contamination_["high"] + 0.03
    path = save_detector(det, tmp_path / "det.safetensors")
    back = load_detector(path)
    np.testing.assert_allclose(back.decision_function(fresh), det.decision_function(fresh),
                               rtol=1e-5)


@pytest.mark.slow
def test_default_verdicts_hold_under_an_80_percent_majority(mnist_train, fashion_train):
    """1,000 digits among 4,000 Fashion-MNIST images, 10 trusted digits, the default fit:
    the normal statistics stay on the digits, and each piece of evidence, cut again on what
    the others leave, keeps the false-drop budget (a single pass of the statistics' scale
    dropped 53 % of the digits here)."""
    digits = mnist_train.images[:1000]
    fashion = fashion_train.images[:4000]
    pool = np.concatenate([digits, fashion])
    det = RtBiGAN(random_state=0).fit(pool, mnist_train.images[1000:1010])
    assert det.labels_[1000:].mean() >= 0.95
    assert det.labels_[:1000].mean() <= 0.03
