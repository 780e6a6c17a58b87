"""Why a detector flagged an image: each piece of evidence, its cut, the piece that decided."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Explanation:
    """Why each image got its verdict: every piece's value, its cut, and the piece that
    decided.

    The detector's score is the largest calibrated piece, so the deciding piece of an image
    is the one with the largest calibrated value; for a flagged image under the default
    ``"budget"`` policy it is a piece past its own cut. A detector scored by one number (no
    calibration) explains itself with one piece, ``"score"``, cut at its threshold.

    Attributes
    ----------
    names : list of str
        The pieces, in column order.
    values : ndarray of shape (N, K)
        Each piece's value (log scale, higher = more anomalous).
    cuts : ndarray of shape (K,)
        Each piece's cut on the same scale.
    calibrated : ndarray of shape (N, K)
        Each piece in the common unit: 0 at its cut, -1 at its normal mode.
    scores : ndarray of shape (N,)
        The detector's scores (as ``decision_function``).
    threshold : float
        The detector's threshold: scores above it are anomalies.
    """

    names: list[str]
    values: np.ndarray
    cuts: np.ndarray
    calibrated: np.ndarray
    scores: np.ndarray
    threshold: float

    @classmethod
    def from_calibration(cls, names: list[str], evidence: np.ndarray, calibration: Any,
                         threshold: float) -> Explanation:
        """The explanation of evidence rows under an
        :class:`~fedsieve.shared.detectors.evidence.EvidenceCalibration`."""
        calibrated = calibration.calibrate(evidence)
        names, cuts = list(names), calibration.cuts.copy()
        joint = getattr(calibration, "calibrate_joint", lambda _: None)(evidence)
        if joint is not None:  # the joint evidence: one more column, "joint"
            names.append("joint")
            evidence = np.column_stack([evidence, calibration.joint_evidence(evidence)])
            cuts = np.append(cuts, calibration.joint_cut)
            calibrated = np.column_stack([calibrated, joint])
        return cls(names, evidence, cuts, calibrated, calibrated.max(axis=1), float(threshold))

    @classmethod
    def single(cls, scores: np.ndarray, threshold: float, name: str = "score") -> Explanation:
        """The explanation of a detector scored by one number."""
        scores = np.asarray(scores, dtype=np.float64)
        return cls([name], scores[:, None], np.array([threshold], np.float64),
                   (scores - threshold)[:, None], scores, float(threshold))

    def take(self, rows: np.ndarray | slice) -> Explanation:
        """The explanation of some of the images (``rows`` as numpy indexes them)."""
        return Explanation(self.names, self.values[rows], self.cuts, self.calibrated[rows],
                           self.scores[rows], self.threshold)

    @classmethod
    def concatenate(cls, parts: list[Explanation]) -> Explanation:
        """One explanation of several batches scored by the same detector."""
        first = parts[0]
        return cls(first.names, np.concatenate([p.values for p in parts]), first.cuts,
                   np.concatenate([p.calibrated for p in parts]),
                   np.concatenate([p.scores for p in parts]), first.threshold)

    @property
    def flagged(self) -> np.ndarray:
        """The verdicts (bool, shape (N,)): score above the threshold."""
        return self.scores > self.threshold

    @property
    def deciding(self) -> np.ndarray:
        """Column of the deciding piece of each image (int, shape (N,))."""
        return self.calibrated.argmax(axis=1)

    def deciding_names(self) -> np.ndarray:
        """Name of the deciding piece of each image (str array, shape (N,))."""
        return np.asarray(self.names, dtype=object)[self.deciding]

    def flagged_by(self) -> dict[str, int]:
        """How many flagged images each piece decided (every piece, 0 included)."""
        counts = np.bincount(self.deciding[self.flagged], minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, counts, strict=True)}

    def deciding_row(self, row: int) -> dict[str, float | str]:
        """One image's deciding piece, its value and its cut (an audit log's entry)."""
        col = int(self.calibrated[row].argmax())
        return {"piece": self.names[col], "value": float(self.values[row, col]),
                "cut": float(self.cuts[col])}
