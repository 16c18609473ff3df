"""Scoring throughput from JPEG files on disk, side by side with the unavoidable work done alone.

A benchmark in the published Spurious ImageNet layout is generated from the photos that ship with
scikit-image (ImageNet-like 500x375 JPEGs, quality 90): validation images are large crops of the
tabby-cat and espresso photos (wnid folders n02123045 / n07920052), spurious images small patches
of the same photos (folders ``spurious_imagenet_281_fur_0`` / ``spurious_imagenet_967_table_0``).
Measured in one run, on the same images and models:

* ``decode``: load + convert + preprocess every image serially in this process (seconds/image);
* ``forward``: each model's forward pass (``phi_and_logits``) on pre-made tensors at the same batch size;
* ``score``: the whole ``spurious.score.score`` stage without plots (listing, decoding in workers,
  forward passes, log-softmax / top-k, cache writes, metrics, CSV/JSON/Markdown), then a cached
  re-run with the plots and HTML report, then the stage once more decoding in-process
  (``num_workers=0``): its bound is exactly ``1 / (decode + forward)`` even on a busy machine, so
  ``ratio_in_process`` isolates the stage's own overhead.

Models with the same preprocessing share each decoded batch, so with M models the bound on a
CPU-only machine (decoding and the models share the cores) is ``1 / (decode + sum of forwards)``
images/s; on a GPU it is ``1 / sum of forwards``. Prints the ratio, and the scores themselves.

    python bench/bench_score.py --images 512 --model efficientnet_lite0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import decode_and_forward, emit

from spurious import imagenet
from spurious.extract import default_num_workers
from spurious.models import load_model
from spurious.score import score

_PHOTOS = {281: ("chelsea", "fur"), 967: ("coffee", "table")}  # ImageNet class -> scikit-image photo, patch name


def make_photo_benchmark(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """``n`` JPEGs: half validation crops (55-100 % of a side), half spurious patches (20-35 %)."""
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    per = max(1, n // (2 * len(_PHOTOS)))
    for k, (photo_name, patch) in _PHOTOS.items():
        photo = Image.fromarray(getattr(skdata, photo_name)()).convert("RGB")
        w, h = photo.size
        for split, (lo, hi) in (("val", (0.55, 1.0)), ("spurious", (0.2, 0.35))):
            folder = root / split / (imagenet.wnids()[k] if split == "val" else f"spurious_imagenet_{k}_{patch}_0")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                s = rng.uniform(lo, hi)
                cw, ch = int(w * s), int(h * s)
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                img = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((500, 375), Image.BICUBIC)
                if rng.random() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                img.save(folder / f"{i:06d}.jpg", quality=90)
    return root / "spurious", root / "val"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512, help="total images (half validation, half spurious)")
    p.add_argument("--model", dest="models", action="append", default=None,
                   help="model spec (repeatable; default efficientnet_lite0)")
    p.add_argument("--batch-size", type=int, default=None, help="default: score's default for the device")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--protocol", default="model", choices=["model", "reference"])
    p.add_argument("--random-weights", action="store_true")
    args = p.parse_args()
    from spurious._dist import resolve_device

    specs = args.models or ["efficientnet_lite0"]
    dev = resolve_device(args.device)
    if args.batch_size is None:
        args.batch_size = 64 if dev.type == "cuda" else 16
    clfs = [load_model(s, pretrained=not args.random_weights, device=dev).eval() for s in specs]
    pre = clfs[0].preprocessing
    if any(c.preprocessing.to_dict() | {"mean": 0, "std": 0} != pre.to_dict() | {"mean": 0, "std": 0} for c in clfs):
        print("note: the models have different preprocessing, so they do not share decoded batches", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        spu, val = make_photo_benchmark(tmp_path / "data", args.images)
        paths = sorted(spu.glob("*/*.jpg")) + sorted(val.glob("*/*.jpg"))

        decode, forwards = decode_and_forward(pre, paths, clfs, args.batch_size, dev)

        t = time.perf_counter()
        r = score(clfs, spurious=spu, val=val, out=tmp_path / "out", batch_size=args.batch_size,
                  num_workers=args.workers, progress=False, plots=False, protocol=args.protocol)
        stage = time.perf_counter() - t
        t = time.perf_counter()
        score(clfs, spurious=spu, val=val, out=tmp_path / "out", batch_size=args.batch_size,
              num_workers=args.workers, progress=False, plots=True, protocol=args.protocol)
        cached_with_plots = time.perf_counter() - t
        # the same stage decoding in this process: its bound is exactly decode + forward, whatever else
        # runs on the machine, so this ratio isolates the stage's own overhead
        t = time.perf_counter()
        score(clfs, spurious=spu, val=val, out=tmp_path / "out0", batch_size=args.batch_size, num_workers=0,
              progress=False, plots=False, protocol=args.protocol)
        in_process = time.perf_counter() - t
    images = r.rows[0].spurious_images + r.rows[0].val_images
    ours = images / stage
    bound = 1.0 / (decode + sum(forwards)) if dev.type == "cpu" else 1.0 / sum(forwards)
    emit({
        "benchmark": "score", "models": specs, "device": str(dev), "images": images,
        "batch_size": args.batch_size, "protocol": args.protocol,
        "workers": default_num_workers() if args.workers is None else args.workers,
        "torch_threads": torch.get_num_threads(),
        "decode_preprocess_ms_per_image": round(1000 * decode, 2),
        "forward_ms_per_image": [round(1000 * f, 2) for f in forwards],
        "bound_images_per_s": round(bound, 1),
        "bound": "1/(decode+sum forward)" if dev.type == "cpu" else "1/sum forward",
        "score_images_per_s": round(ours, 1),
        "ratio": round(ours / bound, 3),
        "cached_rerun_with_plots_s": round(cached_with_plots, 2),
        "score_in_process_images_per_s": round(images / in_process, 1),
        "ratio_in_process": round(images / in_process / (1.0 / (decode + sum(forwards))), 3),
        "scores": [{k: row.to_dict()[k] for k in ("model", "mauc", "map", "mean_extension", "val_accuracy")}
                   for row in r.rows],
        "per_class": [{k: c.to_dict()[k] for k in ("model", "class_name", "auc", "ap", "extension")}
                      for c in r.per_class],
    })


if __name__ == "__main__":
    main()
