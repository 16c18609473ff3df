"""APGD: maximise any differentiable per-image scalar over an L2 or L-inf ball inside the [0, 1] box.

This is the optimiser behind the NPFV (neural PCA feature visualization, DESIGN.md "Math")::

    x* = argmax_x  objective(x)   subject to   ||x - x_0||_p <= eps,   x in [0, 1]^n

solved per image with Auto-PGD (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", Algorithm 1), which needs no step-size tuning:

* steps ``x + eta * g / ||g||_2`` (L2) or ``x + eta * sign(g)`` (L-inf), initial ``eta = 2 eps``;
* momentum ``x_{k+1} = P(x_k + a (z_{k+1} - x_k) + (1 - a)(x_k - x_{k-1}))`` with
  ``z_{k+1} = P(x_k + eta * direction)`` and ``a = 0.75`` (``a = 1`` on the first step and on the
  first step after a restart);
* checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (:func:`default_checkpoints`). At each one the
  step size of an image is halved, and the image restarts from its best point so far, when

  1. fewer than ``rho * (w_j - w_{j-1})`` of the steps since the last checkpoint increased the
     objective (``f(x_{i+1}) > f(x_i)``), or
  2. its step size was not halved at the last checkpoint and its best value has not improved
     since then;

* the best iterate is returned.

``P`` is the *exact* Euclidean projection onto ``ball ∩ box`` (:func:`project`). Every image has its
own step size, counters and best point, so an image's trajectory does not depend on the rest of the
batch (as long as the objective of image ``i`` depends on image ``i`` only, e.g. a model in eval
mode). The objective is evaluated exactly ``steps + 1`` times (the start and each step), with one
backward pass per evaluation except the last; the returned history reuses those values.

Example:
    >>> x0 = torch.full((8, 3, 224, 224), 0.5)                        # doctest: +SKIP
    >>> objective = lambda x: classifier.phi(x) @ direction           # doctest: +SKIP
    >>> result = apgd(objective, x0, eps=30.0, steps=200)             # doctest: +SKIP
    >>> result.x.shape, result.objective.shape                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from spurious._tensors import check_images

__all__ = ["APGDResult", "apgd", "default_checkpoints", "linear_optimum", "project"]

NORMS: tuple[str, ...] = ("l2", "linf")
INITS: tuple[str, ...] = ("zero", "random")

# The L2 projection's root iteration stops when no image's t grew by more than this (relative).
_PROJECT_RTOL = 1e-7
_PROJECT_MAX_ITER = 200
# Rows whose float32 result leaves the ball by more than this (relative) are redone in float64.
_PROJECT_SLACK = 2e-6
# How per-row sums of the gathered coordinates are taken: "packed" (row reductions of a padded
# [N, W] layout, any device) or "cumsum" (differences of one cumulative sum; kept as a cross-check).
_SEGMENT_SUM = "packed"


@dataclass
class APGDResult:
    """What :func:`apgd` returns.

    Attributes:
        x: best iterate per image ``[N, ...]`` (shape, dtype and device of ``x0``), detached;
            inside the ball and the box.
        objective: ``[N]`` float32 on the CPU: the objective at ``x`` (the best value seen).
        history: ``[steps + 1, N]`` float32 on the CPU: the best value so far after the start
            (row 0) and after each step; non-decreasing along dim 0.
        steps: number of steps taken (the objective was evaluated ``steps + 1`` times).
    """

    x: Tensor
    objective: Tensor
    history: Tensor
    steps: int


# ----------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------


def _check_norm(norm: str) -> str:
    key = str(norm).lower().replace("-", "")
    key = {"2": "l2", "inf": "linf"}.get(key, key)
    if key not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use 'l2' or 'linf'")
    return key


def _check_eps(eps: float | Tensor, n_images: int, like: Tensor) -> Tensor:
    """``eps`` as a ``[N]`` tensor of ``like``'s dtype/device; finite and > 0."""
    if isinstance(eps, Tensor):
        t = eps.detach().to(device=like.device, dtype=like.dtype).flatten()
        if t.numel() == 1:
            t = t.expand(n_images)
        if t.numel() != n_images:
            raise ValueError(
                f"eps must be a number or a tensor with one radius per image [{n_images}], "
                f"got shape {tuple(eps.shape)}"
            )
    else:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise TypeError(f"eps must be a positive number, got {type(eps).__name__}")
        t = torch.full((n_images,), float(eps), dtype=like.dtype, device=like.device)
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(
            f"eps must be finite and > 0 (the radius of the ball around x0), got {eps!r}"
        )
    return t


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1], got {type(value).__name__}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------
# Projection onto ball ∩ box
# ----------------------------------------------------------------------------


class _Projector:
    """Exact Euclidean projection onto ``ball(x0, eps) ∩ [0, 1]^n`` for rows ``[N, n]``, in place.

    Holds the centre, the radii and two scratch buffers, so that the projections of an APGD run
    allocate no full-size tensors (on a CPU every fresh large allocation page-faults).

    L2, KKT: ``y = clip((z + lam x0) / (1 + lam), 0, 1)`` with ``lam >= 0``; with
    ``t = 1 / (1 + lam)`` in ``(0, 1]`` that is ``y(t) = clip(x0 + t d, 0, 1)``, ``d = z - x0``, and
    ``t`` is the largest value with ``h(t) = ||y(t) - x0||^2 <= eps^2`` (``t = 1`` when ``clip(z)`` is
    inside the ball). Coordinate ``i`` is clipped once ``t >= tau_i = gap_i / |d_i|`` (``gap_i`` =
    distance from ``x0_i`` to the bound in the direction of ``d_i``), so ``h`` is piecewise
    ``h(t) = A(t) t^2 + B(t)``, ``A = sum_{tau_i > t} d_i^2``, ``B = sum_{tau_i <= t} gap_i^2``.
    Starting from ``t_0 = eps / ||d||`` (feasible), the root of the current piece
    ``t' = sqrt((eps^2 - B) / A)`` never overshoots (coordinates that clip later only lower ``h``),
    so ``t`` grows monotonically, stays feasible, and stops at the exact root once the clipped set
    no longer changes (a few iterations; bisection on ``lam`` converges to the same point, slower).

    Only coordinates with ``tau_i <= 1``, i.e. ``z_i`` outside ``[0, 1]``, can clip for ``t <= 1``;
    they are rare (in NPFV runs well under 1 % of the pixels per step), so they are gathered once
    and the iteration runs on them alone, in float64. ``sum d_i^2`` over the other coordinates is ``||clip(z) - x0||^2`` minus the
    gathered ``gap_i^2``. Float32 rounding of that norm matters only when ``h(1) >> eps^2``: such
    rows (never the case inside APGD, where ``h(1) <= 9 eps^2``) are checked and, if outside the
    ball by more than the slack, redone in float64.
    L-inf: ``clip(z, max(x0 - eps, 0), min(x0 + eps, 1))``.
    """

    def __init__(self, x0: Tensor, eps: Tensor, norm: str) -> None:
        self.x0, self.eps, self.norm = x0, eps, norm
        if norm == "linf":
            self.lo = (x0 - eps[:, None]).clamp_(min=0.0)
            self.hi = (x0 + eps[:, None]).clamp_(max=1.0)
        else:
            self.d = torch.empty_like(x0)
            self.c = torch.empty_like(x0)

    def __call__(self, z: Tensor) -> Tensor:
        """Project ``z [N, n]`` (overwritten) and return it."""
        if self.norm == "linf":
            return torch.minimum(torch.maximum(z, self.lo, out=z), self.hi, out=z)
        x0, eps = self.x0, self.eps
        d = torch.sub(z, x0, out=self.d)
        shifted = torch.clamp(z, 0.0, 1.0, out=self.c).sub_(x0)  # clip(z) - x0
        h_one = torch.linalg.vector_norm(shifted, dim=1).to(torch.float64) ** 2  # h(1)
        eps2 = eps.to(torch.float64) ** 2
        if bool((h_one <= eps2).all()):  # clip(z) is in the ball for every row: done
            return z.clamp_(0.0, 1.0)
        t = _l2_scale(d, x0, shifted, h_one, eps2)
        y = torch.addcmul(x0, d, t.to(z.dtype)[:, None], out=z).clamp_(0.0, 1.0)
        # float32 rounding in h(1) is ~1e-7 h(1); beyond h(1) = 20 eps^2 it could exceed the slack
        risky = h_one > 20.0 * eps2
        if z.dtype == torch.float64 or not bool(risky.any()):
            return y
        rows = risky.nonzero().squeeze(1)
        dist = torch.linalg.vector_norm(y[rows] - x0[rows], dim=1)
        rows = rows[dist > eps[rows] * (1.0 + _PROJECT_SLACK)]
        if rows.numel():
            x0_r, d_r = x0[rows].double(), d[rows].double()
            shifted_r = (x0_r + d_r).clamp_(0.0, 1.0).sub_(x0_r)
            h_r = shifted_r.square().sum(1)
            t_r = _l2_scale(d_r, x0_r, shifted_r, h_r, eps2[rows])
            y[rows] = torch.addcmul(x0_r, d_r, t_r[:, None]).clamp_(0.0, 1.0).to(y.dtype)
        return y


def _clipped_sums(row: Tensor, n_rows: int, tau: Tensor, squares: Tensor) -> Callable[[Tensor | None], Tensor]:
    """``t [N] -> [N, 2]``: per row, the sums of ``squares [K, 2]`` over the entries with ``tau_k <= t``.

    ``row [K]`` is sorted (each row's entries contiguous); ``t = None`` sums every entry. "packed"
    (the default): the entries are laid out to the left of ``[N, W]`` (``W`` = the most in one row,
    padding ``tau = inf`` and 0), so every sum is a row reduction: deterministic, multi-threaded, and a
    row's sums do not depend on the other rows. "cumsum": differences of one cumulative sum,
    independent of the other rows up to float64 rounding.
    """
    if _SEGMENT_SUM == "packed":
        counts = torch.bincount(row, minlength=n_rows)
        width = max(int(counts.max()), 1) if row.numel() else 1
        slot = row * width + torch.arange(row.numel(), device=row.device) - (counts.cumsum(0) - counts)[row]
        packed = squares.new_zeros((3, n_rows * width))
        packed[0].fill_(float("inf")).index_copy_(0, slot, tau)
        packed[1].index_copy_(0, slot, squares[:, 0])
        packed[2].index_copy_(0, slot, squares[:, 1])
        tau_p, sq_p = packed[0].view(n_rows, width), packed[1:].view(2, n_rows, width)
        zero = squares.new_zeros(())

        def by_rows(t: Tensor | None) -> Tensor:
            kept = sq_p if t is None else torch.where(tau_p <= t[:, None], sq_p, zero)
            return kept.sum(2).T

        return by_rows
    counts = torch.bincount(row, minlength=n_rows)
    ends = counts.cumsum(0)
    has, after = (counts > 0)[:, None], (ends - counts > 0)[:, None]
    last, before = (ends - 1).clamp_min(0), (ends - counts - 1).clamp_min(0)

    def cumsum_diff(t: Tensor | None) -> Tensor:
        if squares.shape[0] == 0:
            return squares.new_zeros(n_rows, 2)
        cs = (squares if t is None else squares * (tau <= t[row]).unsqueeze(1)).cumsum(0)
        return torch.where(has, cs[last], 0.0) - torch.where(after, cs[before], 0.0)

    return cumsum_diff


def _l2_scale(d: Tensor, x0: Tensor, shifted: Tensor, h_one: Tensor, eps2: Tensor) -> Tensor:
    """The exact ``t`` per row (float64 ``[N]``) of ``y = clip(x0 + t d)``; see :class:`_Projector`.

    ``shifted = clip(x0 + d) - x0`` (overwritten) and ``h_one`` its squared row norms (float64).
    """
    n_rows, dim = d.shape
    flat = shifted.sub_(d).view(-1).nonzero().squeeze(1)  # clip(x0 + d) != x0 + d: outside [0, 1]
    row = torch.div(flat, dim, rounding_mode="floor")
    d_k = d.view(-1).index_select(0, flat).to(torch.float64)
    x0_k = x0.reshape(-1).index_select(0, flat).to(torch.float64)
    gap_k = torch.where(d_k > 0, 1.0 - x0_k, x0_k)
    tau_k = gap_k / d_k.abs()  # <= 1 here
    squares = torch.stack([d_k * d_k, gap_k * gap_k], dim=1)  # [K, 2]: d_i^2, gap_i^2
    per_row = _clipped_sums(row, n_rows, tau_k, squares)
    total = per_row(None)
    rest = (h_one - total[:, 1]).clamp_min(0.0)  # sum of d_i^2 where x0_i + d_i is inside [0, 1]
    tiny = torch.finfo(torch.float64).tiny
    t = (eps2 / (rest + total[:, 0]).clamp_min(tiny)).sqrt().clamp(max=1.0)
    done = torch.zeros_like(t, dtype=torch.bool)  # each row stops at its own fixed point
    for _ in range(_PROJECT_MAX_ITER):
        clipped = per_row(t)
        a = rest + (total[:, 0] - clipped[:, 0])
        t_new = ((eps2 - clipped[:, 1]).clamp_min(0.0) / a.clamp_min(tiny)).sqrt()
        t_new = torch.maximum(t_new, t).clamp(max=1.0)
        done |= t_new <= t * (1.0 + _PROJECT_RTOL)
        t = torch.where(done, t, t_new)
        if bool(done.all()):
            break
    return torch.where(h_one <= eps2, torch.ones_like(t), t)  # clip(z) in the ball: t = 1


def project(x: Tensor, x0: Tensor, eps: float | Tensor, norm: str = "l2") -> Tensor:
    """Exact Euclidean projection of ``x`` onto ``{y : ||y - x0||_p <= eps} ∩ [0, 1]^n``, per image.

    L2: ``y = clip((x + lam x0) / (1 + lam), 0, 1)`` with the smallest ``lam >= 0`` for which
    ``||y - x0||_2 <= eps`` (``lam = 0`` when ``clip(x)`` is already inside the ball), found by a
    monotone root iteration that ends on the exact ``lam`` (see ``_Projector``). L-inf:
    ``clip(clip(x, x0 - eps, x0 + eps), 0, 1)``.

    Args:
        x: points to project ``[N, ...]`` (e.g. images ``[N, 3, H, W]``); any real values.
        x0: centres ``[N, ...]`` (same shape), inside ``[0, 1]``.
        eps: radius, a number or one per image ``[N]``; > 0.
        norm: ``"l2"`` or ``"linf"``.

    Returns:
        the projections, shape/dtype/device of ``x``; ``||y - x0||_p <= eps`` up to float
        rounding (relative ~1e-6 in float32) and ``0 <= y <= 1`` exactly.

    Raises:
        ValueError: unknown norm, ``eps <= 0``, ``x0`` outside ``[0, 1]``, or shapes that differ.
        TypeError: non-float tensors.
    """
    key = _check_norm(norm)
    check_images(x0, "x0", rgb=False)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a float torch.Tensor, got {type(x).__name__}")
    if x.shape != x0.shape:
        raise ValueError(f"x {tuple(x.shape)} and x0 {tuple(x0.shape)} must have the same shape")
    n = x0.shape[0]
    x0f = x0.detach().to(x.dtype).reshape(n, -1)
    e = _check_eps(eps, n, x0f)
    out = _Projector(x0f, e, key)(x.detach().reshape(n, -1).clone())
    return out.view(x.shape)


def linear_optimum(c: Tensor, x0: Tensor, eps: float, norm: str = "l2") -> Tensor:
    """Maximiser of ``<c_i, x_i>`` over ``||x_i - x0_i||_p <= eps``, ``x_i in [0, 1]^n`` (test oracle).

    L2 (KKT): ``x(s) = clip(x0 + s c, 0, 1)`` with ``s >= 0`` the largest value for which
    ``||x(s) - x0||_2 <= eps``; found by doubling and 200 bisection steps in float64 (the whole
    corner ``x0 + s c, s -> inf`` when it lies in the ball). L-inf: ``clip(x0 + eps sign(c), 0, 1)``.
    Deliberately independent of :func:`project` so that tests can compare the two.

    Args:
        c: linear objectives ``[N, ...]``.
        x0: centres ``[N, ...]`` in ``[0, 1]``, same shape.
        eps: radius > 0.
        norm: ``"l2"`` or ``"linf"``.

    Returns:
        the maximisers, shape/dtype/device of ``x0``.

    Raises:
        ValueError: unknown norm, ``eps <= 0``, ``x0`` outside ``[0, 1]``, or shapes that differ.
    """
    key = _check_norm(norm)
    check_images(x0, "x0", rgb=False)
    if not isinstance(c, Tensor) or c.shape != x0.shape:
        raise ValueError(
            f"c must be a tensor of the shape of x0 {tuple(x0.shape)}, got "
            f"{tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__}"
        )
    n = x0.shape[0]
    cd = c.detach().to(torch.float64).reshape(n, -1)
    xd = x0.detach().to(torch.float64).reshape(n, -1)
    radius = _check_eps(eps, n, xd)
    if key == "linf":
        out = (xd + radius[:, None] * torch.sign(cd)).clamp(0.0, 1.0)
        return out.view(x0.shape).to(x0.dtype)

    def dist(s: Tensor) -> Tensor:
        return ((xd + s[:, None] * cd).clamp(0.0, 1.0) - xd).norm(dim=1)

    corner = xd + torch.where(cd > 0, 1.0 - xd, torch.where(cd < 0, -xd, torch.zeros_like(xd)))
    corner_fits = (corner - xd).norm(dim=1) <= radius
    norms = cd.norm(dim=1)
    lo = torch.where(norms > 0, radius / norms.clamp_min(1e-300), torch.zeros_like(norms))
    hi = lo.clone()
    for _ in range(2000):  # grow hi until infeasible (or the corner is reached)
        grow = (dist(hi) <= radius) & ~corner_fits & (norms > 0)
        if not bool(grow.any()):
            break
        hi = torch.where(grow, hi * 2.0, hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        ok = dist(mid) <= radius
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    out = (xd + lo[:, None] * cd).clamp(0.0, 1.0)
    out = torch.where(corner_fits[:, None], corner, out)
    return out.view(x0.shape).to(x0.dtype)


# ----------------------------------------------------------------------------
# APGD
# ----------------------------------------------------------------------------


def default_checkpoints(steps: int) -> list[int]:
    """Croce & Hein (2020) checkpoints ``w_j = ceil(p_j * steps)``, ``j >= 1``, within ``[1, steps]``.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, i.e.
    ``0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99`` (computed in integer hundredths, so no
    float rounding moves a checkpoint). ``steps = 100`` gives ``[22, 41, 57, 70, 80, 87, 93, 99]``.

    Args:
        steps: number of APGD steps, >= 0.

    Returns:
        strictly increasing step indices (empty for ``steps = 0``).
    """
    steps = _check_int(steps, "steps", 0)
    percents = [0, 22]
    while True:
        nxt = percents[-1] + max(percents[-1] - percents[-2] - 3, 6)
        if nxt > 100:
            break
        percents.append(nxt)
    out: list[int] = []
    for p in percents[1:]:
        w = -((-p * steps) // 100)  # ceil(p * steps / 100) in integers
        if 1 <= w <= steps and (not out or w > out[-1]):
            out.append(w)
    return out


def _evaluate(
    objective: Callable[[Tensor], Tensor], x: Tensor, shape: torch.Size, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """One call of the objective at ``x [N, n]``; value ``[N]`` float32 and the gradient ``[N, n]``."""
    n = shape[0]
    xr = x.detach().view(shape).requires_grad_(True)
    with torch.enable_grad():
        value = objective(xr)
    if not isinstance(value, Tensor) or value.shape != (n,):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"objective must return one scalar per image, a tensor of shape [{n}], got {got}; "
            f"e.g. reduce the features of image i to one number with .sum(dim=1)"
        )
    if not value.is_floating_point():
        raise ValueError(f"objective must return a float tensor, got {value.dtype}")
    grad: Tensor | None = None
    if need_grad:
        if not value.requires_grad:
            raise ValueError(
                "objective(x) does not depend differentiably on x (its output has no grad_fn); "
                "do not call it under torch.no_grad() / inference_mode() or detach inside it"
            )
        with torch.enable_grad():
            (g,) = torch.autograd.grad(value.sum(), xr, allow_unused=True)
        grad = torch.zeros_like(x) if g is None else g.reshape(x.shape)
    return value.detach().to(torch.float32), grad


def _random_start(project_: _Projector, seed: int | None) -> Tensor:
    """A random point of the ball around the centre ``[N, n]``, projected onto ball ∩ box.

    Drawn with a CPU ``torch.Generator`` (same values on every device): L2 uniform in the ball,
    L-inf uniform in the cube.
    """
    x0, eps = project_.x0, project_.eps
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    n, dim = x0.shape
    if project_.norm == "l2":
        direction = torch.randn((n, dim), generator=gen, dtype=torch.float64)
        direction /= direction.norm(dim=1, keepdim=True).clamp_min(1e-300)
        radius = torch.rand((n, 1), generator=gen, dtype=torch.float64).pow(1.0 / dim)
        delta = direction * radius
    else:
        delta = torch.rand((n, dim), generator=gen, dtype=torch.float64) * 2.0 - 1.0
    delta = delta.to(device=x0.device, dtype=x0.dtype) * eps[:, None]
    return project_(x0 + delta)


def apgd(
    objective: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    eps: float,
    norm: str = "l2",
    steps: int = 200,
    seed: int | None = 0,
    checkpoints: Sequence[int] | None = None,
    rho: float = 0.75,
    momentum: float = 0.75,
    init: str = "zero",
) -> APGDResult:
    """Maximise ``objective`` per image over ``||x - x0||_p <= eps`` and ``x in [0, 1]^n`` with APGD.

    Implements the NPFV optimisation of DESIGN.md ("Math"): ``x* = argmax alpha_l^k(x)`` over the
    L2 ball of radius ``eps`` around ``x0`` (the gray image) inside the image box, with Auto-PGD
    (Croce & Hein 2020; schedule and conditions in the module docstring). One forward and one
    backward pass per step for the whole batch; the objective is evaluated exactly ``steps + 1``
    times. The objective's parameters get no ``.grad`` (gradients are taken w.r.t. ``x`` only).

    Args:
        objective: maps images ``[N, ...]`` (shape/dtype/device of ``x0``, values in ``[0, 1]``)
            to ``[N]``, one scalar per image to *maximise*; image ``i``'s value must depend on
            image ``i`` only (put models in eval mode). It is called with gradients enabled.
        x0: start and centre ``[N, ...]``, e.g. gray images ``[N, 3, H, W]`` of 0.5; in ``[0, 1]``.
        eps: radius of the ball, > 0 (DESIGN.md: 30 for 3x224x224 L2, scaled with input size).
        norm: ``"l2"`` (step along ``g / ||g||_2``) or ``"linf"`` (step along ``sign(g)``).
        steps: number of steps, >= 0 (200 in the paper).
        seed: seeds the CPU ``torch.Generator`` of the random start (``None``: fresh entropy);
            unused with ``init="zero"``, where the run is deterministic.
        checkpoints: step indices where the step size may be halved, strictly increasing in
            ``[1, steps]``; default :func:`default_checkpoints`.
        rho: condition 1 threshold, in ``(0, 1]``: halve when fewer than ``rho`` of the steps since
            the last checkpoint increased the objective.
        momentum: ``a`` in ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))``, in
            ``(0, 1]`` (1 = no momentum).
        init: ``"zero"`` (start at ``x0``) or ``"random"`` (a random point of the ball, projected).

    Returns:
        :class:`APGDResult` with the best iterate, its value and the best-so-far history.

    Raises:
        ValueError: ``eps <= 0``, unknown ``norm``/``init``, ``x0`` outside ``[0, 1]``, bad
            ``steps``/``checkpoints``/``rho``/``momentum``, or an objective that does not return
            a float ``[N]`` tensor differentiable w.r.t. ``x``.
        TypeError: a non-callable objective or non-tensor ``x0``.
    """
    if not callable(objective):
        raise TypeError(f"objective must be callable (x -> [N] tensor), got {type(objective).__name__}")
    key = _check_norm(norm)
    check_images(x0, "x0", rgb=False)
    steps = _check_int(steps, "steps", 0)
    rho = _check_fraction(rho, "rho")
    momentum = _check_fraction(momentum, "momentum")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use 'zero' (start at x0) or 'random'")
    if checkpoints is None:
        ckpts = default_checkpoints(steps)
    else:
        ckpts = [_check_int(c, "each checkpoint", 1) for c in checkpoints]
        if any(b <= a for a, b in pairwise(ckpts)) or (ckpts and ckpts[-1] > steps):
            raise ValueError(
                f"checkpoints must be strictly increasing step indices in [1, steps={steps}], "
                f"got {list(checkpoints)!r}"
            )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")

    shape = x0.shape
    n = shape[0]
    centre = x0.detach().reshape(n, -1).clone()
    radius = _check_eps(eps, n, centre)
    ckpt_set = set(ckpts)

    project_ = _Projector(centre, radius, key)
    x = centre.clone() if init == "zero" else _random_start(project_, seed)
    f, g = _evaluate(objective, x, shape, need_grad=steps > 0)
    history = torch.empty((steps + 1, n), dtype=torch.float32, device=f.device)
    history[0] = f
    best_x, best_f = x.clone(), f.clone()
    best_g = g.clone() if g is not None else None

    eta = 2.0 * radius  # per-image step size
    x_prev = x
    f_cur = f  # objective at the current iterate (replaced by the best value on a restart)
    fresh = torch.ones(n, dtype=torch.bool, device=x.device)  # next step without momentum
    increases = torch.zeros(n, dtype=torch.int64, device=f.device)
    halved_last = torch.zeros(n, dtype=torch.bool, device=f.device)
    best_at_last = best_f.clone()
    last_ckpt = 0

    z_buf, spare = torch.empty_like(x), torch.empty_like(x)  # reused every step (no allocations)
    for k in range(1, steps + 1):
        assert g is not None and best_g is not None  # steps > 0
        with torch.no_grad():
            g_norm = torch.linalg.vector_norm(g, dim=1)
            if not bool(torch.isfinite(g_norm).all()):  # NaN/inf gradients: no move on those entries
                g = torch.nan_to_num(g, 0.0, 0.0, 0.0)
                g_norm = torch.linalg.vector_norm(g, dim=1)
            if key == "l2":
                torch.addcmul(x, g, (eta / g_norm.clamp_min(1e-12))[:, None], out=z_buf)
            else:
                torch.addcmul(x, torch.sign(g), eta[:, None], out=z_buf)
            z = project_(z_buf)
            a = torch.where(fresh, 1.0, momentum).to(x.dtype)[:, None]
            # x + a (z - x) + (1 - a)(x - x_prev) = a z + 2 (1 - a) x - (1 - a) x_prev
            combined = torch.mul(z, a, out=spare).addcmul_(x, 2.0 * (1.0 - a)).addcmul_(x_prev, a - 1.0)
            x_new = project_(combined)
        f_new, g_new = _evaluate(objective, x_new, shape, need_grad=k < steps)
        increases += (f_new > f_cur).to(increases.dtype)
        improved = f_new > best_f
        best_f = torch.where(improved, f_new, best_f)
        rows = improved.nonzero().squeeze(1).to(x.device)
        if rows.numel():  # copy only the rows that improved
            best_x.index_copy_(0, rows, x_new.index_select(0, rows))
            if g_new is not None:
                best_g.index_copy_(0, rows, g_new.index_select(0, rows))
        history[k] = best_f
        # the storage of x_prev is free now (unless it is x's): the next x_new goes there
        spare = x_prev if x_prev is not x else torch.empty_like(x)
        x_prev, x, f_cur, g = x, x_new, f_new, g_new
        fresh = torch.zeros_like(fresh)

        if k in ckpt_set and k < steps:
            span = k - last_ckpt
            few_increases = increases.to(torch.float64) < rho * span
            stalled = ~halved_last & ~(best_f > best_at_last)
            halve = few_increases | stalled
            hv = halve.to(x.device)
            eta = torch.where(hv, eta / 2.0, eta)
            restart = hv[:, None]
            x = torch.where(restart, best_x, x)
            x_prev = torch.where(restart, best_x, x_prev)
            g = torch.where(restart, best_g, g) if g is not None else None
            f_cur = torch.where(halve, best_f, f_cur)
            fresh = hv
            halved_last, best_at_last = halve, best_f.clone()
            increases = torch.zeros_like(increases)
            last_ckpt = k

    return APGDResult(
        x=best_x.view(shape).to(x0.dtype),
        objective=best_f.cpu(),
        history=history.cpu(),
        steps=steps,
    )
