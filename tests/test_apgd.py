"""APGD against objectives with a known optimum (closed forms, KKT, scipy), and its contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from spurious.apgd import APGDResult, apgd, default_checkpoints, linear_optimum, project

SHAPE = (3, 8, 8)  # n = 192; the farthest box corner from gray is 0.5 * sqrt(192) = 6.93 away


def _gray(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.full((n, *SHAPE), 0.5, dtype=dtype)


def _linear(c: torch.Tensor):  # type: ignore[no-untyped-def]
    return lambda x: (x * c).flatten(1).sum(1)


def _norms(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return (x - x0).flatten(1).norm(dim=1)


def _feasible(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str = "l2") -> None:
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # the box exactly
    d = (x - x0).flatten(1)
    dist = d.norm(dim=1) if norm == "l2" else d.abs().amax(dim=1)
    assert bool((dist <= eps * (1 + 1e-5)).all()), dist.max()


def _slsqp_linear(c: np.ndarray, x0: np.ndarray, eps: float) -> np.ndarray:
    """max <c, x> s.t. ||x - x0|| <= eps, 0 <= x <= 1 with scipy (small n), from several starts."""
    best, best_val = None, -np.inf
    cons = [{"type": "ineq", "fun": lambda x: eps**2 - np.sum((x - x0) ** 2),
             "jac": lambda x: -2 * (x - x0)}]
    starts = [x0, np.clip(x0 + eps * c / np.linalg.norm(c) / 2, 0, 1)]
    for start in starts:
        res = minimize(lambda x: -c @ x, start, jac=lambda x: -c, method="SLSQP", bounds=[(0, 1)] * len(c),
                       constraints=cons, options={"ftol": 1e-12, "maxiter": 500})
        feasible = np.sum((res.x - x0) ** 2) <= eps**2 * (1 + 1e-6) and res.x.min() >= 0 and res.x.max() <= 1
        if res.status in (0, 8) and feasible and -res.fun > best_val:  # 8: stopped at precision limit
            best, best_val = res.x, -res.fun
    assert best is not None
    return best


# ----------------------------------------------------------------------------
# Oracles: linear_optimum and project against scipy / closed forms
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.3, 1.2, 10.0])
def test_linear_optimum_matches_scipy(eps: float) -> None:
    rng = np.random.default_rng(1)
    n = 10
    c = rng.standard_normal((4, n))
    x0 = rng.uniform(0.1, 0.9, size=(4, n))
    ours = linear_optimum(torch.from_numpy(c), torch.from_numpy(x0), eps).numpy()
    for i in range(4):
        ref = _slsqp_linear(c[i], x0[i], eps)
        assert c[i] @ ours[i] >= c[i] @ ref - 1e-8  # at least as good as scipy's point
        assert c[i] @ ours[i] == pytest.approx(c[i] @ ref, rel=1e-6, abs=1e-8)
        np.testing.assert_allclose(ours[i], ref, atol=1e-4)
        assert np.linalg.norm(ours[i] - x0[i]) <= eps * (1 + 1e-9)
        assert ours[i].min() >= 0 and ours[i].max() <= 1


def test_linear_optimum_linf_closed_form() -> None:
    c = torch.tensor([[1.0, -2.0, 0.0, 3.0]])
    x0 = torch.tensor([[0.5, 0.05, 0.3, 0.95]])
    expected = torch.tensor([[0.6, 0.0, 0.3, 1.0]])  # x0 + 0.1 sign(c), clipped
    torch.testing.assert_close(linear_optimum(c, x0, 0.1, norm="linf"), expected)


@pytest.mark.parametrize("eps", [0.2, 0.8, 3.0])
def test_project_l2_matches_scipy(eps: float) -> None:
    rng = np.random.default_rng(2)
    n = 8
    x0 = rng.uniform(0.0, 1.0, size=(5, n))
    z = x0 + rng.normal(0, 1.0, size=(5, n))
    ours = project(torch.from_numpy(z), torch.from_numpy(x0), eps).numpy()
    for i in range(5):
        cons = [{"type": "ineq", "fun": lambda y, i=i: eps**2 - np.sum((y - x0[i]) ** 2),
                 "jac": lambda y, i=i: -2 * (y - x0[i])}]
        res = minimize(lambda y, i=i: np.sum((y - z[i]) ** 2), x0[i], jac=lambda y, i=i: 2 * (y - z[i]),
                       method="SLSQP", bounds=[(0, 1)] * n, constraints=cons,
                       options={"ftol": 1e-10, "maxiter": 500})
        ref = res.x  # SLSQP may end with status 8 at its precision limit: check the point itself
        assert np.sum((ref - x0[i]) ** 2) <= eps**2 * (1 + 1e-6) and ref.min() >= 0 and ref.max() <= 1
        assert np.sum((ours[i] - z[i]) ** 2) <= np.sum((ref - z[i]) ** 2) + 1e-9  # at least as close
        np.testing.assert_allclose(ours[i], ref, atol=1e-4)


def test_project_properties_and_linf() -> None:
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand((6, 3, 16, 16), generator=g)
    z = x0 + 0.5 * torch.randn((6, 3, 16, 16), generator=g)
    eps = torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0, 100.0])
    y = project(z, x0, eps)
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert bool((_norms(y, x0) <= eps * (1 + 1e-5)).all())
    torch.testing.assert_close(project(y, x0, eps), y, atol=1e-6, rtol=0)  # idempotent
    inside = x0 + 0.01 * (z - x0) / _norms(z, x0).view(-1, 1, 1, 1)
    torch.testing.assert_close(project(inside.clamp(0, 1), x0, 1.0), inside.clamp(0, 1))
    # L-inf: coordinate-wise clip to [x0 - eps, x0 + eps] and [0, 1] (numpy oracle)
    zn, x0n = z.numpy(), x0.numpy()
    expected = np.clip(np.clip(zn, x0n - 0.05, x0n + 0.05), 0, 1)
    np.testing.assert_allclose(project(z, x0, 0.05, norm="linf").numpy(), expected, rtol=0, atol=1e-7)


def test_project_float32_far_points_stay_feasible_and_match_float64() -> None:
    # z far outside (||z - x0|| >> eps, most of the norm on clipped coordinates): float32 rounding
    # must not push the result out of the ball; it matches the float64 projection.
    g = torch.Generator().manual_seed(9)
    x0 = torch.rand((4, 3, 32, 32), generator=g)
    z = x0 + 0.05 * torch.randn((4, 3, 32, 32), generator=g)
    z[:, 0, :4, :4] += 1e4  # a few huge coordinates
    z_before = z.clone()
    eps = torch.tensor([0.5, 2.0, 5.0, 20.0])
    y = project(z, x0, eps)
    assert torch.equal(z, z_before)  # input untouched
    assert bool((_norms(y, x0) <= eps * (1 + 1e-5)).all())
    y64 = project(z.double(), x0.double(), eps.double())
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=0)


def test_project_segment_sum_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # the cumulative-sum path (used off the CPU) gives the same projection as the CPU path
    import spurious.apgd as apgd_module

    g = torch.Generator().manual_seed(10)
    x0 = torch.rand((5, 3, 16, 16), generator=g, dtype=torch.float64)
    z = x0 + 0.8 * torch.randn((5, 3, 16, 16), generator=g, dtype=torch.float64)
    z[1] = x0[1] + 1e-3  # a row with nothing outside the box
    eps = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    by_index_add = project(z, x0, eps)
    monkeypatch.setattr(apgd_module, "_SEGMENT_SUM", "cumsum")
    torch.testing.assert_close(project(z, x0, eps), by_index_add, atol=1e-12, rtol=0)


def test_default_checkpoints_follow_the_paper() -> None:
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06))
    assert default_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert default_checkpoints(200) == [44, 82, 114, 140, 160, 174, 186, 198]
    assert default_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert default_checkpoints(0) == []


# ----------------------------------------------------------------------------
# APGD reaches known optima
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.4, 4.0, 20.0])  # ball inside the box / both active / box only
def test_apgd_linear_l2_reaches_kkt_optimum(eps: float) -> None:
    g = torch.Generator().manual_seed(4)
    c = torch.randn((5, *SHAPE), generator=g)
    x0 = _gray(5)
    calls = []
    objective = _linear(c)

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return objective(x)

    steps = 60
    result = apgd(counted, x0, eps=eps, steps=steps)
    assert isinstance(result, APGDResult) and result.steps == steps
    assert len(calls) == steps + 1  # no extra forward passes
    opt = linear_optimum(c, x0, eps)
    f0, f_opt = objective(x0), objective(opt)
    gain = (objective(result.x) - f0) / (f_opt - f0)
    assert bool((gain >= 0.99).all()), gain
    _feasible(result.x, x0, eps)
    assert result.history.shape == (steps + 1, 5) and result.history.dtype == torch.float32
    assert bool((result.history[1:] >= result.history[:-1]).all())
    torch.testing.assert_close(result.history[-1], result.objective)
    torch.testing.assert_close(result.objective, objective(result.x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.history[0], f0)


def test_apgd_linf_reaches_sign_solution() -> None:
    g = torch.Generator().manual_seed(5)
    c = torch.randn((4, *SHAPE), generator=g)
    x0 = torch.rand((4, *SHAPE), generator=g)
    eps = 0.1
    result = apgd(_linear(c), x0, eps=eps, norm="linf", steps=20)
    expected = (x0 + eps * torch.sign(c)).clamp(0, 1)  # closed form
    torch.testing.assert_close(result.x, expected, atol=1e-6, rtol=0)
    _feasible(result.x, x0, eps, "linf")


def test_apgd_concave_quadratic_reaches_clipped_target() -> None:
    # f(x) = -||x - a||^2 with clip(a) inside the ball: the optimum is clip(a, 0, 1).
    g = torch.Generator().manual_seed(6)
    x0 = _gray(3)
    a = 0.5 + 0.12 * torch.randn((3, *SHAPE), generator=g)
    a[:, 0, :2, :2] = 1.3  # outside the box
    a[:, 1, :2, :2] = -0.2
    opt = a.clamp(0, 1)
    dist = _norms(opt, x0)
    eps = 2.0 * float(dist.max())

    def objective(x: torch.Tensor) -> torch.Tensor:
        return -((x - a) ** 2).flatten(1).sum(1)

    result = apgd(objective, x0, eps=eps, steps=100)
    f0, f_opt = objective(x0), objective(opt)
    gain = (objective(result.x) - f0) / (f_opt - f0)
    assert bool((gain >= 0.99).all()), gain
    assert bool((_norms(result.x, opt) <= 1e-3 * dist).all())
    _feasible(result.x, x0, eps)
    # Without step-size halving (no checkpoints) the fixed step 2*eps keeps overshooting the peak.
    fixed = apgd(objective, x0, eps=eps, steps=100, checkpoints=[])
    assert bool((_norms(fixed.x, opt) >= 0.05 * dist).all())


class _SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Tanh(),
            torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.Softplus(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_apgd_images_are_independent_of_the_batch() -> None:
    net = _SmallNet().double().eval()
    g = torch.Generator().manual_seed(7)
    u = torch.randn((3, 8), generator=g, dtype=torch.float64)
    x0 = torch.rand((3, *SHAPE), generator=g, dtype=torch.float64)

    def objective_for(rows: slice):  # type: ignore[no-untyped-def]
        return lambda x: (net(x) * u[rows]).sum(1)

    batch = apgd(objective_for(slice(0, 3)), x0, eps=1.0, steps=20)
    for i in range(3):
        one = apgd(objective_for(slice(i, i + 1)), x0[i:i + 1], eps=1.0, steps=20)
        torch.testing.assert_close(batch.x[i:i + 1], one.x, atol=1e-9, rtol=0)
        torch.testing.assert_close(batch.history[:, i:i + 1], one.history, atol=1e-6, rtol=0)
    assert batch.x.dtype == torch.float64
    assert all(p.grad is None for p in net.parameters())  # gradients w.r.t. x only


def test_apgd_seed_reproducible_random_init() -> None:
    g = torch.Generator().manual_seed(8)
    c = torch.randn((2, *SHAPE), generator=g)
    x0 = _gray(2)
    a = apgd(_linear(c), x0, eps=1.0, steps=5, init="random", seed=3)
    b = apgd(_linear(c), x0, eps=1.0, steps=5, init="random", seed=3)
    other = apgd(_linear(c), x0, eps=1.0, steps=5, init="random", seed=4)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    torch.testing.assert_close(a.history, b.history, rtol=0, atol=0)
    assert not torch.equal(a.history[0], other.history[0])  # different random starts
    zero = apgd(_linear(c), x0, eps=1.0, steps=0)
    torch.testing.assert_close(zero.x, x0) and torch.testing.assert_close(zero.history[0], _linear(c)(x0))
    assert not torch.equal(a.history[0], zero.history[0])
    for r in (a, other):
        _feasible(r.x, x0, 1.0)


def test_apgd_works_under_no_grad_and_leaves_x0_alone() -> None:
    c = torch.ones((1, *SHAPE))
    x0 = _gray(1)
    before = x0.clone()
    with torch.no_grad():
        result = apgd(_linear(c), x0, eps=0.5, steps=3)
    assert float(result.objective[0]) == pytest.approx(float(_linear(c)(x0)[0]) + 0.5 * math.sqrt(192), rel=1e-5)
    assert torch.equal(x0, before) and not x0.requires_grad and not result.x.requires_grad


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def test_apgd_bad_inputs() -> None:
    x0 = _gray(2)
    obj = _linear(torch.ones((2, *SHAPE)))
    for eps in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be finite and > 0"):
            apgd(obj, x0, eps=eps)
    with pytest.raises(TypeError, match="eps must be a positive number"):
        apgd(obj, x0, eps="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown norm"):
        apgd(obj, x0, eps=1.0, norm="l1")
    with pytest.raises(ValueError, match=r"x0 must lie in the box \[0, 1\]"):
        apgd(obj, x0 + 0.6, eps=1.0)
    with pytest.raises(TypeError, match="x0 must be a float tensor"):
        apgd(obj, torch.ones((2, 3), dtype=torch.int64), eps=1.0)
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        apgd(obj, np.zeros((2, 3)), eps=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="x0 must be a non-empty batch"):
        apgd(obj, torch.zeros(5), eps=1.0)
    with pytest.raises(ValueError, match=r"objective must return one scalar per image, a tensor of shape \[2\]"):
        apgd(lambda x: x.flatten(1).sum(1, keepdim=True), x0, eps=1.0, steps=2)
    with pytest.raises(ValueError, match="objective must return one scalar per image"):
        apgd(lambda x: x.sum(), x0, eps=1.0, steps=2)
    with pytest.raises(ValueError, match="does not depend differentiably on x"):
        apgd(lambda x: obj(x).detach(), x0, eps=1.0, steps=2)
    with pytest.raises(TypeError, match="objective must be callable"):
        apgd(None, x0, eps=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be >= 0"):
        apgd(obj, x0, eps=1.0, steps=-1)
    with pytest.raises(ValueError, match="checkpoints must be strictly increasing"):
        apgd(obj, x0, eps=1.0, steps=10, checkpoints=[5, 3])
    with pytest.raises(ValueError, match="checkpoints must be strictly increasing"):
        apgd(obj, x0, eps=1.0, steps=10, checkpoints=[11])
    with pytest.raises(ValueError, match="rho must be in"):
        apgd(obj, x0, eps=1.0, rho=1.5)
    with pytest.raises(ValueError, match="momentum must be in"):
        apgd(obj, x0, eps=1.0, momentum=0.0)
    with pytest.raises(ValueError, match="unknown init"):
        apgd(obj, x0, eps=1.0, init="gaussian")


def test_project_and_linear_optimum_bad_inputs() -> None:
    x0 = _gray(2)
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        project(x0, x0, 0.0)
    with pytest.raises(ValueError, match="one radius per image"):
        project(x0, x0, torch.ones(3))
    with pytest.raises(ValueError, match="must have the same shape"):
        project(x0[:1], x0, 1.0)
    with pytest.raises(ValueError, match="unknown norm"):
        linear_optimum(x0, x0, 1.0, norm="l3")
    with pytest.raises(ValueError, match="x0 must lie in the box"):
        linear_optimum(x0, x0 * 3, 1.0)
    with pytest.raises(ValueError, match="c must be a tensor of the shape of x0"):
        linear_optimum(x0[:1], x0, 1.0)
