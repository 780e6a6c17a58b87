"""Run settings shared by the ServerApp, the ClientApp and ``fedsieve simulate``.

They come from ``[tool.flwr.app.config]`` (kebab-case keys, as Flower passes them in
``context.run_config``) or are built directly in Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

DETECTORS_NONE = "none"
AGGREGATORS = ("fedavg", "fedmedian", "krum", "trimmedavg")


@dataclass(frozen=True)
class RunSettings:
    """Everything a fedsieve run is configured with.

    Attributes
    ----------
    num_server_rounds, local_epochs, batch_size, learning_rate
        Federated training of the example classifier.
    aggregator : str
        Inner strategy: ``fedavg``, ``fedmedian``, ``krum`` or ``trimmedavg``.
    detector : str
        Trusted detector name (``rtbigan``, ``egbad``, ``anogan``, ``iforest``, ...) or
        ``none`` for no data filter.
    checkpoint : str
        Meta checkpoint for Rt-BiGAN; empty for the one shipped with fedsieve.
    trusted_file, trusted_size : str, int
        Trusted seed images (``.npz`` with ``x``); when empty, ``trusted_size`` images are
        drawn from the MNIST training split with the run's seed (the same ones the
        simulation harness keeps out of every client).
    alpha, threshold_policy
        Detector score weight and threshold policy.
    upload_fraction, max_client_contamination, screen_every
        AnomalyFilter options.
    min_nodes : int
        Nodes the ServerApp waits for before screening and training.
    num_clients, contamination, partition, profile, label_policy
        The simulated federation (ignored by real deployments whose nodes bring data).
    seed : int
        Seed of everything random.
    run_dir : str
        Where the audit log and results go (default ``runs/run-<run id>``).
    data_root : str
        Data folder searched first by the loaders.
    federation_dir : str
        Folder of ready client files (``client_<partition-id>.npz``) for simulated nodes;
        ``fedsieve simulate`` fills it so that each simulated ClientApp loads its partition
        instead of rebuilding the whole federation. Empty: rebuild from the settings.
    """

    num_server_rounds: int = 3
    local_epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 0.05
    aggregator: str = "fedavg"
    detector: str = "rtbigan"
    checkpoint: str = ""
    trusted_file: str = ""
    trusted_size: int = 10
    alpha: float = 0.9
    threshold_policy: str = "gmm"
    upload_fraction: float = 1.0
    max_client_contamination: float = 0.5
    screen_every: int = 0
    min_nodes: int = 2
    num_clients: int = 10
    contamination: float = 0.2
    partition: str = "iid"
    profile: str = "uniform"
    label_policy: str = "random"
    seed: int = 0
    run_dir: str = ""
    data_root: str = ""
    federation_dir: str = ""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> RunSettings:
        """Read Flower's ``context.run_config``; unknown keys are ignored, types are checked."""
        values = {}
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            if key not in run_config:
                continue
            raw, kind = run_config[key], type(f.default)
            if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
                raw = float(raw)
            if type(raw) is not kind:
                raise ValueError(f"run config {key!r} must be {kind.__name__}, got {raw!r}")
            values[f.name] = raw
        return cls(**values).validated()

    def to_run_config(self) -> dict[str, object]:
        """The kebab-case mapping Flower uses."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def validated(self) -> RunSettings:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
        if not 0.0 < self.upload_fraction <= 1.0:
            raise ValueError(f"upload-fraction must be in (0, 1], got {self.upload_fraction}")
        if self.num_server_rounds < 1 or self.num_clients < 1:
            raise ValueError("num-server-rounds and num-clients must be at least 1")
        return self
