"""APGD in an L1 ball inside the ``[0, 1]`` box: the sparse-edit norm of the counterfactual stage.

:func:`spurious.apgd.apgd` covers L2 and L-inf; this module adds L1 with the same schedule (the
checkpoints of :func:`spurious.apgd.default_checkpoints`, the same two halving conditions, momentum
``a = 0.75`` and restarts from the best point), after Croce & Hein (2021, "Mind the box: l1-APGD for
sparse adversarial attacks on image classifiers"):

* step direction: the sign of the gradient on the ``q`` share of the values with the largest
  ``|g_i|`` among those that can still move that way (not at the box bound), scaled to L1 norm 1,
  so that a step of size ``eta`` moves an L1 mass ``eta`` (``eta = eps`` at the start);
* ``P`` is the exact Euclidean projection onto ``{||x - x0||_1 <= eps} ∩ [0, 1]^n``: with
  ``d = z - x0``, ``y_i = x0_i + clip(sign(d_i) max(|d_i| - lam, 0), -x0_i, 1 - x0_i)`` and the
  smallest ``lam >= 0`` that keeps ``||y - x0||_1 <= eps`` (the L1 norm decreases in ``lam``; found
  by bisection in float64, ending on the feasible side).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from spurious.apgd import APGDResult, default_checkpoints

_BISECTION_STEPS = 32  # interval max|d| / 2^32: far below float32 resolution; the feasible end is kept


def project_l1(z: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """Euclidean projection of rows ``z [N, n]`` onto ``{||y - x0_i||_1 <= eps_i} ∩ [0, 1]^n``.

    Args:
        z: points ``[N, n]``; ``x0``: centres ``[N, n]`` in ``[0, 1]``; ``eps``: radii ``[N]`` > 0.

    Returns:
        ``[N, n]`` (dtype of ``z``), ``||y - x0||_1 <= eps`` up to float rounding and ``0 <= y <= 1``.
    """
    d = (z - x0).to(torch.float64)
    lo, hi = -x0.to(torch.float64), (1.0 - x0).to(torch.float64)
    eps64 = eps.to(torch.float64)

    out = torch.clamp(d, lo, hi)
    outside = out.abs().sum(1) > eps64
    if bool(outside.any()):
        rows = outside.nonzero().squeeze(1)
        dr, lor, hir, er = d[rows], lo[rows], hi[rows], eps64[rows]
        left = torch.zeros_like(er)
        right = dr.abs().amax(1)  # lam = max |d_i| gives y = x0: feasible
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (left + right)
            mass = torch.clamp(torch.sign(dr) * (dr.abs() - mid[:, None]).clamp_min(0.0), lor, hir).abs().sum(1)
            feasible = mass <= er
            right = torch.where(feasible, mid, right)
            left = torch.where(feasible, left, mid)
        out[rows] = torch.clamp(torch.sign(dr) * (dr.abs() - right[:, None]).clamp_min(0.0), lor, hir)
    return (x0.to(torch.float64) + out).clamp_(0.0, 1.0).to(z.dtype)


def _direction(g: Tensor, x: Tensor, share: float) -> Tensor:
    """Sparse ascent direction with L1 norm 1: ``sign(g)`` on the top-``share`` movable ``|g_i|``."""
    movable = ((g > 0) & (x < 1.0)) | ((g < 0) & (x > 0.0))
    score = torch.where(movable, g.abs(), torch.zeros_like(g))
    n = g.shape[1]
    top = max(1, int(round(share * n)))
    values, index = torch.topk(score, top, dim=1)
    u = torch.zeros_like(g)
    u.scatter_(1, index, torch.sign(g.gather(1, index)) * (values > 0).to(g.dtype))
    return u / u.abs().sum(1, keepdim=True).clamp_min(1.0)


def _value_and_grad(objective: Callable[[Tensor], Tensor], x: Tensor, shape: torch.Size,
                    need_grad: bool) -> tuple[Tensor, Tensor | None]:
    xr = x.detach().view(shape).requires_grad_(True)
    with torch.enable_grad():
        value = objective(xr)
        if value.shape != (shape[0],):
            raise ValueError(f"objective must return one scalar per image [{shape[0]}], got {tuple(value.shape)}")
        grad = None
        if need_grad:
            (g,) = torch.autograd.grad(value.sum(), xr)
            grad = torch.nan_to_num(g.reshape(x.shape), 0.0, 0.0, 0.0)
    return value.detach().to(torch.float32), grad


def apgd_l1(objective: Callable[[Tensor], Tensor], x0: Tensor, *, eps: float, steps: int, share: float = 0.01,
            rho: float = 0.75, momentum: float = 0.75) -> APGDResult:
    """Maximise ``objective`` per image over ``||x - x0||_1 <= eps``, ``x in [0, 1]^n`` (see the module docstring).

    Args:
        objective: images ``[N, ...]`` -> ``[N]`` to maximise (image ``i``'s value depends on image ``i`` only).
        x0: start and centre ``[N, ...]`` in ``[0, 1]``.
        eps: L1 radius > 0.
        steps: number of steps >= 0.
        share: share of the values a step may change (``q``, default 1 %).
        rho: halving threshold of condition 1; ``momentum``: ``a`` of the momentum step.

    Returns:
        :class:`spurious.apgd.APGDResult` (best iterate, its value, the best-so-far history).
    """
    shape = x0.shape
    n = shape[0]
    centre = x0.detach().reshape(n, -1).clone()
    radius = torch.full((n,), float(eps), dtype=centre.dtype, device=centre.device)
    ckpts = set(default_checkpoints(steps))
    x = centre.clone()
    f, g = _value_and_grad(objective, x, shape, steps > 0)
    history = torch.empty((steps + 1, n), dtype=torch.float32)
    history[0] = f.cpu()
    best_x, best_f, best_g = x.clone(), f.clone(), g
    eta = radius.clone()
    x_prev, f_cur = x, f
    fresh = torch.ones(n, dtype=torch.bool, device=x.device)
    increases = torch.zeros(n, dtype=torch.int64, device=f.device)
    halved_last = torch.zeros(n, dtype=torch.bool, device=f.device)
    best_at_last, last_ckpt = best_f.clone(), 0
    for k in range(1, steps + 1):
        if g is None or best_g is None:  # steps > 0 always has gradients here
            raise RuntimeError("internal error: no gradient")
        with torch.no_grad():
            z = project_l1(x + eta[:, None] * _direction(g, x, share), centre, radius)
            a = torch.where(fresh, 1.0, momentum).to(x.dtype)[:, None]
            x_new = project_l1(x + a * (z - x) + (1.0 - a) * (x - x_prev), centre, radius)
        f_new, g_new = _value_and_grad(objective, x_new, shape, k < steps)
        increases += (f_new > f_cur).to(increases.dtype)
        improved = f_new > best_f
        best_f = torch.where(improved, f_new, best_f)
        best_x = torch.where(improved.to(x.device)[:, None], x_new, best_x)
        if g_new is not None:
            best_g = torch.where(improved.to(x.device)[:, None], g_new, best_g)
        history[k] = best_f.cpu()
        x_prev, x, f_cur, g = x, x_new, f_new, g_new
        fresh = torch.zeros_like(fresh)
        if k in ckpts and k < steps:
            halve = (increases.to(torch.float64) < rho * (k - last_ckpt)) | (~halved_last & ~(best_f > best_at_last))
            hv = halve.to(x.device)
            eta = torch.where(hv, eta / 2.0, eta)
            x = torch.where(hv[:, None], best_x, x)
            x_prev = torch.where(hv[:, None], best_x, x_prev)
            g = torch.where(hv[:, None], best_g, g) if g is not None else None
            f_cur = torch.where(halve, best_f, f_cur)
            fresh, halved_last, best_at_last = hv, halve, best_f.clone()
            increases = torch.zeros_like(increases)
            last_ckpt = k
    return APGDResult(x=best_x.view(shape).to(x0.dtype), objective=best_f.cpu(), history=history, steps=steps)
