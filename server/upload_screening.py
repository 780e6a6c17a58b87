"""UploadScreening: clients upload their samples and the server scores them (the paper's model).

Each screening asks every client for its samples (or a seeded random fraction of them) in
chunks (:func:`~fedsieve.server.screening.collect_uploads`), fits a fresh detector on the
pooled uploads anchored by the trusted images and splits its verdicts by node
(:func:`~fedsieve.server.screening.score_pool`); an optional label check drops the uploads
whose label contradicts their image.
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsieve.server.screening import (
    DEFAULT_MAX_FIT_SAMPLES,
    Screening,
    collect_uploads,
    score_pool,
)
from fedsieve.server.screening_mode import (
    EstimatorOrFactory,
    ScreeningMode,
    fresh,
    require_count,
)

__all__ = ["UploadScreening"]


class UploadScreening(ScreeningMode):
    """Screen the samples the clients upload, on the server.

    With ``upload_fraction < 1`` only a random fraction of each client's samples is uploaded.
    Samples the server never saw get the client-level verdict: the client is kept (and trains
    on its unseen samples) when its estimated contamination is within the
    :class:`~fedsieve.server.AnomalyFilter`'s ``max_client_contamination``, and excluded
    otherwise.

    Parameters
    ----------
    detector, trusted_images, max_upload, timeout, random_state
        As in :class:`~fedsieve.server.screening_mode.ScreeningMode`; ``max_upload`` is the
        largest upload accepted from one client (a larger one fails screening), and
        ``random_state`` seeds which samples are uploaded and which the detector fits on.
    upload_fraction : float, default 1.0
        Fraction of each client's samples uploaded (1.0 is the paper's model).
    chunk_size : int, default 10_000
        Samples per upload message.
    label_check : estimator or callable, optional
        Checks the labels clients upload beside their images (the SDK sends them when its
        ``samples`` callback returns them): an unfitted
        :class:`~fedsieve.shared.detectors.labels.LabelCheck` (copied fresh for every
        screening) or a zero-argument factory. Samples whose image passed but whose label the
        check contradicts are dropped too. None (the default): labels are not checked.
    max_fit_samples : int or None, default DEFAULT_MAX_FIT_SAMPLES
        The detector fits on at most this many uploads (a seeded sample) and then scores
        every upload in batches, so that the server's cost grows with scoring alone
        (:func:`~fedsieve.server.screening.score_pool`). None: fit on every upload.

    Raises
    ------
    TypeError
        ``detector`` or ``label_check`` is neither an estimator nor a factory of one.
    ValueError
        A value out of its range (the message names it and its range), or unusable trusted
        images.

    Examples
    --------
    >>> from fedsieve.shared.detectors import make_detector
    >>> screening = UploadScreening(make_detector("rtbigan"), "trusted.npz",
    ...                             upload_fraction=0.5)  # doctest: +SKIP
    """

    mode = "upload"

    def __init__(self, detector: EstimatorOrFactory, trusted_images: np.ndarray | str | Path,
                 *, upload_fraction: float = 1.0, chunk_size: int = 10_000,
                 label_check: EstimatorOrFactory | None = None,
                 max_fit_samples: int | None = DEFAULT_MAX_FIT_SAMPLES,
                 max_upload: int = 1_000_000, timeout: float = 600.0,
                 random_state: int = 0) -> None:
        if not 0.0 < upload_fraction <= 1.0:
            raise ValueError(f"upload_fraction must be in (0, 1], got {upload_fraction}")
        require_count("chunk_size", chunk_size)
        if label_check is not None and not (hasattr(label_check, "fit")
                                            or callable(label_check)):
            raise TypeError("label_check must be an unfitted "
                            "fedsieve.shared.detectors.labels.LabelCheck, a zero-argument "
                            f"callable returning one, or None; got {type(label_check).__name__}")
        if max_fit_samples is not None:
            require_count("max_fit_samples", max_fit_samples)
        super().__init__(detector, trusted_images, max_upload=max_upload, timeout=timeout,
                         random_state=random_state)
        self.upload_fraction = float(upload_fraction)
        self.chunk_size = int(chunk_size)
        self.label_check = label_check
        self.max_fit_samples = None if max_fit_samples is None else int(max_fit_samples)

    def screen(self, grid: Grid, nodes: list[int], server_round: int) -> Screening:
        log(INFO, "fedsieve: screening %d nodes (upload fraction %.2f)", len(nodes),
            self.upload_fraction)
        screening = Screening(server_round)
        started = time.perf_counter()
        uploads, screening.failures = collect_uploads(
            grid, nodes, chunk_size=self.chunk_size, fraction=self.upload_fraction,
            sample_seed=self.random_state + server_round, max_upload=self.max_upload,
            timeout=self.timeout, image_shape=self.image_shape)
        screening.upload_seconds = time.perf_counter() - started
        screening.partitions = {n: u.partition for n, u in uploads.items()
                                if u.partition is not None}
        started = time.perf_counter()
        scoring = score_pool(uploads, self.trusted_images, self.make_detector,
                             None if self.label_check is None else self.make_label_check,
                             max_fit_samples=self.max_fit_samples,
                             sample_seed=self.random_state + server_round)
        screening.verdicts, screening.threshold = scoring.verdicts, scoring.threshold
        screening.contamination = scoring.contamination
        screening.label_flagged = scoring.label_flagged
        screening.detector_seconds = time.perf_counter() - started
        return screening

    def make_label_check(self):
        """A fresh, unfitted copy of the label check (None without one)."""
        return None if self.label_check is None else fresh(self.label_check)

    def describe(self) -> str:
        line = f"upload screening: upload fraction {self.upload_fraction:.2f}"
        if self.label_check is not None:
            line += " | label check"
        return line
