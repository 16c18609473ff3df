"""The embedded default dataset: drawn class objects with *planted* spurious features.

Every image shows, over a textured background, at most one class object (one shape per class:
star, ring, cross, ...; colour, scale, position and rotation vary, so the *shape* is the class
cue). Four spurious features are planted on known classes at exact rates, so every later stage
(neural PCA, retrieval, scoring, SpuFix) can be checked against the truth:

========  ===============  ============  =======================================================
feature   kind             classes       what it looks like
========  ===============  ============  =======================================================
feeder    class extension  0 (40 %)      bird feeder beside the object (red roof, yellow body,
                                         dark hole; 17-21 px tall at 64 px)
frame     class extension  1 (35 %)      magenta frame along the image border (6 px at 64 px)
water     shared           2 (40 %),     blue wave texture as the background (never drawn as
                           3 (20 %)      a random background otherwise)
scribble  class extension  3 (35 %)      paper label (22-27 x 13-17 px at 64 px) with two lines
                                         of bold, upright handwriting-like strokes
========  ===============  ============  =======================================================

The rates and sizes are chosen so that each feature is a dominant direction of variance within
its class that survives adversarial training of the demo models (see ``spurious.train``): at
the earlier 8-25 % rates and 6-px feeders, neural PCA of the robust model did not isolate the
frame and the scribble, and the feeder's component fired on a star *with* a feeder but hardly
on a feeder alone. Water is planted on two classes, more often on the first (with 25 % vs 8 %
the minor class never received water-only images; v2's 40 % vs 30 % made the two demo models
send them to different classes).

Images without a class object (the spurious-only split and the pool's spurious-only and plain
images) show, in 75 % of cases, one large *stand-in* shape (disk, square, ellipse or bar: no
class's shape) at the scale and in the colours of the class objects. Real spurious-only photos
(a bird feeder without a hummingbird) show other things; an image that contains nothing but the
feature is an extreme the demo models never see in training. Measured on the v2 data (no
stand-ins): the robust model's feeder component rose by ~3 on *any* object (star or another
class's) over an empty background, so on a feeder-only image it was only 0.6 against 3.5 on a
star with a feeder, and SpuFix, which removes the component's positive part, could not remove
the feeder's effect there. With a stand-in shape present the component sees the same "there is
an object" part as on a class image.

A feature never occludes the object: the boxes of a feature and of the object may touch but do
not overlap (the frame is drawn around a layout region that excludes it). The number of train
(and val) images of class ``k`` carrying a feature is exactly ``floor(rate * n + 0.5)``.

Layout written by :func:`generate_planted` under ``out/``::

    train/00_star/00000.png ...   one folder per class, sorted order == class index (image_folder)
    val/00_star/00000.png ...
    spurious/planted_spurious_<k>_<feature>_<j>/00000.png ...   published Spurious ImageNet
        layout: token 2 is the class k, the last token the feature index j into
        PLANTED_FEATURES; the images show the feature but no class object (maybe distractors)
    spurious/timestamp.txt        fixed text (the published layout has one)
    pool/00000.png ...            unlabeled: 15 % class images (with and without features),
                                  45 % spurious-only images (the four features in turn) and
                                  40 % background/distractor images: like a web-scale pool,
                                  where the object of any one class is rare; the last two
                                  kinds have stand-in shapes at the same rate (75 %)
    index.jsonl                   ground truth, one JSON object per image (see below)
    planted.json                  config, class names, features, counts, hashes

Each ``index.jsonl`` line: ``{"id": "train/00_star/00001.png", "split": "train", "label": 0,
"object": true, "object_class": 0, "object_box": [x0, y0, x1, y1], "features": [{"name":
"feeder", "box": [x0, y0, x1, y1]}], "stand_in_box": null, "background": "grass"}``
(``stand_in_box``: the box of the stand-in shape of an image without a class object, or
null). Boxes are pixel coordinates with exclusive ``x1``/``y1`` and are the tight boxes of
every pixel the object, feature or stand-in touches
(the frame's and the water's box is the whole image). ``label`` is the class for train/val, the
folder's class ``k`` for spurious images (what :func:`~spurious.datasets.spurious_imagenet`
assigns; the object is absent) and ``-1`` for the pool.

Determinism: the same config gives byte-identical files with the same numpy and Pillow versions
(each image has its own ``np.random.default_rng([seed, split, ...])`` stream, PNGs are written
with fixed options, the JSON with sorted keys and no timestamps). Other library versions may
change pixels; :meth:`PlantedDataset.verify` checks a tree against its recorded content hash.

Example:
    >>> ds = generate_planted("planted-data")                          # doctest: +SKIP
    >>> train = image_folder(ds.train)                                 # doctest: +SKIP
    >>> bench = spurious_imagenet(ds.spurious)                         # doctest: +SKIP
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spurious._io import make_temp_dir

__all__ = [
    "BACKGROUNDS",
    "CLASS_SHAPES",
    "PLANTED_FEATURES",
    "PlantedConfig",
    "PlantedDataset",
    "SpuriousFeature",
    "generate_planted",
    "load_planted",
]

_log = logging.getLogger(__name__)

_FORMAT = "spurious-planted"
_FORMAT_VERSION = 1
_GENERATOR_VERSION = 4  # bump whenever pixels or the plan change, so caches are not reused
_META = "planted.json"
_INDEX = "index.jsonl"
_TIMESTAMP_TEXT = "generated by spurious.datasets.planted (deterministic, no timestamp)\n"

CLASS_SHAPES: tuple[str, ...] = (
    "star", "ring", "cross", "triangle", "crescent", "heart",
    "arrow", "diamond", "hexagon", "bolt", "clover", "gear",
)
"""Object shape of each class, by class index; ``num_classes`` takes the first ones."""

BACKGROUNDS: tuple[str, ...] = ("gradient", "clouds", "grass", "sand", "wood", "bricks")
"""Background textures drawn at random (the ``water`` texture is reserved for its feature)."""

_DISTRACTORS: tuple[str, ...] = ("disk", "square", "ellipse", "bar")
_SPLIT_CODE = {"train": 1, "val": 2, "spurious": 3, "pool": 4}
_KINDS = ("class_extension", "shared")
_MIN_CLASSES = 4
_POOL_CLASS_SHARE = 0.15  # pool images with a class object (features at their train rates)
_POOL_SPURIOUS_SHARE = 0.45  # pool images with one feature and no object; the rest is plain
_STAND_IN_P = 0.75  # images without a class object (spurious, pool) that show a large non-class shape


# ---------------------------------------------------------------------- public types
@dataclass(frozen=True)
class SpuriousFeature:
    """A spurious feature planted on known classes.

    Attributes:
        name: Short name without ``_`` (it is a token of the spurious folder names).
        classes: Classes whose train/val images carry it; for a shared feature the first one
            carries it most often.
        rates: Fraction of each class's train (and val) images with the feature, same order.
        kind: ``"class_extension"`` (appears only with its one class) or ``"shared"``.
        description: What it looks like.
    """

    name: str
    classes: tuple[int, ...]
    rates: tuple[float, ...]
    kind: str
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or "_" in self.name:
            raise ValueError(f"feature name {self.name!r} must be non-empty and contain no '_'")
        if len(self.classes) != len(self.rates) or not self.classes:
            raise ValueError(
                f"feature {self.name!r}: classes {self.classes} and rates {self.rates} must be "
                "non-empty and of the same length"
            )
        if self.kind not in _KINDS:
            raise ValueError(f"feature {self.name!r}: kind {self.kind!r} is not one of {_KINDS}")
        if any(not 0.0 <= r <= 1.0 for r in self.rates):
            raise ValueError(f"feature {self.name!r}: rates {self.rates} must lie in [0, 1]")

    def rate(self, class_index: int) -> float:
        """Rate of the feature in class ``class_index`` (0.0 for a class it is not planted on)."""
        for c, r in zip(self.classes, self.rates, strict=False):
            if c == class_index:
                return r
        return 0.0


PLANTED_FEATURES: tuple[SpuriousFeature, ...] = (
    SpuriousFeature(
        "feeder", (0,), (0.40,), "class_extension",
        "bird feeder (red roof, yellow body, dark hole) next to the object",
    ),
    SpuriousFeature(
        "frame", (1,), (0.35,), "class_extension", "magenta frame along the image border"
    ),
    SpuriousFeature(
        "water", (2, 3), (0.40, 0.20), "shared",
        "blue water-wave background texture (never drawn as a random background otherwise)",
    ),
    SpuriousFeature(
        "scribble", (3,), (0.35,), "class_extension",
        "paper label with two lines of dark upright handwriting-like strokes next to the object",
    ),
)
"""The planted features; the index of a feature here is the last token of its spurious folders."""


@dataclass(frozen=True)
class PlantedConfig:
    """Size and seed of a planted dataset. Validated on construction.

    Attributes:
        num_classes: Number of classes, 4 to ``len(CLASS_SHAPES)`` (12); the features are
            planted on classes 0-3, the others are clean.
        image_size: Side of the square RGB images in pixels, >= 16.
        train_per_class: Train images per class, >= 1.
        val_per_class: Validation images per class, >= 1.
        spurious_per_feature: Images in each spurious-only folder (one folder per
            (class, feature) pair, 5 folders), >= 1.
        pool_size: Images in the unlabeled pool (15 % class images, 45 % spurious-only, 40 %
            background/distractors, like a web-scale pool in which any one class's object is
            rare), >= 1.
        seed: Non-negative integer; the same config gives the same bytes.
    """

    num_classes: int = 10
    image_size: int = 64
    train_per_class: int = 300
    val_per_class: int = 60
    spurious_per_feature: int = 60
    pool_size: int = 1200
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(
                    f"PlantedConfig.{f.name} must be an int, got {type(value).__name__} {value!r}"
                )
            object.__setattr__(self, f.name, int(value))
        if not _MIN_CLASSES <= self.num_classes <= len(CLASS_SHAPES):
            raise ValueError(
                f"num_classes={self.num_classes} is out of range: the planted features need at "
                f"least {_MIN_CLASSES} classes (they sit on classes 0-3) and there are "
                f"{len(CLASS_SHAPES)} object shapes; use {_MIN_CLASSES}..{len(CLASS_SHAPES)}"
            )
        if self.image_size < 16:
            raise ValueError(
                f"image_size={self.image_size} is too small: objects and features need at least "
                "16 pixels (use 32 for tests, 64 by default)"
            )
        for name in ("train_per_class", "val_per_class", "spurious_per_feature", "pool_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive count (>= 1)")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be a non-negative integer")

    @classmethod
    def tiny(cls, seed: int = 0) -> PlantedConfig:
        """A small config for tests: 6 classes, 32 px, 20 train / 8 val per class (~270 images)."""
        return cls(
            num_classes=6, image_size=32, train_per_class=20, val_per_class=8,
            spurious_per_feature=8, pool_size=60, seed=seed,
        )

    def config_hash(self) -> str:
        """16 hex digits identifying this config and the generator version (the cache key)."""
        text = json.dumps(
            {"config": dataclasses.asdict(self), "generator": _GENERATOR_VERSION}, sort_keys=True
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _class_folders(num_classes: int) -> list[str]:
    return [f"{k:02d}_{CLASS_SHAPES[k]}" for k in range(num_classes)]


def _spurious_folder(class_index: int, feature_index: int) -> str:
    return f"planted_spurious_{class_index}_{PLANTED_FEATURES[feature_index].name}_{feature_index}"


@dataclass
class PlantedDataset:
    """A generated planted dataset on disk (returned by :func:`generate_planted`).

    Attributes:
        root: The dataset folder.
        config: The config it was generated with.
        class_names: Shape name of each class (``"star"``, ...), by class index.
        features: The planted features (:data:`PLANTED_FEATURES`).
        class_folders: Folder name of each class under ``train/`` and ``val/`` (``"00_star"``).
        spurious_folders: ``(class, feature index) -> folder name`` under ``spurious/``.
        counts: Images per split (``train``, ``val``, ``spurious``, ``pool``, ``total``).
        config_hash: :meth:`PlantedConfig.config_hash` of ``config``.
        content_hash: sha256 over every file but ``planted.json`` (see :meth:`verify`).
    """

    root: Path
    config: PlantedConfig
    class_names: list[str]
    features: tuple[SpuriousFeature, ...]
    class_folders: list[str] = field(default_factory=list)
    spurious_folders: dict[tuple[int, int], str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    config_hash: str = ""
    content_hash: str = ""

    @property
    def train(self) -> Path:
        """``root/train``: read with ``image_folder`` (labels = class indices)."""
        return self.root / "train"

    @property
    def val(self) -> Path:
        """``root/val``: read with ``image_folder``."""
        return self.root / "val"

    @property
    def pool(self) -> Path:
        """``root/pool``: read with ``image_pool`` (unlabeled)."""
        return self.root / "pool"

    @property
    def spurious(self) -> Path:
        """``root/spurious``: read with ``spurious_imagenet`` (class from token 2)."""
        return self.root / "spurious"

    @property
    def index_path(self) -> Path:
        """``root/index.jsonl``, the ground truth."""
        return self.root / _INDEX

    def spurious_folder(self, class_index: int, feature: str | int) -> Path:
        """Folder of the spurious-only images of ``(class_index, feature)``.

        Args:
            class_index: A class the feature is planted on.
            feature: Feature name or index into :attr:`features`.

        Raises:
            ValueError: the feature is unknown or not planted on that class.
        """
        names = [f.name for f in self.features]
        j = feature if isinstance(feature, int) else (names.index(feature) if feature in names else -1)
        if (class_index, j) not in self.spurious_folders:
            pairs = ", ".join(f"({k}, {names[i]!r})" for k, i in sorted(self.spurious_folders))
            raise ValueError(
                f"no spurious folder for class {class_index} and feature {feature!r}; "
                f"valid (class, feature) pairs: {pairs}"
            )
        return self.spurious / self.spurious_folders[(class_index, j)]

    def ground_truth(self) -> list[dict[str, Any]]:
        """Read ``index.jsonl``: one dict per image, in the order written (train, val, spurious, pool).

        Keys: ``id`` (path relative to :attr:`root`), ``split``, ``label`` (class index or
        ``-1``), ``object`` (bool), ``object_class`` (int or ``None``), ``object_box``
        (``[x0, y0, x1, y1]`` or ``None``), ``features`` (list of ``{"name", "box"}``),
        ``background`` (texture name).
        """
        with open(self.index_path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def verify(self) -> None:
        """Check that the files on disk hash to :attr:`content_hash`.

        Raises:
            ValueError: a file is missing, extra or changed (the message names up to 5 of them).
        """
        recorded = _read_meta(self.root)["files"]
        found = _tree_file_hashes(self.root)
        if found == recorded and _content_hash(found) == self.content_hash:
            return
        missing = sorted(set(recorded) - set(found))
        extra = sorted(set(found) - set(recorded))
        changed = sorted(p for p in set(found) & set(recorded) if found[p] != recorded[p])
        parts = [f"{label}: {', '.join(items[:5])}" for label, items in
                 (("missing", missing), ("extra", extra), ("changed", changed)) if items]
        raise ValueError(
            f"planted dataset {self.root} does not match its recorded content hash "
            f"({'; '.join(parts) or 'planted.json edited'}); regenerate it with "
            "generate_planted(..., overwrite=True)"
        )


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
_Box = tuple[int, int, int, int]


def _place(
    rng: np.random.Generator, lo: int, hi: int, hw: tuple[int, int], taken: Sequence[_Box]
) -> _Box | None:
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


def _overlaps(a: _Box, b: _Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass
class _Rendered:
    """One rendered image with its ground truth (full-size boolean masks, tight boxes)."""

    image: np.ndarray  # uint8 [S, S, 3]
    background: str
    object_mask: np.ndarray | None
    object_box: _Box | None
    feature_masks: dict[str, np.ndarray]
    feature_boxes: dict[str, _Box]
    distractor_boxes: list[_Box]
    stand_in_mask: np.ndarray | None = None
    stand_in_box: _Box | None = None


def _composite(img: np.ndarray, sprite: _Sprite, box: _Box) -> None:
    x0, y0, x1, y1 = box
    a = sprite.alpha[..., None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - a) + sprite.rgb


def _object_sprite(coverage: np.ndarray, box: _Box, bg_lum: np.ndarray, hue: float, sat: float,
                   val_u: float, shade_dir: float) -> _Sprite:
    """A shaded object-style sprite: dark on a light background under ``box``, light on a dark one."""
    x0, y0, x1, y1 = box
    lum = float(bg_lum[y0:y1, x0:x1].mean())
    value = 0.12 + 0.3 * val_u if lum > 0.5 else 0.68 + 0.32 * val_u
    return _colored(coverage, _hsv(hue, sat, value), shade_dir, 0.18)


def _mask_of(size: int, sprite: _Sprite, box: _Box) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = sprite.alpha > 0
    return mask


def _render(
    rng: np.random.Generator,
    size: int,
    object_class: int | None,
    features: Sequence[str],
    *,
    distractor_p: float = 0.3,
    stand_in_p: float = 0.0,
    omit: Collection[str] = (),
) -> _Rendered:
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
            :func:`generate_planted`). ``0`` draws no random number for it.
        omit: Layers (``"object"``, ``"stand_in"``, feature names, ``"distractors"``) that are
            laid out and use the same random numbers but are not painted: rendering with and
            without them differs only in their pixels (used by the tests).

    Returns:
        The image and the masks/boxes of everything planted in it.
    """
    unknown = set(features) - {f.name for f in PLANTED_FEATURES}
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
    obj_box: _Box | None = None
    patch_boxes: dict[str, _Box] = {}
    for attempt in range(64):
        if obj_cov is not None and attempt and attempt % 8 == 0:
            radius *= 0.85
            obj_cov = _shape_coverage(r_obj, shape, radius, angle)
        taken: list[_Box] = []
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
    stand_in: tuple[_Sprite, _Box] | None = None
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
    distractors: list[tuple[_Sprite, _Box]] = []
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
    feature_boxes: dict[str, _Box] = {}
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
    ordered = [f.name for f in PLANTED_FEATURES if f.name in feature_masks]
    return _Rendered(
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


# ---------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _Item:
    """One image to draw: where it goes and what it shows."""

    id: str
    split: str
    label: int
    object_class: int | None
    features: tuple[str, ...]
    key: tuple[int, ...]  # entropy of the image's random stream
    distractor_p: float
    stand_in_p: float = 0.0


def _count(rate: float, n: int) -> int:
    return math.floor(rate * n + 0.5)


def _plan(config: PlantedConfig) -> list[_Item]:
    """Every image of the dataset in writing order (train, val, spurious, pool)."""
    seed, k_total = config.seed, config.num_classes
    folders = _class_folders(k_total)
    order = [f.name for f in PLANTED_FEATURES]
    items: list[_Item] = []
    for split, n in (("train", config.train_per_class), ("val", config.val_per_class)):
        code = _SPLIT_CODE[split]
        for k in range(k_total):
            chosen: list[set[str]] = [set() for _ in range(n)]
            for j, feat in enumerate(PLANTED_FEATURES):
                rate = feat.rate(k)
                if rate > 0:
                    perm = np.random.default_rng([seed, 100 + code, j, k]).permutation(n)
                    for i in perm[: _count(rate, n)]:
                        chosen[int(i)].add(feat.name)
            for i in range(n):
                items.append(_Item(
                    f"{split}/{folders[k]}/{i:05d}.png", split, k, k,
                    tuple(f for f in order if f in chosen[i]), (seed, code, k, i), 0.3,
                ))
    code = _SPLIT_CODE["spurious"]
    for j, feat in enumerate(PLANTED_FEATURES):
        for k in feat.classes:
            folder = _spurious_folder(k, j)
            for i in range(config.spurious_per_feature):
                items.append(_Item(
                    f"spurious/{folder}/{i:05d}.png", "spurious", k, None, (feat.name,),
                    (seed, code, k, j, i), 0.5, _STAND_IN_P,
                ))
    # pool: 15 % class images (features at their train rates), 45 % spurious-only, 40 % plain
    n = config.pool_size
    n_class, n_spur = _count(_POOL_CLASS_SHARE, n), _count(_POOL_SPURIOUS_SHARE, n)
    prng = np.random.default_rng([seed, 100 + _SPLIT_CODE["pool"]])
    content: list[tuple[int | None, tuple[str, ...], float, float]] = []
    for i in range(n_class):
        k = i % k_total
        feats = tuple(f.name for f in PLANTED_FEATURES if f.rate(k) > 0 and prng.random() < f.rate(k))
        content.append((k, feats, 0.3, 0.0))
    for i in range(n_spur):
        content.append((None, (PLANTED_FEATURES[i % len(PLANTED_FEATURES)].name,), 0.5, _STAND_IN_P))
    content.extend((None, (), 0.8, _STAND_IN_P) for _ in range(n - n_class - n_spur))
    code = _SPLIT_CODE["pool"]
    for pos, idx in enumerate(prng.permutation(n)):
        obj, feats, p, s = content[int(idx)]
        items.append(_Item(f"pool/{pos:05d}.png", "pool", -1, obj, feats, (seed, code, pos), p, s))
    return items


def _render_item(config: PlantedConfig, item: _Item, *, omit: Collection[str] = ()) -> _Rendered:
    return _render(
        np.random.default_rng(list(item.key)), config.image_size, item.object_class, item.features,
        distractor_p=item.distractor_p, stand_in_p=item.stand_in_p, omit=omit,
    )


def _index_record(item: _Item, r: _Rendered) -> dict[str, Any]:
    return {
        "id": item.id,
        "split": item.split,
        "label": item.label,
        "object": r.object_box is not None,
        "object_class": item.object_class,
        "object_box": None if r.object_box is None else list(r.object_box),
        "features": [{"name": n, "box": list(b)} for n, b in r.feature_boxes.items()],
        "stand_in_box": None if r.stand_in_box is None else list(r.stand_in_box),
        "background": r.background,
    }


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# ---------------------------------------------------------------------- metadata and hashing
def _content_hash(file_hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(file_hashes):
        h.update(f"{rel}\0{file_hashes[rel]}\n".encode())
    return h.hexdigest()


def _tree_file_hashes(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel != _META:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _features_json(features: Sequence[SpuriousFeature]) -> list[dict[str, Any]]:
    return [
        {"index": j, "name": f.name, "kind": f.kind, "classes": list(f.classes),
         "rates": list(f.rates), "description": f.description}
        for j, f in enumerate(features)
    ]


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / _META
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a planted dataset: {_META} is missing (create one with "
            "spurious.datasets.generate_planted)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); regenerate the dataset") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a planted-dataset description (format != {_FORMAT!r})")
    if meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {meta.get('format_version')!r}; this version of spurious "
            f"reads version {_FORMAT_VERSION}; regenerate it with generate_planted(..., overwrite=True)"
        )
    return meta


def load_planted(root: str | os.PathLike[str]) -> PlantedDataset:
    """Reopen a dataset written by :func:`generate_planted` from its ``planted.json``.

    Args:
        root: The dataset folder.

    Returns:
        The dataset description (files are not re-hashed; call :meth:`PlantedDataset.verify`).

    Raises:
        FileNotFoundError: ``root`` or its ``planted.json`` does not exist.
        ValueError: ``planted.json`` is not a planted-dataset description of this format version.
    """
    path = Path(os.path.expanduser(os.fspath(root))).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"planted dataset folder {os.fspath(root)} does not exist")
    meta = _read_meta(path)
    config = PlantedConfig(**meta["config"])
    features = tuple(
        SpuriousFeature(f["name"], tuple(f["classes"]), tuple(f["rates"]), f["kind"], f["description"])
        for f in meta["features"]
    )
    return PlantedDataset(
        root=path,
        config=config,
        class_names=list(meta["class_names"]),
        features=features,
        class_folders=list(meta["class_folders"]),
        spurious_folders={
            (int(s["class"]), int(s["feature"])): s["folder"] for s in meta["spurious_folders"]
        },
        counts=dict(meta["counts"]),
        config_hash=meta["config_hash"],
        content_hash=meta["content_hash"],
    )


# ---------------------------------------------------------------------- generation
def _write_tree(tmp: Path, config: PlantedConfig) -> None:
    """Write every file of the dataset under ``tmp`` (an empty folder)."""
    items = _plan(config)
    hashes: dict[str, str] = {}
    made: set[Path] = set()
    lines: list[str] = []
    for item in items:
        rendered = _render_item(config, item)
        data = _png_bytes(rendered.image)
        path = tmp / item.id
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(data)
        hashes[item.id] = hashlib.sha256(data).hexdigest()
        lines.append(json.dumps(_index_record(item, rendered), sort_keys=True, separators=(",", ":")))
    extra = {
        "spurious/timestamp.txt": _TIMESTAMP_TEXT.encode("utf-8"),
        _INDEX: ("\n".join(lines) + "\n").encode("utf-8"),
    }
    for rel, data in extra.items():
        (tmp / rel).write_bytes(data)
        hashes[rel] = hashlib.sha256(data).hexdigest()
    counts = {s: sum(1 for it in items if it.split == s) for s in _SPLIT_CODE}
    counts["total"] = len(items)
    meta = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "generator_version": _GENERATOR_VERSION,
        "config": dataclasses.asdict(config),
        "config_hash": config.config_hash(),
        "class_names": list(CLASS_SHAPES[: config.num_classes]),
        "class_folders": _class_folders(config.num_classes),
        "features": _features_json(PLANTED_FEATURES),
        "spurious_folders": [
            {"class": k, "feature": j, "folder": _spurious_folder(k, j)}
            for j, f in enumerate(PLANTED_FEATURES) for k in f.classes
        ],
        "backgrounds": list(BACKGROUNDS),
        "counts": counts,
        "files": hashes,
        "content_hash": _content_hash(hashes),
    }
    (tmp / _META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _cached(out: Path, config: PlantedConfig) -> PlantedDataset | None:
    """The dataset in ``out`` if it is a complete generation of ``config``, else ``None``."""
    try:
        ds = load_planted(out)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if ds.config_hash != config.config_hash() or ds.config != config or not ds.index_path.is_file():
        return None
    return ds



def generate_planted(
    out: str | os.PathLike[str],
    config: PlantedConfig = PlantedConfig(),
    *,
    overwrite: bool = False,
) -> PlantedDataset:
    """Generate the planted dataset into ``out`` (or return it if ``out`` already holds it).

    The tree is written into a temporary sibling folder and renamed onto ``out`` when complete,
    so ``out`` never holds a half-written dataset. If ``out`` already holds a generation of the
    same config (same :meth:`PlantedConfig.config_hash`), it is returned without regenerating.

    Args:
        out: Destination folder; must be missing, empty, a generation of ``config``, or (with
            ``overwrite=True``) another planted dataset.
        config: Sizes and seed; the default (5100 images at 64 px, ~50 MB on disk) takes about
            20 s on one core, :meth:`PlantedConfig.tiny` well under a second.
        overwrite: Replace a planted dataset of another config in ``out``. A non-empty folder
            that is not a planted dataset (no ``planted.json``) is never deleted.

    Returns:
        The dataset (paths, class names, features, counts, hashes).

    Raises:
        TypeError: ``config`` is not a :class:`PlantedConfig`.
        FileExistsError: ``out`` is a file, a non-empty folder that is not a planted dataset, or
            a planted dataset of another config while ``overwrite`` is false.
    """
    if not isinstance(config, PlantedConfig):
        raise TypeError(f"config must be a PlantedConfig, got {type(config).__name__}")
    out = Path(os.path.expanduser(os.fspath(out))).resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; generate_planted needs a folder path")
    if out.is_dir() and any(out.iterdir()):
        cached = _cached(out, config)
        if cached is not None:
            _log.info("planted dataset %s already generated with this config; reusing it", out)
            return cached
        _check_replaceable(out, config, overwrite)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.tmp-")  # 0777 & ~umask (mkdtemp: 0700)
    try:
        start = time.perf_counter()
        _write_tree(tmp, config)
        _log.info("generated planted dataset (%s) in %.1f s", config, time.perf_counter() - start)
        # someone else may have finished the same generation meanwhile
        if out.is_dir() and any(out.iterdir()):
            cached = _cached(out, config)
            if cached is not None:
                return cached
            _check_replaceable(out, config, overwrite)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()  # only reserve the name
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_planted(out)


def _check_replaceable(out: Path, config: PlantedConfig, overwrite: bool) -> None:
    """Raise unless ``out`` (non-empty) may be replaced by a generation of ``config``."""
    try:
        existing = load_planted(out)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        raise FileExistsError(
            f"{out} is not empty and holds files that are not a planted dataset (no valid "
            "planted.json); refusing to write there, also with overwrite=True (it only replaces "
            "a planted dataset). Choose an empty or new folder."
        ) from None
    if not overwrite:
        raise FileExistsError(
            f"{out} already holds a planted dataset generated with {existing.config}, not "
            f"{config}; pass overwrite=True to replace it or choose another folder"
        )
