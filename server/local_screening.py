"""LocalScreening: the detector goes to the clients; no image leaves a client.

The server adapts the detector on the trusted images and ships it; each client scores its own
samples and sends back their ids and evidence (a few float16 numbers each); the server fits
the cut on the pooled evidence, optionally after rounds of federated self-training and with
spot checks of the clients' reports (:func:`fedsieve.server.local.screen_locally`). The
verdicts then travel as in upload mode.
"""

from __future__ import annotations

import numbers
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsieve.server.local import LocalSettings, screen_locally
from fedsieve.server.screening import Screening
from fedsieve.server.screening_mode import EstimatorOrFactory, ScreeningMode, fresh

__all__ = ["LocalScreening"]


class LocalScreening(ScreeningMode):
    """Screen the clients' samples where they live, with the server's detector.

    Parameters
    ----------
    detector : estimator or callable
        As in :class:`~fedsieve.server.screening_mode.ScreeningMode`, and savable, since it is
        shipped to the clients (:data:`fedsieve.shared.detectors.persist.SAVABLE`: Rt-BiGAN,
        EGBAD, AnoGAN, ADe-GAN, AGAD, AnoEAN).
    trusted_images, max_upload, timeout, random_state
        As in :class:`~fedsieve.server.screening_mode.ScreeningMode`; ``max_upload`` is the
        largest local dataset a client may report, and ``random_state`` seeds the spot
        checks' draws and the clients' self-training.
    local_rounds : int, default 1
        Rounds of federated self-training (clients train the BiGAN on the samples it keeps,
        the server averages the networks); 0 keeps the detector adapted on the trusted
        images, with its cut fitted on the clients' evidence.
    local_steps : int, default 500
        Adversarial steps each client trains per self-training round.
    spot_check_rate : float, default 0.0
        Share of each client's reported samples whose images the server asks for, drawn
        after the report, to verify the client's evidence; a client whose evidence gives
        other verdicts than its images is excluded (``failed-spot-check``). 0: no image ever
        leaves a client.

    Raises
    ------
    TypeError
        ``detector`` is neither an estimator nor a factory of one.
    ValueError
        A detector that cannot be shipped, a value out of its range (the message names it and
        its range), or unusable trusted images.

    Examples
    --------
    >>> from fedsieve.shared.detectors import make_detector
    >>> screening = LocalScreening(make_detector("rtbigan"), "trusted.npz",
    ...                            spot_check_rate=0.01)  # doctest: +SKIP
    """

    mode = "local"

    def __init__(self, detector: EstimatorOrFactory, trusted_images: np.ndarray | str | Path,
                 *, local_rounds: int = 1, local_steps: int = 500,
                 spot_check_rate: float = 0.0, max_upload: int = 1_000_000,
                 timeout: float = 600.0, random_state: int = 0) -> None:
        for name, value in (("local_rounds", local_rounds), ("local_steps", local_steps)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not 0.0 <= spot_check_rate <= 1.0:
            raise ValueError(f"spot_check_rate must be in [0, 1], got {spot_check_rate}")
        super().__init__(detector, trusted_images, max_upload=max_upload, timeout=timeout,
                         random_state=random_state)
        _check_shippable(detector)
        self.local_rounds = int(local_rounds)
        self.local_steps = int(local_steps)
        self.spot_check_rate = float(spot_check_rate)

    def screen(self, grid: Grid, nodes: list[int], server_round: int) -> Screening:
        log(INFO, "fedsieve: screening %d nodes where their data lives", len(nodes))
        return screen_locally(grid, nodes, self.make_detector(), self.trusted_images,
                              self.settings(), server_round)

    def settings(self) -> LocalSettings:
        """These options as :func:`~fedsieve.server.local.screen_locally` takes them."""
        return LocalSettings(rounds=self.local_rounds, local_steps=self.local_steps,
                             spot_check_rate=self.spot_check_rate, timeout=self.timeout,
                             max_samples=self.max_upload, seed=self.random_state)

    def describe(self) -> str:
        return (f"local screening: {self.local_rounds} self-training rounds of "
                f"{self.local_steps} steps | spot checks: {100 * self.spot_check_rate:.1f} %")


def _check_shippable(detector: EstimatorOrFactory) -> None:
    """Local screening ships the detector: it must be savable."""
    from fedsieve.shared.detectors.persist import SAVABLE

    name = type(fresh(detector)).__name__
    if name not in SAVABLE:
        raise ValueError(f"LocalScreening ships the detector to the clients, and a {name} "
                         f"cannot be shipped; use one of {', '.join(SAVABLE)}, or "
                         "UploadScreening, which keeps the detector on the server")
