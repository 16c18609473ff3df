"""The demo classifiers' training recipe: config, L2 PGD, augmentation and the training loop (CPU).

Two variants, both trained by :func:`train_net` on the planted dataset:

* ``standard``: plain empirical risk minimisation (cross-entropy, SGD with Nesterov momentum,
  warm-up + cosine learning rate, random crop + flip);
* ``robust``: L2 PGD adversarial training (Madry et al. 2018): after a few clean epochs, every
  training batch is replaced by ``x' ~ argmax CE(f(x'), y)`` over ``||x' - x||_2 <= eps``,
  ``x' in [0, 1]^n``, found by :func:`pgd_l2`. Feature visualizations (NPFV, DESIGN.md "Math")
  are only meaningful on such a model.

Choice of ``eps`` for the robust model: the reference ImageNet models of the paper are L2-robust
at ``eps = 3`` for 3x224x224 inputs, i.e. ``3 / sqrt(150528) = 0.0077`` RMS per pixel value;
CIFAR-10 robust models commonly use ``eps = 0.5`` at 3x32x32 (``0.0090`` RMS). At 3x64x64
(12288 values) the same RMS is ``eps`` 0.86-1.0; we use ``eps = 1.0``, scaled with the image
side for other sizes (``eps = 1.0 * image_size / 64``; 0.5 for the 32 px tiny data). The NPFV
budget of ``spurious.visualize`` at 64 px is 8.57, about 9x the training ``eps``, close to the
paper's ratio (30 / 3). The earlier recipe used ``eps = 0.5``, because at 1.0 the then 6-px
feeder was blurred out and not learned; the planted features are now larger (a 17-21 px feeder,
a 6-px frame, a 22-27 px label with bold strokes, see :mod:`spurious.demo.planted`) and the
robust model learns all of them at ``eps = 1.0``. PGD uses 2 steps of length ``1.25 eps`` after
a random start (budget: a third step would add ~25 % of training time), ramping ``eps`` up over
the first 15 % of the adversarial steps. The first 4 epochs are clean: the network leaves its
initial plateau there at a third of the cost of adversarial epochs.

Determinism: the same config on the same machine (same torch version and number of threads)
gives bit-identical weights: the initialisation uses a forked global RNG seeded from
``seed``, shuffling, augmentation and the PGD random starts use their own seeded
``torch.Generator``, and ``torch.use_deterministic_algorithms(True)`` is on while training. The
caller's RNG state and determinism setting are restored afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from spurious.datasets import image_folder, load_image
from spurious.demo._network import DemoNet
from spurious.demo.planted import PlantedConfig, PlantedDataset, config_from_dict
from spurious.models import Preprocessing

__all__ = [
    "DEMO_MEAN",
    "DEMO_STD",
    "TRAIN_CODE_VERSION",
    "VARIANTS",
    "DemoTrainConfig",
    "EpochStats",
    "TrainStats",
    "pgd_l2",
    "train_net",
]

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("standard", "robust")
"""Training variants: plain ERM and L2 PGD adversarial training."""

TRAIN_CODE_VERSION = 2  # bump whenever the training code changes the weights it produces

DEMO_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEMO_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

_REFERENCE_EPS = 1.0  # L2 radius of the robust model for 3x64x64 inputs (see the module doc)
_REFERENCE_SIZE = 64  # eps is scaled with the image side for other sizes


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
        :class:`~spurious.demo.planted.PlantedConfig` (3000 train images, 64 px); tiny:
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

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict (tuples as lists, the planted config as a dict); see :meth:`from_dict`."""
        d = dataclasses.asdict(self)
        d["widths"], d["blocks"] = list(self.widths), list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> DemoTrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise ``ValueError``)."""
        return config_from_dict(cls, d)

    def cache_key(self) -> str:
        """16 hex digits: sha256 of this config, the planted config hash and the code version."""
        payload = {
            "config": {**self.to_dict(), "planted": self.planted.config_hash()},
            "train_code": TRAIN_CODE_VERSION,
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


class EpochStats(TypedDict):
    """Training statistics of one epoch (in :class:`TrainStats`)."""

    epoch: int  # 1-based
    adversarial: bool
    loss: float  # mean cross-entropy over the epoch's batches
    train_accuracy: float  # on the (augmented, for adversarial epochs attacked) training batches


class TrainStats(TypedDict):
    """What :func:`train_net` reports (stored in the checkpoint's metadata as ``train_stats``)."""

    steps: int
    adversarial_steps: int
    num_train: int
    epochs: list[EpochStats]


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


def train_net(
    config: DemoTrainConfig, planted: PlantedDataset, *, progress: bool
) -> tuple[DemoNet, TrainStats]:
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
    stats: TrainStats = {"steps": total, "adversarial_steps": adv_total, "num_train": n, "epochs": []}

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
                epoch_stats: EpochStats = {"epoch": epoch + 1, "adversarial": adversarial,
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
