"""Speed of the counterfactual optimisation: images x steps / s, against a plain forward + backward.

For each model (the demo's robust model at 64 px; a random-weight torchvision ResNet-50 at 224 px) and
each norm: ``spurious.counterfactual.counterfactual_images`` on a batch of random start images, timed at
``--steps`` and at 1 step; the difference over ``steps - 1`` is the cost of one step (the start and the
before/after scoring cancel). The reference is one plain forward + backward of the same batch w.r.t. the
input through ``Classifier.phi`` with the same linear target (best of ``--reps``). Target: a step costs
<= 1.2x the forward + backward (the issue's Speed section).

The ResNet-50 has no workspace: its basis is a random orthonormal one (L = 16) on its own head row, which
costs the same as a fitted one.

    python bench/bench_counterfactual.py                         # CPU, both models
    python bench/bench_counterfactual.py --device cuda --batch-resnet 32 --steps 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit


def _random_basis(clf, k: int = 0, L: int = 16, seed: int = 0):  # type: ignore[no-untyped-def]
    from spurious.npca import ClassBasis

    rng = np.random.default_rng(seed)
    d = clf.num_features
    v, _ = np.linalg.qr(rng.standard_normal((d, L)))
    W, b = clf.head()
    return ClassBasis(k=k, n=100, mu=rng.standard_normal(d).astype(np.float32) * 0.1, lam=np.ones(L, np.float32),
                      v=np.ascontiguousarray(v.T.astype(np.float32)), w=W[k].cpu().numpy(), b=float(b[k]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _forward_backward(clf, basis, x: torch.Tensor, reps: int) -> float:  # type: ignore[no-untyped-def]
    A, c = basis.projection([0])
    a = torch.as_tensor(A[0], dtype=torch.float32, device=clf.device)
    for p in clf.parameters():
        p.requires_grad_(False)
    best = float("inf")
    for _ in range(reps + 1):  # the first is a warm-up
        _sync(clf.device)
        t = time.perf_counter()
        xr = x.detach().clone().requires_grad_(True)
        value = clf.phi(xr).float() @ a - float(c[0])
        (g,) = torch.autograd.grad(value.sum(), xr)
        _sync(clf.device)
        best = min(best, time.perf_counter() - t)
    return best


def _per_step(clf, basis, x: torch.Tensor, norm: str, steps: int, reps: int) -> float:  # type: ignore[no-untyped-def]
    from spurious.counterfactual import counterfactual_images

    def run(n: int) -> float:
        best = float("inf")
        for _ in range(reps):
            _sync(clf.device)
            t = time.perf_counter()
            counterfactual_images(clf, basis, 0, x, mode="add", norm=norm, steps=n)
            _sync(clf.device)
            best = min(best, time.perf_counter() - t)
        return best

    run(1)  # warm-up
    return (run(steps) - run(1)) / (steps - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=11)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch-demo", type=int, default=16)
    p.add_argument("--batch-resnet", type=int, default=2)
    p.add_argument("--norms", nargs="+", default=["l2", "linf", "l1"])
    p.add_argument("--skip-resnet", action="store_true")
    args = p.parse_args()

    from spurious.demo.train import train_demo_model
    from spurious.models import load_model

    device = torch.device(args.device)
    demo = train_demo_model("robust", progress=False)
    models = [("demo:robust", load_model(demo.spec, device=device), args.batch_demo)]
    if not args.skip_resnet:
        models.append(("torchvision:resnet50 (random weights)",
                       load_model("torchvision:resnet50", pretrained=False, device=device), args.batch_resnet))
    rows = []
    for name, clf, batch in models:
        clf.eval()
        basis = _random_basis(clf)
        x = torch.rand((batch, *clf.input_size), generator=torch.Generator().manual_seed(0)).to(device)
        fb = _forward_backward(clf, basis, x, args.reps)
        for norm in args.norms:
            step = _per_step(clf, basis, x, norm, args.steps, args.reps)
            rows.append({"model": name, "input": list(clf.input_size), "batch": batch, "norm": norm,
                         "seconds_per_step": round(step, 4), "seconds_forward_backward": round(fb, 4),
                         "images_x_steps_per_s": round(batch / step, 2), "ratio": round(step / fb, 3),
                         "pass": step / fb <= 1.2})
    emit({"device": str(device), "threads": torch.get_num_threads(), "steps": args.steps, "reps": args.reps,
          "rows": rows})


if __name__ == "__main__":
    main()
