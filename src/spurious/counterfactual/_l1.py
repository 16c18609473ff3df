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
  smallest ``lam >= 0`` that keeps ``||y - x0||_1 <= eps`` (the L1 norm is piecewise linear and
  non-increasing in ``lam``: ``lam`` is solved exactly in float64 from its sorted breakpoints over
  the values that move, a few per cent of the image, and rounded up to the dtype of the iterate, so
  the result stays on the feasible side).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from spurious.apgd import APGDResult, default_checkpoints


def project_l1(z: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """Euclidean projection of rows ``z [N, n]`` onto ``{||y - x0_i||_1 <= eps_i} ∩ [0, 1]^n``.

    Args:
        z: points ``[N, n]``; ``x0``: centres ``[N, n]`` in ``[0, 1]``; ``eps``: radii ``[N]`` > 0.

    Returns:
        ``[N, n]`` (dtype of ``z``), ``||y - x0||_1 <= eps`` up to float rounding and ``0 <= y <= 1``.
    """
    x0 = x0.to(z.dtype)
    d = z - x0
    size = d.abs()
    room = torch.where(d > 0, 1.0 - x0, x0)  # c_i: distance to the bound in d_i's direction
    moved = torch.minimum(size, room)  # |y_i - x0_i| at lam = 0
    outside = moved.sum(1, dtype=torch.float64) > eps.to(torch.float64)
    y = z.clamp(0.0, 1.0)  # lam = 0
    if not bool(outside.any()):
        return y
    every = bool(outside.all())  # the usual case inside APGD: no row copies
    rows = outside.nonzero().squeeze(1)

    def pick(t: Tensor) -> Tensor:
        return t if every else t[rows]

    lam = _l1_threshold(pick(size), pick(room), pick(moved), pick(eps).to(torch.float64))
    lam_z = lam.to(z.dtype)
    lam_z = torch.where(lam_z.to(torch.float64) < lam, torch.nextafter(lam_z, torch.full_like(lam_z, float("inf"))), lam_z)
    shrunk = (pick(size) - lam_z[:, None]).clamp_min_(0.0).mul_(torch.sign(pick(d)))  # rounded up: feasible side
    shrunk = shrunk.add_(pick(x0)).clamp_(0.0, 1.0)
    if every:
        return shrunk
    y[rows] = shrunk
    return y


def _l1_threshold(size: Tensor, room: Tensor, moved: Tensor, eps: Tensor) -> Tensor:
    """The exact ``lam > 0`` per row (float64 ``[R]``) with ``mass(lam) = eps``; every row has ``mass(0) > eps``.

    ``mass(lam) = sum_i min(c_i, max(|d_i| - lam, 0))`` is continuous, non-increasing and piecewise
    linear: term ``i`` is ``c_i`` up to ``|d_i| - c_i``, falls with slope -1 up to ``|d_i|`` and is 0
    after. Only the values that move at ``lam = 0`` matter (the rest add 0 everywhere); they are
    packed to the left of ``[R, K]`` (K = the most such values in a row, padding 0: a zero-width
    breakpoint pair). Sorting the ``2K`` breakpoints with their slope changes (-1 at
    ``max(|d_i| - c_i, 0)``, +1 at ``|d_i|``) gives the slope on each interval, a cumulative sum
    the mass at each breakpoint, and the crossing interval the exact root.
    """
    n_rows = size.shape[0]
    where = (moved > 0).nonzero()  # [K_total, 2], row-major: each row's values contiguous
    row = where[:, 0]
    counts = torch.bincount(row, minlength=n_rows)
    width = int(counts.max())
    slot = torch.arange(row.numel(), device=row.device) - (counts.cumsum(0) - counts)[row]
    a = size.new_zeros((n_rows, width), dtype=torch.float64)
    c = torch.zeros_like(a)
    a[row, slot] = size[row, where[:, 1]].to(torch.float64)
    c[row, slot] = room[row, where[:, 1]].to(torch.float64)
    breaks = torch.cat([(a - c).clamp_min_(0.0), a], dim=1)
    change = torch.cat([-torch.ones_like(a), torch.ones_like(a)], dim=1)
    breaks, order = torch.sort(breaks, dim=1)
    slope = change.gather(1, order).cumsum_(1)  # slope of mass on [b_j, b_j+1]
    mass0 = torch.minimum(a, c).sum(1)
    drop = (slope[:, :-1] * breaks.diff(dim=1)).cumsum_(1)  # mass(b_j+1) - mass(0)
    mass = torch.cat([mass0[:, None], mass0[:, None] + drop], dim=1)  # mass at each breakpoint
    j = (mass > eps[:, None]).sum(1, keepdim=True) - 1  # last breakpoint still outside the ball
    j = j.clamp_(0, 2 * width - 2)
    b_j, m_j, s_j = breaks.gather(1, j), mass.gather(1, j), slope.gather(1, j)
    return (b_j + (m_j - eps[:, None]) / (-s_j).clamp_min(1.0)).squeeze(1).clamp_min(0.0)


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
    best_x, best_f = x.clone(), f.clone()
    best_g = g.clone() if g is not None else None
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
        rows = improved.nonzero().squeeze(1).to(x.device)
        if rows.numel():  # copy only the rows that improved
            best_x.index_copy_(0, rows, x_new.index_select(0, rows))
            if g_new is not None:
                best_g.index_copy_(0, rows, g_new.index_select(0, rows))
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
