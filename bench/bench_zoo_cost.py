"""What `spurious score --zoo paper` costs: forward FLOPs of every zoo model, times the images it scores.

Builds each model on the ``meta`` device (no weights, nothing downloaded, seconds per model) at the
input size of its pretrained config and counts the FLOPs of one forward pass with
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2). Then the images of the paper's
protocol: Spurious ImageNet (100 classes x 75 images) once per protocol, the validation images once
(both protocols preprocess them alike, so the second protocol finds them cached).

    python bench/bench_zoo_cost.py [--val-images 50000] [--tflops 30 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import timm
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from spurious.models._timm import pretrained_cfg_preprocessing
from spurious.score import paper_zoo

SPURIOUS_IMAGES = 100 * 75  # Spurious ImageNet: 100 classes x 75 images


def forward_gflops(spec: str) -> tuple[float, tuple[int, int], float]:
    """GFLOPs of one image, the input size, millions of parameters."""
    with torch.device("meta"):
        if spec.startswith("torchvision:resnet50@"):
            net = torchvision.models.resnet50()
            size = (224, 224)
        else:
            net = timm.create_model(spec.split(":", 1)[1], pretrained=False)
            h, w = pretrained_cfg_preprocessing(net).input_size
            size = (int(h), int(w))
    net.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.empty(1, 3, *size, device="meta"))
    return counter.get_total_flops() / 1e9, size, sum(p.numel() for p in net.parameters()) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val-images", type=int, default=50_000, help="validation images given (default: all of val)")
    p.add_argument("--protocols", type=int, default=2, help="protocols scored (default 2: model and reference)")
    p.add_argument("--tflops", type=float, nargs="+", default=[30.0, 100.0],
                   help="sustained TFLOP/s assumed for the GPU time (default 30 100)")
    p.add_argument("--json", default=None, help="write the per-model figures here")
    args = p.parse_args(argv)
    images = args.val_images + args.protocols * SPURIOUS_IMAGES
    rows = {}
    t0 = time.perf_counter()
    for m in paper_zoo():
        gflops, size, params = forward_gflops(m.spec)
        rows[m.id] = {"spec": m.spec, "input": list(size), "gflops": round(gflops, 2), "params_m": round(params, 1)}
        print(f"{m.id:52s} {size[0]:>4}px {gflops:8.1f} GFLOPs {params:7.1f} M params", flush=True)
    total = sum(r["gflops"] for r in rows.values())
    print(f"{len(rows)} models: {total:.0f} GFLOPs per image for all of them; {images} images per model "
          f"({args.val_images} val + {args.protocols} x {SPURIOUS_IMAGES} spurious); "
          f"{total * 1e9 * images / 1e15:.0f} PFLOP in all ({time.perf_counter() - t0:.0f} s to count)")
    for tf in args.tflops:
        print(f"  at a sustained {tf:g} TFLOP/s: {total * 1e9 * images / (tf * 1e12) / 3600:.1f} GPU hours")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
