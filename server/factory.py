"""Building the server strategy from an operator's :class:`~fedsieve.shared.config.FilterSettings`.

This is the library path a deployment's own ServerApp uses::

    from fedsieve.server.factory import build_strategy, wait_for_nodes
    from fedsieve.shared.config import FilterSettings

    settings = FilterSettings.from_run_config(context.run_config)
    num_nodes = wait_for_nodes(grid, settings.min_nodes)
    strategy = build_strategy(settings, num_nodes, run_dir)

It reads the operator's trusted file and never draws example data: without ``trusted-file``
a data filter cannot be built and :func:`load_trusted_images` says what to set. The example
ServerApp (:mod:`fedsieve.server.app`) is built on the same functions.
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from fedsieve.server.modes import make_screening
from fedsieve.server.screening_mode import ScreeningMode
from fedsieve.server.strategy import AnomalyFilter
from fedsieve.shared.config import AGGREGATORS, FilterSettings
from fedsieve.shared.data.trusted import RECOMMENDED_TRUSTED, TrustedFileError, load_trusted_file
from fedsieve.shared.detectors import BaseDetector, make_detector
from fedsieve.shared.detectors.checkpoint import default_meta_checkpoint, load_meta
from fedsieve.shared.detectors.labels import LabelCheck


def make_aggregator(name: str, num_nodes: int = 2) -> Strategy:
    """The inner strategy: Flower's FedAvg or one of its robust aggregators.

    Parameters
    ----------
    name : str
        One of :data:`fedsieve.shared.config.AGGREGATORS`.
    num_nodes : int
        Connected nodes; Krum's tolerance of byzantine nodes is derived from it.

    Raises
    ------
    ValueError
        ``name`` is not a known aggregator (never a silent FedAvg).
    """
    common = {"fraction_evaluate": 0.0, "min_available_nodes": num_nodes,
              "min_train_nodes": min(2, num_nodes)}
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedmedian":
        return FedMedian(**common)
    # Krum tolerates f byzantine nodes with n > 2f + 2, Bulyan with n >= 4f + 3; each assumes
    # the largest f its rule allows (the strongest guarantee the federation affords).
    krum_f = max(0, (num_nodes - 3) // 2)
    if name == "krum":
        return Krum(num_malicious_nodes=krum_f, **common)
    if name == "multikrum":
        # Average the n - f most central updates (El Mhamdi et al.'s multi-Krum).
        return MultiKrum(num_malicious_nodes=krum_f,
                         num_nodes_to_select=max(1, num_nodes - krum_f), **common)
    if name == "bulyan":
        return Bulyan(num_malicious_nodes=max(0, (num_nodes - 3) // 4), **common)
    if name == "trimmedavg":
        return FedTrimmedAvg(beta=0.2, **common)
    raise ValueError(f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATORS)}")


def build_detector(settings: FilterSettings) -> BaseDetector:
    """The trusted detector the settings name, unfitted, from the detector registry
    (:func:`fedsieve.shared.detectors.make_detector`).

    Raises
    ------
    ValueError
        Unknown detector name (the message lists the registry).
    """
    # An empty policy keeps the detector's own default (budget for Rt-BiGAN, gmm for peers).
    policy = {"threshold_policy": settings.threshold_policy} if settings.threshold_policy else {}
    detector = make_detector(settings.detector, random_state=settings.seed, **policy)
    # alpha and the meta checkpoint only mean something to the GAN detectors, the device to
    # the torch ones (the peers run where their library puts them).
    extra = {"alpha": settings.alpha, "meta_checkpoint": settings.checkpoint or "default",
             "device": settings.device}
    params = detector.get_params()
    return detector.set_params(**{k: v for k, v in extra.items() if k in params})


def check_meta_checkpoint(detector: BaseDetector) -> None:
    """Load the detector's meta checkpoint once now, so that a missing, corrupt or foreign
    file stops the server before any client is contacted (not mid-screening).

    Raises
    ------
    fedsieve.shared.detectors.checkpoint.CheckpointError
        Naming the file and what is wrong with it.
    """
    path = detector.get_params().get("meta_checkpoint")
    if path is None:
        return
    load_meta(default_meta_checkpoint() if str(path) == "default" else path)


def load_trusted_images(settings: FilterSettings) -> np.ndarray:
    """The operator's trusted images, read from ``settings.trusted_file``.

    Raises
    ------
    fedsieve.shared.data.trusted.TrustedFileError
        No trusted file is configured (the message says what to set and how to make one), or
        the file is missing, unreadable or holds the wrong arrays.
    """
    if not settings.trusted_file:
        raise TrustedFileError(
            f"the {settings.detector!r} data filter needs trusted images and no trusted file "
            "is set: set trusted-file (run config, e.g. flwr run . --run-config "
            "'trusted-file=\"/srv/trusted.npz\"'; FilterSettings.trusted_file in Python) to an "
            ".npz whose x holds 5-10 normal images you vouch for. Write one with "
            "fedsieve.shared.data.trusted.save_trusted_file(path, images), or for a simulated "
            "federation with `fedsieve pollute --out DIR` (DIR/trusted.npz)")
    return load_trusted_file(settings.trusted_file)


def build_strategy(settings: FilterSettings, num_nodes: int, run_dir: str | Path, *,
                   trusted_images: np.ndarray | None = None) -> Strategy:
    """The inner aggregator, wrapped in the AnomalyFilter unless the detector is ``none``.

    Parameters
    ----------
    settings : FilterSettings
        What to deploy.
    num_nodes : int
        Connected nodes (see :func:`wait_for_nodes`).
    run_dir : str or Path
        Where the AnomalyFilter writes ``audit.jsonl``.
    trusted_images : numpy.ndarray, optional
        Trusted images given directly; by default they are read from
        ``settings.trusted_file`` (:func:`load_trusted_images`).

    Raises
    ------
    ValueError
        Unknown aggregator, detector or mode name, or an option out of its range
        (:func:`build_screening`).
    fedsieve.shared.detectors.checkpoint.CheckpointError
        The meta checkpoint cannot be used.
    fedsieve.shared.data.trusted.TrustedFileError
        A data filter is configured but there are no usable trusted images.
    """
    inner = make_aggregator(settings.aggregator, num_nodes)
    if not settings.filtered:
        return inner
    detector = build_detector(settings)
    check_meta_checkpoint(detector)
    if trusted_images is None:
        trusted_images = load_trusted_images(settings)
    return AnomalyFilter(inner, build_screening(settings, detector, trusted_images),
                         max_client_contamination=settings.max_client_contamination,
                         screen_every=settings.screen_every, run_dir=run_dir)


def build_screening(settings: FilterSettings, detector: BaseDetector,
                    trusted_images: np.ndarray) -> ScreeningMode:
    """The screening object of ``settings.mode`` (:data:`fedsieve.server.modes.MODES`), with
    that mode's options from the settings; it checks their values itself.

    The run config holds every mode's keys, so the other mode's are ignored, except the
    upload options (``upload-fraction``, ``label-check``) set in local mode, which are
    refused (:func:`fedsieve.server.modes.make_screening`).

    Raises
    ------
    ValueError
        An unknown mode, or a value the screening refuses (the message names it).
    """
    return make_screening(
        settings.mode, detector, trusted_images, random_state=settings.seed,
        upload_fraction=settings.upload_fraction,
        label_check=LabelCheck(random_state=settings.seed) if settings.label_check else None,
        local_rounds=settings.local_rounds, local_steps=settings.local_steps,
        spot_check_rate=settings.spot_check_rate)


def check_settings(settings: FilterSettings) -> None:
    """Build the data filter the settings describe around stand-in trusted images, loading
    nothing, so that a bad mode or option fails with its object's message before a simulation
    starts (``fedsieve simulate``), not inside the ServerApp.

    Raises
    ------
    ValueError
        What :func:`build_strategy` would raise for these settings' names and options.
    """
    if not settings.filtered:
        return
    stand_in = np.zeros((RECOMMENDED_TRUSTED, 1, 28, 28), np.uint8)
    AnomalyFilter(make_aggregator(settings.aggregator, settings.min_nodes),
                  build_screening(settings, build_detector(settings), stand_in),
                  max_client_contamination=settings.max_client_contamination,
                  screen_every=settings.screen_every)


def wait_for_nodes(grid: Grid, minimum: int, timeout: float = 600.0) -> int:
    """Block until ``minimum`` nodes are connected (screening needs them all); returns the count.

    Raises
    ------
    TimeoutError
        Fewer than ``minimum`` nodes connected within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while (count := len(list(grid.get_node_ids()))) < minimum:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count} of the {minimum} nodes (min-nodes) connected "
                               f"within {timeout:.0f} s")
        log(INFO, "fedsieve: waiting for nodes: %d of %d connected", count, minimum)
        time.sleep(1.0)
    return count


def describe_strategy(strategy: Strategy) -> dict[str, str]:
    """What actually runs: the aggregating strategy and the data filter (if any)."""
    if isinstance(strategy, AnomalyFilter):
        given = strategy.screening.detector
        detector = type(given).__name__
        if getattr(given, "name", None):  # peers: which library estimator
            detector += f"({given.name})"
        return {"aggregator": type(strategy.strategy).__name__,
                "filter": type(strategy).__name__, "detector": detector}
    return {"aggregator": type(strategy).__name__, "filter": "", "detector": ""}
