"""NPCA speed and accuracy on an ImageNet-shaped simulation, against the reference approach.

Reference: per class, float64 ``numpy.cov`` of ``w_k * phi`` then ``numpy.linalg.eigh``.
Ours: ``spurious.npca.npca`` streaming the same float16 features from the workspace store.
Both run in this process on the same machine; prints the speed-up and the worst relative error
of the top-L eigenvalues.

    python bench/bench_npca.py --classes 50 --per-class 1300 --dim 2048
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, simulate_features  # noqa: E402

from spurious.npca import load_npca, npca  # noqa: E402
from spurious.workspace import import_features  # noqa: E402
from spurious.workspace import Workspace  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--per-class", type=int, default=1300)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--components", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="float32")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        phi, labels, W, b = simulate_features(tmp / "phi.npy", args.classes, args.per_class, args.dim)
        ws = tmp / "ws"
        Workspace.create_from_head(ws, W, b, spec="bench:simulated")
        import_features(ws, phi, labels, [f"img_{i:08d}" for i in range(len(labels))], split="train")
        setup = time.perf_counter() - t
        del phi

        t = time.perf_counter()
        npca(ws, n_components=args.components, device=args.device, precision=args.precision, progress=False)
        ours = time.perf_counter() - t

        store = Workspace.open(ws).feature_store("train")
        fitted = load_npca(ws)
        t = time.perf_counter()
        ref_vals = {}
        for k in range(args.classes):
            x = store.phi(store.rows_of_class(k)).astype(np.float64) * W[k].astype(np.float64)
            evals = np.linalg.eigh(np.cov(x, rowvar=False))[0][::-1]
            ref_vals[k] = evals[: args.components]
        reference = time.perf_counter() - t
        rel = max(float(np.max(np.abs(fitted[k].lam.astype(np.float64) - ref_vals[k]) / ref_vals[k]))
                  for k in range(args.classes))
    emit({
        "benchmark": "npca",
        "classes": args.classes, "per_class": args.per_class, "dim": args.dim, "components": args.components,
        "device": args.device, "precision": args.precision, "setup_seconds": round(setup, 1),
        "ours_seconds": round(ours, 2), "ours_seconds_per_class": round(ours / args.classes, 4),
        "reference_seconds": round(reference, 2),
        "reference_seconds_per_class": round(reference / args.classes, 4),
        "speedup": round(reference / ours, 2),
        "max_rel_err_top_eigenvalues": float(f"{rel:.3g}"),
    })


if __name__ == "__main__":
    main()
