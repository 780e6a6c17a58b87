"""Run settings in three parts with one job each, read from Flower's flat run config.

- :class:`FilterSettings`: what an operator deploys (the inner aggregator, the detector, the
  trusted file, the AnomalyFilter's options). The library's strategy factory,
  :func:`fedsieve.server.factory.build_strategy`, takes only this part.
- :class:`TaskSettings`: the example classifier's federated training.
- :class:`HarnessSettings`: the simulated federation; a deployment whose nodes bring their own
  data ignores it.
- :class:`RunSettings`: the three together, for the example ServerApp/ClientApp and
  ``fedsieve simulate``.

Every part reads and writes the flat kebab-case keys of ``[tool.flwr.app.config]`` (what Flower
passes in ``context.run_config``): field ``trusted_file`` is key ``trusted-file``. Field names
are unique across the parts, so the flat config maps onto them without prefixes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from fedsieve.shared.devices import check_device

#: Detector name meaning: no data filter, the inner aggregator alone.
DETECTORS_NONE = "none"
#: Inner strategies :func:`fedsieve.server.factory.make_aggregator` builds.
AGGREGATORS = ("fedavg", "fedmedian", "krum", "multikrum", "trimmedavg", "bulyan")


class _RunConfigPart:
    """Reading and writing a frozen settings dataclass as flat kebab-case run config."""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> Self:
        """Read this part's keys of ``run_config``; other keys are ignored, types are checked.

        Raises
        ------
        ValueError
            A value of the wrong type, or one :meth:`validated` rejects.
        """
        values = {}
        for f in dataclasses.fields(cls):
            key = _key(f.name)
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
        """This part as the kebab-case mapping Flower uses."""
        return {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def validated(self) -> Self:
        """``self`` if its values are consistent; raises ``ValueError`` otherwise."""
        return self


@dataclass(frozen=True)
class FilterSettings(_RunConfigPart):
    """What an operator deploys: the inner aggregator and the trusted data filter around it.

    The filter's options are checked where they are used, by the screening object and the
    AnomalyFilter that :func:`fedsieve.server.factory.build_strategy` builds from them;
    :meth:`validated` checks the rest (aggregator, device).

    Attributes
    ----------
    aggregator : str
        Inner strategy: one of :data:`AGGREGATORS`.
    detector : str
        Trusted detector name (``rtbigan``, ``egbad``, ``anogan``, ``iforest``, ``deepsvdd``;
        see :data:`fedsieve.shared.detectors.DETECTORS`) or ``none`` for no data filter.
    checkpoint : str
        Meta checkpoint for the GAN detectors; empty for the one shipped with fedsieve.
    trusted_file : str
        The operator's trusted images: an ``.npz`` with ``x`` holding 5-10 normal images
        (:func:`fedsieve.shared.data.trusted.load_trusted_file`). Required by a deployment's data
        filter; ``fedsieve pollute`` or :func:`fedsieve.shared.data.trusted.save_trusted_file`
        writes one.
    alpha : float
        Weight of the generator loss in the GAN detectors' anomaly score.
    threshold_policy : str
        How the detector cuts its scores: empty (the default) keeps the detector's own
        policy, ``budget`` for Rt-BiGAN (cut at the valley before a second population, else
        drop a 1 % budget; its evidence is calibrated for it) and ``gmm`` for the peers;
        or one of ``budget``, ``gmm``, ``trusted-quantile``, ``contamination``, ``fixed``.
    max_client_contamination, screen_every
        :class:`fedsieve.server.AnomalyFilter` options.
    mode : str
        ``upload`` (:class:`fedsieve.server.UploadScreening`: clients upload their samples;
        the paper's model) or ``local`` (:class:`fedsieve.server.LocalScreening`: no image
        leaves a client: the detector is shipped to them and they send back evidence).
    upload_fraction : float
        Upload mode: :class:`fedsieve.server.UploadScreening`'s ``upload_fraction``.
    label_check : bool
        Upload mode: whether the data filter also checks the labels clients upload
        (:class:`fedsieve.shared.detectors.labels.LabelCheck`): a genuine image with a label
        its class contradicts is dropped too.
    local_rounds, local_steps, spot_check_rate
        Local mode: :class:`fedsieve.server.LocalScreening`'s rounds and per-client steps of
        federated self-training, and the share of each client's samples whose images are
        asked for to verify its evidence (0: none).
    min_nodes : int
        Nodes the ServerApp waits for before screening and training.
    seed : int
        Seed of everything random in the run (detector, client sampling, and in the example
        app the training and the simulated federation).
    device : str
        Where fedsieve's torch work runs: the server's detector, local mode's scoring and
        self-training on each client, and the example classifier's training and evaluation.
        ``auto`` (CUDA where torch sees a GPU, else the CPU; each node decides for itself),
        ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``
        (:func:`fedsieve.shared.devices.resolve_device`). A node's ``node-config`` key
        ``device`` overrides it on that node (local mode and the example client).
    run_dir : str
        Where the audit log and results go; empty: ``runs/run-<run id>``.
    """

    aggregator: str = "fedavg"
    detector: str = "rtbigan"
    checkpoint: str = ""
    trusted_file: str = ""
    alpha: float = 0.9
    threshold_policy: str = ""
    upload_fraction: float = 1.0
    max_client_contamination: float = 0.5
    screen_every: int = 0
    label_check: bool = False
    mode: str = "upload"
    local_rounds: int = 1
    local_steps: int = 500
    spot_check_rate: float = 0.0
    min_nodes: int = 2
    seed: int = 0
    device: str = "auto"
    run_dir: str = ""

    @property
    def filtered(self) -> bool:
        """Whether a data filter wraps the aggregator (the detector is not ``none``)."""
        return self.detector != DETECTORS_NONE

    def validated(self) -> FilterSettings:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {', '.join(AGGREGATORS)}, "
                             f"got {self.aggregator!r}")
        # The screening's and the AnomalyFilter's options are checked where they are used:
        # by the objects fedsieve.server.factory.build_strategy builds from them.
        # Only the spelling here: whether the device exists is for the node that uses it.
        check_device(self.device)
        return self


@dataclass(frozen=True)
class TaskSettings(_RunConfigPart):
    """The example task: federated training of a small classifier (MNIST by default).

    Attributes
    ----------
    num_server_rounds, local_epochs, batch_size, learning_rate
        Rounds of FedAvg (or the configured aggregator) and each client's local SGD.
    data_root : str
        Data folder the MNIST/Fashion-MNIST loaders search first (empty: their default order).
    dataset : str
        The clients' normal data: ``"mnist"``, ``"fashion-mnist"``, or a labelled source of
        any image shape (:mod:`fedsieve.shared.task.example_data`: ``.npz``, ImageFolder, Hugging
        Face dataset on disk). The classifier is sized from its images and classes.
    test_dataset : str
        The server's test set: empty for a built-in dataset's official test split; required
        when ``dataset`` is a path (a labelled source of the same shape).
    """

    num_server_rounds: int = 3
    local_epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 0.05
    data_root: str = ""
    dataset: str = "mnist"
    test_dataset: str = ""

    def validated(self) -> TaskSettings:
        if self.num_server_rounds < 1:
            raise ValueError(f"num-server-rounds must be at least 1, got "
                             f"{self.num_server_rounds}")
        from fedsieve.shared.task.example_data import BUILTIN

        if self.dataset not in BUILTIN and not self.test_dataset:
            raise ValueError(f"dataset {self.dataset!r} is a path: set test-dataset to a "
                             "labelled test set of the same images (the built-in datasets "
                             "bring their own test split)")
        return self


@dataclass(frozen=True)
class HarnessSettings(_RunConfigPart):
    """The simulated federation (:mod:`fedsieve.simulations.pollution`).

    Attributes
    ----------
    num_clients, contamination, partition, profile, label_policy
        How many clients, how much pollution, how MNIST is split between them, how rates
        differ between clients (``attackers:k``: only clients 0..k-1, each at
        ``contamination``), and the labels of the injected images (``target:d``: all ``d``,
        a backdoor with a trigger pollution).
    dirichlet_alpha : float
        Concentration of the ``dirichlet`` partition (0.1: very non-IID clients).
    pollution : str
        What is injected: a spec of :func:`fedsieve.simulations.zoo.parse_pollution`
        (``"fashion"``, ``"trigger:size=3"``, ``"fashion,black,held-out:digit=9"``, ...).
    pollution_dataset : str
        Where the ``fashion`` kind's foreign images come from: empty for Fashion-MNIST (MNIST
        digits when the task's dataset is Fashion-MNIST: the reverse protocol), or any
        dataset name or source as for ``dataset``; resized and converted to the dataset's
        image shape.
    trusted_size : int
        Trusted images the harness keeps out of every client for the server. The example
        ServerApp without a ``trusted-file`` draws this many MNIST digits (and says so).
    federation_dir : str
        Folder of ready client files (``client_<partition-id>.npz``) for simulated nodes;
        ``fedsieve simulate`` fills it so that each simulated ClientApp loads its partition
        instead of rebuilding the whole federation. Empty: rebuild from the settings.
    """

    num_clients: int = 10
    contamination: float = 0.2
    partition: str = "iid"
    profile: str = "uniform"
    label_policy: str = "random"
    pollution: str = "fashion"
    pollution_dataset: str = ""
    dirichlet_alpha: float = 0.5
    trusted_size: int = 10
    federation_dir: str = ""

    def validated(self) -> HarnessSettings:
        if self.num_clients < 1:
            raise ValueError(f"num-clients must be at least 1, got {self.num_clients}")
        if not self.dirichlet_alpha > 0:
            raise ValueError(f"dirichlet-alpha must be > 0, got {self.dirichlet_alpha}")
        return self


_PARTS = {"filter": FilterSettings, "task": TaskSettings, "harness": HarnessSettings}
#: Field name -> the part that holds it.
_PART_OF = {f.name: part for part, cls in _PARTS.items() for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class RunSettings:
    """The example app's settings: what to deploy, what to train, what to simulate.

    Build one from the flat run config (:meth:`from_run_config`), or from the defaults with
    flat field names: ``RunSettings().replace(num_clients=4, detector="iforest")``.

    Attributes
    ----------
    filter : FilterSettings
    task : TaskSettings
    harness : HarnessSettings
    """

    filter: FilterSettings = field(default_factory=FilterSettings)
    task: TaskSettings = field(default_factory=TaskSettings)
    harness: HarnessSettings = field(default_factory=HarnessSettings)

    @property
    def seed(self) -> int:
        """The run's one seed (kept in :attr:`FilterSettings.seed`)."""
        return self.filter.seed

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> RunSettings:
        """Read Flower's ``context.run_config``; unknown keys are ignored, types are checked."""
        return cls(**{part: kind.from_run_config(run_config) for part, kind in _PARTS.items()})

    def to_run_config(self) -> dict[str, object]:
        """The flat kebab-case mapping Flower uses (every part's keys)."""
        return {k: v for part in _PARTS for k, v in getattr(self, part).to_run_config().items()}

    def replace(self, **changes: Any) -> RunSettings:
        """A copy with the given fields changed, named flat (``seed=1``, ``num_clients=4``).

        Raises
        ------
        TypeError
            A name that is no field of any part.
        """
        by_part: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if name not in _PART_OF:
                raise TypeError(f"{name!r} is not a run setting; settings are "
                                f"{', '.join(sorted(_PART_OF))}")
            by_part.setdefault(_PART_OF[name], {})[name] = value
        return dataclasses.replace(self, **{
            part: dataclasses.replace(getattr(self, part), **values)
            for part, values in by_part.items()})

    def validated(self) -> RunSettings:
        """``self`` if every part is consistent; raises ``ValueError`` otherwise."""
        for part in _PARTS:
            getattr(self, part).validated()
        return self


def _key(name: str) -> str:
    return name.replace("_", "-")
