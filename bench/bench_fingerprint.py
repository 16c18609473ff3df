"""What the full-weight fingerprint costs: hashing every weight vs loading the checkpoint, side by side.

Since fingerprints cover all weights (not only the head), loading a checkpoint hashes it once; the
digest is cached per file, so later loads of the same file skip the hash. This measures, in one run on
one machine, for random-weight torchvision models saved as checkpoints:

* ``load``: ``load_model("torchvision:NAME@ckpt")`` with a warm digest cache (no hashing),
* ``hash``: ``state_dict_digest`` of the loaded model (what the first load adds),
* ``cold``: the first load with an empty digest cache (load + hash + cache write),

and prints the ratios ``hash / load`` and ``cold / load``.

    python bench/bench_fingerprint.py --models resnet18 resnet50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402


def _best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    import torch
    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SPURIOUS_CACHE"] = str(Path(tmp) / "cache")
        from spurious.models import load_model, state_dict_digest

        rows = []
        pre = {"input_size": 224, "crop_pct": 0.875}  # stated, so no warning
        for name in args.models:
            torch.manual_seed(0)
            ckpt = Path(tmp) / f"{name}.pt"
            torch.save(torchvision.models.get_model(name, weights=None).state_dict(), ckpt)
            size_mb = ckpt.stat().st_size / 2**20
            cache = Path(tmp) / "cache" / "checkpoint-digests.json"

            def cold() -> None:
                cache.unlink(missing_ok=True)
                load_model(f"torchvision:{name}@{ckpt}", preprocessing=pre).fingerprint()

            t_cold = _best(cold, args.repeat)
            t_load = _best(lambda: load_model(f"torchvision:{name}@{ckpt}", preprocessing=pre).fingerprint(),
                           args.repeat)
            clf = load_model(f"torchvision:{name}@{ckpt}", preprocessing=pre)
            t_hash = _best(lambda: state_dict_digest(clf.model.state_dict()), args.repeat)
            rows.append({"model": name, "checkpoint_mb": round(size_mb, 1), "load_s": round(t_load, 3),
                         "hash_s": round(t_hash, 3), "cold_first_load_s": round(t_cold, 3),
                         "hash_over_load": round(t_hash / t_load, 3), "cold_over_load": round(t_cold / t_load, 3),
                         "hash_mb_per_s": round(size_mb / t_hash, 1)})
        emit({"repeat": args.repeat, "rows": rows})


if __name__ == "__main__":
    main()
