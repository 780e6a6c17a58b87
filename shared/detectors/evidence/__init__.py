"""Rt-BiGAN's evidence: pieces that each ask one question of an image, and their calibration.

One module per kind of evidence, each piece behind one protocol (:mod:`.piece`):

========================  ==========================================  =========================
piece (name)              what it sees                                module
========================  ==========================================  =========================
``global``                the paper's score ``A(x)``                  :mod:`.reconstruction`
``global-from-below``     images simpler than any normal one          :mod:`.reconstruction`
``local``                 a small patch the generator never draws     :mod:`.reconstruction`
``typicality``            blank, blurred, noisy, inverted frames      :mod:`.statistics`
``detached-ink``          stickers, triggers, specks, occluders       :mod:`.statistics`
``reachability``          a region of its own, however simple         :mod:`.reachability`
``latent-push``           AnoEAN's pushed latent code                 :mod:`.latent_push`
========================  ==========================================  =========================

:mod:`.calibration` puts them in one unit (0 at each piece's false-drop cut) and explains
which piece decided each verdict.
"""

from fedsieve.shared.detectors.evidence.calibration import EvidenceCalibration
from fedsieve.shared.detectors.evidence.latent_push import LatentPush, LatentPushPiece
from fedsieve.shared.detectors.evidence.piece import (
    PIECES,
    Batch,
    EvidencePiece,
    FitContext,
    Reconstruction,
    RoundResult,
    make_piece,
    register,
)
from fedsieve.shared.detectors.evidence.reachability import Reachability, ReachabilityPiece
from fedsieve.shared.detectors.evidence.reconstruction import (
    GlobalFromBelow,
    GlobalScore,
    LocalResidual,
)
from fedsieve.shared.detectors.evidence.statistics import (
    STATISTICS,
    DetachedInk,
    Typicality,
    brightness,
    detached_ink,
    detachment,
    image_statistics,
    robust_center_scale,
    typicality,
)

#: Rt-BiGAN's default evidence, in column order.
DEFAULT_EVIDENCE = ("global", "typicality", "detached-ink", "reachability")

__all__ = [
    "DEFAULT_EVIDENCE", "PIECES", "STATISTICS", "Batch", "DetachedInk", "EvidenceCalibration",
    "EvidencePiece", "FitContext", "GlobalFromBelow", "GlobalScore",
    "LatentPush", "LatentPushPiece", "LocalResidual", "Reachability", "ReachabilityPiece",
    "Reconstruction", "RoundResult", "Typicality", "brightness", "detached_ink", "detachment",
    "image_statistics", "make_piece", "register", "robust_center_scale", "typicality",
]
