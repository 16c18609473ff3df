"""The embedded default diffusion model: a small unconditional DDPM of the planted images (CPU).

A diffusers :class:`~diffusers.UNet2DModel` with a :class:`~diffusers.DDPMScheduler` (Ho et al.
2020), trained to predict ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` from ``x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps`` (v-prediction, Salimans & Ho 2022; ``t`` uniform, ``eps ~ N(0, I)``), each
image's squared error weighted by ``min(SNR_t, 5) / (SNR_t + 1)`` (Min-SNR-gamma, Hang et al. 2023;
the plain noise-prediction loss is a recipe option) on every image of the planted training split
and the unlabeled pool (all classes; class objects, spurious-only and background images), scaled to ``[-1, 1]``. The weights saved are an exponential moving average (EMA) of the
training weights, which helps a lot with a short run. It is the default model of the DVCE
counterfactual engine (Appendix H of the paper) on the planted data.

The folder is a plain diffusers ``DDPMPipeline`` folder (``model_index.json``, ``unet/``,
``scheduler/``; ``DDPMPipeline.from_pretrained(path)`` loads it), plus ``spurious_diffusion.json``
with the recipe and its training record. It is cached next to the demo classifiers::

    <cache>/models/diffusion-<config key>/        the finished folder (renamed into place whole)
    <cache>/models/diffusion-<config key>.partial.pt   the resumable training state (every
                                                  ``checkpoint_every`` steps; removed when done)

The default recipe's folder ships in the package (:data:`SHIPPED_DIR`, sha256 in its
``manifest.json``), so :func:`demo_diffusion_dir` never trains for minutes in a fresh install.

Determinism: the same config with the same torch version and thread count gives the same weights,
also across a resume: the initialisation uses a forked RNG seeded from ``seed``, each epoch's
order and each step's flips, noise and time steps come from generators seeded from ``(seed,
epoch)`` and ``(seed, step)``, and deterministic algorithms are on while training.

:func:`quality_check` samples the model with DDIM (the pipeline's own sampler) and asks the demo
classifier whether the samples look like planted images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from spurious._io import atomic_path, make_temp_dir, read_json, sha256_file, write_json
from spurious._io import cache_dir as _default_cache_dir
from spurious.demo.planted import (
    PlantedConfig,
    PlantedDataset,
    config_from_dict,
    generate_planted,
)

__all__ = [
    "DIFFUSION_CODE_VERSION",
    "DIFFUSION_METADATA",
    "SHIPPED_DIR",
    "DemoDiffusionConfig",
    "DemoDiffusionInfo",
    "DiffusionQuality",
    "demo_diffusion_dir",
    "quality_check",
    "shipped_diffusion_dir",
    "train_demo_diffusion",
]

logger = logging.getLogger(__name__)

DIFFUSION_CODE_VERSION = 1  # bump whenever the training code changes the weights it produces
DIFFUSION_METADATA = "spurious_diffusion.json"
"""The file in the pipeline folder with the recipe and the training record."""
_FORMAT = "spurious-demo-diffusion"
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTION_TYPES = ("epsilon", "v_prediction")

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
"""Where the default recipe's trained folder ships (``diffusion-<key>/``, listed in ``manifest.json``)."""


# ----------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoDiffusionConfig:
    """Everything that determines the diffusion model's weights (hashed into the cache key).

    Attributes:
        planted: the planted dataset to train on.
        include_pool: train on the unlabeled pool too (spurious-only and background images, so
            that the model can draw a feature without a class object), not only the train split.
        image_size: side of the generated images; the planted images are resized (antialiased)
            when it differs from ``planted.image_size``. Must be divisible by
            ``2 ** (len(block_out_channels) - 1)``.
        block_out_channels: UNet widths, one per resolution level.
        layers_per_block: ResNet blocks per level.
        norm_num_groups: GroupNorm groups (must divide every width).
        attention_levels: indices of the levels with self-attention (the UNet's middle block has
            attention in any case).
        train_timesteps: diffusion steps ``T`` of the forward process.
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"`` (cosine,
            Nichol & Dhariwal 2021).
        steps: optimiser steps.
        batch_size: images per step.
        lr: peak AdamW learning rate (linear warm-up over ``warmup_frac`` of the steps, then
            cosine decay to 0).
        warmup_frac: fraction of the steps with the warm-up.
        weight_decay: AdamW weight decay.
        grad_clip: gradient-norm clipping (0: none).
        ema_decay: EMA decay of the saved weights (with the usual ``(1 + s) / (10 + s)`` ramp).
        prediction_type: what the UNet predicts: ``"epsilon"`` (the noise, Ho et al. 2020) or
            ``"v_prediction"`` (``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``, Salimans & Ho 2022),
            written into the scheduler's config so that every diffusers sampler reads it.
        min_snr_gamma: 0 for the plain loss (every ``t`` weighted alike); ``gamma > 0`` weights each
            image's loss by ``min(SNR_t, gamma) / SNR_t`` (``/ (SNR_t + 1)`` for a v target) with
            ``SNR_t = abar_t / (1 - abar_t)`` (Min-SNR-gamma, Hang et al. 2023, their ``gamma = 5``):
            the low-noise steps, which only refine texture, weigh less, so a short run spends more
            of itself on the shapes.
        flip: random horizontal flips.
        checkpoint_every: save the resumable training state every this many steps (0: never).
        seed: seeds the initialisation, the order, the flips, the noise and the time steps.
    """

    planted: PlantedConfig = field(default_factory=PlantedConfig)
    include_pool: bool = True
    image_size: int = 64
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_levels: tuple[int, ...] = ()
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    steps: int = 1700
    batch_size: int = 32
    lr: float = 1e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    prediction_type: str = "v_prediction"
    min_snr_gamma: float = 5.0
    flip: bool = True
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.planted, PlantedConfig):
            raise TypeError(f"DemoDiffusionConfig.planted must be a PlantedConfig, got {type(self.planted).__name__}")
        for name in ("block_out_channels", "attention_levels"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise TypeError(f"DemoDiffusionConfig.{name} must be a sequence of ints, got {value!r}")
            object.__setattr__(self, name, tuple(_int(f"{name} item", v) for v in value))
        for name in ("image_size", "layers_per_block", "norm_num_groups", "train_timesteps", "steps",
                     "batch_size", "checkpoint_every", "seed"):
            object.__setattr__(self, name, _int(name, getattr(self, name)))
        for name in ("lr", "warmup_frac", "weight_decay", "grad_clip", "ema_decay", "min_snr_gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"DemoDiffusionConfig.{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "include_pool", bool(self.include_pool))
        object.__setattr__(self, "flip", bool(self.flip))
        widths = self.block_out_channels
        if not widths or min(widths) < 1:
            raise ValueError(f"block_out_channels must be one or more positive widths, got {widths}")
        if self.norm_num_groups < 1 or any(w % self.norm_num_groups for w in widths):
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every width in block_out_channels "
                f"{widths}; pick a common divisor such as 8"
            )
        levels = len(widths)
        if any(not 0 <= a < levels for a in self.attention_levels):
            raise ValueError(f"attention_levels {self.attention_levels} must index the {levels} levels (0..{levels - 1})")
        factor = 2 ** (levels - 1)
        if self.image_size < 8 or self.image_size % factor:
            raise ValueError(
                f"image_size={self.image_size} must be >= 8 and divisible by {factor} (the UNet halves it "
                f"{levels - 1} times); use e.g. {max(factor, 8) * max(1, round(self.image_size / max(factor, 8)))}"
            )
        if self.layers_per_block < 1 or self.train_timesteps < 2 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"need layers_per_block >= 1, train_timesteps >= 2, steps >= 1 and batch_size >= 1; got "
                f"{self.layers_per_block}, {self.train_timesteps}, {self.steps}, {self.batch_size}"
            )
        if self.beta_schedule not in _BETA_SCHEDULES:
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}; valid: {', '.join(_BETA_SCHEDULES)}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.grad_clip >= 0):
            raise ValueError(f"need lr > 0, weight_decay >= 0, grad_clip >= 0; got {self.lr}, {self.weight_decay}, "
                             f"{self.grad_clip}")
        if not (0 <= self.warmup_frac < 1 and 0 <= self.ema_decay < 1):
            raise ValueError(f"warmup_frac and ema_decay must lie in [0, 1); got {self.warmup_frac}, {self.ema_decay}")
        if self.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}; valid: {', '.join(_PREDICTION_TYPES)}")
        if self.min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be >= 0 (0: the plain loss); got {self.min_snr_gamma}")
        if self.checkpoint_every < 0 or self.seed < 0:
            raise ValueError(f"checkpoint_every and seed must be >= 0; got {self.checkpoint_every}, {self.seed}")

    @classmethod
    def tiny(cls, seed: int = 0) -> DemoDiffusionConfig:
        """A seconds-long recipe on :meth:`PlantedConfig.tiny` (32 px) for tests; its samples are noise."""
        return cls(planted=PlantedConfig.tiny(), image_size=32, block_out_channels=(8, 16), norm_num_groups=8,
                   steps=4, batch_size=8, checkpoint_every=2, seed=seed)

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict (tuples as lists, the planted config as a dict); see :meth:`from_dict`."""
        d = dataclasses.asdict(self)
        d["block_out_channels"], d["attention_levels"] = list(self.block_out_channels), list(self.attention_levels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> DemoDiffusionConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise ``ValueError``)."""
        return config_from_dict(cls, d)

    def cache_key(self) -> str:
        """16 hex digits: sha256 of this config (``checkpoint_every`` left out: it changes no weight),
        the planted config hash and the code version."""
        config = {**self.to_dict(), "planted": self.planted.config_hash()}
        del config["checkpoint_every"]
        if not self.min_snr_gamma:  # the recipes from before these options keep their keys
            del config["min_snr_gamma"]
        if self.prediction_type == "epsilon":
            del config["prediction_type"]
        text = json.dumps({"config": config, "code": DIFFUSION_CODE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def folder_name(self) -> str:
        """``diffusion-<cache key>``."""
        return f"diffusion-{self.cache_key()}"


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"DemoDiffusionConfig.{name} must be an int, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------
# Model and data
# ----------------------------------------------------------------------------


def _make_unet(config: DemoDiffusionConfig) -> Any:  # Any: diffusers' UNet2DModel (untyped for mypy)
    from diffusers import UNet2DModel

    levels = range(len(config.block_out_channels))
    down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels)
    up = tuple(("AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D") for i in reversed(levels))
    return UNet2DModel(
        sample_size=config.image_size, in_channels=3, out_channels=3, layers_per_block=config.layers_per_block,
        block_out_channels=config.block_out_channels, down_block_types=down, up_block_types=up,
        norm_num_groups=config.norm_num_groups,
    )


def _make_scheduler(config: DemoDiffusionConfig) -> Any:  # Any: diffusers' DDPMScheduler (untyped library)
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.train_timesteps, beta_schedule=config.beta_schedule,
                         prediction_type=config.prediction_type, clip_sample=True)


def _load_images(planted: PlantedDataset, config: DemoDiffusionConfig) -> Tensor:
    """Every training image (train split, and the pool) as ``uint8 [N, 3, S, S]`` in a fixed order."""
    from PIL import Image

    paths = sorted(planted.train.glob("*/*.png"))
    if config.include_pool:
        paths += sorted(planted.pool.glob("*.png"))
    if len(paths) < config.batch_size:
        raise ValueError(f"the planted data at {planted.root} has {len(paths)} training images, fewer than "
                         f"batch_size={config.batch_size}")
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if x.shape[-1] != config.image_size:
        x = F.interpolate(x.float(), size=(config.image_size, config.image_size), mode="bilinear",
                          antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x


def _sub_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([*parts, 0xD1F]).generate_state(1, dtype=np.uint64)[0]) & 0x7FFF_FFFF_FFFF_FFFF


def _lr_at(step: int, config: DemoDiffusionConfig) -> float:
    warm = int(config.warmup_frac * config.steps)
    if step < warm:
        return config.lr * (step + 1) / warm
    t = (step - warm) / max(1, config.steps - warm)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def _target(x0: Tensor, noise: Tensor, abar: Tensor, v_prediction: bool) -> Tensor:
    """What the UNet learns to predict: the noise, or ``v = sqrt(abar) noise - sqrt(1 - abar) x0``."""
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0 if v_prediction else noise


def _diffusion_loss(pred: Tensor, target: Tensor, abar: Tensor, min_snr_gamma: float, *, v_prediction: bool = False) -> Tensor:
    """The training loss of a batch: the plain mean squared error of the prediction, or with
    ``min_snr_gamma > 0`` each image's mean squared error weighted by ``min(SNR, gamma) / SNR``
    (``min(SNR, gamma) / (SNR + 1)`` for a v target, the same weight on the implied x0 error),
    ``SNR = abar / (1 - abar)`` of its time step (``abar`` ``[N]``), then averaged."""
    if not min_snr_gamma:
        return F.mse_loss(pred, target)
    per_image = (pred - target).square().mean(dim=tuple(range(1, pred.dim())))
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=min_snr_gamma) / (snr + 1 if v_prediction else snr)
    return (per_image * weight).mean()


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was, warn_only=warn_only)


class DiffusionTrainStats(TypedDict):
    """The training record in ``spurious_diffusion.json``."""

    steps: int
    num_images: int
    seconds: float  # training time (summed over resumed runs)
    loss_curve: list[list[float]]  # [step, mean loss of the last ``checkpoint_every`` (or 100) steps]
    resumed_at: list[int]  # the steps a run resumed from
    num_threads: int
    load_average: list[float]  # os.getloadavg() at the end (other processes share the CPU)


def _train_unet(config: DemoDiffusionConfig, planted: PlantedDataset, partial: Path, *,
                progress: bool) -> tuple[torch.nn.Module, DiffusionTrainStats]:
    """Train (resuming from ``partial`` when present); returns the EMA UNet and the record."""
    from tqdm.auto import tqdm

    x_all = _load_images(planted, config)
    n = int(x_all.shape[0])
    per_epoch = n // config.batch_size
    scheduler = _make_scheduler(config)
    abar = scheduler.alphas_cumprod.to(torch.float32)
    report_every = config.checkpoint_every or 100
    with _deterministic(_sub_seed(config.seed, 0)):
        unet = _make_unet(config)
        ema = [p.detach().clone() for p in unet.parameters()]
        optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        stats: DiffusionTrainStats = {"steps": config.steps, "num_images": n, "seconds": 0.0, "loss_curve": [],
                                      "resumed_at": [], "num_threads": torch.get_num_threads(), "load_average": []}
        start_step = 0
        if partial.is_file():
            state = torch.load(partial, map_location="cpu", weights_only=True)
            if state.get("key") == config.cache_key():
                unet.load_state_dict(state["unet"])
                optimizer.load_state_dict(state["optimizer"])
                ema = state["ema"]
                stats = state["stats"]
                start_step = int(state["step"])
                stats["resumed_at"].append(start_step)
                logger.info("diffusion: resuming %s at step %d of %d", partial.name, start_step, config.steps)
        began = time.perf_counter()
        seconds_before = stats["seconds"]
        bar = tqdm(total=config.steps, initial=start_step, desc="train diffusion", unit="step",
                   disable=not progress, file=sys.stderr, leave=False)
        perm, perm_epoch, losses = torch.empty(0, dtype=torch.long), -1, []
        unet.train()
        v_target = config.prediction_type == "v_prediction"
        try:
            for step in range(start_step, config.steps):
                epoch, b = divmod(step, per_epoch)
                if epoch != perm_epoch:
                    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_sub_seed(config.seed, 1, epoch)))
                    perm_epoch = epoch
                g = torch.Generator().manual_seed(_sub_seed(config.seed, 2, step))
                x0 = x_all[perm[b * config.batch_size:(b + 1) * config.batch_size]].float().div_(127.5).sub_(1.0)
                if config.flip:
                    flips = torch.rand((x0.shape[0],), generator=g) < 0.5
                    x0 = torch.where(flips[:, None, None, None], x0.flip(3), x0)
                noise = torch.randn(x0.shape, generator=g)
                t = torch.randint(0, config.train_timesteps, (x0.shape[0],), generator=g)
                a = abar[t].view(-1, 1, 1, 1)
                xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
                loss = _diffusion_loss(unet(xt, t).sample, _target(x0, noise, a, v_target), a.view(-1),
                                       config.min_snr_gamma, v_prediction=v_target)
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
                optimizer.step()
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in unet.parameters()], 1.0 - decay)
                losses.append(float(loss.detach()))
                bar.update(1)
                done = step + 1
                if done % report_every == 0 or done == config.steps:
                    stats["loss_curve"].append([float(done), float(np.mean(losses))])
                    bar.set_postfix(loss=f"{np.mean(losses):.4f}")
                    losses = []
                if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                    stats["seconds"] = seconds_before + time.perf_counter() - began
                    with atomic_path(partial) as tmp:
                        torch.save({"key": config.cache_key(), "step": done, "unet": unet.state_dict(),
                                    "optimizer": optimizer.state_dict(), "ema": ema, "stats": stats}, tmp)
        finally:
            bar.close()
        stats["seconds"] = seconds_before + time.perf_counter() - began
        stats["load_average"] = [round(v, 2) for v in os.getloadavg()]
        with torch.no_grad():
            for p, e in zip(unet.parameters(), ema, strict=True):
                p.copy_(e)
    return unet.eval(), stats


# ----------------------------------------------------------------------------
# Train or reuse
# ----------------------------------------------------------------------------


@dataclass
class DemoDiffusionInfo:
    """The diffusion model folder that :func:`train_demo_diffusion` trained or found.

    Attributes:
        path: the ``DDPMPipeline`` folder.
        config: the recipe.
        key: ``config.cache_key()``.
        trained: this call trained it.
        shipped: it is the copy that ships in the package.
        seconds: training time of the run that made it.
        metadata: the folder's ``spurious_diffusion.json``.
    """

    path: Path
    config: DemoDiffusionConfig
    key: str
    trained: bool
    shipped: bool
    seconds: float
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary (``spurious train-diffusion --json``)."""
        stats = self.metadata.get("train_stats", {})
        return {"path": str(self.path), "key": self.key, "trained": self.trained, "shipped": self.shipped,
                "seconds": self.seconds, "config": self.config.to_dict(),
                "final_loss": (stats.get("loss_curve") or [[0, float("nan")]])[-1][1],
                "num_images": stats.get("num_images"), "load_average": stats.get("load_average")}

    def summary_lines(self) -> list[str]:
        """Where the folder is, how it was made, and the last training loss."""
        how = f"trained in {self.seconds:.0f} s" if self.trained else \
            f"{'shipped' if self.shipped else 'cached'} (trained in {self.seconds:.0f} s)"
        c = self.config
        d = self.to_dict()
        return [f"diffusion model {self.key} ({how}) -> {self.path}",
                f"  UNet2DModel {c.image_size}x{c.image_size}, widths {list(c.block_out_channels)}, "
                f"{c.steps} steps of {c.batch_size} on {d['num_images']} images, final loss {d['final_loss']:.4f}"]


def _resolve_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()).resolve()


def _read_metadata(folder: Path) -> dict[str, Any] | None:
    """The folder's metadata when it is a complete pipeline folder of this format, else ``None``."""
    meta_path = folder / DIFFUSION_METADATA
    if not (meta_path.is_file() and (folder / "model_index.json").is_file() and (folder / "unet").is_dir()):
        return None
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == _FORMAT else None


def shipped_diffusion_dir(config: DemoDiffusionConfig | None = None, shipped_dir: Path | None = None) -> Path | None:
    """The shipped folder of ``config`` (default: the default recipe), or ``None`` when none ships for it.

    Raises:
        ValueError: a listed file's sha256 differs from the manifest (a damaged install).
    """
    config = DemoDiffusionConfig() if config is None else config
    root = SHIPPED_DIR if shipped_dir is None else Path(shipped_dir)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return None
    entry = read_json(manifest).get("diffusion", {}).get(config.folder_name())
    folder = root / config.folder_name()
    if entry is None or not folder.is_dir():
        return None
    for rel, digest in entry["sha256"].items():
        got = sha256_file(folder / rel) if (folder / rel).is_file() else "missing"
        if got != digest:
            raise ValueError(f"the shipped diffusion model {folder} is damaged ({rel}: sha256 {got[:16]}, expected "
                             f"{digest[:16]}): reinstall spurious, or train one with `spurious train-diffusion --retrain`")
    return folder


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``final`` (replacing an old one without a half-written moment)."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train_demo_diffusion(
    config: DemoDiffusionConfig | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    retrain: bool = False,
    progress: bool = True,
    use_shipped: bool = True,
) -> DemoDiffusionInfo:
    """Train the diffusion model of the planted images, or reuse its shipped or cached folder.

    Generates the planted data under ``<cache>/planted/<hash>`` if needed, trains on the CPU
    (resuming from ``<cache>/models/diffusion-<key>.partial.pt`` after an interruption), and renames
    the finished ``DDPMPipeline`` folder into ``<cache>/models/diffusion-<key>/`` whole: a failed
    run never leaves a half-written folder.

    Args:
        config: the recipe (default :class:`DemoDiffusionConfig`, whose folder ships).
        cache_dir: cache folder; default ``$SPURIOUS_CACHE``, else ``~/.cache/spurious``.
        retrain: train again even when a shipped or cached folder exists (and replace the cached one).
        progress: progress bar on stderr.
        use_shipped: use the folder that ships in the package when it exists for ``config``.

    Raises:
        TypeError: ``config`` is not a :class:`DemoDiffusionConfig`.
        ValueError: damaged shipped files, or too few images for the batch size.
    """
    if config is None:
        config = DemoDiffusionConfig()
    elif not isinstance(config, DemoDiffusionConfig):
        raise TypeError(f"config must be a DemoDiffusionConfig, got {type(config).__name__}")
    key = config.cache_key()
    if use_shipped and not retrain:
        shipped = shipped_diffusion_dir(config)
        if shipped is not None and (meta := _read_metadata(shipped)) is not None:
            return DemoDiffusionInfo(shipped, config, key, False, True, float(meta["train_stats"]["seconds"]), meta)
    cache = _resolve_cache(cache_dir)
    models = cache / "models"
    final = models / config.folder_name()
    if not retrain and (meta := _read_metadata(final)) is not None:
        return DemoDiffusionInfo(final, config, key, False, False, float(meta["train_stats"]["seconds"]), meta)
    partial = models / f"{config.folder_name()}.partial.pt"
    if retrain and partial.exists():
        partial.unlink()
    planted = generate_planted(cache / "planted" / config.planted.config_hash(), config.planted)
    logger.info("diffusion: training %s on %s (%d threads) -> %s", key, planted.root, torch.get_num_threads(), final)
    unet, stats = _train_unet(config, planted, partial, progress=progress)
    from diffusers import DDPMPipeline
    from diffusers import __version__ as diffusers_version

    metadata: dict[str, Any] = {
        "format": _FORMAT, "key": key, "config": config.to_dict(), "code_version": DIFFUSION_CODE_VERSION,
        "planted_config_hash": config.planted.config_hash(), "planted_content_hash": planted.content_hash,
        "train_stats": stats, "torch_version": str(torch.__version__), "diffusers_version": diffusers_version,
    }
    models.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(models, f".tmp-{config.folder_name()}.")
    try:
        pipeline: Any = DDPMPipeline(unet=unet, scheduler=_make_scheduler(config))  # Any: diffusers is untyped here
        pipeline.save_pretrained(tmp)
        write_json(tmp / DIFFUSION_METADATA, metadata)
        _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    logger.info("diffusion: trained in %.0f s -> %s", stats["seconds"], final)
    return DemoDiffusionInfo(final, config, key, True, False, stats["seconds"], metadata)


def demo_diffusion_dir(cache_dir: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Path:
    """The default diffusion model's ``DDPMPipeline`` folder: the shipped copy, else the cached one, else trained now."""
    return train_demo_diffusion(cache_dir=cache_dir, progress=progress).path


# ----------------------------------------------------------------------------
# Quality check
# ----------------------------------------------------------------------------


@dataclass
class DiffusionQuality:
    """How planted-like the samples of a diffusion model are, by a demo classifier (:func:`quality_check`).

    Attributes:
        path: the pipeline folder.
        n: samples drawn.
        sample_steps: DDIM steps per sample.
        seed: sampling seed.
        threshold: the probability a sample's top class must reach to count as confident.
        confident_fraction: share of samples whose top class probability is ``>= threshold``.
        class_shares: share of samples per top-1 class (class name -> share).
        max_share_ratio: the largest share times the number of classes (1 = even; 2 = twice its share).
        classifier: the classifier's spec.
        seconds: sampling and classification time.
        grid: the PNG grid written, if any.
    """

    path: Path
    n: int
    sample_steps: int
    seed: int
    threshold: float
    confident_fraction: float
    class_shares: dict[str, float]
    max_share_ratio: float
    classifier: str
    seconds: float
    grid: Path | None = None

    @property
    def passes(self) -> bool:
        """The target of the embedded default: >= 70 % confident and no class above twice its share."""
        return self.confident_fraction >= 0.7 and self.max_share_ratio <= 2.0

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary."""
        d = dataclasses.asdict(self)
        d["path"], d["grid"] = str(self.path), (str(self.grid) if self.grid else None)
        d["passes"] = self.passes
        return d

    def summary_lines(self) -> list[str]:
        """The two figures and the per-class shares."""
        shares = ", ".join(f"{k} {v:.2f}" for k, v in self.class_shares.items())
        return [f"quality of {self.n} samples ({self.sample_steps} DDIM steps, seed {self.seed}, {self.seconds:.0f} s) "
                f"by {self.classifier}: {self.confident_fraction:.1%} get p >= {self.threshold} (target >= 70 %), "
                f"largest class share {self.max_share_ratio:.2f}x its 1/K (target <= 2) -> "
                f"{'pass' if self.passes else 'MISS'}",
                f"  top-1 shares: {shares}",
                *([f"  sample grid -> {self.grid}"] if self.grid else [])]


def _load_pipeline_parts(path: str | os.PathLike[str]) -> tuple[torch.nn.Module, Any]:
    """The ``UNet2DModel`` (eval mode, float32) and ``DDPMScheduler`` config of a pipeline folder.

    Raises:
        ValueError: the folder is missing or not an unconditional diffusers image pipeline.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(path).expanduser()
    if not (folder / "model_index.json").is_file() or not (folder / "unet" / "config.json").is_file():
        raise ValueError(f"'{folder}' is not a diffusers pipeline folder (no model_index.json and unet/config.json); "
                         f"pass a folder written by DDPMPipeline.save_pretrained, e.g. `spurious train-diffusion`")
    try:
        unet = UNet2DModel.from_pretrained(folder / "unet")
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"cannot load the diffusion model in '{folder}': {e}") from e
    return unet.float().eval(), scheduler


def quality_check(
    path: str | os.PathLike[str] | None = None,
    *,
    n: int = 256,
    seed: int = 0,
    sample_steps: int = 50,
    sample_batch_size: int = 64,
    threshold: float = 0.8,
    classifier: str = "demo:standard",
    grid: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> DiffusionQuality:
    """Sample ``n`` images with DDIM (eta 0) and classify them with a demo classifier.

    Args:
        path: a pipeline folder (default :func:`demo_diffusion_dir`).
        n: samples.
        seed: seeds the initial noise.
        sample_steps: DDIM steps.
        sample_batch_size: samples per batch.
        threshold: the probability that counts as confident.
        classifier: a model spec (``spurious.models.load_model``); the samples are resized to its input size.
        grid: write a PNG grid of (up to 64 of) the samples here.
        progress: progress bar on stderr.

    Raises:
        ValueError: bad counts, or ``path`` is not a pipeline folder.
    """
    from diffusers import DDIMPipeline, DDIMScheduler
    from tqdm.auto import tqdm

    from spurious.models import load_model

    if n < 1 or sample_steps < 1 or sample_batch_size < 1 or not 0 < threshold <= 1:
        raise ValueError(f"need n, sample_steps, sample_batch_size >= 1 and threshold in (0, 1]; got {n}, {sample_steps}, "
                         f"{sample_batch_size}, {threshold}")
    folder = demo_diffusion_dir(progress=progress) if path is None else Path(path).expanduser()
    unet, ddpm = _load_pipeline_parts(folder)
    pipe: Any = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(ddpm.config))  # Any: untyped library
    pipe.set_progress_bar_config(disable=True)
    clf = load_model(classifier)
    size = clf.preprocessing.input_size
    began = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    images, probs = [], []
    with torch.inference_mode():
        for start in tqdm(range(0, n, sample_batch_size), desc="diffusion samples", disable=not progress, file=sys.stderr,
                          leave=False):
            out = pipe(batch_size=min(sample_batch_size, n - start), generator=generator, num_inference_steps=sample_steps,
                       eta=0.0, output_type="np").images
            x = torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).float()
            images.append(x)
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
            probs.append(torch.softmax(clf(x.clamp(0, 1)), dim=1))
    p = torch.cat(probs)
    top, arg = p.max(dim=1)
    k = p.shape[1]
    counts = torch.bincount(arg, minlength=k).double() / n
    names = list(clf.class_names)
    grid_path = None
    if grid is not None:
        grid_path = _write_grid(torch.cat(images)[:64], Path(grid).expanduser())
    return DiffusionQuality(folder, n, sample_steps, seed, threshold, float((top >= threshold).double().mean()),
                            {names[i]: round(float(counts[i]), 4) for i in range(k)}, float(counts.max() * k),
                            getattr(clf, "spec", classifier), time.perf_counter() - began, grid_path)


def _write_grid(x: Tensor, path: Path) -> Path:
    from PIL import Image

    n, _, h, w = x.shape
    cols = min(8, n)
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, dtype=np.uint8)
    arr = (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = arr[i]
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path
