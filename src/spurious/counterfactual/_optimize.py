"""The optimisation of the counterfactual stage: the objective, the budgets, APGD, the before/after numbers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from spurious._tensors import inputs_only
from spurious.apgd import apgd
from spurious.counterfactual._l1 import apgd_l1
from spurious.models import Classifier
from spurious.npca import ClassBasis

__all__ = ["MODES", "NORMS", "Counterfactuals", "ImageScores", "counterfactual_images", "default_budget",
           "score_images"]

MODES: tuple[str, ...] = ("add", "remove")
NORMS: tuple[str, ...] = ("l2", "linf", "l1")
L1_SHARE = 0.01
"""Share of the input values the default L1 budget is sized for (and an L1 step may change)."""


def default_budget(norm: str, input_size: Sequence[int]) -> float:
    """Default radius ``eps`` of the ball around the start image, for ``norm`` and ``n`` input values.

    * ``l2``: the NPFV budget ``eps_2 = 30 sqrt(n / (3 * 224 * 224))`` (:func:`spurious.visualize.default_eps`:
      30 at 224 px, 8.57 at 64 px);
    * ``linf``: ``eps_2 / sqrt(n)`` (0.077, about 20/255): the largest L-inf ball inside that L2 ball;
    * ``l1``: ``eps_2 sqrt(n / 100)``: the L1 mass of the L2 budget spent evenly on 1 % of the values
      (1164 at 224 px; 95 at 64 px), for sparse edits.
    """
    from spurious.visualize import default_eps

    key = check_norm(norm)
    n = int(np.prod([int(s) for s in input_size]))
    eps2 = float(default_eps(input_size))
    return {"l2": eps2, "linf": eps2 / math.sqrt(n), "l1": eps2 * math.sqrt(n * L1_SHARE)}[key]


def check_norm(norm: str) -> str:
    key = str(norm).lower().replace("-", "")
    key = {"2": "l2", "inf": "linf", "1": "l1"}.get(key, key)
    if key not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use 'l2', 'linf' or 'l1'")
    return key


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use 'add' (maximise alpha_l^k) or 'remove' (minimise it)")
    return mode


def check_eps(eps: float | None, norm: str, input_size: Sequence[int]) -> float:
    if eps is None:
        return default_budget(norm, input_size)
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(eps)) or not eps > 0:
        raise ValueError(f"eps must be a finite number > 0 (the radius of the {norm} ball around each start "
                         f"image; default {default_budget(norm, input_size):.4g} for this input size), got {eps!r}")
    return float(eps)


def check_weight(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 = term off), got {value!r}")
    return float(value)


def check_component(basis: ClassBasis, component: int) -> int:
    if isinstance(component, bool) or not isinstance(component, (int, np.integer)) \
            or not 0 <= int(component) < basis.num_components:
        raise ValueError(f"component {component!r} does not exist for class {basis.k}: it has components "
                         f"0..{basis.num_components - 1} (0-based, by eigenvalue; see WS/npca/manifest.json)")
    return int(component)


def check_basis_fits(classifier: Classifier, basis: ClassBasis, what: str = "the model") -> None:
    if basis.mu.shape[0] != classifier.num_features:
        raise ValueError(f"the neural PCA of class {basis.k} has D={basis.mu.shape[0]} features but {what} "
                         f"{classifier.spec!r} has D={classifier.num_features}: alpha_l^k needs the workspace's "
                         "feature space (use the workspace's model, or one with the same features)")


@dataclass
class ImageScores:
    """What one model says about a batch of images ``[N]`` (float64 / int64 numpy arrays).

    Attributes:
        alpha: ``alpha_l^k`` with the workspace's basis on this model's ``phi``, or ``None`` when the
            model's feature dimension differs from the basis's.
        probability: softmax probability of class ``k``.
        logit: the logit ``f_k``.
        top1: the predicted class.
    """

    alpha: np.ndarray | None
    probability: np.ndarray
    logit: np.ndarray
    top1: np.ndarray


@dataclass
class Counterfactuals:
    """Counterfactuals of one component on a batch of start images (what :func:`counterfactual_images` returns).

    Attributes:
        k, component, mode, norm, eps, steps: what was optimised (``mode`` ``"add"``/``"remove"``).
        original: float32 ``[N, 3, H, W]`` in ``[0, 1]`` on the CPU, the start images ``x_0``.
        images: float32 ``[N, 3, H, W]`` in ``[0, 1]`` on the CPU, the counterfactuals, inside the ball.
        objective: float64 ``[N]``, the maximised objective at ``images``.
        before, after: :class:`ImageScores` of the optimising model at ``original`` / ``images``.
    """

    k: int
    component: int
    mode: str
    norm: str
    eps: float
    steps: int
    original: Tensor
    images: Tensor
    objective: np.ndarray
    before: ImageScores
    after: ImageScores


def score_images(classifier: Classifier, basis: ClassBasis, component: int, images: Tensor,
                 batch_size: int | None = None) -> ImageScores:
    """``alpha_l^k``, ``p(k)``, ``f_k`` and the top-1 class of ``images`` ``[N, 3, H, W]`` on ``classifier``.

    ``alpha`` is ``<A_l, phi(x)> - c_l`` with ``A, c`` of :meth:`spurious.npca.ClassBasis.projection`,
    computed in float64 from ``phi``; ``None`` when the classifier's ``D`` differs from the basis's.
    """
    k = basis.k
    fits = basis.mu.shape[0] == classifier.num_features
    A, c = basis.projection([component]) if fits else (None, None)
    alphas, probs, logits_k, top1 = [], [], [], []
    step = images.shape[0] if batch_size is None else batch_size
    with torch.no_grad(), inputs_only(classifier):
        for start in range(0, images.shape[0], max(step, 1)):
            phi, logits = classifier.phi_and_logits(images[start:start + step].to(classifier.device))
            lg = logits.double().cpu()
            probs.append(torch.softmax(lg, dim=1)[:, k].numpy())
            logits_k.append(lg[:, k].numpy())
            top1.append(lg.argmax(dim=1).numpy())
            if A is not None and c is not None:
                alphas.append(phi.double().cpu().numpy() @ A[0] - c[0])
    return ImageScores(alpha=np.concatenate(alphas) if fits else None, probability=np.concatenate(probs),
                       logit=np.concatenate(logits_k), top1=np.concatenate(top1).astype(np.int64))


def _objective(classifier: Classifier, basis: ClassBasis, component: int, x0: Tensor, sign: float,
               keep_weight: float, logprob_weight: float) -> Callable[[Tensor], Tensor]:
    """``J(x)`` to maximise for the start images ``x0`` (one row each); see the package docstring."""
    dev = classifier.device
    A, c = basis.projection([component])
    a_l = torch.as_tensor(A[0], dtype=torch.float32, device=dev)
    c_l = float(c[0])
    k = basis.k
    keep: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = None
    if keep_weight > 0:
        others = [j for j in range(basis.num_components) if j != component]
        A_o, c_o = basis.projection(others)
        A_t = torch.as_tensor(A_o, dtype=torch.float32, device=dev)
        c_t = torch.as_tensor(c_o, dtype=torch.float32, device=dev)
        other_classes = torch.tensor([j for j in range(classifier.num_classes) if j != k], device=dev)
        with torch.no_grad():
            phi0, logits0 = classifier.phi_and_logits(x0)
            alpha0 = phi0.float() @ A_t.T - c_t
            logit0 = logits0.float()[:, other_classes]
        keep = (A_t, c_t, alpha0, other_classes, logit0)

    def objective(x: Tensor) -> Tensor:
        phi, logits = classifier.phi_and_logits(x)
        phi = phi.float()
        value = sign * (phi @ a_l - c_l)
        if logprob_weight > 0:
            value = value + sign * logprob_weight * torch.log_softmax(logits.float(), dim=1)[:, k]
        if keep is not None:
            A_t, c_t, alpha0, other_classes, logit0 = keep
            drift = (phi @ A_t.T - c_t - alpha0).square().mean(dim=1) if A_t.shape[0] else 0.0
            moved = (logits.float()[:, other_classes] - logit0).square().mean(dim=1) \
                if other_classes.numel() else 0.0
            value = value - keep_weight * (drift + moved)
        return value

    return objective


def counterfactual_images(classifier: Classifier, basis: ClassBasis, component: int, x0: Tensor, *,
                          mode: str = "remove", norm: str = "l2", eps: float | None = None, steps: int = 100,
                          keep_weight: float = 0.0, logprob_weight: float = 0.0, batch_size: int | None = None,
                          seed: int | None = 0) -> Counterfactuals:
    """Feature counterfactuals of component ``l`` of class ``k`` on real images (DESIGN.md "Math").

    ``x* = argmax`` (``mode="add"``) or ``argmin`` (``"remove"``) of ``alpha_l^k(x)`` over
    ``||x - x_0||_p <= eps``, ``x in [0, 1]^n``, per start image ``x_0``, with the APGD of the NPFV
    (:func:`spurious.apgd.apgd` for L2 / L-inf; the L1 variant of ``_l1`` for L1), plus the optional
    terms of the package docstring (``keep_weight``, ``logprob_weight``; 0 = off). The classifier's
    training mode and ``requires_grad`` flags are restored afterwards.

    Args:
        classifier: the optimising model (inputs in ``[0, 1]``); its ``phi`` must have the basis's ``D``.
        basis: the class's :class:`spurious.npca.ClassBasis` (the workspace's).
        component: ``l``, 0-based.
        x0: start images ``[N, 3, H, W]`` in ``[0, 1]`` (the classifier's input size).
        mode: ``"add"`` or ``"remove"``.
        norm: ``"l2"``, ``"linf"`` or ``"l1"``.
        eps: radius (default :func:`default_budget`).
        steps: APGD steps (>= 1).
        keep_weight, logprob_weight: weights of the optional terms (>= 0).
        batch_size: images per APGD batch (default all).
        seed: APGD seed (the runs start at ``x_0``, so they are deterministic).

    Returns:
        :class:`Counterfactuals`.

    Raises:
        ValueError: unknown mode or norm, ``eps <= 0``, a component that does not exist, start images
            of the wrong shape or outside ``[0, 1]``, or a basis of another feature dimension.
    """
    mode, key = check_mode(mode), check_norm(norm)
    check_basis_fits(classifier, basis)
    component = check_component(basis, component)
    check_start_images(x0, classifier)
    radius = check_eps(eps, key, classifier.input_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    keep_weight = check_weight(keep_weight, "keep_weight")
    logprob_weight = check_weight(logprob_weight, "logprob_weight")
    sign = 1.0 if mode == "add" else -1.0
    x0 = x0.detach().float().cpu()
    n = x0.shape[0]
    step = n if batch_size is None else batch_size
    images, values = [], []
    with inputs_only(classifier):
        for start in range(0, n, max(step, 1)):
            xb = x0[start:start + step].to(classifier.device)
            objective = _objective(classifier, basis, component, xb, sign, keep_weight, logprob_weight)
            if key == "l1":
                result = apgd_l1(objective, xb, eps=radius, steps=steps, share=L1_SHARE)
            else:
                result = apgd(objective, xb, eps=radius, norm=key, steps=steps, seed=seed)
            images.append(result.x.detach().float().cpu())
            values.append(result.objective.double().numpy())
    out = torch.cat(images)
    return Counterfactuals(k=basis.k, component=component, mode=mode, norm=key, eps=radius, steps=steps,
                           original=x0, images=out, objective=np.concatenate(values),
                           before=score_images(classifier, basis, component, x0, batch_size),
                           after=score_images(classifier, basis, component, out, batch_size))


def check_start_images(x0: object, classifier: Classifier) -> None:
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        raise TypeError(f"start images must be a float torch.Tensor [N, 3, H, W] in [0, 1], got "
                        f"{type(x0).__name__ if not isinstance(x0, Tensor) else x0.dtype}")
    want = tuple(classifier.input_size)
    if x0.dim() != 4 or tuple(x0.shape[1:]) != want or x0.shape[0] < 1:
        raise ValueError(f"start images have shape {tuple(x0.shape)}, the model {classifier.spec!r} takes "
                         f"[N, {', '.join(map(str, want))}]; load files with the model's preprocessing (resize + "
                         "crop), e.g. by passing paths instead of tensors")
    lo, hi = float(x0.min()), float(x0.max())
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"start images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; undo any "
                         "mean/std normalisation first")
