"""The diffusion engine of the counterfactual stage: DVCE with a component term (the paper's Appendix H).

Diffusion Visual Counterfactual Explanations (Augustin et al., NeurIPS 2022) on an unconditional
``diffusers`` :class:`~diffusers.UNet2DModel` with its DDPM or DDIM scheduler. The start image
``x_orig`` (resized to the UNet's size, values mapped to ``[-1, 1]``) is noised to ``t_start`` with the
scheduler's ``add_noise``, then denoised with the scheduler's ``step``; after each step the Gaussian mean
is shifted::

    mu~_t = mu_t(x_t) + ||Sigma_t|| ( C_c n(grad log p_k(x0_hat))
                                    + s C_a n(grad alpha_l^k(x0_hat))
                                    - C_d n(grad d(x0_hat, x_orig)) )

* ``x0_hat``: the scheduler's denoised estimate of ``x_t`` (``pred_original_sample``); the classifier
  only ever sees it (through its own preprocessing, after resizing to its input size), never ``x_t``;
  the gradients are taken with respect to ``x0_hat`` (one classifier forward and backward per step and
  term, no backward through the UNet);
* ``n(v) = v / ||v||_2`` per image (0 stays 0); ``d`` the L1 distance (DVCE's) or, as an option, L2;
* ``s = +1`` to add the component, ``-1`` to remove it (only the component term flips: the class term
  keeps ``p_k`` up, so ``remove`` takes the spurious feature away while keeping the class);
* ``||Sigma_t||`` the Frobenius norm of the step's covariance ``beta~_t I``:
  ``beta~_t sqrt(n)`` with ``n = 3 H W`` and ``beta~_t = (1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)``
  the posterior variance between the step's timestep and the next one (``abar_prev = 1`` after the
  last). A DDPM step samples ``mu_t + sqrt(beta~_t) z``, so shifting the sample shifts the mean; a
  DDIM step (``eta = 0``) is deterministic and gets the same shift.

Defaults (DVCE's published settings for its ImageNet DVCEs, the authors' repository
``valentyn1boreiko/DVCEs``: ``classifier_lambda 0.1``, ``lp_custom 1`` with ``lp_custom_value 0.15``,
``timestep_respacing 200``, ``skip_timesteps 100``): ``C_c = 0.1``, ``C_d = 0.15``, L1, 200 steps,
``t_start = 0.5`` (the last 100 of the 200 steps). The component weight ``C_a = 0.1`` is our choice:
the paper's Appendix H values were lost from its text. ``C_c = 0`` is a pure component edit.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from spurious._io import read_json
from spurious._tensors import inputs_only
from spurious.counterfactual._optimize import (
    Counterfactuals,
    check_basis_fits,
    check_component,
    check_mode,
    check_start_images,
    check_weight,
    score_images,
)
from spurious.models import Classifier
from spurious.npca import ClassBasis

if TYPE_CHECKING:
    from diffusers.models.unets.unet_2d import UNet2DModel
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

__all__ = ["DISTANCES", "DOMAIN_CHECK_IMAGES", "DOMAIN_RATIO_LIMIT", "DOMAIN_T_START_LIMIT", "DiffusionModel",
           "DomainCheck", "DvceSettings", "GuidanceTerms", "check_dvce_settings", "domain_check",
           "domain_check_skipped", "dvce_images", "guidance_terms", "load_diffusion", "posterior_variance"]

DISTANCES: tuple[str, ...] = ("l1", "l2")
SCHEDULERS: tuple[str, ...] = ("DDPMScheduler", "DDIMScheduler")


@dataclass(frozen=True)
class DvceSettings:
    """The settings of one DVCE run (recorded in ``run.json`` and every pair).

    Attributes:
        class_weight: ``C_c``, the weight of ``n(grad log p_k)``.
        component_weight: ``C_a``, the weight of ``n(grad alpha_l^k)`` (sign by mode).
        distance_weight: ``C_d``, the weight of ``-n(grad d(x0_hat, x_orig))``.
        distance: ``"l1"`` or ``"l2"``.
        steps: length of the scheduler's chain (``set_timesteps``).
        t_start: share of the chain that is run: noise to ``timesteps[steps - round(steps t_start)]``.
    """

    class_weight: float = 0.1
    component_weight: float = 0.1
    distance_weight: float = 0.15
    distance: str = "l1"
    steps: int = 200
    t_start: float = 0.5

    @property
    def denoising_steps(self) -> int:
        """How many scheduler steps run (``round(steps t_start)``, at least 1)."""
        return max(1, round(self.steps * self.t_start))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_dvce_settings(settings: DvceSettings) -> DvceSettings:
    """``settings`` when every value is valid; else a ``ValueError`` naming it."""
    for name in ("class_weight", "component_weight", "distance_weight"):
        check_weight(getattr(settings, name), name)
    if settings.distance not in DISTANCES:
        raise ValueError(f"unknown distance {settings.distance!r}; use 'l1' (DVCE's) or 'l2'")
    steps = settings.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"diffusion_steps must be a positive integer (the scheduler's chain), got {steps!r}")
    t = settings.t_start
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
        raise ValueError(f"t_start must be in (0, 1] (the share of the chain that is run; DVCE: 0.5), got {t!r}")
    return settings


# ---------------------------------------------------------------------------- the diffusion model


@dataclass
class DiffusionModel:
    """An unconditional ``diffusers`` UNet with its scheduler (what :func:`load_diffusion` returns).

    Attributes:
        unet: the :class:`diffusers.UNet2DModel` (eval mode, no parameter gradients).
        scheduler: its DDPM or DDIM scheduler.
        path: the folder it was loaded from.
        sample_size: ``(H, W)`` the UNet was trained at, or ``None`` when its config gives none.
        factor: the UNet's downsampling factor (image sides must be multiples of it).
        fingerprint: a hash of its configs and weights.
    """

    unet: UNet2DModel
    scheduler: DDPMScheduler | DDIMScheduler
    path: Path
    sample_size: tuple[int, int] | None
    factor: int
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def image_size(self, fallback: Sequence[int]) -> tuple[int, int]:
        """The ``(H, W)`` the UNet runs at: its ``sample_size``, else ``fallback`` (the workspace's), checked."""
        size = self.sample_size or (int(fallback[0]), int(fallback[1]))
        if size[0] % self.factor or size[1] % self.factor:
            what = "its sample_size" if self.sample_size else "the workspace's images (the UNet gives no sample_size)"
            raise ValueError(f"the UNet of {self.path} cannot take {size[0]}x{size[1]} images ({what}): its "
                             f"{int(math.log2(self.factor)) + 1} down blocks need sides that are multiples of "
                             f"{self.factor}; use a diffusion model trained at a size it can take")
        return size


def _unet_dirs(root: Path) -> tuple[Path, Path]:
    """``(unet folder, scheduler folder)`` of a pipeline folder or of a bare UNet folder with ``scheduler/``."""
    if (root / "model_index.json").is_file():
        index = read_json(root / "model_index.json")
        entry = index.get("unet") if isinstance(index, dict) else None
        if not entry:
            raise ValueError(f"the diffusion pipeline {root} has no unet (model_index.json lists "
                             f"{sorted(k for k in index if not k.startswith('_'))}); DVCE needs an unconditional "
                             "UNet2DModel pipeline such as DDPMPipeline")
        return root / "unet", root / "scheduler"
    if (root / "config.json").is_file():
        return root, root / "scheduler"
    raise ValueError(f"{root} is not a diffusers model folder: it has neither model_index.json (a pipeline such as "
                     "DDPMPipeline.save_pretrained writes) nor config.json (a UNet2DModel); pass such a folder")


def _fingerprint(folders: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            h.update(path.name.encode())
            with path.open("rb") as f:
                while block := f.read(1 << 24):
                    h.update(block)
    return h.hexdigest()[:16]


def load_diffusion(path: str | os.PathLike[str], device: str | torch.device | None = None) -> DiffusionModel:
    """Load an unconditional diffusers ``UNet2DModel`` and its DDPM/DDIM scheduler from a folder.

    ``path`` is a pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``: the ``DDPMPipeline``
    layout) or a ``UNet2DModel`` folder (``config.json`` and weights) with a ``scheduler/`` subfolder.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a diffusers folder; no unet or scheduler; a UNet that is not an unconditional
            RGB ``UNet2DModel`` (e.g. a ``UNet2DConditionModel`` or a class-conditional one); a scheduler
            other than DDPM / DDIM; unreadable weights.
    """
    import diffusers

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"the diffusion model folder {root} does not exist; pass a diffusers folder "
                                "(model_index.json, unet/, scheduler/, as DDPMPipeline.save_pretrained writes)")
    if not root.is_dir():
        raise ValueError(f"the diffusion model {root} is a file; pass a diffusers folder (model_index.json, unet/, "
                         "scheduler/)")
    unet_dir, sched_dir = _unet_dirs(root)
    if not (unet_dir / "config.json").is_file():
        raise ValueError(f"the diffusion model {root} has no UNet config ({unet_dir / 'config.json'}); DVCE needs "
                         "an unconditional UNet2DModel")
    config = read_json(unet_dir / "config.json")
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name != "UNet2DModel":
        raise ValueError(f"the UNet of {root} is a {name}, not an unconditional image model (UNet2DModel); DVCE "
                         "guides an unconditional diffusion model with the classifier, text- or class-conditional "
                         "models are not supported")
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise ValueError(f"the UNet2DModel of {root} is class-conditional (class_embed_type/num_class_embeds); "
                         "DVCE needs an unconditional one")
    if config.get("in_channels", 3) != 3 or config.get("out_channels", 3) not in (3, 6):
        raise ValueError(f"the UNet2DModel of {root} has {config.get('in_channels')} input / "
                         f"{config.get('out_channels')} output channels; DVCE needs an RGB image model (3 / 3 or 6)")
    sched_config = sched_dir / "scheduler_config.json"
    if not sched_config.is_file():
        raise ValueError(f"the diffusion model {root} has no scheduler ({sched_config}); save the pipeline with "
                         "its DDPMScheduler or DDIMScheduler")
    sched_name = read_json(sched_config).get("_class_name")
    if sched_name not in SCHEDULERS:
        raise ValueError(f"the scheduler of {root} is a {sched_name}; DVCE here runs {' or '.join(SCHEDULERS)} "
                         "(replace scheduler/scheduler_config.json by one of them, same betas)")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
        scheduler = getattr(diffusers, sched_name).from_pretrained(sched_dir)
    except OSError as err:
        raise ValueError(f"cannot load the diffusion model {root}: {str(err).splitlines()[0]}") from None
    unet.eval().requires_grad_(False)
    if device is not None:
        unet.to(torch.device(device))
    size = unet.config.sample_size
    sample = None if size is None else (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    folders = [unet_dir, sched_dir] if unet_dir != root else [root, sched_dir]
    return DiffusionModel(unet=unet, scheduler=scheduler, path=root, sample_size=sample, factor=factor,
                          fingerprint=_fingerprint(folders))


def posterior_variance(scheduler: DDPMScheduler | DDIMScheduler, t: int, prev_t: int) -> float:
    """``beta~_t = (1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)`` from the scheduler's ``alphas_cumprod``
    (``abar_prev = 1`` for ``prev_t < 0``)."""
    abar = scheduler.alphas_cumprod
    a_t = float(abar[int(t)])
    a_prev = float(abar[int(prev_t)]) if prev_t >= 0 else 1.0
    return (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)


# ---------------------------------------------------------------------------- the guidance


@dataclass
class GuidanceTerms:
    """The normalised gradients at ``x0_hat`` ``[N, 3, H, W]`` (UNet size and value range), one row per image.

    Attributes:
        log_prob: ``n(grad log p_k)`` (zeros when not asked for).
        component: ``n(grad alpha_l^k)`` (unsigned: ascent of ``alpha``; zeros when not asked for).
        distance: ``n(grad d(x0_hat, x_orig))`` (ascent of the distance; zeros when not asked for).
    """

    log_prob: Tensor
    component: Tensor
    distance: Tensor

    def shift(self, sign: float, settings: DvceSettings) -> Tensor:
        """``C_c n(grad log p_k) + s C_a n(grad alpha) - C_d n(grad d)`` (to be scaled by ``||Sigma_t||``)."""
        return (settings.class_weight * self.log_prob + sign * settings.component_weight * self.component
                - settings.distance_weight * self.distance)


def _unit(v: Tensor) -> Tensor:
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return torch.where(norm > 0, v / norm.clamp_min(torch.finfo(v.dtype).tiny), torch.zeros_like(v))


def _to_classifier(x: Tensor, size: Sequence[int]) -> Tensor:
    """UNet space ``[-1, 1]`` -> the classifier's ``[0, 1]`` at ``size`` (differentiable; no clamp)."""
    x = (x + 1.0) / 2.0
    if tuple(x.shape[-2:]) != (int(size[0]), int(size[1])):
        x = F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False, antialias=True)
    return x


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == (int(size[0]), int(size[1])):
        return x
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False, antialias=True)


def guidance_terms(classifier: Classifier, basis: ClassBasis, component: int, x0_hat: Tensor, x_orig: Tensor, *,
                   distance: str = "l1", terms: tuple[bool, bool, bool] = (True, True, True)) -> GuidanceTerms:
    """The three normalised gradients of the DVCE shift at ``x0_hat`` (see the module docstring).

    Args:
        classifier: the guiding model (its ``phi`` must have the basis's ``D``); inputs in ``[0, 1]``.
        basis: the class's basis (``k`` and ``alpha_l^k``); ``component``: ``l``.
        x0_hat: denoised estimates ``[N, 3, H, W]`` in UNet space (``[-1, 1]``), any ``H, W``.
        x_orig: the start images in the same space and size.
        distance: ``"l1"`` (gradient ``sign(x0_hat - x_orig)``) or ``"l2"`` (``x0_hat - x_orig``).
        terms: which of (class, component, distance) to compute; the others are zeros.
    """
    want_class, want_component, want_distance = terms
    zeros = torch.zeros_like(x0_hat)
    g_class, g_component = zeros, zeros
    if want_class or want_component:
        A, c = basis.projection([component])
        a_l = torch.as_tensor(A[0], dtype=torch.float32, device=classifier.device)
        x = x0_hat.detach().float().requires_grad_(True)
        with torch.enable_grad():
            phi, logits = classifier.phi_and_logits(_to_classifier(x, classifier.input_size[1:]))
            if want_class:
                log_p = torch.log_softmax(logits.float(), dim=1)[:, basis.k]
                g_class = _unit(torch.autograd.grad(log_p.sum(), x, retain_graph=want_component)[0]).to(x0_hat.dtype)
            if want_component:
                alpha = phi.float() @ a_l - float(c[0])
                g_component = _unit(torch.autograd.grad(alpha.sum(), x)[0]).to(x0_hat.dtype)
    g_distance = zeros
    if want_distance:
        diff = x0_hat.detach() - x_orig.to(x0_hat)
        g_distance = _unit(torch.sign(diff) if distance == "l1" else diff)
    return GuidanceTerms(log_prob=g_class, component=g_component, distance=g_distance)


def _generators(n: int, seed: int | None) -> list[torch.Generator]:
    """One CPU generator per image, all seeded alike: an image's result does not depend on its batch."""
    base = 0 if seed is None else int(seed)
    return [torch.Generator(device="cpu").manual_seed(base) for _ in range(n)]


def _noise(shape: Sequence[int], generators: list[torch.Generator], device: torch.device) -> Tensor:
    return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generators]).to(device)


def denoise(diffusion: DiffusionModel, x_orig: Tensor, settings: DvceSettings, *, seed: int | None = 0,
            guide: Callable[[Tensor, int], Tensor] | None = None) -> Tensor:
    """Noise ``x_orig`` ``[N, 3, H, W]`` (UNet space) to ``t_start`` and denoise it with the scheduler's steps.

    ``guide(x0_hat, t_index) -> Tensor`` (the shift direction, before ``||Sigma_t||``) is added after each
    step when given; ``None`` is plain denoising. Returns ``x`` after the last step (UNet space).
    """
    scheduler = diffusion.scheduler
    scheduler.set_timesteps(settings.steps)
    timesteps = scheduler.timesteps
    first = len(timesteps) - min(settings.denoising_steps, len(timesteps))
    run = timesteps[first:]
    generators = _generators(x_orig.shape[0], seed)
    dev = diffusion.device
    x_orig = x_orig.to(dev)
    noise = _noise(x_orig.shape, generators, dev)
    x = scheduler.add_noise(x_orig, noise, cast(torch.IntTensor, run[:1].to(dev)))
    n = float(np.prod(x.shape[1:]))
    # one generator per image: diffusers' randn_tensor draws each row from its own (typed as a single one)
    per_image = cast(torch.Generator, generators)
    for i, t in enumerate(run):
        with torch.no_grad():
            out = diffusion.unet(x, t.to(dev)).sample
            step = scheduler.step(out, int(t), x, generator=per_image)  # DDIM: eta = 0, its default
        if isinstance(step, tuple):
            raise TypeError("the scheduler's step returned a tuple; expected its output dataclass")
        x = step.prev_sample
        if guide is not None and step.pred_original_sample is not None:
            prev_t = int(run[i + 1]) if i + 1 < len(run) else -1
            sigma_norm = posterior_variance(scheduler, int(t), prev_t) * math.sqrt(n)
            if sigma_norm > 0:
                x = x + sigma_norm * guide(step.pred_original_sample, i)
    return x


def dvce_images(classifier: Classifier, basis: ClassBasis, component: int, x0: Tensor, diffusion: DiffusionModel, *,
                mode: str = "add", settings: DvceSettings | None = None, batch_size: int | None = None,
                seed: int | None = 0) -> Counterfactuals:
    """DVCE counterfactuals of component ``l`` of class ``k`` on start images ``x0`` (module docstring).

    Args:
        classifier: the guiding model (inputs in ``[0, 1]``); its ``phi`` must have the basis's ``D``.
        basis: the class's :class:`spurious.npca.ClassBasis`; ``component``: ``l``, 0-based.
        x0: start images ``[N, 3, H, W]`` in ``[0, 1]`` at the classifier's input size.
        diffusion: :func:`load_diffusion`'s model (on the device to run on).
        mode: ``"add"`` (``+C_a``) or ``"remove"`` (``-C_a``).
        settings: :class:`DvceSettings` (default: DVCE's).
        batch_size: images per batch (default all); ``seed``: the noise (per image, so batch-independent).

    Returns:
        :class:`Counterfactuals` at the classifier's size: ``x0 + resize(x_dvce - resize(x0))`` clamped to
        ``[0, 1]`` (where the UNet size differs, the unchanged parts keep the original's resolution);
        ``norm`` is the distance, ``eps`` NaN, ``steps`` the denoising steps run, ``objective`` the signed
        ``s alpha_l^k`` after.
    """
    mode = check_mode(mode)
    settings = check_dvce_settings(settings or DvceSettings())
    check_basis_fits(classifier, basis)
    component = check_component(basis, component)
    check_start_images(x0, classifier)
    ws_size = tuple(int(s) for s in classifier.input_size[1:])
    size = diffusion.image_size(ws_size)
    sign = 1.0 if mode == "add" else -1.0
    wanted = (settings.class_weight > 0, settings.component_weight > 0, settings.distance_weight > 0)
    x0 = x0.detach().float().cpu()
    n = x0.shape[0]
    step = n if batch_size is None else max(batch_size, 1)
    outs = []
    with inputs_only(classifier):
        for start in range(0, n, step):
            xb = x0[start:start + step]
            x_unet = _resize(xb, size) * 2.0 - 1.0
            x_ref = x_unet.to(diffusion.device)

            def guide(x0_hat: Tensor, _i: int, x_ref: Tensor = x_ref) -> Tensor:
                terms = guidance_terms(classifier, basis, component, x0_hat.to(classifier.device),
                                       x_ref.to(classifier.device), distance=settings.distance, terms=wanted)
                return terms.shift(sign, settings).to(x0_hat.device)

            result = denoise(diffusion, x_unet, settings, seed=seed, guide=guide if any(wanted) else None)
            change = (result.detach().float().cpu().clamp(-1, 1) + 1.0) / 2.0 - (x_unet + 1.0) / 2.0
            outs.append((xb + _resize(change, ws_size)).clamp(0, 1))
    images = torch.cat(outs)
    before = score_images(classifier, basis, component, x0, batch_size)
    after = score_images(classifier, basis, component, images, batch_size)
    objective = sign * after.alpha if after.alpha is not None else np.full(n, np.nan)
    return Counterfactuals(k=basis.k, component=component, mode=mode, norm=settings.distance, eps=float("nan"),
                           steps=settings.denoising_steps, original=x0, images=images, objective=objective,
                           before=before, after=after)


# ---------------------------------------------------------------------------- can the model denoise the images?

DOMAIN_RATIO_LIMIT = 0.6
"""Largest ``l1_reconstruction / l1_between`` of a diffusion model that denoises the images back (:func:`domain_check`)."""
DOMAIN_CHECK_IMAGES = 4
"""Start images :func:`domain_check` denoises (the first of the run)."""
DOMAIN_T_START_LIMIT = 0.75
"""Above this ``t_start`` plain denoising forgets much of the image even with a working model: no check."""


@dataclass(frozen=True)
class DomainCheck:
    """Can the diffusion model denoise the start images back? Plain denoising (no guidance) of a few of them.

    DVCE edits an image by noising it to ``t_start`` and denoising it. A model that cannot denoise the
    images (untrained or damaged weights, a scheduler config other than the one it was trained with,
    e.g. ``prediction_type``) turns every start image into something else: its "counterfactuals" are
    not edits of the image, whatever ``p(k)`` does. Denoised without guidance, an image comes back close
    to itself from a working model, and about as far as another image of the batch is from a broken one.

    A coarse check: a working model trained on *other* images often passes (at ``t_start`` 0.5 much of
    the image survives the noise; the planted-data model gives natural photos a ratio of 0.32), and so
    do subtler scheduler mismatches (docs/dvce.md has the measurements).

    Attributes:
        n: start images denoised (the first ``n`` of the run).
        l1_reconstruction: mean per-pixel L1 (values in ``[0, 1]``, at the UNet's size) between each image and
            its plain reconstruction.
        l1_between: mean per-pixel L1 between each image and the next one of the same ``n`` (the scale of
            "an unrelated image").
        top1_kept: share of the ``n`` whose guiding-model top-1 the reconstruction keeps (for information: a
            weak model changes it for images near a class boundary, so it is not the criterion).
        limit: the largest ``ratio`` that counts as agreeing.
        t_start: the ``t_start`` of the check.
        seed: its noise seed.
    """

    n: int
    l1_reconstruction: float
    l1_between: float
    top1_kept: float
    limit: float
    t_start: float
    seed: int | None

    @property
    def ratio(self) -> float:
        """``l1_reconstruction / l1_between`` (``inf`` when the images are all equal)."""
        return self.l1_reconstruction / self.l1_between if self.l1_between > 0 else math.inf

    @property
    def agrees(self) -> bool:
        """The reconstructions are much closer to their images than the images are to each other."""
        return self.ratio <= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio if math.isfinite(self.ratio) else None, "agrees": self.agrees}

    def line(self) -> str:
        """One line for the run's summary."""
        verdict = "denoises them back" if self.agrees else "CANNOT DENOISE them back"
        return (f"diffusion check ({self.n} start images denoised without guidance from t_start {self.t_start:g}): "
                f"L1 to the original {self.l1_reconstruction:.3f} vs {self.l1_between:.3f} between images "
                f"(ratio {self.ratio:.2f}, limit {self.limit:g}), top-1 kept {self.top1_kept:.0%}: {verdict}")

    def warning(self, model: str | os.PathLike[str]) -> str:
        """The loud message when the check fails."""
        return (f"the diffusion model {model} cannot denoise these images: denoised without guidance from t_start "
                f"{self.t_start:g}, {self.n} start images came back {self.l1_reconstruction:.3f} (mean L1 per "
                f"pixel) from themselves, {self.ratio:.2f}x the {self.l1_between:.3f} between two different start "
                f"images (a working model stays below {self.limit:g}x). Its DVCE pairs are not edits of the start "
                "images, whatever p(k) says. Likely causes: untrained or damaged weights, or a scheduler config "
                "(scheduler/scheduler_config.json: prediction_type, betas) other than the one the UNet was "
                "trained with; see docs/dvce.md")


def domain_check_skipped(settings: DvceSettings, num_images: int) -> str | None:
    """Why :func:`domain_check` cannot run with these settings on ``num_images`` start images, else ``None``."""
    if num_images < 2:
        return f"needs at least 2 start images (it compares images with each other); got {num_images}"
    if settings.t_start > DOMAIN_T_START_LIMIT:
        return (f"needs t_start <= {DOMAIN_T_START_LIMIT:g} (here t_start {settings.t_start:g} > "
                f"{DOMAIN_T_START_LIMIT:g}: from that much noise plain denoising forgets much of the image even "
                "with a working model)")
    return None


def domain_check(classifier: Classifier, x0: Tensor, diffusion: DiffusionModel, settings: DvceSettings | None = None,
                 *, n: int = DOMAIN_CHECK_IMAGES, seed: int | None = 0, limit: float = DOMAIN_RATIO_LIMIT) -> DomainCheck:
    """Denoise the first ``n`` start images without guidance and compare them with themselves (:class:`DomainCheck`).

    Args:
        classifier: the guiding model (only its top-1 is read).
        x0: start images ``[N, 3, H, W]`` in ``[0, 1]`` at the classifier's input size; ``N >= 2``.
        diffusion: the model to check; ``settings``: the run's (its ``steps`` and ``t_start``).
        n: images to denoise (at most ``N``; at least 2, the distance between images needs two).
        seed: the noise (the run's seed).
        limit: the largest ratio that agrees.

    Raises:
        ValueError: fewer than 2 images, or ``t_start`` above :data:`DOMAIN_T_START_LIMIT`.
    """
    settings = check_dvce_settings(settings or DvceSettings())
    check_start_images(x0, classifier)
    m = min(int(n), int(x0.shape[0]))
    why_not = domain_check_skipped(settings, m)
    if why_not is not None:
        raise ValueError(f"the diffusion check {why_not}")
    x = x0[:m].detach().float().cpu()
    ws_size = tuple(int(s) for s in classifier.input_size[1:])
    size = diffusion.image_size(ws_size)
    original = _resize(x, size)
    back = (denoise(diffusion, original * 2.0 - 1.0, settings, seed=seed).detach().float().cpu().clamp(-1, 1) + 1) / 2
    with torch.no_grad(), inputs_only(classifier):
        top_before = classifier(x.to(classifier.device)).argmax(1).cpu()
        top_after = classifier(_resize(back, ws_size).to(classifier.device)).argmax(1).cpu()
    return DomainCheck(n=m, l1_reconstruction=float((back - original).abs().mean()),
                       l1_between=float((original - original.roll(1, 0)).abs().mean()),
                       top1_kept=float((top_before == top_after).float().mean()), limit=float(limit),
                       t_start=float(settings.t_start), seed=seed)
