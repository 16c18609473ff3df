"""The drawing kit of the planted dataset: textures, shapes, feature and stand-in painters, masks.

:func:`render` draws one square RGB image from its own random stream: a background texture, at
most one class object (one shape per class, :data:`CLASS_SHAPES`), the requested spurious
features (:data:`FEATURE_NAMES`: a bird feeder, a magenta frame, a water texture, a paper label
with handwriting-like strokes), at most one large *stand-in* shape (no class's shape) and small
distractor shapes. Every element is a :class:`_Sprite` (premultiplied colour and coverage)
rasterised from a shape in unit coordinates, laid out so that boxes may touch but never overlap,
and recorded in a :class:`Rendered` with its full-size mask and tight box. What is drawn where,
and how often, is the generator's business (:mod:`spurious.demo.planted._generator`).

Order of the random numbers is part of the dataset: the same stream gives the same pixels, and
leaving a layer out (``omit``) draws the same numbers, so only that layer's pixels change.
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BACKGROUNDS", "CLASS_SHAPES", "FEATURE_NAMES", "Box", "Rendered", "overlaps", "render"]

CLASS_SHAPES: tuple[str, ...] = (
    "star", "ring", "cross", "triangle", "crescent", "heart",
    "arrow", "diamond", "hexagon", "bolt", "clover", "gear",
)
"""Object shape of each class, by class index; ``num_classes`` takes the first ones."""

BACKGROUNDS: tuple[str, ...] = ("gradient", "clouds", "grass", "sand", "wood", "bricks")
"""Background textures drawn at random (the ``water`` texture is reserved for its feature)."""

FEATURE_NAMES: tuple[str, ...] = ("feeder", "frame", "water", "scribble")
"""The spurious features :func:`render` can paint, in the order of ``PLANTED_FEATURES``."""

_DISTRACTORS: tuple[str, ...] = ("disk", "square", "ellipse", "bar")


# ---------------------------------------------------------------------- small helpers
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _random_color(
    rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]
) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(*sat), rng.uniform(*val))


def _lerp(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c0 + (c1 - c0) * t[..., None]


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): ``(x [1, S], y [S, 1])``."""
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    return t[None, :], t[:, None]


@functools.lru_cache(maxsize=8)
def _radial_frequency(size: int) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    k = np.sqrt(fx * fx + fy * fy)
    k[0, 0] = 1.0
    return k


def _fractal(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Isotropic 1/f^beta noise ("clouds"), ``float32 [S, S]`` scaled to [0, 1]."""
    spec = np.fft.rfft2(rng.standard_normal((size, size))) / _radial_frequency(size) ** (beta / 2)
    spec[0, 0] = 0.0
    n = np.fft.irfft2(spec, s=(size, size))
    lo, hi = n.min(), n.max()
    return ((n - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def _streaks(rng: np.random.Generator, size: int, rows: int, slope: float) -> np.ndarray:
    """Noise that varies fast along x and slowly along y (vertical streaks), slanted; ``[S, S]``."""
    coarse = rng.standard_normal((rows + 1, size)).astype(np.float32)
    yy = np.linspace(0.0, rows, size, endpoint=False)
    i0 = yy.astype(np.int64)
    f = (yy - i0).astype(np.float32)[:, None]
    field_ = coarse[i0] * (1.0 - f) + coarse[i0 + 1] * f
    shift = np.round(slope * np.arange(size)).astype(np.int64)[:, None]
    cols = (np.arange(size)[None, :] + shift) % size
    return np.take_along_axis(field_, cols, axis=1)


# ---------------------------------------------------------------------- backgrounds
def _bg_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    c0 = _random_color(rng, (0.15, 0.7), (0.25, 0.95))
    c1 = _random_color(rng, (0.15, 0.7), (0.25, 0.95))
    a = rng.uniform(0.0, 2 * np.pi)
    x, y = _grid(size)
    ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
    t = ((x - 0.5) * ca + (y - 0.5) * sa) / (abs(ca) + abs(sa)) + 0.5
    t = t + 0.025 * rng.standard_normal((size, size)).astype(np.float32)
    return _lerp(c0, c1, t)


def _bg_clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    c0 = _random_color(rng, (0.2, 0.8), (0.2, 0.55))
    c1 = _random_color(rng, (0.05, 0.5), (0.6, 1.0))
    return _lerp(c0, c1, _fractal(rng, size, rng.uniform(1.6, 2.4)))


def _bg_grass(rng: np.random.Generator, size: int) -> np.ndarray:
    h = rng.uniform(0.2, 0.34)
    c0 = _hsv(h, rng.uniform(0.6, 0.9), rng.uniform(0.12, 0.25))
    c1 = _hsv(h + rng.uniform(-0.03, 0.03), rng.uniform(0.45, 0.8), rng.uniform(0.55, 0.85))
    blades = _streaks(rng, size, max(2, size // 10), rng.uniform(-0.3, 0.3))
    fine = _streaks(rng, size, max(3, size // 5), rng.uniform(-0.5, 0.5))
    patches = _fractal(rng, size, 2.2)
    t = 0.5 + 0.16 * blades + 0.08 * fine + 0.35 * (patches - 0.5)
    return _lerp(c0, c1, t)


def _bg_sand(rng: np.random.Generator, size: int) -> np.ndarray:
    h = rng.uniform(0.07, 0.12)
    c0 = _hsv(h, rng.uniform(0.3, 0.5), rng.uniform(0.45, 0.6))
    c1 = _hsv(h, rng.uniform(0.12, 0.3), rng.uniform(0.82, 0.97))
    x, y = _grid(size)
    a = rng.uniform(0.0, np.pi)
    freq = rng.uniform(4.0, 9.0)
    warp = _fractal(rng, size, 2.5)
    ripples = np.sin(2 * np.pi * (freq * (x * np.cos(a) + y * np.sin(a)) + 1.5 * warp))
    speckle = rng.standard_normal((size, size)).astype(np.float32)
    grains = (rng.random((size, size)) < 0.04).astype(np.float32) * rng.choice(
        np.array([-1.0, 1.0], dtype=np.float32), (size, size)
    )
    t = 0.55 + 0.1 * ripples + 0.25 * (warp - 0.5) + 0.09 * speckle + 0.25 * grains
    return _lerp(c0, c1, t.astype(np.float32))


def _bg_wood(rng: np.random.Generator, size: int) -> np.ndarray:
    h = rng.uniform(0.05, 0.09)
    c0 = _hsv(h, rng.uniform(0.6, 0.8), rng.uniform(0.22, 0.38))
    c1 = _hsv(h + 0.01, rng.uniform(0.45, 0.65), rng.uniform(0.6, 0.8))
    x, y = _grid(size)
    a = rng.uniform(-0.5, 0.5) + (np.pi / 2 if rng.random() < 0.5 else 0.0)
    across = -x * np.sin(a) + y * np.cos(a)
    warp = _fractal(rng, size, 2.6)
    rings = np.sin(2 * np.pi * (rng.uniform(4.0, 9.0) * across + 1.2 * warp))
    grain = _streaks(rng, size, max(2, size // 12), 0.0)
    if abs(np.cos(a)) > abs(np.sin(a)):  # grain runs along the rings
        grain = grain.T
    t = 0.5 + 0.3 * rings + 0.07 * grain
    return _lerp(c0, c1, t.astype(np.float32))


def _bg_bricks(rng: np.random.Generator, size: int) -> np.ndarray:
    rows = int(rng.integers(4, 8))
    bh = size / rows
    bw = bh * rng.uniform(1.8, 2.5)
    mw = max(1.0, 0.12 * bh)
    ys = np.arange(size, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(size, dtype=np.float32)[None, :] + 0.5
    r = np.floor(ys / bh).astype(np.int64)
    xo = xs + (r % 2) * (bw / 2) + rng.uniform(0.0, bw)
    c = np.floor(xo / bw).astype(np.int64)
    n_cols = int(np.ceil((size + 2 * bw) / bw)) + 1
    base = _hsv(rng.uniform(-0.02, 0.07), rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.7))
    table = base[None, None, :] * (1.0 + 0.15 * rng.standard_normal((rows + 1, n_cols, 1)))
    table = table + 0.03 * rng.standard_normal((rows + 1, n_cols, 3))
    mortar_color = np.full(3, rng.uniform(0.6, 0.85), dtype=np.float32)
    mortar = ((ys % bh) < mw) | ((xo % bw) < mw)
    img = np.where(mortar[..., None], mortar_color, table[r, c].astype(np.float32))
    return img + 0.03 * rng.standard_normal((size, size, 1)).astype(np.float32)


def _bg_water(rng: np.random.Generator, size: int) -> np.ndarray:
    h = rng.uniform(0.53, 0.6)
    deep = _hsv(h, rng.uniform(0.7, 0.9), rng.uniform(0.28, 0.42))
    light = _hsv(h - 0.02, rng.uniform(0.5, 0.7), rng.uniform(0.6, 0.75))
    x, y = _grid(size)
    warp = _fractal(rng, size, 2.4)
    phase = 2 * np.pi * (
        rng.uniform(5.0, 8.0) * y
        + rng.uniform(0.05, 0.12) * np.sin(2 * np.pi * (rng.uniform(1.0, 2.5) * x + rng.random()))
        + 0.6 * warp
    )
    w = np.sin(phase).astype(np.float32)
    img = _lerp(deep, light, 0.5 + 0.5 * w)
    highlight = (np.clip((w - 0.7) / 0.3, 0.0, 1.0) ** 2 * 0.75)[..., None]
    return img * (1.0 - highlight) + highlight


_BACKGROUND_FUNCS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "gradient": _bg_gradient,
    "clouds": _bg_clouds,
    "grass": _bg_grass,
    "sand": _bg_sand,
    "wood": _bg_wood,
    "bricks": _bg_bricks,
    "water": _bg_water,
}


# ---------------------------------------------------------------------- shapes (unit coordinates)
# Each shape maps unit coordinates (u right, v up; the shape lies inside [-1, 1]^2) to a part
# label per sample: -1 outside, 0.. part index.


def _regular(u: np.ndarray, v: np.ndarray, n: int, inner: float, rot: float) -> np.ndarray:
    """Inside of a regular n-pointed star (outer radius 1, inner radius ``inner``); a regular
    n-gon when ``inner = cos(pi / n)``. One vertex points at angle ``rot``."""
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u) - rot
    sector = 2 * np.pi / n
    phi = np.abs(np.mod(theta + sector / 2, sector) - sector / 2)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    bx, by = inner * np.cos(np.pi / n), inner * np.sin(np.pi / n)
    return (bx - 1.0) * py - by * (px - 1.0) >= 0.0


def _polygon(u: np.ndarray, v: np.ndarray, verts: Sequence[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test."""
    inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    n = len(verts)
    for i in range(n):
        (x0, y0), (x1, y1) = verts[i], verts[(i + 1) % n]
        if y0 == y1:
            continue
        crosses = (y0 > v) != (y1 > v)
        xc = x0 + (v - y0) * ((x1 - x0) / (y1 - y0))
        inside ^= crosses & (u < xc)
    return inside


_BOLT = ((-0.1, 1.0), (0.55, 1.0), (0.15, 0.2), (0.55, 0.2), (-0.35, -1.0), (-0.05, -0.1), (-0.5, -0.1))


def _shape_inside(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if name == "star":
        return _regular(u, v, 5, 0.42, np.pi / 2)
    if name == "ring":
        r2 = u * u + v * v
        return (r2 < 1.0) & (r2 > 0.58 ** 2)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au < 0.3) & (av < 1.0)) | ((av < 0.3) & (au < 1.0))
    if name == "triangle":
        return _regular(u, v, 3, 0.5, np.pi / 2)
    if name == "crescent":
        return (u * u + v * v < 1.0) & ((u - 0.42) ** 2 + (v - 0.12) ** 2 > 0.8 ** 2)
    if name == "heart":
        x, y = 1.14 * u, 1.12 * v + 0.118
        return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 < 0.0
    if name == "arrow":
        shaft = (u >= -1.0) & (u < 0.05) & (np.abs(v) < 0.24)
        head = (u >= 0.0) & (np.abs(v) <= 0.78 * (1.0 - u))
        return shaft | head
    if name == "diamond":
        return np.abs(u) / 0.62 + np.abs(v) < 1.0
    if name == "hexagon":
        return _regular(u, v, 6, float(np.cos(np.pi / 6)), 0.0)
    if name == "bolt":
        return _polygon(u, v, _BOLT)
    if name == "clover":
        inside = (np.abs(u) < 0.07) & (v > -1.0) & (v < 0.0)
        for ang in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6):
            cx, cy = 0.46 * np.cos(ang), 0.1 + 0.46 * np.sin(ang)
            inside |= (u - cx) ** 2 + (v - cy) ** 2 < 0.42 ** 2
        return inside
    if name == "gear":
        r2 = u * u + v * v
        teeth = np.cos(8 * np.arctan2(v, u)) > 0.0
        return (r2 < 0.66 ** 2) | ((r2 < 1.0) & teeth)
    # distractors
    if name == "disk":
        return u * u + v * v < 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8
    if name == "ellipse":
        return u * u + (v / 0.45) ** 2 < 1.0
    if name == "bar":
        return (np.abs(u) < 1.0) & (np.abs(v) < 0.2)
    raise ValueError(f"unknown shape {name!r}")


def _feeder_parts(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bird feeder: 0 = roof, 1 = body, 2 = hole (later parts win)."""
    lab = np.full(np.broadcast_shapes(u.shape, v.shape), -1, dtype=np.int8)
    roof = (v >= 0.2) & (v <= 1.0) & (np.abs(u) <= 0.75 * (1.0 - v) / 0.8)
    body = (v >= -1.0) & (v < 0.2) & (np.abs(u) <= 0.55)
    hole = u * u + (v + 0.3) ** 2 < 0.24 ** 2
    lab[roof] = 0
    lab[body] = 1
    lab[hole & body] = 2
    return lab


@dataclass
class _Sprite:
    """A drawn element: premultiplied colour ``[h, w, 3]`` and coverage ``alpha [h, w]`` in [0, 1],
    cropped to the pixels with ``alpha > 0``."""

    rgb: np.ndarray
    alpha: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.alpha.shape


def _raster(
    parts: Callable[[np.ndarray, np.ndarray], np.ndarray],
    radius: float,
    angle: float,
    offset: np.ndarray,
    n_parts: int,
) -> list[np.ndarray]:
    """Supersampled coverage of each part of a unit shape scaled to ``radius`` px, rotated by
    ``angle`` and shifted by a sub-pixel ``offset``; cropped to the covered pixels."""
    ss = 4 if radius < 12 else (3 if radius < 32 else 2)
    half = math.ceil(radius * math.sqrt(2.0)) + 2
    n = 2 * half
    t = ((np.arange(n * ss, dtype=np.float32) + 0.5) / ss - half).astype(np.float32)
    dx = t[None, :] - np.float32(offset[0])
    dy = t[:, None] - np.float32(offset[1])
    ca, sa = np.float32(math.cos(angle) / radius), np.float32(math.sin(angle) / radius)
    u = ca * dx + sa * dy
    v = sa * dx - ca * dy  # v points up
    lab = parts(u, v)
    if lab.dtype == bool:
        lab = np.where(lab, 0, -1).astype(np.int8)
    fracs = [
        (lab == p).reshape(n, ss, n, ss).mean(axis=(1, 3), dtype=np.float32) for p in range(n_parts)
    ]
    alpha = np.sum(fracs, axis=0)
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return [f[r0:r1, c0:c1] for f in fracs]


def _shape_coverage(rng: np.random.Generator, name: str, radius: float, angle: float) -> np.ndarray:
    offset = rng.random(2)
    return _raster(lambda u, v: _shape_inside(name, u, v), radius, angle, offset, 1)[0]


def _colored(
    coverage: np.ndarray, color: np.ndarray, shade_dir: float = 0.0, shade: float = 0.0
) -> _Sprite:
    """Colour a coverage map, optionally with a linear shading of strength ``shade``."""
    h, w = coverage.shape
    rgb = coverage[..., None] * color
    if shade:
        gy = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5
        gx = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w - 0.5
        rgb = rgb * (1.0 + shade * 2 * (gx * np.cos(shade_dir) + gy * np.sin(shade_dir)))[..., None]
    return _Sprite(rgb.astype(np.float32), coverage.astype(np.float32))


def _feeder_sprite(rng: np.random.Generator, size: int) -> _Sprite:
    radius = max(3.0, rng.uniform(0.13, 0.16) * size)
    angle = rng.uniform(-0.2, 0.2)
    colors = (
        np.array([0.85, 0.1, 0.08], np.float32) + rng.uniform(-0.05, 0.05, 3).astype(np.float32),
        np.array([0.98, 0.8, 0.1], np.float32) + rng.uniform(-0.05, 0.02, 3).astype(np.float32),
        np.array([0.1, 0.07, 0.05], np.float32),
    )
    fracs = _raster(_feeder_parts, radius, angle, rng.random(2), 3)
    rgb = sum(f[..., None] * c for f, c in zip(fracs, colors, strict=False))
    return _Sprite(np.asarray(rgb, np.float32), np.sum(fracs, axis=0).astype(np.float32))


def _scribble_sprite(rng: np.random.Generator, size: int) -> _Sprite:
    """A paper label with 2 lines of upright, slightly slanted dark strokes of random heights.

    The strokes are *vertical* (like the ascenders of handwriting): generator v2 drew low
    sine waves, and the robust demo model then shared features between the label and the
    horizontal waves of the water texture (the water component's NPFV was classified as the
    label's class).
    """
    w = max(9, round(rng.uniform(0.34, 0.42) * size))
    h = max(6, round(rng.uniform(0.2, 0.26) * size))
    paper = np.array([0.93, 0.91, 0.84], np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    ink = np.array([0.07, 0.07, 0.22], np.float32) + rng.uniform(0.0, 0.08, 3).astype(np.float32)
    ss = 4
    xs = ((np.arange(w * ss) + 0.5) / ss).astype(np.float32)[None, :]
    ys = ((np.arange(h * ss) + 0.5) / ss).astype(np.float32)[:, None]
    n_lines = 2
    margin = max(1.0, 0.12 * h)
    spacing = (h - 2 * margin) / n_lines
    thick = max(1.2, 1.8 * size / 64)
    period = max(1.8, 0.06 * size)
    slant = float(rng.uniform(-0.35, 0.35))
    on = np.zeros((h * ss, w * ss), dtype=bool)
    for li in range(n_lines):
        yc = margin + spacing * (li + 0.5)
        end = w - margin - rng.uniform(0.0, 0.35) * w
        n_glyphs = int((end - margin) / period)
        heights = spacing * rng.uniform(0.5, 1.05, n_glyphs)
        offsets = rng.uniform(-0.15, 0.15, n_glyphs) * spacing
        gap = rng.random(n_glyphs) < 0.18
        for g in range(n_glyphs):
            if gap[g]:
                continue
            x = margin + (g + 0.5) * period + slant * (ys - yc)
            on |= (np.abs(xs - x) < 0.5 * thick) & (np.abs(ys - yc - offsets[g]) < 0.5 * heights[g])
    frac = on.reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)
    rgb = paper * (1.0 - frac[..., None]) + ink * frac[..., None]
    return _Sprite(rgb.astype(np.float32), np.ones((h, w), np.float32))


# ---------------------------------------------------------------------- layout and rendering
Box = tuple[int, int, int, int]
"""A pixel box ``(x0, y0, x1, y1)`` with exclusive ``x1``/``y1``."""


def _place(
    rng: np.random.Generator, lo: int, hi: int, hw: tuple[int, int], taken: Sequence[Box]
) -> Box | None:
    """Uniform position of an ``h x w`` box inside ``[lo, hi)^2`` not overlapping ``taken``
    (touching is fine), or ``None`` if there is none."""
    h, w = hw
    ny, nx = hi - lo - h + 1, hi - lo - w + 1
    if ny <= 0 or nx <= 0:
        return None
    free = np.ones((ny, nx), dtype=bool)
    for bx0, by0, bx1, by1 in taken:
        # top-left (x, y) overlaps when x < bx1 and x + w > bx0 (same for y)
        xa, xb = max(bx0 - w + 1 - lo, 0), min(bx1 - lo, nx)
        ya, yb = max(by0 - h + 1 - lo, 0), min(by1 - lo, ny)
        if xa < xb and ya < yb:
            free[ya:yb, xa:xb] = False
    cand = np.flatnonzero(free)
    if cand.size == 0:
        return None
    y, x = divmod(int(cand[rng.integers(cand.size)]), nx)
    return (lo + x, lo + y, lo + x + w, lo + y + h)


def overlaps(a: Box, b: Box) -> bool:
    """Whether two boxes share a pixel (touching boxes do not)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass
class Rendered:
    """One rendered image with its ground truth (full-size boolean masks, tight boxes)."""

    image: np.ndarray  # uint8 [S, S, 3]
    background: str
    object_mask: np.ndarray | None
    object_box: Box | None
    feature_masks: dict[str, np.ndarray]
    feature_boxes: dict[str, Box]
    distractor_boxes: list[Box]
    stand_in_mask: np.ndarray | None = None
    stand_in_box: Box | None = None


def _composite(img: np.ndarray, sprite: _Sprite, box: Box) -> None:
    x0, y0, x1, y1 = box
    a = sprite.alpha[..., None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - a) + sprite.rgb


def _object_sprite(coverage: np.ndarray, box: Box, bg_lum: np.ndarray, hue: float, sat: float,
                   val_u: float, shade_dir: float) -> _Sprite:
    """A shaded object-style sprite: dark on a light background under ``box``, light on a dark one."""
    x0, y0, x1, y1 = box
    lum = float(bg_lum[y0:y1, x0:x1].mean())
    value = 0.12 + 0.3 * val_u if lum > 0.5 else 0.68 + 0.32 * val_u
    return _colored(coverage, _hsv(hue, sat, value), shade_dir, 0.18)


def _mask_of(size: int, sprite: _Sprite, box: Box) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = sprite.alpha > 0
    return mask


def render(
    rng: np.random.Generator,
    size: int,
    object_class: int | None,
    features: Sequence[str],
    *,
    distractor_p: float = 0.3,
    stand_in_p: float = 0.0,
    omit: Collection[str] = (),
) -> Rendered:
    """Draw one image.

    Args:
        rng: The image's random stream.
        size: Image side in pixels.
        object_class: Class whose object is drawn, or ``None`` for no object.
        features: Names of planted features to draw.
        distractor_p: Probability of 1-3 small distractor shapes.
        stand_in_p: Probability of one large non-class shape (disk, square, ellipse or bar) at the
            scale and in the colours of the class objects, where there is room (used for images
            without a class object: real spurious-only photos show *other* things, see
            :mod:`spurious.demo.planted`). ``0`` draws no random number for it.
        omit: Layers (``"object"``, ``"stand_in"``, feature names, ``"distractors"``) that are
            laid out and use the same random numbers but are not painted: rendering with and
            without them differs only in their pixels (used by the tests).

    Returns:
        The image and the masks/boxes of everything planted in it.
    """
    unknown = set(features) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown planted feature(s) {sorted(unknown)}")
    seeds = rng.integers(0, 2**63 - 1, size=5)
    r_bg, r_obj, r_feat, r_lay, r_dis = (np.random.default_rng(int(s)) for s in seeds)

    # background (water replaces the random texture when planted)
    background = BACKGROUNDS[int(r_bg.integers(len(BACKGROUNDS)))]
    if "water" in features and "water" not in omit:
        background = "water"
    img = np.clip(_BACKGROUND_FUNCS[background](r_bg, size), 0.0, 1.0).astype(np.float32)
    bg_lum = img @ np.array([0.299, 0.587, 0.114], np.float32)

    # sprites: every random number is drawn whatever `omit` says
    frame_width = max(2, round(0.09 * size))
    frame_jitter = r_feat.uniform(-0.06, 0.06, 3).astype(np.float32)
    frame_color = np.array([0.88, 0.12, 0.78], np.float32) + frame_jitter
    patches: dict[str, _Sprite] = {}
    if "feeder" in features:
        patches["feeder"] = _feeder_sprite(r_feat, size)
    if "scribble" in features:
        patches["scribble"] = _scribble_sprite(r_feat, size)
    lo = frame_width if "frame" in features else 0
    hi = size - lo

    obj_cov: np.ndarray | None = None
    if object_class is not None:
        shape = CLASS_SHAPES[object_class]
        radius = r_obj.uniform(0.16, 0.25) * size
        angle = r_obj.uniform(-np.pi / 6, np.pi / 6)
        hue, sat = r_obj.random(), r_obj.uniform(0.55, 1.0)
        val_u, shade_dir = r_obj.random(), r_obj.uniform(0, 2 * np.pi)
        obj_cov = _shape_coverage(r_obj, shape, radius, angle)

    # layout: object first, then the feature patches; retry (and shrink the object) if stuck
    obj_box: Box | None = None
    patch_boxes: dict[str, Box] = {}
    for attempt in range(64):
        if obj_cov is not None and attempt and attempt % 8 == 0:
            radius *= 0.85
            obj_cov = _shape_coverage(r_obj, shape, radius, angle)
        taken: list[Box] = []
        if obj_cov is not None:
            obj_box = _place(r_lay, lo, hi, obj_cov.shape, taken)
            if obj_box is None:
                continue
            taken.append(obj_box)
        patch_boxes = {}
        for name, sprite in patches.items():
            box = _place(r_lay, lo, hi, sprite.shape, taken)
            if box is None:
                break
            patch_boxes[name] = box
            taken.append(box)
        if len(patch_boxes) == len(patches):
            break
    else:  # pragma: no cover - sizes are validated so that this cannot happen
        raise RuntimeError(f"could not lay out {sorted(patches)} next to the object at size {size}")

    # stand-in: one large non-class shape, object-sized, shrunk until it fits
    stand_in: tuple[_Sprite, Box] | None = None
    if stand_in_p > 0 and r_dis.random() < stand_in_p:
        s_name = _DISTRACTORS[int(r_dis.integers(len(_DISTRACTORS)))]
        s_radius = r_dis.uniform(0.16, 0.25) * size
        s_angle = r_dis.uniform(0, np.pi)
        s_hue, s_sat = r_dis.random(), r_dis.uniform(0.55, 1.0)
        s_val, s_dir = r_dis.random(), r_dis.uniform(0, 2 * np.pi)
        for _ in range(6):
            cov = _shape_coverage(r_dis, s_name, s_radius, s_angle)
            box = _place(r_dis, lo, hi, cov.shape, taken)
            if box is not None:
                stand_in = (_object_sprite(cov, box, bg_lum, s_hue, s_sat, s_val, s_dir), box)
                taken.append(box)
                break
            s_radius *= 0.8

    # distractors: small non-class shapes wherever there is room
    distractors: list[tuple[_Sprite, Box]] = []
    if r_dis.random() < distractor_p:
        for _ in range(int(r_dis.integers(1, 4))):
            name = _DISTRACTORS[int(r_dis.integers(len(_DISTRACTORS)))]
            d_radius = max(1.5, r_dis.uniform(0.05, 0.09) * size)
            cov = _shape_coverage(r_dis, name, d_radius, r_dis.uniform(0, np.pi))
            sprite = _colored(cov, _random_color(r_dis, (0.3, 1.0), (0.3, 1.0)))
            box = _place(r_dis, lo, hi, sprite.shape, taken)
            if box is not None:
                taken.append(box)
                distractors.append((sprite, box))

    # paint: frame, distractors, patches, object (boxes do not overlap, so order is cosmetic)
    feature_masks: dict[str, np.ndarray] = {}
    feature_boxes: dict[str, Box] = {}
    if "water" in features:
        feature_masks["water"] = np.ones((size, size), dtype=bool)
        feature_boxes["water"] = (0, 0, size, size)
    if "frame" in features:
        band = np.ones((size, size), dtype=bool)
        band[frame_width:size - frame_width, frame_width:size - frame_width] = False
        feature_masks["frame"] = band
        feature_boxes["frame"] = (0, 0, size, size)
        if "frame" not in omit:
            img[band] = frame_color
    if "distractors" not in omit:
        for sprite, box in distractors:
            _composite(img, sprite, box)
    stand_in_mask = None
    if stand_in is not None:
        stand_in_mask = _mask_of(size, *stand_in)
        if "stand_in" not in omit:
            _composite(img, *stand_in)
    for name, sprite in patches.items():
        feature_masks[name] = _mask_of(size, sprite, patch_boxes[name])
        feature_boxes[name] = patch_boxes[name]
        if name not in omit:
            _composite(img, sprite, patch_boxes[name])
    obj_mask = None
    if obj_cov is not None and obj_box is not None:
        sprite = _object_sprite(obj_cov, obj_box, bg_lum, hue, sat, val_u, shade_dir)
        obj_mask = _mask_of(size, sprite, obj_box)
        if "object" not in omit:
            _composite(img, sprite, obj_box)

    image = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    ordered = [n for n in FEATURE_NAMES if n in feature_masks]
    return Rendered(
        image=image,
        background=background,
        object_mask=obj_mask,
        object_box=obj_box,
        feature_masks={n: feature_masks[n] for n in ordered},
        feature_boxes={n: feature_boxes[n] for n in ordered},
        distractor_boxes=[b for _, b in distractors],
        stand_in_mask=stand_in_mask,
        stand_in_box=None if stand_in is None else stand_in[1],
    )
