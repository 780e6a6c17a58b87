"""Rt-BiGAN composed of evidence pieces: the protocol, the constructor, explanations."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from fedsieve.shared.detectors import (
    Explanation,
    RtBiGAN,
    Training,
    load_detector,
    make_detector,
    save_detector,
)
from fedsieve.shared.detectors.evidence import (
    DEFAULT_EVIDENCE,
    PIECES,
    Batch,
    EvidencePiece,
    LocalResidual,
    Typicality,
    make_piece,
    register,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHORT = {"self_training_rounds": 1, "steps_per_round": 20, "random_state": 0}


class InkMass(EvidencePiece):
    """A piece written outside the package: the log of an image's total ink."""

    name = "ink-mass"

    def values(self, batch: Batch) -> np.ndarray:
        return np.log1p(batch.images.reshape(len(batch), -1).sum(1).astype(np.float64))


@pytest.fixture(scope="module")
def fitted(detector_data):
    d = detector_data
    return RtBiGAN(**SHORT).fit(d.x, d.trusted)


def test_the_constructor_keeps_what_a_user_tunes():
    params = [p for p in inspect.signature(RtBiGAN).parameters.values()
              if p.kind is p.KEYWORD_ONLY]
    assert len(params) <= 12
    assert set(RtBiGAN().get_params(deep=False)) == {p.name for p in params}


def test_pieces_are_made_by_name_spec_or_object():
    assert [make_piece(n).name for n in DEFAULT_EVIDENCE] == list(DEFAULT_EVIDENCE)
    local = make_piece({"name": "local", "window": 3})
    assert isinstance(local, LocalResidual) and local.window == 3
    assert make_piece(local).spec() == {"name": "local", "window": 3}
    assert make_piece(local) is not local  # a fresh copy: fitted state is never shared
    with pytest.raises(ValueError, match="known: .*typicality"):
        make_piece("tipicality")


def test_bad_evidence_lists_are_refused(detector_data):
    d = detector_data
    with pytest.raises(ValueError, match="at least one"):
        RtBiGAN(evidence=[], **SHORT).fit(d.x, d.trusted)
    with pytest.raises(ValueError, match="once"):
        RtBiGAN(evidence=["global", Typicality(), "typicality"], **SHORT).fit(d.x, d.trusted)
    with pytest.raises(ValueError, match="larger than the 28x28"):
        RtBiGAN(evidence=["global", LocalResidual(40)], **SHORT).fit(d.x, d.trusted)


def test_a_new_piece_plugs_in_without_touching_the_detector(detector_data, tmp_path):
    d = detector_data
    det = RtBiGAN(evidence=[*DEFAULT_EVIDENCE, InkMass()], **SHORT).fit(d.x, d.trusted)
    assert det.evidence_names_[-1] == "ink-mass"
    assert det.calibration_.cuts.shape == (len(det.evidence_names_),)
    explanation = det.explain(d.x_test[:50])
    # the pieces, and "joint" when the summed evidence found a second population
    joint = [] if det.calibration_.joint is None else ["joint"]
    assert explanation.names == [*det.evidence_names_, *joint]
    # Saving needs the piece to be known by name when the checkpoint is read back.
    register(InkMass)
    try:
        back = load_detector(save_detector(det, tmp_path / "ink"), RtBiGAN)
        np.testing.assert_array_equal(back.decision_function(d.x_test[:50]),
                                      det.decision_function(d.x_test[:50]))
    finally:
        PIECES.pop("ink-mass")


def test_every_verdict_is_explained_by_a_piece_past_its_cut(fitted, detector_data):
    det = fitted
    x = detector_data.x_test
    explanation = det.explain(x)
    assert isinstance(explanation, Explanation)
    np.testing.assert_array_equal(explanation.scores, det.decision_function(x))
    np.testing.assert_array_equal(explanation.flagged, det.predict(x) == 1)
    flagged = explanation.flagged
    assert flagged.any() and (~flagged).any()
    # Under the budget policy a flagged image has a piece past its own cut: the decider.
    deciding = explanation.deciding
    rows = np.flatnonzero(flagged)
    assert (explanation.values[rows, deciding[rows]] > explanation.cuts[deciding[rows]]).all()
    assert sum(explanation.flagged_by().values()) == flagged.sum()
    entry = explanation.deciding_row(int(rows[0]))
    assert entry["piece"] in [*det.evidence_names_, "joint"] and entry["value"] > entry["cut"]


def test_the_fitted_pool_is_explained_without_scoring_it_again(fitted):
    explanation = fitted.explain_fitted()
    np.testing.assert_array_equal(explanation.scores, fitted.decision_scores_)
    assert sum(explanation.flagged_by().values()) == fitted.labels_.sum()


def test_a_one_number_detector_explains_itself_with_its_score(detector_data):
    d = detector_data
    det = make_detector("iforest", random_state=0).fit(d.x)
    explanation = det.explain(d.x_test[:40])
    assert explanation.names == ["score"]
    np.testing.assert_array_equal(explanation.flagged, det.predict(d.x_test[:40]) == 1)
    paper = RtBiGAN(evidence=["global"], threshold_policy="gmm", **SHORT).fit(d.x, d.trusted)
    assert paper.calibration_ is None and paper.explain(d.x_test[:10]).names == ["score"]


def test_local_screening_leaves_out_pieces_that_hold_pool_images():
    params = RtBiGAN(evidence=[*DEFAULT_EVIDENCE, "latent-push"]).local_screening_params()
    assert params["self_training_rounds"] == 0
    assert "reachability" not in params["evidence"] and "latent-push" in params["evidence"]


def test_training_settings_travel_in_checkpoints(fitted, detector_data, tmp_path):
    d = detector_data
    det = RtBiGAN(training=Training(core_width=0.5, batch_size=16), **SHORT).fit(d.x, d.trusted)
    path = save_detector(det, tmp_path / "t")
    assert json.loads(path.read_text())["params"]["training"]["core_width"] == 0.5
    back = load_detector(path, RtBiGAN)
    assert back.training_.batch_size == 16
    with pytest.raises(ValueError, match="training. parameter of RtBiGAN must be"):
        RtBiGAN(training=3, **SHORT).fit(d.x, d.trusted)
