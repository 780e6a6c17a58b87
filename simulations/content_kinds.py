"""Content pollution: images drawn the way digits are, of the wrong thing.

Every kind here is drawn with a pen stroke as thick as a digit's and put through MNIST's own
preprocessing (the ink's bounding box scaled to fit 20x20, anti-aliased, centred by its centre
of mass in 28x28), so that stroke, ink and texture match the normal data and only the content
differs. Each kind comes from a different source:

- ``letters``: Latin letters and other glyphs rendered from the fonts bundled with matplotlib
  (DejaVu Sans, Serif and Mono in several styles), leaving out the glyphs that are drawn like
  a digit (O, l, I, S, Z, B, g, q, ...);
- ``sketches``: the outlines of Fashion-MNIST clothes, traced from their edges;
- ``scribbles``: smooth random pen paths through a few random points;
- ``shapes``: outlined polygons, stars and arrows with a jittered hand;
- ``chimeras``: the left half of one digit joined to the right half of a digit of another
  class (made from the data they pollute, as an attacker would).

The held-out digit class (``held-out`` in :mod:`~fedsieve.simulations.zoo`) and flipped
labels (``relabelled``) are the other two content kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from fedsieve.simulations.zoo import PollutionKind, Sample, _fashion, _nothing

__all__ = ["CONTENT_KINDS", "Chimeras", "Letters", "Scribbles", "Shapes", "Sketches",
           "mnist_style"]

#: Canvas the strokes are drawn on before MNIST's preprocessing shrinks them to 20x20.
CANVAS = 112
#: Pen width on that canvas: MNIST strokes are about 2.5 px of a 20 px digit.
PEN = 12
#: A digit's stroke width as a share of its 20-pixel box.
STROKE = 0.13
#: Glyphs drawn like a digit (0 1 2 5 6 8 9 and look-alikes) are not content pollution.
DIGIT_LIKE = set("OoDQlIiJjSsZzBbgqGTt|")


def mnist_style(canvas: np.ndarray) -> np.ndarray:
    """MNIST's preprocessing of one grey drawing (float, any size, ink > 0).

    The ink's bounding box is scaled to fit a 20x20 box (aspect kept, anti-aliased) and placed
    in a 28x28 image so that its centre of mass is at the centre, as LeCun et al. made MNIST.
    Returns uint8 (28, 28); all zeros for an empty drawing.
    """
    from PIL import Image
    from scipy.ndimage import center_of_mass, shift

    rows = np.nonzero(canvas.max(axis=1) > 0)[0]
    cols = np.nonzero(canvas.max(axis=0) > 0)[0]
    out = np.zeros((28, 28), np.float64)
    if len(rows) == 0:
        return out.astype(np.uint8)
    ink = canvas[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = ink.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(np.clip(ink * 255, 0, 255).astype(np.uint8)).resize(
        size, Image.LANCZOS), np.float64)
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    out[top:top + size[1], left:left + size[0]] = small
    cy, cx = center_of_mass(out)
    out = shift(out, (13.5 - cy, 13.5 - cx), order=1, mode="constant")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _pen(points: list[tuple[float, float]], closed: bool = False,
         width: int = PEN) -> np.ndarray:
    """A path drawn with a round pen on the canvas; float ink in [0, 1]."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    path = [*points, points[0]] if closed else points
    draw.line(path, fill=255, width=width, joint="curve")
    r = width / 2
    for x, y in path:  # round caps and joints
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(img, np.float64) / 255


def _jitter(rng: np.random.Generator, points: np.ndarray, amount: float) -> np.ndarray:
    """A hand's wobble and a random rotation, scale and shear of ``points`` around the centre."""
    angle = rng.uniform(-0.35, 0.35)
    shear = rng.uniform(-0.25, 0.25)
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]])
    p = (points - 0.5) @ m.T * rng.uniform(0.6, 0.8) * CANVAS + CANVAS / 2
    return p + rng.normal(0, amount * CANVAS, p.shape)


@lru_cache(maxsize=1)
def _fonts() -> tuple[str, ...]:
    """The TrueType fonts bundled with matplotlib (present wherever fedsieve is installed)."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    # The "Display" faces hold only a few glyphs.
    return tuple(str(p) for p in sorted(ttf.glob("DejaVu*.ttf")) if "Display" not in p.name)


@lru_cache(maxsize=64)
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _glyph(char: str, font_path: str, rng: np.random.Generator) -> np.ndarray:
    """One glyph rendered large, slanted a little, its strokes widened to the pen's width."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import binary_dilation, binary_erosion

    img = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(img).text((CANVAS / 2, CANVAS / 2), char, fill=255,
                             font=_font(font_path, 72), anchor="mm")
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    ink = np.asarray(img, np.float64) / 255 > 0.5
    rows, cols = np.nonzero(ink)
    if len(rows) == 0:
        return ink.astype(np.float64)
    # Font strokes run from hairline to heavy; a pen draws them all as wide, relative to the
    # glyph's size, as a digit's (STROKE of its box). A stroke's width is twice its area over
    # its outline's length.
    want = STROKE * max(np.ptp(rows), np.ptp(cols))
    width = 2.0 * ink.sum() / max(int((ink & ~binary_erosion(ink)).sum()), 1)
    grow = int(round((want - width) / 2))
    if grow:
        disk = np.hypot(*np.mgrid[-abs(grow):abs(grow) + 1, -abs(grow):abs(grow) + 1])
        change = binary_dilation if grow > 0 else binary_erosion
        thinner = change(ink, disk <= abs(grow))
        ink = thinner if thinner.any() else ink
    return ink.astype(np.float64)


@dataclass(frozen=True)
class Letters(PollutionKind):
    """Letters and symbols rendered from fonts, drawn the way digits are (not digit-like ones)."""

    name: ClassVar[str] = "letters"

    def sample(self, n, rng, material):
        import string

        chars = [c for c in string.ascii_letters + "#&@%+?!<>=$" if c not in DIGIT_LIKE]
        fonts = _fonts()
        images = np.stack([mnist_style(_glyph(chars[rng.integers(len(chars))],
                                              fonts[rng.integers(len(fonts))], rng))
                           for _ in range(n)]) if n else np.zeros((0, 28, 28), np.uint8)
        return _nothing(images)


@dataclass(frozen=True)
class Sketches(PollutionKind):
    """Outlines of Fashion-MNIST clothes, traced from their edges with a digit's pen."""

    name: ClassVar[str] = "sketches"
    source: ClassVar[str | None] = "fashion"

    def sample(self, n, rng, material):
        from PIL import Image
        from scipy.ndimage import binary_dilation, gaussian_filter, sobel

        clothes = _fashion(n, material)
        out = np.zeros((n, 28, 28), np.uint8)
        disk = np.hypot(*np.mgrid[-4:5, -4:5]) <= PEN / 3
        for i, img in enumerate(clothes.images):
            big = np.asarray(Image.fromarray(img).resize((CANVAS, CANVAS), Image.BILINEAR),
                             np.float64)
            smooth = gaussian_filter(big, 2.0)
            edge = np.hypot(sobel(smooth, 0), sobel(smooth, 1))
            line = edge > 0.35 * edge.max() if edge.max() > 0 else edge > 0
            out[i] = mnist_style(binary_dilation(line, disk).astype(np.float64))
        return Sample(out, clothes.labels, clothes.origin)


@dataclass(frozen=True)
class Scribbles(PollutionKind):
    """Smooth random pen paths through 3-6 random points."""

    name: ClassVar[str] = "scribbles"

    def sample(self, n, rng, material):
        from scipy.interpolate import make_interp_spline

        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            k = int(rng.integers(3, 7))
            knots = _jitter(rng, rng.uniform(0.0, 1.0, (k, 2)), 0.0)
            t = np.linspace(0, 1, k)
            curve = make_interp_spline(t, knots, k=min(3, k - 1))(np.linspace(0, 1, 60))
            images[i] = mnist_style(_pen([tuple(p) for p in curve]))
        return _nothing(images)


#: Outlines for ``shapes``: unit-square coordinates, closed or not.
_OUTLINES = {
    "triangle": ([(0.5, 0.05), (0.95, 0.9), (0.05, 0.9)], True),
    "square": ([(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9)], True),
    "diamond": ([(0.5, 0.0), (0.95, 0.5), (0.5, 1.0), (0.05, 0.5)], True),
    "pentagon": ([(0.5 + 0.45 * np.sin(a), 0.5 - 0.45 * np.cos(a))
                  for a in np.linspace(0, 2 * np.pi, 5, endpoint=False)], True),
    "star": ([(0.5 + (0.48 if j % 2 == 0 else 0.2) * np.sin(a),
               0.5 - (0.48 if j % 2 == 0 else 0.2) * np.cos(a))
              for j, a in enumerate(np.linspace(0, 2 * np.pi, 10, endpoint=False))], True),
    "arrow": ([(0.05, 0.5), (0.95, 0.5), (0.65, 0.2), (0.95, 0.5), (0.65, 0.8)], False),
    "house": ([(0.1, 0.95), (0.1, 0.4), (0.5, 0.05), (0.9, 0.4), (0.9, 0.95)], True),
    "zigzag": ([(0.05, 0.2), (0.35, 0.8), (0.5, 0.2), (0.65, 0.8), (0.95, 0.2)], False),
}


@dataclass(frozen=True)
class Shapes(PollutionKind):
    """Outlined polygons, stars, arrows and zigzags drawn with a jittered hand."""

    name: ClassVar[str] = "shapes"

    def sample(self, n, rng, material):
        names = sorted(_OUTLINES)
        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            points, closed = _OUTLINES[names[rng.integers(len(names))]]
            p = _jitter(rng, np.asarray(points, np.float64), 0.015)
            images[i] = mnist_style(_pen([tuple(q) for q in p], closed=closed))
        return _nothing(images)


@dataclass(frozen=True)
class Chimeras(PollutionKind):
    """The left half of one digit joined to the right half of a digit of another class (of
    another digit of the same class when the data hold only one)."""

    name: ClassVar[str] = "chimeras"
    source: ClassVar[str | None] = "digits"

    def sample(self, n, rng, material):
        labels = material.digit_labels
        if len(labels) < 2:
            raise ValueError("chimeras: needs at least two digits to join")
        left = rng.integers(0, len(labels), size=n)
        right = np.empty(n, np.int64)
        for i, a in enumerate(left):
            others = np.nonzero(labels != labels[a])[0]  # of another class when there is one
            if len(others) == 0:
                others = np.delete(np.arange(len(labels)), a)
            right[i] = others[rng.integers(len(others))]
        joined = material.digits[left].copy()
        joined[:, :, 14:] = material.digits[right][:, :, 14:]
        images = np.stack([mnist_style(j / 255.0) for j in joined]) if n else joined
        return Sample(images, labels[left].astype(np.int64), left.astype(np.int64))


#: The content kinds by name (registered in the zoo's ``KINDS``).
CONTENT_KINDS = {k.name: k for k in (Letters, Sketches, Scribbles, Shapes, Chimeras)}
