"""The pollution zoo: kinds of junk a crawler or an attacker puts into a client's data.

Each kind is a small frozen dataclass with its own parameters; :meth:`PollutionKind.sample`
makes ``n`` polluted images (uint8, (n, 28, 28)) from a random generator and the material it
may corrupt: normal digits (for corrupted-digit kinds) and Fashion-MNIST images (for the
out-of-domain kinds). :class:`Mix` composes kinds; :func:`parse_pollution` reads the
command-line form ``fashion,trigger:size=3:position=random,constant:value=0``.

Kinds that corrupt digits take them from the data they pollute (a client's own normal
partition), as a real attacker poisoning its own data would, so they need no extra data.
``HeldOutClass`` is the near-distribution case: one digit class never appears as normal data,
and its images are the pollution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "KINDS",
    "Blurred",
    "Constant",
    "Fashion",
    "HeldOutClass",
    "InkMatchedFashion",
    "Inverted",
    "LowContrast",
    "Material",
    "Mix",
    "MixSample",
    "Occluded",
    "PollutionKind",
    "Relabelled",
    "Sample",
    "SaltPepper",
    "Trigger",
    "UniformNoise",
    "parse_pollution",
]


@dataclass(frozen=True)
class Material:
    """What pollution may be made from.

    Attributes
    ----------
    digits : numpy.ndarray
        uint8 (m, 28, 28) normal images that corrupted-digit kinds start from.
    digit_labels : numpy.ndarray
        int64 (m,) their classes.
    fashion : numpy.ndarray or None
        uint8 (k, 28, 28) out-of-domain images, used in order (shuffle them first), so that
        a caller hands each client its own disjoint share; None when no kind needs them.
    extra_digits, extra_labels : numpy.ndarray or None
        Images of a class that the normal data does not hold (``HeldOutClass``).
    """

    digits: np.ndarray
    digit_labels: np.ndarray
    fashion: np.ndarray | None = None
    extra_digits: np.ndarray | None = None
    extra_labels: np.ndarray | None = None


@dataclass(frozen=True)
class Sample:
    """Polluted images and where each came from.

    Attributes
    ----------
    images : numpy.ndarray
        uint8 (n, 28, 28).
    labels : numpy.ndarray
        int64 (n,): the class of what each image was made from (the digit of a corrupted
        digit, -1 for synthetic frames and Fashion images); the label a client gives a
        polluted sample is the harness's label policy's business.
    origin : numpy.ndarray
        int64 (n,): index of the image each one was made from in the kind's
        :attr:`~PollutionKind.source` array of the :class:`Material`, -1 when none.
    """

    images: np.ndarray
    labels: np.ndarray
    origin: np.ndarray


@dataclass(frozen=True)
class PollutionKind:
    """Base of every kind: ``sample(n, rng, material) -> Sample``."""

    #: Registry name used by :func:`parse_pollution`.
    name: ClassVar[str] = ""
    #: Which :class:`Material` array the kind makes its images from (None: from nothing).
    source: ClassVar[str | None] = None

    def sample(self, n: int, rng: np.random.Generator, material: Material) -> Sample:
        raise NotImplementedError

    @property
    def needs_fashion(self) -> bool:
        """Whether the kind draws on Fashion-MNIST."""
        return self.source == "fashion"

    @property
    def held_out_class(self) -> int | None:
        """The digit class this kind removes from the normal data (None for most kinds)."""
        return None

    def spec(self) -> str:
        """The command-line form of this kind (round-trips through :func:`parse_pollution`)."""
        parts = [self.name]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                parts.append(f"{f.name}={value}")
        return ":".join(parts)

    def leaves(self) -> list[PollutionKind]:
        """The elementary kinds (itself, or a mix's parts)."""
        return [self]


def _digits(n: int, rng: np.random.Generator, material: Material) -> Sample:
    if len(material.digits) == 0:
        raise ValueError("this pollution kind corrupts digits, but the client holds none")
    idx = rng.integers(0, len(material.digits), size=n)
    return Sample(material.digits[idx].copy(), material.digit_labels[idx].astype(np.int64),
                  idx.astype(np.int64))


def _nothing(images: np.ndarray) -> Sample:
    n = len(images)
    return Sample(images, np.full(n, -1, np.int64), np.full(n, -1, np.int64))


def _with_images(sample: Sample, images: np.ndarray) -> Sample:
    return Sample(images, sample.labels, sample.origin)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# -- out of domain ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Fashion(PollutionKind):
    """Fashion-MNIST images as they are (the paper's pollution)."""

    name: ClassVar[str] = "fashion"
    source: ClassVar[str | None] = "fashion"

    def sample(self, n, rng, material):
        return _fashion(n, material)


def _fashion(n: int, material: Material) -> Sample:
    have = 0 if material.fashion is None else len(material.fashion)
    if have < n:
        raise ValueError(f"this pollution needs {n} Fashion-MNIST images but {have} were given")
    return Sample(material.fashion[:n].copy(), np.full(n, -1, np.int64),
                  np.arange(n, dtype=np.int64))


@dataclass(frozen=True)
class InkMatchedFashion(PollutionKind):
    """Fashion-MNIST images rescaled so that their total ink equals a random digit's.

    Clothes carry several times a digit's ink; matched, they no longer stand out by brightness
    alone.
    """

    name: ClassVar[str] = "ink-fashion"
    source: ClassVar[str | None] = "fashion"

    def sample(self, n, rng, material):
        clothes = _fashion(n, material)
        target = _digits(n, rng, material).images
        ink = clothes.images.reshape(n, -1).sum(1).astype(np.float64)
        want = target.reshape(n, -1).sum(1).astype(np.float64)
        scale = np.divide(want, ink, out=np.ones_like(want), where=ink > 0)
        return _with_images(clothes, _to_uint8(clothes.images * scale[:, None, None]))


@dataclass(frozen=True)
class Constant(PollutionKind):
    """Blank frames of one grey level (0 black, 255 white)."""

    value: int = 0
    name: ClassVar[str] = "constant"

    def __post_init__(self) -> None:
        if not 0 <= int(self.value) <= 255:
            raise ValueError(f"constant: value must be a grey level 0-255, got {self.value}")

    def sample(self, n, rng, material):
        return _nothing(np.full((n, 28, 28), int(self.value), np.uint8))


@dataclass(frozen=True)
class UniformNoise(PollutionKind):
    """Independent uniform pixels in ``[low, high]``."""

    low: int = 0
    high: int = 255
    name: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high <= 255:
            raise ValueError(f"noise: need 0 <= low <= high <= 255, got {self.low}, {self.high}")

    def sample(self, n, rng, material):
        return _nothing(rng.integers(self.low, self.high + 1, size=(n, 28, 28)).astype(np.uint8))


# -- corrupted digits -------------------------------------------------------------------------
@dataclass(frozen=True)
class SaltPepper(PollutionKind):
    """Digits with a fraction ``amount`` of their pixels set to black or white."""

    amount: float = 0.1
    name: ClassVar[str] = "salt-pepper"
    source: ClassVar[str | None] = "digits"

    def __post_init__(self) -> None:
        if not 0.0 < self.amount <= 1.0:
            raise ValueError(f"salt-pepper: amount must be in (0, 1], got {self.amount}")

    def sample(self, n, rng, material):
        base = _digits(n, rng, material)
        x = base.images
        hit = rng.random(x.shape) < self.amount
        x[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255).astype(np.uint8)
        return base


@dataclass(frozen=True)
class Inverted(PollutionKind):
    """Digits with their grey levels inverted (white background)."""

    name: ClassVar[str] = "inverted"
    source: ClassVar[str | None] = "digits"

    def sample(self, n, rng, material):
        base = _digits(n, rng, material)
        return _with_images(base, 255 - base.images)


@dataclass(frozen=True)
class Blurred(PollutionKind):
    """Digits under a Gaussian blur of standard deviation ``sigma`` pixels."""

    sigma: float = 2.0
    name: ClassVar[str] = "blurred"
    source: ClassVar[str | None] = "digits"

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"blurred: sigma must be > 0, got {self.sigma}")

    def sample(self, n, rng, material):
        from scipy.ndimage import gaussian_filter

        base = _digits(n, rng, material)
        blurred = gaussian_filter(base.images.astype(np.float32),
                                  sigma=(0, self.sigma, self.sigma))
        return _with_images(base, _to_uint8(blurred))


@dataclass(frozen=True)
class LowContrast(PollutionKind):
    """Digits whose grey levels are squeezed to ``factor`` of their range around mid-grey."""

    factor: float = 0.25
    name: ClassVar[str] = "low-contrast"
    source: ClassVar[str | None] = "digits"

    def __post_init__(self) -> None:
        if not 0.0 <= self.factor < 1.0:
            raise ValueError(f"low-contrast: factor must be in [0, 1), got {self.factor}")

    def sample(self, n, rng, material):
        base = _digits(n, rng, material)
        squeezed = 127.5 + (base.images.astype(np.float32) - 127.5) * self.factor
        return _with_images(base, _to_uint8(squeezed))


@dataclass(frozen=True)
class Occluded(PollutionKind):
    """Digits with a ``size`` x ``size`` square of grey level ``value`` at a random place."""

    size: int = 12
    value: int = 0
    name: ClassVar[str] = "occluded"
    source: ClassVar[str | None] = "digits"

    def __post_init__(self) -> None:
        if not 1 <= self.size <= 28 or not 0 <= self.value <= 255:
            raise ValueError(f"occluded: need 1 <= size <= 28 and 0 <= value <= 255, got "
                             f"size={self.size}, value={self.value}")

    def sample(self, n, rng, material):
        base = _digits(n, rng, material)
        x = base.images
        # Keep the square within the digit's usual 20x20 box, so it covers strokes.
        rows = rng.integers(4, max(5, 25 - self.size), size=n)
        cols = rng.integers(4, max(5, 25 - self.size), size=n)
        for i, (r, c) in enumerate(zip(rows, cols)):
            x[i, r:r + self.size, c:c + self.size] = self.value
        return base


_CORNERS = {"top-left": (1, 1), "top-right": (1, -1), "bottom-left": (-1, 1),
            "bottom-right": (-1, -1)}


@dataclass(frozen=True)
class Trigger(PollutionKind):
    """Digits carrying a BadNets-style backdoor trigger: a ``size`` x ``size`` patch.

    Parameters
    ----------
    size : int
        Side of the square patch in pixels.
    position : str
        ``"bottom-right"`` (default), ``"top-left"``, ``"top-right"``, ``"bottom-left"``,
        ``"random-corner"`` (one of the four per image) or ``"random"`` (anywhere).
    value : int
        Grey level of the patch (255 = white).
    pattern : str
        ``"solid"`` square or ``"checker"`` board.
    margin : int
        Distance of a corner patch from the image border.
    """

    size: int = 3
    position: str = "bottom-right"
    value: int = 255
    pattern: str = "solid"
    margin: int = 1
    name: ClassVar[str] = "trigger"
    source: ClassVar[str | None] = "digits"

    def __post_init__(self) -> None:
        positions = (*_CORNERS, "random-corner", "random")
        if self.position not in positions:
            raise ValueError(f"trigger: position must be one of {', '.join(positions)}, got "
                             f"{self.position!r}")
        if self.pattern not in ("solid", "checker"):
            raise ValueError(f"trigger: pattern must be solid or checker, got {self.pattern!r}")
        if not 1 <= self.size <= 14 or not 0 <= self.value <= 255 or self.margin < 0:
            raise ValueError("trigger: need 1 <= size <= 14, 0 <= value <= 255, margin >= 0")

    def patch(self) -> np.ndarray:
        """The trigger's pixels, uint8 (size, size)."""
        if self.pattern == "solid":
            return np.full((self.size, self.size), self.value, np.uint8)
        grid = np.indices((self.size, self.size)).sum(0) % 2 == 0
        return np.where(grid, self.value, 0).astype(np.uint8)

    def sample(self, n, rng, material):
        base = _digits(n, rng, material)
        return _with_images(base, self.apply(base.images, rng))

    def apply(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Stamp the trigger on uint8 images ``x`` (a copy); ``rng`` for random positions."""
        x = np.array(x, copy=True)
        rng = rng if rng is not None else np.random.default_rng(0)
        patch, s = self.patch(), self.size
        far = 28 - s - self.margin
        corners = list(_CORNERS.values())
        for i in range(len(x)):
            if self.position == "random":
                r, c = rng.integers(0, 28 - s + 1, size=2)
            else:
                vr, vc = (_CORNERS[self.position] if self.position in _CORNERS
                          else corners[rng.integers(len(corners))])
                r = self.margin if vr > 0 else far
                c = self.margin if vc > 0 else far
            x[i, r:r + s, c:c + s] = patch
        return x


@dataclass(frozen=True)
class HeldOutClass(PollutionKind):
    """Near-distribution pollution: digits of class ``digit``, which no client holds as normal."""

    digit: int = 9
    name: ClassVar[str] = "held-out"
    source: ClassVar[str | None] = "extra_digits"

    def __post_init__(self) -> None:
        if not 0 <= self.digit <= 9:
            raise ValueError(f"held-out: digit must be 0-9, got {self.digit}")

    @property
    def held_out_class(self) -> int | None:
        return int(self.digit)

    def sample(self, n, rng, material):
        if material.extra_digits is None or len(material.extra_digits) == 0:
            raise ValueError(f"held-out: no images of digit {self.digit} were set aside")
        idx = rng.choice(len(material.extra_digits), size=n,
                         replace=n > len(material.extra_digits))
        return Sample(material.extra_digits[idx].copy(),
                      material.extra_labels[idx].astype(np.int64), idx.astype(np.int64))


@dataclass(frozen=True)
class Relabelled(PollutionKind):
    """Genuine digits, copied unchanged from the data they pollute: only their label is wrong.

    The image carries no trace of the attack, so an image-only detector cannot see it; the
    harm comes from the label the harness's label policy gives each copy (``mapped``: a
    consistent label flip, ``random``: label noise, ``target``: every copy one class).
    Under the ``original`` policy the copies keep their own digit and are harmless.
    """

    name: ClassVar[str] = "relabelled"
    source: ClassVar[str | None] = "digits"

    def sample(self, n, rng, material):
        return _digits(n, rng, material)


# -- composition ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mix(PollutionKind):
    """Several kinds at once: each polluted sample's kind is drawn with ``weights``."""

    kinds: tuple[PollutionKind, ...] = ()
    weights: tuple[float, ...] | None = None
    name: ClassVar[str] = "mix"

    def __post_init__(self) -> None:
        if not self.kinds:
            raise ValueError("mix: give at least one kind")
        if any(isinstance(k, Mix) for k in self.kinds):
            raise ValueError("mix: kinds must be elementary (no mix inside a mix)")
        held = {k.held_out_class for k in self.kinds} - {None}
        if len(held) > 1:
            raise ValueError(f"mix: at most one held-out class, got {sorted(held)}")
        if self.weights is not None and (len(self.weights) != len(self.kinds)
                                         or min(self.weights) < 0 or sum(self.weights) <= 0):
            raise ValueError("mix: weights must be one non-negative number per kind, not all 0")

    @property
    def needs_fashion(self) -> bool:  # type: ignore[override]
        return any(k.needs_fashion for k in self.kinds)

    @property
    def held_out_class(self) -> int | None:
        return next((k.held_out_class for k in self.kinds if k.held_out_class is not None), None)

    def leaves(self) -> list[PollutionKind]:
        return list(self.kinds)

    def spec(self) -> str:
        return ",".join(k.spec() for k in self.kinds)

    def counts(self, n: int) -> np.ndarray:
        """How many of ``n`` samples each kind gets: as even as the weights allow (largest
        remainder, ties to the earlier kind)."""
        w = np.ones(len(self.kinds)) if self.weights is None else np.asarray(self.weights, float)
        share = w / w.sum() * n
        counts = np.floor(share).astype(int)
        counts[np.argsort(-(share - counts), kind="stable")[:n - counts.sum()]] += 1
        return counts

    def fashion_needed(self, n: int) -> int:
        """Fashion-MNIST images that ``n`` samples of this mix use up."""
        return int(sum(c for c, k in zip(self.counts(n), self.kinds) if k.needs_fashion))

    def sample(self, n, rng, material):
        return self.sample_with_kinds(n, rng, material)

    def sample_with_kinds(self, n: int, rng: np.random.Generator,
                          material: Material) -> MixSample:
        """``n`` samples, each kind getting its :meth:`counts` share in a random order.

        Fashion-drawing kinds take consecutive, disjoint slices of ``material.fashion``.
        """
        which = rng.permutation(np.repeat(np.arange(len(self.kinds)), self.counts(n)))
        # Images of the normal data's shape (28x28 grey for the kinds that draw their own).
        images = np.empty((n, *material.digits.shape[1:]), np.uint8)
        labels = np.empty(n, np.int64)
        origin = np.empty(n, np.int64)
        cursor = 0
        for k, kind in enumerate(self.kinds):
            at = np.flatnonzero(which == k)
            if not len(at):
                continue
            if kind.needs_fashion:
                given = dataclasses.replace(material, fashion=(
                    None if material.fashion is None else material.fashion[cursor:]))
                part = kind.sample(len(at), rng, given)
                origin[at] = part.origin + cursor
                cursor += len(at)
            else:
                part = kind.sample(len(at), rng, material)
                origin[at] = part.origin
            images[at], labels[at] = part.images, part.labels
        specs = np.asarray([k.spec() for k in self.kinds])
        sources = np.asarray([k.source or "" for k in self.kinds])
        return MixSample(images, labels, origin, specs[which].astype(str),
                         sources[which].astype(str))


@dataclass(frozen=True)
class MixSample(Sample):
    """A :class:`Sample` of a :class:`Mix`, with each sample's kind.

    Attributes
    ----------
    kinds : numpy.ndarray
        str (n,): the :meth:`~PollutionKind.spec` of each sample's kind (ground truth that a
        report breaks results down by).
    sources : numpy.ndarray
        str (n,): the :class:`Material` array ``origin`` indexes ("" for made from nothing).
    """

    kinds: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, str))
    sources: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, str))


def as_mix(kind: PollutionKind) -> Mix:
    """Every pollution as a :class:`Mix` (a single kind is a mix of one)."""
    return kind if isinstance(kind, Mix) else Mix((kind,))


#: Every elementary kind by name.
KINDS: dict[str, type[PollutionKind]] = {
    k.name: k for k in (Fashion, InkMatchedFashion, Constant, UniformNoise, SaltPepper, Inverted,
                        Blurred, LowContrast, Occluded, Trigger, HeldOutClass, Relabelled)
}


def _with_content_kinds() -> None:
    """Add the content kinds (defined on top of this module's base classes) to ``KINDS``."""
    from fedsieve.simulations.content_kinds import CONTENT_KINDS

    KINDS.update(CONTENT_KINDS)


_with_content_kinds()

#: Short names for common settings.
ALIASES = {"black": "constant:value=0", "white": "constant:value=255",
           "grey": "constant:value=128", "gray": "constant:value=128"}


def parse_pollution(spec: str | PollutionKind | Sequence[PollutionKind]) -> Mix:
    """Read a pollution spec: kinds separated by ``,``, parameters after ``:`` as
    ``key=value``, an optional weight as ``*w`` at the end of a kind.

    Examples: ``"fashion"``, ``"trigger:size=3:position=random-corner"``,
    ``"fashion*2,black,held-out:digit=7"``.

    Raises
    ------
    ValueError
        Unknown kind or parameter, or a value of the wrong type; the message lists what exists.
    """
    if isinstance(spec, PollutionKind):
        return as_mix(spec)
    if not isinstance(spec, str):
        return Mix(tuple(spec))
    kinds, weights = [], []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        weight = 1.0
        if "*" in item:
            item, w = item.rsplit("*", 1)
            try:
                weight = float(w)
            except ValueError as err:
                raise ValueError(f"pollution weight {w!r} is not a number") from err
        item = ALIASES.get(item, item)
        name, *params = item.split(":")
        if name not in KINDS:
            raise ValueError(f"unknown pollution kind {name!r}; choose from "
                             f"{', '.join(sorted([*KINDS, *ALIASES]))}")
        kinds.append(_build(KINDS[name], params))
        weights.append(weight)
    if not kinds:
        raise ValueError("empty pollution spec; e.g. 'fashion' or 'trigger:size=3'")
    return Mix(tuple(kinds), None if len(set(weights)) == 1 else tuple(weights))


def _build(cls: type[PollutionKind], params: list[str]) -> PollutionKind:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for p in params:
        key, sep, raw = p.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"{cls.name}: unknown parameter {p!r}; parameters: "
                             f"{', '.join(fields) or 'none'}")
        default = fields[key].default
        try:
            values[key] = type(default)(raw) if not isinstance(default, str) else raw
        except ValueError as err:
            raise ValueError(f"{cls.name}: {key} must be {type(default).__name__}, "
                             f"got {raw!r}") from err
    return cls(**values)
