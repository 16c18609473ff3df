"""The embedded demo classifiers: small ResNets trained on the planted dataset, on the CPU.

Two variants are trained on :mod:`spurious.datasets.planted` data (generated on first use):

* ``standard``: plain empirical risk minimisation (cross-entropy, SGD with Nesterov momentum,
  warm-up + cosine learning rate, random crop + flip);
* ``robust``: L2 PGD adversarial training (Madry et al. 2018): after a few clean epochs, every
  training batch is replaced by ``x' ~ argmax CE(f(x'), y)`` over ``||x' - x||_2 <= eps``,
  ``x' in [0, 1]^n``, found by :func:`pgd_l2`. Feature visualizations (NPFV, DESIGN.md "Math")
  are only meaningful on such a model.

Both learn the planted spurious features (feeder -> class 0, frame -> class 1, water -> classes 2
and 3, scribble -> class 3): :func:`evaluate_demo_model` measures the validation accuracy and,
for every spurious (class, feature) pair, the fraction of its spurious-only images (feature, no
object) that the model assigns to that class. The numbers are logged and stored in the
checkpoint's metadata.

Model specs (``spurious.models.load_model``)::

    demo:standard        default planted data (10 classes, 64 px), 18 epochs
    demo:robust          the same data, 4 clean + 12 adversarial epochs (eps = 1.0)
    demo:standard-tiny   PlantedConfig.tiny() (6 classes, 32 px), 12 epochs, seconds (for tests)
    demo:robust-tiny     the same, eps = 0.5

Measured (torch 2.14, 2 CPU threads, planted generator v4; the figures are also in each
checkpoint's metadata): ``demo:robust`` trained in 235 s (including ~20 s of data generation)
and ``demo:standard`` in 94 s. Val accuracy 0.915 (standard) and 0.837 (robust); spurious-only
images predicted as the feature's class, standard / robust: feeder 0.48 / 0.77, frame
0.50 / 0.68, scribble 0.43 / 0.82, water 0.45 / 0.98 (class 2) and 0.27 / 0.02 (class 3). Chance
is 0.1; 75 % of the spurious-only images also show a large non-class stand-in shape that competes
for the prediction. Under a 10-step L2 PGD attack on the val images the generator v2 models kept
0.80 / 0.57 / 0.21 / 0.02 (standard) and 0.77 / 0.70 / 0.53 / 0.25 (robust) accuracy at ``eps``
0.25 / 0.5 / 1.0 / 2.0. The tiny models reach only ~0.2-0.3 val accuracy (120 training images;
chance 0.17); they exist to exercise the code.

Architecture (:class:`DemoNet`, ``antialias=True``): 6x6 stride-2 stem conv + 4x4 stride-2
average pool (64 -> 16 px), three stages of one basic residual block (32, 64, 128 channels;
16, 8, 4 px; the down-sampling convs are 4x4 at stride 2 and their shortcuts average before the
1x1 projection), global average pooling, one ``nn.Linear`` head, so ``D = 128``. Every
down-sampling step covers the input evenly: the earlier layout (3x3 stride-2 stem + 3x3
max-pool, 1x1 stride-2 shortcuts) routed input gradients to a grid of single pixels with a
4-pixel period, so the feature visualizations (NPFVs) of its robust model were dot grids
whatever the component. A training step costs the same as before (~85 ms for 64 images on 2
idle cores; a PGD step ~50 ms).

Checkpoints are cached under :func:`demo_cache_dir` (``$SPURIOUS_CACHE``, else
``$XDG_CACHE_HOME/spurious`` or ``~/.cache/spurious``)::

    planted/<planted config hash>/              the generated dataset
    models/demo-<variant>-<train key>.pt        one checkpoint per training config

The train key hashes the whole :class:`DemoTrainConfig` (including the planted config hash) and
a version of this training code, so a changed recipe never reuses a stale checkpoint.

Choice of ``eps`` for the robust model: the reference ImageNet models of the paper are L2-robust
at ``eps = 3`` for 3x224x224 inputs, i.e. ``3 / sqrt(150528) = 0.0077`` RMS per pixel value;
CIFAR-10 robust models commonly use ``eps = 0.5`` at 3x32x32 (``0.0090`` RMS). At 3x64x64
(12288 values) the same RMS is ``eps`` 0.86-1.0; we use ``eps = 1.0``, scaled with the image
side for other sizes (``eps = 1.0 * image_size / 64``; 0.5 for the 32 px tiny data). The NPFV
budget of ``spurious.visualize`` at 64 px is 8.57, about 9x the training ``eps``, close to the
paper's ratio (30 / 3). The earlier recipe used ``eps = 0.5``, because at 1.0 the then 6-px
feeder was blurred out and not learned; the planted features are now larger (a 17-21 px feeder,
a 6-px frame, a 22-27 px label with bold strokes, see :mod:`spurious.datasets.planted`) and the
robust model learns all of them at ``eps = 1.0``. PGD uses 2 steps of length ``1.25 eps`` after
a random start (budget: a third step would add ~25 % of training time), ramping ``eps`` up over
the first 15 % of the adversarial steps. The first 4 epochs are clean: the network leaves its
initial plateau there at a third of the cost of adversarial epochs.

Determinism: the same config on the same machine (same torch version and number of threads)
gives bit-identical weights: the initialisation uses a forked global RNG seeded from
``seed``, shuffling, augmentation and the PGD random starts use their own seeded
``torch.Generator``, and ``torch.use_deterministic_algorithms(True)`` is on while training. The
caller's RNG state and determinism setting are restored afterwards.

Example:
    >>> info = train_demo_model("robust")                      # doctest: +SKIP
    >>> clf = spurious.models.load_model("demo:robust")         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spurious._io import atomic_path, read_json, sha256_file
from spurious.datasets.planted import (
    CLASS_SHAPES,
    PlantedConfig,
    PlantedDataset,
    generate_planted,
)
from spurious.models import Classifier, Preprocessing

__all__ = [
    "DEMO_MODEL_NAMES",
    "VARIANTS",
    "DemoModelInfo",
    "DemoNet",
    "DemoTrainConfig",
    "demo_cache_dir",
    "demo_model_names",
    "evaluate_demo_model",
    "evidence_lines",
    "load_demo_checkpoint",
    "load_demo_model",
    "pgd_l2",
    "train_demo_model",
]

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("standard", "robust")
"""Training variants: plain ERM and L2 PGD adversarial training."""

DEMO_MODEL_NAMES: tuple[str, ...] = ("standard", "robust", "standard-tiny", "robust-tiny")
"""The ``NAME`` of every ``demo:NAME`` model spec."""

CHECKPOINT_FORMAT = "spurious-demo-model"
_CHECKPOINT_VERSION = 1
_TRAIN_CODE_VERSION = 2  # bump whenever the training code changes the weights it produces

DEMO_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEMO_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

_REFERENCE_EPS = 1.0  # L2 radius of the robust model for 3x64x64 inputs (see the module doc)
_REFERENCE_SIZE = 64  # eps is scaled with the image side for other sizes


# ----------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, antialias: bool = False) -> None:
        super().__init__()
        if antialias and stride == 2:
            # 4x4 kernel at stride 2: every input pixel is covered by exactly two taps per axis
            self.conv1 = nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if antialias and stride == 2:
            # average, then project (ResNet-D): no input position is skipped
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(2, 2), nn.Conv2d(in_ch, out_ch, 1, 1, bias=False), nn.BatchNorm2d(out_ch)
            )
        elif stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DemoNet(nn.Module):
    """A small ResNet for 32-128 px images with one final ``nn.Linear`` head.

    Layout: stem (conv stride 2, BN, ReLU, optional pooling stride 2), then one stage per entry
    of ``widths`` (``blocks[i]`` basic residual blocks; every stage after the first halves the
    resolution), global average pooling, and ``fc``. The penultimate features ``phi(x)`` are the
    pooled output of the last stage, ``D = widths[-1]``.

    ``antialias=True`` (the default) avoids down-sampling that sees only part of the input
    grid, which makes input gradients (and feature visualizations) fall on a regular grid of
    isolated pixels: the stem is a 6x6 conv at stride 2 followed by a 4x4 *average* pool at
    stride 2, the down-sampling convs of the blocks are 4x4 at stride 2, and their shortcuts
    average 2x2 before the 1x1 projection (every input pixel is covered evenly by each
    down-sampling step). ``antialias=False`` is the earlier layout (3x3 stride-2 convs, a 3x3
    max-pool, 1x1 stride-2 shortcuts), kept to load its checkpoints.

    The network expects *normalised* images (``(x - mean) / std``); :class:`~spurious.models.Classifier`
    does that, so through the adapter the input is ``[N, 3, H, W]`` in ``[0, 1]``.

    Args:
        num_classes: ``K`` (outputs of ``fc``).
        widths: channels of each stage (default ``(32, 64, 128)``, so ``D = 128``).
        blocks: residual blocks per stage (same length as ``widths``; default one each).
        stem_pool: pool after the stem conv (total stride 4 before the first stage).
        antialias: the even-coverage layout above (else the earlier one).
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] | None = None,
        *,
        stem_pool: bool = True,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        blocks = tuple(int(b) for b in (blocks if blocks is not None else (1,) * len(widths)))
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        if len(blocks) != len(widths) or min(blocks) < 1:
            raise ValueError(
                f"blocks must give a positive block count per stage ({len(widths)} stages), "
                f"got {blocks!r}"
            )
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.widths, self.blocks, self.stem_pool = widths, blocks, bool(stem_pool)
        self.antialias = bool(antialias)
        stem: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 6, 2, 2, bias=False) if self.antialias
            else nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.AvgPool2d(4, 2, 1) if self.antialias else nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks, strict=False)):
            layers = [_BasicBlock(in_ch if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1,
                                  self.antialias)
                      for j in range(n)]
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, int(num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_features(self) -> int:
        """``D``, the dimension of ``phi`` (= ``widths[-1]``)."""
        return self.fc.in_features

    @property
    def num_classes(self) -> int:
        """``K``."""
        return self.fc.out_features

    def arch(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-able dict (inverse: :meth:`from_arch`)."""
        return {
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "blocks": list(self.blocks),
            "stem_pool": self.stem_pool,
            "antialias": self.antialias,
        }

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> DemoNet:
        """Build from the output of :meth:`arch` (weights are random; a missing ``antialias``
        means the earlier layout, ``False``)."""
        known = {"num_classes", "widths", "blocks", "stem_pool", "antialias"}
        unknown = sorted(set(arch) - known)
        if unknown or "num_classes" not in arch:
            raise ValueError(
                f"bad DemoNet arch {dict(arch)!r}: needs 'num_classes' and only keys {sorted(known)}"
            )
        return cls(
            int(arch["num_classes"]),
            arch.get("widths", (32, 64, 128)),
            arch.get("blocks"),
            stem_pool=bool(arch.get("stem_pool", True)),
            antialias=bool(arch.get("antialias", False)),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """Last-stage feature map ``[N, D, h, w]`` of normalised images ``[N, 3, H, W]``."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool a feature map to ``phi [N, D]``; then ``fc`` unless ``pre_logits``."""
        phi = self.pool(x)
        return phi if pre_logits else self.fc(phi)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, K]`` of normalised images ``[N, 3, H, W]``."""
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoTrainConfig:
    """Everything that determines a demo model's weights (hashed into the cache key).

    Use :meth:`for_variant` for the defaults behind the ``demo:`` specs (``DemoTrainConfig()``
    equals ``for_variant("standard")``).

    Attributes:
        variant: ``"standard"`` or ``"robust"`` (L2 PGD adversarial training).
        planted: the planted dataset to train on.
        widths: :class:`DemoNet` stage widths (``D = widths[-1]``).
        blocks: residual blocks per stage.
        stem_pool: :class:`DemoNet` pooling after the stem.
        antialias: :class:`DemoNet` even-coverage down-sampling (see there).
        epochs: passes over the training split.
        batch_size: images per SGD step (the last incomplete batch of an epoch is dropped).
        lr: peak learning rate of SGD (Nesterov momentum ``momentum``).
        momentum: SGD momentum.
        weight_decay: L2 penalty on conv and linear weights (not on BN and biases).
        warmup_frac: fraction of the steps with a linear warm-up from ``lr / 10``; then cosine
            decay to 0.
        crop_pad: random-crop augmentation: pad by this many pixels (zeros) and crop back.
        flip: random horizontal flips.
        eps: L2 radius of the PGD attack (robust only; per image, on ``[0, 1]`` pixel values).
        pgd_steps: PGD steps per training batch (robust only).
        pgd_step_size: step length relative to ``eps / pgd_steps`` (Madry et al.: 2.5).
        clean_epochs: robust only: the first ``clean_epochs`` epochs train on clean images (the
            cheap phase in which the network leaves its initial plateau); adversarial training
            runs for the remaining ``epochs - clean_epochs``.
        eps_warmup_frac: fraction of the adversarial steps over which ``eps`` ramps up linearly
            from 0.
        seed: seeds the initialisation, the shuffling, the augmentation and the PGD starts.
    """

    variant: str = "standard"
    planted: PlantedConfig = field(default_factory=PlantedConfig)
    widths: tuple[int, ...] = (32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 1)
    stem_pool: bool = True
    antialias: bool = True
    epochs: int = 25
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_frac: float = 0.15
    crop_pad: int = 4
    flip: bool = True
    eps: float = 0.0
    pgd_steps: int = 0
    pgd_step_size: float = 2.5
    clean_epochs: int = 0
    eps_warmup_frac: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; valid variants: {', '.join(VARIANTS)}")
        if not isinstance(self.planted, PlantedConfig):
            raise TypeError(f"planted must be a PlantedConfig, got {type(self.planted).__name__}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if not self.widths or min(self.widths) < 1 or len(self.blocks) != len(self.widths) \
                or min(self.blocks) < 1:
            raise ValueError(
                f"widths {self.widths} and blocks {self.blocks} must be positive, one per stage"
            )
        for name in ("epochs", "batch_size", "pgd_steps", "crop_pad", "clean_epochs", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"DemoTrainConfig.{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("lr", "momentum", "weight_decay", "warmup_frac", "eps", "pgd_step_size",
                     "eps_warmup_frac"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"DemoTrainConfig.{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))  # 0 and 0.0 hash alike
        object.__setattr__(self, "stem_pool", bool(self.stem_pool))
        object.__setattr__(self, "antialias", bool(self.antialias))
        object.__setattr__(self, "flip", bool(self.flip))
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(
                f"epochs must be >= 1 and batch_size >= 2 (BatchNorm), got {self.epochs}, "
                f"{self.batch_size}"
            )
        if self.crop_pad < 0 or self.seed < 0 or self.pgd_steps < 0:
            raise ValueError("crop_pad, seed and pgd_steps must be non-negative")
        if not 0 <= self.clean_epochs < self.epochs:
            raise ValueError(
                f"clean_epochs must lie in [0, epochs={self.epochs}), got {self.clean_epochs}"
            )
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ValueError(
                f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0; got {self.lr}, "
                f"{self.momentum}, {self.weight_decay}"
            )
        if not (0 <= self.warmup_frac < 1 and 0 <= self.eps_warmup_frac < 1):
            raise ValueError("warmup_frac and eps_warmup_frac must lie in [0, 1)")
        if self.variant == "robust" and not (self.eps > 0 and self.pgd_steps >= 1):
            raise ValueError(
                f"the robust variant needs eps > 0 and pgd_steps >= 1, got eps={self.eps}, "
                f"pgd_steps={self.pgd_steps}"
            )
        if self.eps < 0 or self.pgd_step_size <= 0:
            raise ValueError("eps must be >= 0 and pgd_step_size > 0")

    @classmethod
    def for_variant(cls, variant: str, *, tiny: bool = False, seed: int = 0) -> DemoTrainConfig:
        """The defaults of ``demo:<variant>`` (``tiny``: of ``demo:<variant>-tiny``).

        Default sizes: :class:`DemoNet` widths 32/64/128 (``D = 128``) on the default
        :class:`~spurious.datasets.planted.PlantedConfig` (3000 train images, 64 px); tiny:
        widths 16/32/64 on :meth:`PlantedConfig.tiny` (120 train images, 32 px), a few epochs.

        Raises:
            ValueError: unknown ``variant``.
        """
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
        robust = variant == "robust"
        if tiny:
            planted = PlantedConfig.tiny()
            base: dict[str, Any] = {"widths": (16, 32, 64), "epochs": 12, "batch_size": 20, "lr": 0.05}
            if robust:
                base.update(clean_epochs=4)
        else:
            planted = PlantedConfig()
            base = {"widths": (32, 64, 128), "epochs": 18, "batch_size": 64, "lr": 0.1}
            if robust:
                base.update(epochs=16, clean_epochs=4)
        if robust:
            base.update(
                eps=round(_REFERENCE_EPS * planted.image_size / _REFERENCE_SIZE, 6), pgd_steps=2,
                pgd_step_size=2.5, eps_warmup_frac=0.15,
            )
        return cls(variant=variant, planted=planted, seed=seed, **base)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists, the planted config as a dict); see :meth:`from_dict`."""
        d = dataclasses.asdict(self)
        d["widths"], d["blocks"] = list(self.widths), list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DemoTrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise ``ValueError``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DemoTrainConfig keys {unknown}; valid keys: {sorted(names)}")
        kwargs = dict(d)
        if "planted" in kwargs and not isinstance(kwargs["planted"], PlantedConfig):
            kwargs["planted"] = PlantedConfig(**kwargs["planted"])
        return cls(**kwargs)

    def cache_key(self) -> str:
        """16 hex digits: sha256 of this config, the planted config hash and the code version."""
        payload = {
            "config": {**self.to_dict(), "planted": self.planted.config_hash()},
            "train_code": _TRAIN_CODE_VERSION,
        }
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def preprocessing(self) -> Preprocessing:
        """Preprocessing of the trained model: native size (no resize, no crop), demo mean/std."""
        return _demo_preprocessing(self.planted.image_size)


def _demo_preprocessing(size: int) -> Preprocessing:
    return Preprocessing(
        input_size=(size, size), resize_size=size, crop_pct=1.0, interpolation="bilinear",
        mean=DEMO_MEAN, std=DEMO_STD,
    )


def demo_model_names() -> list[str]:
    """The valid ``NAME`` of ``demo:NAME`` specs: standard, robust, standard-tiny, robust-tiny."""
    return list(DEMO_MODEL_NAMES)


def _parse_name(name: str) -> tuple[str, bool]:
    if name not in DEMO_MODEL_NAMES:
        valid = ", ".join(f"demo:{n}" for n in DEMO_MODEL_NAMES)
        raise ValueError(f"unknown demo model {name!r}; valid demo models: {valid}")
    variant, _, suffix = name.partition("-")
    return variant, suffix == "tiny"


# ----------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------


def demo_cache_dir() -> Path:
    """Where planted data and demo checkpoints are cached.

    ``$SPURIOUS_CACHE`` if set, else ``$XDG_CACHE_HOME/spurious``, else ``~/.cache/spurious``.
    The folder is not created here.
    """
    from spurious._io import cache_dir

    return cache_dir()


def _resolve_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir is not None else demo_cache_dir()).resolve()


def _planted_dir(cache: Path, planted: PlantedConfig) -> Path:
    return cache / "planted" / planted.config_hash()


def _checkpoint_path(cache: Path, config: DemoTrainConfig) -> Path:
    return cache / "models" / f"demo-{config.variant}-{config.cache_key()}.pt"


# ----------------------------------------------------------------------------
# Shipped weights
# ----------------------------------------------------------------------------

SHIPPED_DIR = Path(__file__).resolve().parent / "demo" / "weights"
"""The demo classifiers' weights that ship in the package (``manifest.json`` lists them with their sha256).

CPU training is not bitwise reproducible across machines (thread scheduling changes the float sums),
so ``demo:standard`` / ``demo:robust`` load these files, trained once by :func:`train_demo_model` with
the recipe in their metadata, and every documented demo figure comes from them. ``spurious demo
--retrain`` / ``spurious train demo`` train new ones into the cache instead.
"""


def shipped_checkpoint(config: DemoTrainConfig, shipped_dir: Path | None = None) -> Path | None:
    """The shipped checkpoint of ``config`` (a default config's recipe), or ``None`` when none ships.

    Raises:
        ValueError: the file is listed but its sha256 differs from the manifest (a damaged install).
    """
    root = SHIPPED_DIR if shipped_dir is None else Path(shipped_dir)
    name = f"demo-{config.variant}-{config.cache_key()}.pt"
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return None
    entry = read_json(manifest_path).get("files", {}).get(name)
    path = root / name
    if entry is None or not path.is_file():
        return None
    digest = _sha256_file(path)
    if digest != entry["sha256"]:
        raise ValueError(
            f"the shipped demo weights {path} are damaged (sha256 {digest[:16]}..., expected "
            f"{entry['sha256'][:16]}...): reinstall spurious, or train new ones with `spurious demo --retrain`"
        )
    return path


@functools.lru_cache(maxsize=8)
def _sha256_file_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _sha256_file(path: Path) -> str:
    stat = path.stat()
    return _sha256_file_cached(str(path), stat.st_size, stat.st_mtime_ns)


# ----------------------------------------------------------------------------
# PGD
# ----------------------------------------------------------------------------


def _l2_norms(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def pgd_l2(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L2 projected gradient ascent on the cross-entropy (Madry et al. 2018).

    Approximately solves, per image, ``max CE(model(x'), y)`` subject to
    ``||x' - x||_2 <= eps`` and ``x' in [0, 1]^n``. Start: ``x`` plus a point drawn uniformly
    from the L2 ball (``random_start``), clipped to the box. Each step adds
    ``step_size * g / ||g||_2`` (``g`` the input gradient), rescales the perturbation onto the
    ball when it leaves it, and clips ``x'`` to ``[0, 1]``. Clipping only shrinks the
    perturbation (``x`` lies in the box), so every iterate lies in the intersection of the ball
    and the box.

    The model's mode is left as it is (call it in eval mode for BatchNorm models) and no
    parameter ``.grad`` is touched (gradients are taken w.r.t. the input only).

    Args:
        model: maps images ``[N, C, H, W]`` in ``[0, 1]`` to logits ``[N, K]``.
        x: clean images ``[N, C, H, W]`` in ``[0, 1]`` (not modified).
        y: labels ``[N]`` (int64).
        eps: L2 radius (per image), >= 0.
        steps: number of gradient steps, >= 0.
        step_size: length of each step; default ``2.5 * eps / steps``.
        random_start: start from a random point of the ball instead of ``x``.
        generator: RNG for the random start (on ``x``'s device).

    Returns:
        adversarial images ``[N, C, H, W]`` (detached), same dtype and device as ``x``.

    Raises:
        ValueError: negative ``eps``/``steps``/``step_size``, or ``x``/``y`` of the wrong shape.
    """
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError("x must be a float tensor [N, ...] with values in [0, 1]")
    if not isinstance(y, Tensor) or y.shape != x.shape[:1]:
        raise ValueError(f"y must be a label tensor [N={x.shape[0]}], got {getattr(y, 'shape', y)!r}")
    if not eps >= 0 or isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"need eps >= 0 and an int steps >= 0, got eps={eps!r}, steps={steps!r}")
    steps = int(steps)
    if step_size is None:
        step_size = 2.5 * eps / max(steps, 1)
    if not step_size >= 0:
        raise ValueError(f"step_size must be >= 0, got {step_size!r}")
    x = x.detach()
    if eps == 0:
        return x.clone()
    delta = torch.zeros_like(x)
    if random_start:
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _l2_norms(direction).clamp_min(1e-12)
        u = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
        radius = eps * u.pow(1.0 / x[0].numel())  # uniform in the ball
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
        delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + step_size * grad / _l2_norms(grad).clamp_min(1e-12)
            delta = delta * (eps / _l2_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def _load_split_uint8(root: Path, class_folders: Sequence[str]) -> tuple[Tensor, Tensor]:
    """All images of ``root/<class folder>/*.png`` as ``uint8 [N, 3, H, W]`` and labels ``[N]``."""
    from spurious.datasets import image_folder, load_image

    ds = image_folder(root, class_names=list(class_folders))
    images = [np.asarray(load_image(r.path), dtype=np.uint8) for r in ds.records]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(ds.labels())


def _augment(x: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random translation by up to ``pad`` px (zero fill) and horizontal flip of ``[N, C, H, W]``."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]  # [N, H, 1]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]  # [N, 1, W]
        batch = torch.arange(n)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # [N, C, H, W]
    if flip:
        flips = torch.rand((n,), generator=generator) < 0.5
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    return x.contiguous()


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------


def _predict(classifier: Classifier, paths: Sequence[str], batch_size: int) -> Tensor:
    """Softmax probabilities ``[N, K]`` of the images at ``paths`` (float32, CPU)."""
    from spurious.datasets import load_image

    probs = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack(
                [classifier.preprocessing(load_image(p)) for p in paths[start:start + batch_size]]
            )
            probs.append(classifier(batch).float().softmax(dim=1).cpu())
    k = classifier.num_classes
    return torch.cat(probs) if probs else torch.zeros((0, k))


def evaluate_demo_model(
    classifier: Classifier, planted: PlantedDataset, *, batch_size: int = 200
) -> dict[str, Any]:
    """Evidence that a classifier learned the planted spurious features.

    Args:
        classifier: a classifier over the planted classes (e.g. ``load_model("demo:robust")``).
        planted: the planted dataset it was trained on (:func:`~spurious.datasets.load_planted`).
        batch_size: images per forward pass.

    Returns:
        a JSON-able dict: ``val_accuracy`` (top-1 on ``planted.val``), ``val_accuracy_per_class``
        (list, by class), ``num_val``, ``chance`` (``1 / K``), and ``spurious``: one dict per
        spurious-only folder (``planted.spurious``; each image shows the feature but no object)
        with ``class``, ``class_name``, ``feature``, ``feature_index``, ``kind``, ``folder``,
        ``num_images``, ``predicted_as_class`` (fraction with ``argmax = class``; the "class
        extension" rate of DESIGN.md) and ``mean_probability`` (mean softmax probability of
        ``class``).

    Raises:
        ValueError: the classifier's number of classes differs from the dataset's.
    """
    from spurious.datasets import IMAGE_EXTENSIONS, image_folder

    k_total = len(planted.class_names)
    if classifier.num_classes != k_total:
        raise ValueError(
            f"the classifier has {classifier.num_classes} classes but the planted dataset at "
            f"{planted.root} has {k_total}; evaluate a model trained on that dataset"
        )
    val = image_folder(planted.val, class_names=list(planted.class_folders))
    probs = _predict(classifier, [r.path for r in val.records], batch_size)
    labels = torch.from_numpy(val.labels())
    correct = probs.argmax(dim=1) == labels
    per_class = [
        float(correct[labels == k].float().mean()) if bool((labels == k).any()) else float("nan")
        for k in range(k_total)
    ]
    spurious = []
    for (k, j), folder in sorted(planted.spurious_folders.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        paths = sorted(str(p) for p in (planted.spurious / folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        p = _predict(classifier, paths, batch_size)
        feature = planted.features[j]
        spurious.append({
            "class": k,
            "class_name": planted.class_names[k],
            "feature": feature.name,
            "feature_index": j,
            "kind": feature.kind,
            "folder": folder,
            "num_images": len(paths),
            "predicted_as_class": float((p.argmax(dim=1) == k).float().mean()) if paths else float("nan"),
            "mean_probability": float(p[:, k].mean()) if paths else float("nan"),
        })
    return {
        "val_accuracy": float(correct.float().mean()),
        "val_accuracy_per_class": per_class,
        "num_val": int(labels.numel()),
        "chance": 1.0 / k_total,
        "spurious": spurious,
    }


def evidence_lines(evidence: Mapping[str, Any]) -> list[str]:
    """The evidence of :func:`evaluate_demo_model` as a small text table."""
    lines = [
        (f"val accuracy {evidence['val_accuracy']:.3f} ({evidence['num_val']} images); "
         f"chance {evidence['chance']:.3f}"),
        f"  {'class':<12} {'feature':<9} {'kind':<16} {'spurious-only -> class':>22} {'mean p':>7}",
    ]
    for s in evidence["spurious"]:
        lines.append(
            f"  {str(s['class']) + ' ' + s['class_name']:<12} {s['feature']:<9} {s['kind']:<16} "
            f"{s['predicted_as_class']:>15.3f} (n={s['num_images']:<3}) {s['mean_probability']:>7.3f}"
        )
    return lines


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic_rng(seed: int) -> Iterator[None]:
    """Fork the CPU RNG, seed it, and turn on deterministic algorithms; restore both after."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def _lr_at(step: int, total: int, config: DemoTrainConfig) -> float:
    warm = int(config.warmup_frac * total)
    if step < warm:
        return config.lr * (0.1 + 0.9 * step / warm)
    t = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def _eps_at(adv_step: int, adv_total: int, config: DemoTrainConfig) -> float:
    ramp = int(config.eps_warmup_frac * adv_total)
    return config.eps if adv_step >= ramp else config.eps * (adv_step + 1) / ramp


def _sub_seeds(seed: int, n: int) -> list[int]:
    state = np.random.SeedSequence([seed, 0x5D3]).generate_state(n, dtype=np.uint64)
    return [int(s) & 0x7FFF_FFFF_FFFF_FFFF for s in state]


def _train_net(
    config: DemoTrainConfig, planted: PlantedDataset, *, progress: bool
) -> tuple[DemoNet, dict[str, Any]]:
    """Train a :class:`DemoNet` on ``planted`` (CPU); returns it (eval mode) and training stats."""
    from tqdm.auto import tqdm

    x_train, y_train = _load_split_uint8(planted.train, planted.class_folders)
    n = int(x_train.shape[0])
    if n < config.batch_size:
        raise ValueError(
            f"the planted training split has {n} images, fewer than batch_size={config.batch_size}"
        )
    mean = torch.tensor(DEMO_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_STD).view(1, 3, 1, 1)
    init_seed, data_seed = _sub_seeds(config.seed, 2)
    steps_per_epoch = n // config.batch_size
    total = steps_per_epoch * config.epochs
    robust = config.variant == "robust"
    adv_first_epoch = config.clean_epochs if robust else config.epochs
    adv_total = steps_per_epoch * (config.epochs - adv_first_epoch)
    stats: dict[str, Any] = {"steps": total, "adversarial_steps": adv_total, "num_train": n, "epochs": []}

    with _deterministic_rng(init_seed):
        net = DemoNet(len(planted.class_names), config.widths, config.blocks, stem_pool=config.stem_pool,
                      antialias=config.antialias)
        net = net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(
            [{"params": [p for p in net.parameters() if p.dim() > 1], "weight_decay": config.weight_decay},
             {"params": [p for p in net.parameters() if p.dim() <= 1], "weight_decay": 0.0}],
            lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
        )
        generator = torch.Generator().manual_seed(data_seed)

        def normalized(z: Tensor) -> Tensor:
            return net((z - mean) / std)

        bar = tqdm(total=total, desc=f"train demo {config.variant}", unit="step",
                   disable=not progress, file=sys.stderr, leave=False)
        step = 0
        try:
            for epoch in range(config.epochs):
                adversarial = epoch >= adv_first_epoch
                perm = torch.randperm(n, generator=generator)
                loss_sum, correct, seen = 0.0, 0, 0
                for b in range(steps_per_epoch):
                    idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
                    xb = _augment(x_train[idx], config.crop_pad, config.flip, generator)
                    xb = xb.float().div_(255.0).contiguous(memory_format=torch.channels_last)
                    yb = y_train[idx]
                    if adversarial:
                        eps = _eps_at(step - adv_first_epoch * steps_per_epoch, adv_total, config)
                        net.eval()  # BatchNorm running statistics for the attack
                        xb = pgd_l2(normalized, xb, yb, eps=eps, steps=config.pgd_steps,
                                    step_size=config.pgd_step_size * eps / config.pgd_steps,
                                    generator=generator)
                    net.train()
                    for group in optimizer.param_groups:
                        group["lr"] = _lr_at(step, total, config)
                    logits = normalized(xb)
                    loss = F.cross_entropy(logits, yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += float(loss.detach()) * len(yb)
                    correct += int((logits.detach().argmax(1) == yb).sum())
                    seen += len(yb)
                    step += 1
                    bar.update(1)
                epoch_stats = {"epoch": epoch + 1, "adversarial": adversarial,
                               "loss": loss_sum / seen, "train_accuracy": correct / seen}
                stats["epochs"].append(epoch_stats)
                bar.set_postfix(loss=f"{epoch_stats['loss']:.3f}", acc=f"{epoch_stats['train_accuracy']:.3f}")
                logger.debug("demo %s epoch %d/%d: loss %.4f, train%s accuracy %.3f", config.variant,
                             epoch + 1, config.epochs, epoch_stats["loss"],
                             " (adversarial)" if adversarial else "", epoch_stats["train_accuracy"])
        finally:
            bar.close()
    net.eval()
    return net.to(memory_format=torch.contiguous_format), stats


@dataclass
class DemoModelInfo:
    """A trained (or cached) demo model, returned by :func:`train_demo_model`.

    Attributes:
        name: ``demo:`` name (``"robust"``, ``"standard-tiny"``) for default configs, else
            ``"<variant>-<cache key>"``.
        variant: ``"standard"`` or ``"robust"``.
        path: the checkpoint file.
        config: the training config.
        planted_root: the planted dataset it was trained on.
        trained: ``True`` if this call trained it, ``False`` if the cached checkpoint was reused.
        seconds: training time in seconds (of the run that made the checkpoint).
        evidence: :func:`evaluate_demo_model` of the trained model.
        metadata: the checkpoint's full ``metadata`` dict.
    """

    name: str
    variant: str
    path: Path
    config: DemoTrainConfig
    planted_root: Path
    trained: bool
    seconds: float
    evidence: dict[str, Any]
    metadata: dict[str, Any]
    shipped: bool = False

    @property
    def spec(self) -> str:
        """Model spec loading exactly this checkpoint: ``demo:<variant>[-tiny]@<path>``.

        The shipped weights are what ``demo:<variant>`` loads, so their spec is just that.
        """
        tiny = self.config.planted == PlantedConfig.tiny(self.config.planted.seed)
        base = f"demo:{self.variant}{'-tiny' if tiny else ''}"
        return base if self.shipped else f"{base}@{self.path}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (``--json`` of ``spurious train demo``)."""
        return {
            "name": self.name,
            "variant": self.variant,
            "path": str(self.path),
            "spec": self.spec,
            "trained": self.trained,
            "shipped": self.shipped,
            "seconds": self.seconds,
            "config": self.config.to_dict(),
            "planted_root": str(self.planted_root),
            "evidence": self.evidence,
        }

    def summary_lines(self) -> list[str]:
        """Human-readable summary with the evidence table."""
        how = f"trained in {self.seconds:.1f} s" if self.trained else \
            f"{'shipped' if self.shipped else 'cached'} (trained in {self.seconds:.1f} s)"
        return [f"demo:{self.name} ({how}) -> {self.path}", *evidence_lines(self.evidence)]


def _default_name(config: DemoTrainConfig) -> str:
    for tiny in (False, True):
        if config == DemoTrainConfig.for_variant(config.variant, tiny=tiny):
            return f"{config.variant}{'-tiny' if tiny else ''}"
    return f"{config.variant}-{config.cache_key()}"


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:  # honours the umask (not mkstemp's 0600)
        torch.save(obj, tmp)


def _read_demo_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a ``spurious-demo-model`` checkpoint (ValueError when it is not one)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError,
            ImportError) as e:
        raise ValueError(f"cannot read demo checkpoint '{path}': {e}") from e
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"'{path}' is not a {CHECKPOINT_FORMAT!r} checkpoint (write one with "
            f"spurious.train.train_demo_model)"
        )
    missing = [k for k in ("state_dict", "arch", "class_names", "preprocessing", "metadata") if k not in obj]
    if missing:
        raise ValueError(f"demo checkpoint '{path}' lacks the keys {missing}; retrain it with force=True")
    return obj


def train_demo_model(
    variant: str,
    *,
    tiny: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    config: DemoTrainConfig | None = None,
    use_shipped: bool = True,
) -> DemoModelInfo:
    """Train a demo classifier on the planted dataset, or reuse its shipped or cached checkpoint.

    With ``use_shipped`` (default) and no ``force``, the weights that ship in the package for this
    recipe (:data:`SHIPPED_DIR`; the default standard and robust configs) are used as they are:
    the demo's figures are reproducible on any machine. Otherwise the cached checkpoint, else training.

    Generates the planted dataset under ``<cache>/planted/<config hash>`` if needed, trains on
    the CPU (deterministic for a given config, see the module doc), evaluates it with
    :func:`evaluate_demo_model`, logs the evidence, and writes the checkpoint atomically to
    ``<cache>/models/demo-<variant>-<train key>.pt``. The checkpoint is a ``torch.save`` dict
    readable with ``torch.load(weights_only=True)``: ``format``, ``version``, ``state_dict``,
    ``arch`` (:meth:`DemoNet.arch`), ``class_names``, ``preprocessing``
    (:meth:`Preprocessing.to_dict`) and ``metadata`` (train config, planted config hash,
    training seconds, evidence, torch version, threads).

    Args:
        variant: ``"standard"`` or ``"robust"``.
        tiny: the tiny planted data and a few epochs (seconds; for tests).
        cache_dir: cache folder; default :func:`demo_cache_dir`.
        force: retrain even if a checkpoint of this config is cached (never uses the shipped one).
        use_shipped: use the shipped weights when they exist for this recipe.
        progress: show a progress bar on stderr.
        config: a full training config instead of :meth:`DemoTrainConfig.for_variant`
            (``variant`` must match ``config.variant`` and ``tiny`` must be false).

    Returns:
        the checkpoint path, config, evidence and whether this call trained it.

    Raises:
        ValueError: unknown ``variant``, or a ``config`` that contradicts ``variant``/``tiny``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    if config is None:
        config = DemoTrainConfig.for_variant(variant, tiny=tiny)
    elif not isinstance(config, DemoTrainConfig):
        raise TypeError(f"config must be a DemoTrainConfig, got {type(config).__name__}")
    elif config.variant != variant or tiny:
        raise ValueError(
            f"config.variant={config.variant!r} with variant={variant!r}, tiny={tiny}: pass a "
            f"config whose variant matches, and set its planted config instead of tiny"
        )
    cache = _resolve_cache(cache_dir)
    path = _checkpoint_path(cache, config)
    name = _default_name(config)
    planted_root = _planted_dir(cache, config.planted)
    shipped = shipped_checkpoint(config) if use_shipped and not force else None
    if shipped is not None:
        meta = _read_demo_checkpoint(shipped)["metadata"]
        logger.info("demo:%s: using the shipped weights %s", name, shipped)
        return DemoModelInfo(name, variant, shipped, config, planted_root, False,
                             float(meta.get("seconds", float("nan"))), dict(meta["evidence"]), dict(meta),
                             shipped=True)
    if path.is_file() and not force:
        try:
            ckpt = _read_demo_checkpoint(path)
        except ValueError as e:
            logger.warning("%s; training again", e)
        else:
            meta = ckpt["metadata"]
            logger.info("demo:%s: using the cached checkpoint %s", name, path)
            return DemoModelInfo(name, variant, path, config, planted_root, False,
                                 float(meta.get("seconds", float("nan"))), dict(meta["evidence"]), dict(meta))

    planted = generate_planted(planted_root, config.planted)
    logger.info("demo:%s: training on %s (%d train images, %d threads); checkpoint -> %s",
                name, planted.root, planted.counts.get("train", 0), torch.get_num_threads(), path)
    start = time.perf_counter()
    net, stats = _train_net(config, planted, progress=progress)
    seconds = time.perf_counter() - start
    preprocessing = config.preprocessing()
    classifier = Classifier.from_module(net, preprocessing, planted.class_names, f"demo:{name}")
    evidence = evaluate_demo_model(classifier, planted)
    metadata = {
        "name": name,
        "train_config": config.to_dict(),
        "train_key": config.cache_key(),
        "planted_config_hash": config.planted.config_hash(),
        "planted_content_hash": planted.content_hash,
        "seconds": seconds,
        "evidence": evidence,
        "train_stats": stats,
        "torch_version": str(torch.__version__),
        "num_threads": torch.get_num_threads(),
        "train_code_version": _TRAIN_CODE_VERSION,
    }
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "state_dict": {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()},
        "arch": net.arch(),
        "class_names": list(planted.class_names),
        "preprocessing": preprocessing.to_dict(),
        "metadata": metadata,
    }
    _atomic_save(checkpoint, path)
    logger.info("demo:%s trained in %.1f s -> %s", name, seconds, path)
    for line in evidence_lines(evidence):
        logger.info("demo:%s %s", name, line)
    return DemoModelInfo(name, variant, path, config, planted.root, True, seconds, evidence, metadata)


# ----------------------------------------------------------------------------
# Loading (the ``demo:`` model source)
# ----------------------------------------------------------------------------


def load_demo_checkpoint(
    path: str | os.PathLike[str],
    *,
    spec: str | None = None,
    device: str | torch.device | None = None,
) -> Classifier:
    """Wrap a checkpoint written by :func:`train_demo_model` in a :class:`Classifier`.

    Args:
        path: the ``.pt`` file.
        spec: stored as :attr:`Classifier.spec` (default ``"demo:<variant>@<path>"``, a spec that
            :func:`spurious.models.load_model` resolves to this checkpoint again).
        device: where to put the model (default CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a demo checkpoint, or its weights do not fit its ``arch``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"demo checkpoint not found: '{path}'")
    ckpt = _read_demo_checkpoint(path)
    net = DemoNet.from_arch(ckpt["arch"])
    try:
        net.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"demo checkpoint '{path}' does not fit its arch {ckpt['arch']}: {e}") from e
    preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    return Classifier.from_module(net.eval(), preprocessing, ckpt["class_names"],
                                  spec or _checkpoint_spec(ckpt, path), device=device)


def _checkpoint_spec(ckpt: Mapping[str, Any], path: Path) -> str:
    """``demo:<variant>@<path>``: ``load_model`` loads the file with the architecture it stores."""
    variant = ckpt.get("metadata", {}).get("train_config", {}).get("variant")
    return f"demo:{variant if variant in VARIANTS else 'standard'}@{path.resolve()}"


def load_demo_model(
    name: str,
    *,
    pretrained: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Classifier:
    """The ``demo:<name>`` classifier (what ``load_model("demo:<name>")`` returns).

    Loads the cached checkpoint of the default config of ``name``, training it first (logged
    at INFO level, with the cache path) when missing.

    Args:
        name: one of :data:`DEMO_MODEL_NAMES` (``standard``, ``robust``, ``standard-tiny``,
            ``robust-tiny``).
        pretrained: ``False`` gives a randomly initialised :class:`DemoNet` of the same
            architecture (no data, no training).
        checkpoint: load this demo checkpoint instead of the cached one.
        device: where to put the model (default CPU).
        cache_dir: default :func:`demo_cache_dir`.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones).
    """
    variant, tiny = _parse_name(name)
    spec = f"demo:{name}"
    if checkpoint is not None:
        return load_demo_checkpoint(checkpoint, spec=f"{spec}@{Path(checkpoint)}", device=device)
    config = DemoTrainConfig.for_variant(variant, tiny=tiny)
    if not pretrained:
        net = DemoNet(config.planted.num_classes, config.widths, config.blocks, stem_pool=config.stem_pool,
                      antialias=config.antialias)
        return Classifier.from_module(net.eval(), config.preprocessing(),
                                      list(CLASS_SHAPES[: config.planted.num_classes]), spec, device=device)
    cache = _resolve_cache(cache_dir)
    path = _checkpoint_path(cache, config)
    if not path.is_file() and shipped_checkpoint(config) is None:
        logger.info("%s is not cached yet: training it now on the CPU (tiny: seconds, default: a few "
                    "minutes); it will be cached at %s", spec, path)
    info = train_demo_model(variant, tiny=tiny, cache_dir=cache, progress=True)
    return load_demo_checkpoint(info.path, spec=spec, device=device)
