"""Extraction throughput from JPEG files on disk, side by side with the unavoidable work done alone.

Measured in one run, on the same images and model:

* ``decode``: load + convert + preprocess every image serially in this process (seconds/image);
* ``forward``: the model's forward pass on pre-made tensors at the same batch size (seconds/image);
* ``extract``: the whole ``spurious.extract.extract`` stage (decode in workers, forward, top-k,
  shard writes, index and manifest).

On a CPU-only machine decoding and the model share the cores, so the bound is
``1 / (decode + forward)`` images/s; on a GPU it is the bare forward pass. Prints the ratio.

    python bench/bench_extract.py --images 512 --model efficientnet_lite0
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
from _common import decode_and_forward, emit  # noqa: E402

from spurious.datasets import open_dataset  # noqa: E402
from spurious.extract import default_num_workers, extract  # noqa: E402
from spurious.models import load_model  # noqa: E402


def make_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """ImageNet-like JPEGs (~500x375, quality 90) cut from the photos that ship with scikit-image."""
    from skimage import data as skdata

    photos = [Image.fromarray(getattr(skdata, name)()).convert("RGB")
              for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        folder = root / str(i % 10)  # the bare ImageNet class index (a folder name the label check accepts)
        folder.mkdir(parents=True, exist_ok=True)
        photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((500, 375), Image.BICUBIC).save(
            folder / f"{i:06d}.jpg", quality=90)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=None, help="default: extract's default for the device")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--random-weights", action="store_true")
    args = p.parse_args()
    from spurious._dist import resolve_device

    dev = resolve_device(args.device)
    if args.batch_size is None:
        args.batch_size = 64 if dev.type == "cuda" else 16
    clf = load_model(args.model, pretrained=not args.random_weights, device=dev).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_jpegs(tmp / "data", args.images)
        ds = open_dataset(f"folder:{data}", transform=clf.preprocessing)
        paths = [r.path for r in ds.records]

        decode, (forward,) = decode_and_forward(clf.preprocessing, paths, [clf], args.batch_size, dev)

        t = time.perf_counter()
        r = extract(tmp / "ws", model=clf, data=ds, batch_size=args.batch_size, num_workers=args.workers,
                    device=dev, progress=False)
        stage = time.perf_counter() - t
    ours = r.num_rows / stage
    bound = 1.0 / (decode + forward) if dev.type == "cpu" else 1.0 / forward
    emit({
        "benchmark": "extract", "model": args.model, "device": str(dev), "images": r.num_rows,
        "batch_size": args.batch_size,
        "workers": default_num_workers() if args.workers is None else args.workers,
        "torch_threads": torch.get_num_threads(),
        "decode_preprocess_ms_per_image": round(1000 * decode, 2),
        "forward_ms_per_image": round(1000 * forward, 2),
        "bound_images_per_s": round(bound, 1),
        "bound": "1/(decode+forward)" if dev.type == "cpu" else "1/forward",
        "extract_images_per_s": round(ours, 1),
        "ratio": round(ours / bound, 3),
    })


if __name__ == "__main__":
    main()
