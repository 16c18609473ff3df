"""Do the embedded diffusion model's samples look like planted images? (issue 19, item 2)

Draws ``--n`` samples from the diffusion model (DDIM, ``--steps`` steps, seeded) and classifies them
with a demo classifier; the yardstick, in the same run with the same classifier, is the same
check on the real images the model was trained on (the planted train split and pool): samples can
at best be as recognisable as those. Prints JSON.

    PYTHONPATH=src python bench/bench_diffusion_quality.py --n 256 --steps 50 --grid /tmp/samples.png
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from spurious.demo.diffusion import (
    DemoDiffusionConfig,
    demo_diffusion_dir,
    quality_check,
)
from spurious.demo.planted import generate_planted
from spurious.models import load_model


def _real_yardstick(classifier: str, threshold: float) -> dict[str, object]:
    """The quality figures of the real training images (train split + pool) by the same classifier."""
    from PIL import Image

    from spurious._io import cache_dir

    config = DemoDiffusionConfig()
    planted = generate_planted(cache_dir() / "planted" / config.planted.config_hash(), config.planted)
    paths = sorted(planted.train.glob("*/*.png")) + sorted(planted.pool.glob("*.png"))
    clf = load_model(classifier)
    probs = []
    with torch.inference_mode():
        for start in range(0, len(paths), 256):
            batch = [np.asarray(Image.open(p).convert("RGB")) for p in paths[start:start + 256]]
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255
            probs.append(torch.softmax(clf(x), dim=1))
    p = torch.cat(probs)
    top, arg = p.max(dim=1)
    shares = torch.bincount(arg, minlength=p.shape[1]).double() / len(paths)
    return {"n": len(paths), "confident_fraction": round(float((top >= threshold).double().mean()), 4),
            "max_share_ratio": round(float(shares.max() * p.shape[1]), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classifier", default="demo:standard")
    ap.add_argument("--grid", help="write a PNG grid of the first 64 samples here")
    args = ap.parse_args()
    folder = demo_diffusion_dir(progress=False)
    began = time.perf_counter()
    q = quality_check(folder, n=args.n, seed=args.seed, sample_steps=args.steps, classifier=args.classifier,
                      grid=args.grid, progress=False)
    print(json.dumps({"diffusion": str(folder), "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
                      "seconds": round(time.perf_counter() - began, 1), "quality": q.to_dict(),
                      "real_images": _real_yardstick(args.classifier, q.threshold)}, indent=2))


if __name__ == "__main__":
    main()
