"""Inference overhead of the SpuFix wrapper over the bare model (target: <= 5 % at batch 64).

ResNet-50 (torchvision, random weights, D = 2048, K = 1000), batch 64 of 224x224 images, with a
FixHead of the reference size: 233 fixed classes with 1 or 2 components each (322 in all; random
rows, the cost does not depend on the values). The bare ``Classifier`` and the ``SpuFix`` wrapper
run interleaved (A, B, A, B, ...) so that machine load hits both alike; the medians are compared.
The head alone (one [64, 2048] x [2048, 322] product, a ReLU and a scatter-add) is timed too.

    python bench/bench_fix.py                  # CPU: 10 forward passes (2 warm-up + 2 x 4)
    python bench/bench_fix.py --device cuda --reps 20

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402

from spurious.fix import FixHead, SpuFix  # noqa: E402
from spurious.models import Classifier, load_model  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reference_head(clf: Classifier, classes: int = 233, components: int = 322, seed: int = 0) -> FixHead:
    """A FixHead of the published size on ``clf`` (random rows; 233 classes, 322 components)."""
    rng = np.random.default_rng(seed)
    fixed = np.sort(rng.choice(clf.num_classes, classes, replace=False))
    counts = np.ones(classes, dtype=np.int64)
    counts[rng.choice(classes, components - classes, replace=False)] = 2
    cls = np.repeat(fixed, counts)
    comp = np.concatenate([np.arange(c) for c in counts])
    A = rng.normal(0, 0.02, (components, clf.num_features))
    c = rng.normal(0, 0.1, components)
    return FixHead(A, c, cls, comp, num_classes=clf.num_classes, model_spec=clf.spec,
                   model_fingerprint=clf.fingerprint())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="torchvision:resnet50")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=4, help="timed forward passes per variant (default 4)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    dev = torch.device(args.device)
    clf = load_model(args.model, pretrained=False, device=dev).eval()
    head = reference_head(clf)
    fixed = SpuFix(clf, head)
    x = torch.rand(args.batch_size, *clf.input_size, generator=torch.Generator().manual_seed(0)).to(dev)
    times: dict[str, list[float]] = {"bare": [], "spufix": []}
    with torch.inference_mode():
        for m in (clf, fixed):  # warm-up
            m(x)
        for _ in range(args.reps):
            for name, m in (("bare", clf), ("spufix", fixed)):
                _sync(dev)
                t = time.perf_counter()
                m(x)
                _sync(dev)
                times[name].append(time.perf_counter() - t)
        phi, logits = clf.phi_and_logits(x)
        head_times = []
        for _ in range(50):
            _sync(dev)
            t = time.perf_counter()
            head(phi, logits)
            _sync(dev)
            head_times.append(time.perf_counter() - t)
    bare, spu, hd = (statistics.median(v) for v in (times["bare"], times["spufix"], head_times))
    emit({
        "model": args.model, "device": str(dev), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "fixed_classes": len(head.classes), "components": head.num_rows, "dim": head.num_features,
        "bare_median_s": round(bare, 4), "spufix_median_s": round(spu, 4),
        "overhead_percent_wallclock": round(100 * (spu - bare) / bare, 2),
        "head_median_ms": round(1000 * hd, 3), "overhead_percent_head": round(100 * hd / bare, 3),
        "bare_s": [round(t, 4) for t in times["bare"]], "spufix_s": [round(t, 4) for t in times["spufix"]],
    })


if __name__ == "__main__":
    main()
