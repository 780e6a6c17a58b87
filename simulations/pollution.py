"""The pollution harness: a federation of MNIST clients with junk injected.

What is injected is a pollution kind from :mod:`fedsieve.simulations.zoo` (Fashion-MNIST by
default; corrupted digits, blank frames, noise, backdoor triggers, a held-out digit class, or
any mix of them).

Only this module knows which samples are polluted. A :class:`ClientData` carries the
ground-truth flags next to the arrays, but what a client would send to a server is built
from ``x``, ``y`` and ``ids`` alone (see :meth:`ClientData.public_arrays`); the flags are
joined back by sample id when a run is scored.

Everything is deterministic from one integer ``seed``: the trusted set, the
partition, the choice of Fashion images, their labels, the order of each client's data and
the making of every other kind of pollution come from independent streams spawned from it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsieve.shared.config import RunSettings
from fedsieve.shared.data.datasets import DataSource, ImageSet, load_fashion_mnist, load_mnist
from fedsieve.shared.data.images import DEFAULT_IMAGE_SHAPE, format_shape, image_shape
from fedsieve.shared.data.trusted import draw_trusted_indices, save_trusted_file
from fedsieve.shared.task.example_data import (
    dataset_classes,
    load_dataset,
    match_shape,
    other_builtin,
)
from fedsieve.simulations.zoo import Material, MixSample, PollutionKind, parse_pollution

PARTITIONS = ("iid", "dirichlet", "shard", "pathological", "linear", "square", "exponential")
#: How rates differ between clients (see :func:`client_rates`); ``attackers`` takes ``:k``.
PROFILES = ("uniform", "skewed", "attackers")
#: Labels of injected images (see :func:`build_federation`); ``target`` takes ``:digit``.
LABEL_POLICIES = ("random", "mapped", "original", "target")
#: Attacker clients of the ``"attackers"`` profile when no ``:k`` is given.
DEFAULT_ATTACKERS = 2
#: Target class of the ``"target"`` label policy when no ``:digit`` is given.
DEFAULT_TARGET = 0
#: The kinds that work on images of any shape; the others draw 28x28 grey frames.
SHAPE_FREE_KINDS = ("fashion", "held-out", "relabelled")
#: How the built-in datasets are named in messages.
_DISPLAY_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
#: Sample ids are ``client_id * ID_STRIDE + position``: unique across the federation.
ID_STRIDE = 1_000_000
#: The fixed class mapping of the ``"mapped"`` label policy: Fashion class k -> digit.
DEFAULT_LABEL_MAP = (3, 8, 1, 6, 0, 9, 4, 2, 7, 5)
#: Rate ceiling of the heavily polluted clients of the ``"skewed"`` profile.
SKEWED_HEAVY_CAP = 0.95


@dataclass(frozen=True)
class TrustedSet:
    """The server's trusted normal images, disjoint from every client's data."""

    images: np.ndarray
    labels: np.ndarray
    origin: np.ndarray  # indices into the MNIST training split

    def save(self, path) -> None:
        """Write the ``.npz`` an operator hands the server (``x``, ``y``)."""
        save_trusted_file(path, self.images, self.labels)


@dataclass(frozen=True)
class ClientData:
    """One client's local data, with the harness-only ground truth beside it.

    Attributes
    ----------
    client_id : int
    x : numpy.ndarray
        uint8 images, (N, 28, 28).
    y : numpy.ndarray
        int64 training labels (digits; injected images get labels by the label policy).
    ids : numpy.ndarray
        int64 sample ids, unique across the federation, independent of pollution.
    polluted : numpy.ndarray
        bool ground truth: True where the image is pollution. Never sent anywhere.
    origin : numpy.ndarray
        Index of the image each sample is (or was made from) in its source split: MNIST
        train for normal digits, corrupted digits and held-out digits, Fashion train for the
        Fashion kinds, -1 for synthetic frames.
    source_labels : numpy.ndarray
        The label that image has in its source split (-1 for synthetic frames).
    kinds : numpy.ndarray
        str ground truth: the pollution kind of each sample (its spec, e.g.
        ``"trigger:size=4"``), ``""`` for normal samples.
    """

    client_id: int
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    polluted: np.ndarray
    origin: np.ndarray
    source_labels: np.ndarray
    kinds: np.ndarray = field(default_factory=lambda: np.empty(0, str))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def contamination(self) -> float:
        """Fraction of this client's samples that are polluted."""
        return float(self.polluted.mean()) if len(self) else 0.0

    def public_arrays(self) -> dict[str, np.ndarray]:
        """What the client itself knows: images, labels and ids, no ground truth."""
        return {"x": self.x, "y": self.y, "ids": self.ids}


@dataclass(frozen=True)
class Federation:
    """A polluted federation, its trusted set and how it was made."""

    clients: list[ClientData]
    trusted_set: TrustedSet
    rates: tuple[float, ...]
    config: dict[str, object]
    sources: dict[str, DataSource] = field(default_factory=dict)

    def ground_truth(self) -> dict[int, bool]:
        """Sample id -> polluted, for joining with a server's audit log."""
        return {int(i): bool(p) for c in self.clients for i, p in zip(c.ids, c.polluted)}

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """Every client's images in client order and their pollution flags (int, 1 = polluted):
        what the server's pool of uploads holds when every client uploads everything."""
        return (np.concatenate([c.x for c in self.clients]),
                np.concatenate([c.polluted for c in self.clients]).astype(int))

    def clean_oracle(self) -> Federation:
        """The same clients with no pollution injected (same partition, same trusted set)."""
        return build_federation(**{**self._build_args, "contamination": 0.0, "rates": None,
                                   "profile": "uniform"})

    def summary(self) -> dict[str, object]:
        """JSON-ready description: config, data sources and per-client counts."""
        return {
            "config": self.config,
            "sources": {k: v.to_dict() for k, v in self.sources.items()},
            "trusted_set": {"size": len(self.trusted_set.labels),
                         "labels": self.trusted_set.labels.tolist()},
            "clients": [
                {
                    "client_id": c.client_id,
                    "samples": len(c),
                    "polluted": int(c.polluted.sum()),
                    "requested_rate": rate,
                    "contamination": round(c.contamination, 6),
                    "label_counts": np.bincount(c.y, minlength=10).tolist(),
                    "kinds": _kind_counts(c.kinds[c.polluted]),
                }
                for c, rate in zip(self.clients, self.rates)
            ],
            "total_samples": sum(len(c) for c in self.clients),
            "total_polluted": int(sum(c.polluted.sum() for c in self.clients)),
            "total_kinds": _kind_counts(np.concatenate([c.kinds[c.polluted]
                                                        for c in self.clients])),
        }

    # The arguments (loaded data included) that rebuild this federation, for the oracle.
    _build_args: dict[str, object] = field(default_factory=dict, repr=False, compare=False)


def client_rates(profile: str, num_clients: int, contamination: float) -> list[float]:
    """Per-client contamination rates for a profile.

    ``"uniform"`` gives every client ``contamination``. ``"attackers:k"`` (k defaults to
    :data:`DEFAULT_ATTACKERS`) pollutes clients 0 to k-1 at ``contamination`` each (the
    attackers' own rate, not the federation's mean) and keeps the others clean: the
    backdoor setting of a few malicious clients. ``"skewed"`` keeps a third of the
    clients clean, makes one client fully polluted, and splits the rest between lightly
    and heavily (3x) polluted clients so that the mean rate equals ``contamination`` as
    closely as the pattern allows (heavy rates are capped at 0.95; when the target is too
    small to afford a fully polluted client, there is none). Clients are ordered clean,
    light, heavy, full.
    """
    _check_rate(contamination, "contamination")
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    name, attackers = parse_profile(profile)
    if name == "uniform":
        return [float(contamination)] * num_clients
    if name == "attackers":
        if attackers > num_clients:
            raise ValueError(f"profile {profile!r} asks for {attackers} attackers among "
                             f"{num_clients} clients; use at most {num_clients}")
        return [float(contamination)] * attackers + [0.0] * (num_clients - attackers)
    if contamination == 0.0:
        return [0.0] * num_clients
    n_clean = num_clients // 3
    for n_full in (1, 0) if num_clients >= 2 else (0,):
        rest = num_clients - n_clean - n_full
        n_light, n_heavy = rest // 2, rest - rest // 2
        weight = n_light + 3 * n_heavy
        light = (contamination * num_clients - n_full) / weight if weight else 0.0
        if light >= 0:
            break
    heavy = min(3 * light, SKEWED_HEAVY_CAP)
    light = min(light, SKEWED_HEAVY_CAP)
    return [0.0] * n_clean + [light] * n_light + [heavy] * n_heavy + [1.0] * n_full


def parse_profile(profile: str) -> tuple[str, int]:
    """Split a profile into its name and attacker count: ``"attackers:3"`` -> ("attackers", 3);
    other profiles take no argument (count -1).

    Raises
    ------
    ValueError
        Unknown profile, or a bad attacker count; the message lists the profiles.
    """
    return _name_and_number(profile, PROFILES, "profile", {"attackers": DEFAULT_ATTACKERS},
                           "attackers:3 (three attacker clients)", low=1, high=None)


def parse_label_policy(policy: str) -> tuple[str, int]:
    """Split a label policy into its name and target class: ``"target:7"`` -> ("target", 7);
    other policies take no argument (target -1).

    Raises
    ------
    ValueError
        Unknown policy, or a target that is no digit; the message lists the policies.
    """
    return _name_and_number(policy, LABEL_POLICIES, "label policy", {"target": DEFAULT_TARGET},
                           "target:7 (every injected sample labelled 7)", low=0, high=9)


def _name_and_number(spec: str, names: tuple[str, ...], what: str, defaults: dict[str, int],
                    example: str, *, low: int, high: int | None) -> tuple[str, int]:
    name, sep, arg = str(spec).partition(":")
    if name not in names or (sep and name not in defaults):
        raise ValueError(f"{what} must be one of {', '.join(names)} (e.g. {example}), "
                         f"got {spec!r}")
    if name not in defaults:
        return name, -1
    if not sep:
        return name, defaults[name]
    try:
        value = int(arg)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f"{low}-{high}" if high is not None else f"at least {low}"
        raise ValueError(f"{what} {spec!r}: the number after ':' must be an integer "
                         f"{bound}, e.g. {example}")
    return name, value


def make_partitioner(partition: str, num_clients: int, *, alpha: float = 0.5,
                     classes_per_client: int = 2, seed: int = 0):
    """A flwr-datasets partitioner over a dataset with a ``"label"`` column."""
    from flwr_datasets import partitioner as fp

    if partition == "iid":
        return fp.IidPartitioner(num_partitions=num_clients)
    if partition == "dirichlet":
        return fp.DirichletPartitioner(num_partitions=num_clients, partition_by="label",
                                       alpha=alpha, min_partition_size=1,
                                       self_balancing=True, seed=seed)
    if partition == "shard":
        return fp.ShardPartitioner(num_partitions=num_clients, partition_by="label",
                                   num_shards_per_partition=classes_per_client, seed=seed)
    if partition == "pathological":
        return fp.PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                          num_classes_per_partition=classes_per_client,
                                          class_assignment_mode="first-deterministic",
                                          seed=seed)
    sized = {"linear": fp.LinearPartitioner, "square": fp.SquarePartitioner,
             "exponential": fp.ExponentialPartitioner}
    if partition in sized:
        return sized[partition](num_partitions=num_clients)
    raise ValueError(f"partition must be one of {PARTITIONS} or a flwr-datasets "
                     f"Partitioner, got {partition!r}")


def build_federation(
    num_clients: int = 10,
    contamination: float = 0.2,
    *,
    partition="iid",
    profile: str = "uniform",
    label_policy: str = "random",
    rates: Sequence[float] | None = None,
    pollution: str | PollutionKind = "fashion",
    seed: int = 0,
    trusted_size: int = 10,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    label_map: Sequence[int] | None = None,
    root=None,
    mnist: ImageSet | None = None,
    fashion: ImageSet | None = None,
) -> Federation:
    """Build a polluted federation of MNIST clients.

    Parameters
    ----------
    num_clients : int
        Number of clients.
    contamination : float
        Target fraction of each client's final samples that are pollution.
    partition : str or flwr_datasets Partitioner
        How normal MNIST is split: one of :data:`PARTITIONS` or a ready partitioner
        (it receives a dataset with ``label`` and ``index`` columns).
    profile : {"uniform", "skewed", "attackers[:k]"}
        How rates differ between clients (see :func:`client_rates`); ignored when
        ``rates`` is given.
    label_policy : {"random", "mapped", "original", "target[:digit]"}
        Labels of injected images: a random digit, ``label_map[source_class]``, the source
        class itself (the Fashion class id, or a corrupted digit's own digit), or one target
        digit for all (a backdoor: ``pollution="trigger"``, ``label_policy="target:0"``).
        Images made from nothing (blank frames, noise) get a random digit under every
        policy but ``target``.
    rates : sequence of float, optional
        Explicit per-client rates, one per client.
    pollution : str or PollutionKind
        What is injected (:func:`fedsieve.simulations.zoo.parse_pollution`): ``"fashion"``
        (default), ``"trigger:size=3"``, ``"fashion,black,held-out:digit=9"``, ... Kinds that
        corrupt digits start from the client's own normal digits. With ``held-out:digit=k``
        no client holds digit k as normal data, nor does the trusted set.
    seed : int
        Seed of every random choice.
    trusted_size : int
        Trusted normal images reserved for the server before partitioning
        (:func:`fedsieve.shared.data.trusted.draw_trusted_indices`, so the example ServerApp
        without a trusted file draws the same ones).
    alpha, classes_per_client : float, int
        Partitioner parameters (Dirichlet concentration; classes per client for the
        shard and pathological partitioners).
    label_map : sequence of 10 ints, optional
        Mapping for ``"mapped"``; defaults to :data:`DEFAULT_LABEL_MAP`.
    root : path, optional
        Data folder passed to the loaders.
    mnist, fashion : ImageSet, optional
        Preloaded training splits (the loaders are used otherwise).

    Notes
    -----
    A client with normal partition size n and rate 0 < c < 1 receives
    ``round(c * n / (1 - c))`` injected images, so its polluted fraction is c to within
    one sample and its normal data is exactly what the clean oracle has. A client with
    c = 1 holds n injected images and none of its partition.
    """
    mix = parse_pollution(pollution)
    parse_label_policy(label_policy)
    label_map = tuple(DEFAULT_LABEL_MAP if label_map is None else label_map)
    if len(label_map) != 10 or not all(0 <= int(v) <= 9 for v in label_map):
        raise ValueError(f"label_map must hold 10 digits 0-9, got {label_map!r}")
    if rates is not None:
        rates = [float(r) for r in rates]
        if len(rates) != num_clients:
            raise ValueError(f"rates has {len(rates)} entries for {num_clients} clients; "
                             "give exactly one rate per client")
        for r in rates:
            _check_rate(r, "rates")
    else:
        rates = client_rates(profile, num_clients, contamination)

    build_args = {
        "num_clients": num_clients, "contamination": contamination, "partition": partition,
        "profile": profile, "label_policy": label_policy, "rates": rates, "seed": seed,
        "pollution": mix, "trusted_size": trusted_size, "alpha": alpha,
        "classes_per_client": classes_per_client, "label_map": label_map, "root": root,
        "mnist": mnist, "fashion": fashion,
    }
    config = {
        "num_clients": num_clients, "contamination": contamination,
        "partition": _partition_name(partition),
        "profile": profile, "label_policy": label_policy,
        "rates": list(rates) if rates is not None else None, "seed": seed,
        "pollution": mix.spec(), "trusted_size": trusted_size, "alpha": alpha,
        "classes_per_client": classes_per_client, "label_map": list(label_map),
        "root": None if root is None else str(root),
    }
    mnist = mnist if mnist is not None else load_mnist("train", root=root)
    shape = image_shape(mnist.images)
    drawn = [k.name for k in mix.leaves() if k.name not in SHAPE_FREE_KINDS]
    if shape != DEFAULT_IMAGE_SHAPE and drawn:
        raise ValueError(f"pollution kinds {', '.join(drawn)} draw 1x28x28 grey images, but "
                         f"the dataset's are {format_shape(shape)}; with other images use "
                         f"{', '.join(SHAPE_FREE_KINDS)}")
    n_classes = dataset_classes(mnist.labels)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
    partition_rng, pick_rng, label_rng, order_rng, kind_rng = streams

    # A held-out class is never normal data: not for clients, not for the trusted set.
    held = mix.held_out_class
    normal_pool = (np.arange(len(mnist.labels)) if held is None
                   else np.flatnonzero(mnist.labels != held))
    held_idx = np.empty(0, np.int64) if held is None else np.flatnonzero(mnist.labels == held)
    trusted_idx = normal_pool[draw_trusted_indices(mnist.labels[normal_pool], trusted_size, seed)]
    remaining = partition_rng.permutation(np.setdiff1d(normal_pool, trusted_idx))
    parts = _partition_indices(partition, remaining, mnist.labels, num_clients, alpha,
                               classes_per_client, seed)

    injected = [_injected_count(len(p), r) for p, r in zip(parts, rates)]
    sources = {mnist.source.dataset: mnist.source}
    needed = [mix.fashion_needed(n) for n in injected]
    fashion_idx = [np.empty(0, np.int64)] * num_clients
    if sum(needed):
        fashion = fashion if fashion is not None else load_fashion_mnist("train", root=root)
        key = fashion.source.dataset
        sources[key if key not in sources else f"{key} (pollution)"] = fashion.source
        if sum(needed) > len(fashion.labels):
            name = _DISPLAY_NAMES.get(fashion.source.dataset, fashion.source.dataset)
            raise ValueError(f"the requested pollution needs {sum(needed)} images of {name} "
                             f"but only {len(fashion.labels)} exist; "
                             "lower the contamination or the number of clients, or name a "
                             "larger pollution dataset")
        pool = pick_rng.permutation(len(fashion.labels))
        bounds = np.cumsum([0, *needed])
        fashion_idx = [pool[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    clients = []
    for cid, (part, fashion_part, n_poll, rate) in enumerate(
            zip(parts, fashion_idx, injected, rates)):
        normal = part[:0] if rate >= 1.0 else part
        n_norm = len(normal)
        # Kinds that corrupt digits start from the client's own partition.
        made = mix.sample_with_kinds(n_poll, kind_rng, Material(
            mnist.images[part], mnist.labels[part].astype(np.int64),
            fashion.images[fashion_part] if len(fashion_part) else None,
            mnist.images[held_idx], mnist.labels[held_idx].astype(np.int64)))
        made_origin = _split_origin(made, part, fashion_part, held_idx)
        made_labels = made.labels.copy()
        is_fashion = made.sources == "fashion"  # the zoo knows no Fashion classes; we do
        if is_fashion.any():
            made_labels[is_fashion] = fashion.labels[made_origin[is_fashion]]
        x = np.concatenate([mnist.images[normal], made.images])
        source_labels = np.concatenate([mnist.labels[normal], made_labels]).astype(np.int64)
        injected_labels = _injected_labels(made_labels, label_policy, label_map, label_rng,
                                           n_classes)
        y = np.concatenate([source_labels[:n_norm], injected_labels]).astype(np.int64)
        polluted = np.concatenate([np.zeros(n_norm, bool), np.ones(n_poll, bool)])
        origin = np.concatenate([normal, made_origin]).astype(np.int64)
        kinds = np.concatenate([np.full(n_norm, ""), made.kinds]).astype(str)
        order = order_rng.permutation(n_norm + n_poll)
        clients.append(ClientData(
            client_id=cid, x=x[order], y=y[order],
            ids=cid * ID_STRIDE + np.arange(n_norm + n_poll, dtype=np.int64),
            polluted=polluted[order], origin=origin[order], source_labels=source_labels[order],
            kinds=kinds[order],
        ))
    trusted_set = TrustedSet(mnist.images[trusted_idx],
                             mnist.labels[trusted_idx].astype(np.int64), trusted_idx)
    return Federation(clients, trusted_set, tuple(rates), config, sources, _build_args=build_args)


def federation_for(settings: RunSettings, contamination: float | None = None) -> Federation:
    """The federation that a run's settings describe (``contamination`` overrides theirs).

    The ServerApp, the simulated ClientApps and the reports all rebuild the same federation
    from the same settings: it is deterministic. The last few are kept in memory, so a sweep
    cell's simulation, detector-only run and report share one build.
    """
    harness = settings.harness
    return _cached_federation(
        harness.num_clients, harness.contamination if contamination is None else contamination,
        harness.partition, harness.profile, harness.label_policy, harness.pollution,
        settings.seed, harness.trusted_size, harness.dirichlet_alpha,
        settings.task.data_root or None, settings.task.dataset, harness.pollution_dataset)


@functools.lru_cache(maxsize=4)
def _cached_federation(num_clients: int, contamination: float, partition: str, profile: str,
                       label_policy: str, pollution: str, seed: int, trusted_size: int,
                       alpha: float, root: str | None, dataset: str = "mnist",
                       pollution_dataset: str = "") -> Federation:
    normal = foreign = None
    if dataset != "mnist" or pollution_dataset:
        normal = load_dataset(dataset, "train", root=root)
        if parse_pollution(pollution).needs_fashion:
            other = load_dataset(pollution_dataset or other_builtin(dataset), "train", root=root)
            shape = image_shape(normal.images)
            matched = match_shape(other.images, shape)
            # In the normal images' own layout: the built-in loaders give (N, 28, 28).
            foreign = other._replace(images=matched[:, 0] if normal.images.ndim == 3
                                     else matched)
    return build_federation(num_clients, contamination, partition=partition, profile=profile,
                            label_policy=label_policy, pollution=pollution, seed=seed,
                            trusted_size=trusted_size, alpha=alpha, root=root,
                            mnist=normal, fashion=foreign)


def _check_rate(rate: float, what: str) -> None:
    if not (isinstance(rate, int | float) and math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise ValueError(f"{what} must be a fraction in [0, 1], got {rate!r}")


def _injected_count(n_normal: int, rate: float) -> int:
    if rate >= 1.0:
        return n_normal
    return int(round(rate * n_normal / (1.0 - rate)))


def _injected_labels(source_labels: np.ndarray, policy: str, label_map: tuple[int, ...],
                     rng: np.random.Generator, n_classes: int = 10) -> np.ndarray:
    policy, target = parse_label_policy(policy)
    if policy == "target":
        return np.full(len(source_labels), target, np.int64)
    if policy == "random":
        return rng.integers(0, n_classes, size=len(source_labels), dtype=np.int64)
    classless = source_labels < 0  # made from nothing: no class to keep or map
    known = np.where(classless, 0, source_labels)
    labels = (np.asarray(label_map, dtype=np.int64)[known] if policy == "mapped"
              else known.astype(np.int64))
    if classless.any():
        labels[classless] = rng.integers(0, n_classes, size=int(classless.sum()), dtype=np.int64)
    # A class the dataset does not have (Fashion classes mapped onto fewer classes) wraps.
    return labels % n_classes


def _split_origin(made: MixSample, part: np.ndarray, fashion_part: np.ndarray,
                  held_idx: np.ndarray) -> np.ndarray:
    """Map a mix's per-material origins to indices in the MNIST / Fashion training splits."""
    origin = np.full(len(made.origin), -1, np.int64)
    for source, index in (("digits", part), ("fashion", fashion_part),
                          ("extra_digits", held_idx)):
        at = made.sources == source
        if at.any():
            origin[at] = index[made.origin[at]]
    return origin


def _kind_counts(kinds: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(kinds, return_counts=True)
    return {str(k): int(c) for k, c in zip(names, counts)}


def _partition_indices(partition, indices: np.ndarray, labels: np.ndarray, num_clients: int,
                       alpha: float, classes_per_client: int, seed: int) -> list[np.ndarray]:
    """Split ``indices`` (already shuffled) among clients with a flwr-datasets partitioner."""
    from datasets import Dataset

    partitioner = (make_partitioner(partition, num_clients, alpha=alpha,
                                    classes_per_client=classes_per_client, seed=seed)
                   if isinstance(partition, str) else partition)
    partitioner.dataset = Dataset.from_dict({"index": indices, "label": labels[indices]})
    if partitioner.num_partitions != num_clients:
        raise ValueError(f"the partitioner makes {partitioner.num_partitions} partitions for "
                         f"{num_clients} clients")
    parts = [np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)
             for i in range(num_clients)]
    if any(len(p) == 0 for p in parts):
        empty = [i for i, p in enumerate(parts) if len(p) == 0]
        raise ValueError(f"partition {_partition_name(partition)!r} left clients {empty} without "
                         "data; use fewer clients or a larger alpha")
    return parts


def _partition_name(partition) -> str:
    return partition if isinstance(partition, str) else type(partition).__name__


__all__ = [
    "ClientData", "DEFAULT_LABEL_MAP", "Federation", "ID_STRIDE", "LABEL_POLICIES",
    "PARTITIONS", "PROFILES", "TrustedSet", "build_federation", "client_rates", "federation_for",
    "make_partitioner", "parse_label_policy", "parse_profile",
]
