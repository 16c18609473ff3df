"""glibc malloc thresholds (``spurious._malloc.tune_malloc``, which the CLI sets): speed side by side.

Each workload runs in a fresh interpreter, once with glibc's defaults (``SPURIOUS_MALLOC=0``) and
once after ``tune_malloc()`` (what ``spurious ...`` does first thing), the two interleaved, best of
``--repeats``; the script prints seconds, minor page faults (``getrusage``) and the ratio per workload.
Every workload is timed after one untimed warm-up round in the same process.

* ``ddim``: DDIM sampling of the shipped demo diffusion model (``--ddim-batch`` images, 10 steps);
* ``dvce_denoise``: the DVCE engine's plain denoising from noised start images (batch 8, 20 steps);
* ``diffusion_train``: 6 optimiser steps of the demo diffusion recipe (batch 32, 64 px);
* ``classify``: ``demo:standard`` on 1024 random 64-px images, batch 256 (what ``extract`` does);
* ``resnet50``: a torchvision ResNet-50 (random weights) on 16 images of 224 px, no gradient.

    python bench/bench_malloc.py                        # all workloads, 2 repeats
    python bench/bench_malloc.py --only ddim classify --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_WORKLOADS = ("ddim", "dvce_denoise", "diffusion_train", "classify", "resnet50")

_CHILD = r"""
import json, os, resource, sys, time
mode, name, ddim_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "tuned":
    from spurious._malloc import tune_malloc
    assert tune_malloc(), "tune_malloc() did nothing (not glibc, or a MALLOC_* variable is set)"
import torch

def run_ddim():
    from diffusers import DDIMPipeline, DDIMScheduler
    from spurious.demo.diffusion import _load_pipeline_parts, demo_diffusion_dir
    unet, ddpm = _load_pipeline_parts(demo_diffusion_dir(progress=False))
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(ddpm.config))
    pipe.set_progress_bar_config(disable=True)
    def once():
        with torch.inference_mode():
            pipe(batch_size=ddim_batch, generator=torch.Generator().manual_seed(0), num_inference_steps=10,
                 eta=0.0, output_type="np")
    return once

def run_dvce_denoise():
    from spurious.counterfactual._dvce import DvceSettings, denoise, load_diffusion
    from spurious.demo.diffusion import demo_diffusion_dir
    dm = load_diffusion(demo_diffusion_dir(progress=False))
    x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = DvceSettings(steps=40, t_start=0.5)
    return lambda: denoise(dm, x, settings, seed=0)

def run_diffusion_train():
    from spurious.demo.diffusion import DemoDiffusionConfig, _make_unet
    torch.manual_seed(0)
    unet = _make_unet(DemoDiffusionConfig())
    opt = torch.optim.AdamW(unet.parameters(), 1e-3)
    x, t = torch.randn(32, 3, 64, 64), torch.randint(0, 1000, (32,))
    def once():
        for _ in range(6):
            loss = (unet(x, t).sample - x).square().mean()
            opt.zero_grad(); loss.backward(); opt.step()
    return once

def run_classify():
    from spurious.models import load_model
    clf = load_model("demo:standard")
    x = torch.rand(1024, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    def once():
        with torch.inference_mode():
            for i in range(0, 1024, 256):
                clf(x[i:i + 256])
    return once

def run_resnet50():
    import torchvision
    m = torchvision.models.resnet50().eval()
    x = torch.rand(16, 3, 224, 224)
    def once():
        with torch.inference_mode():
            m(x)
    return once

once = globals()["run_" + name]()
once()  # warm-up
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t0 = time.perf_counter()
once()
seconds = time.perf_counter() - t0
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps({"seconds": seconds, "faults": faults, "threads": torch.get_num_threads()}))
"""


def _run(mode: str, name: str, ddim_batch: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["SPURIOUS_MALLOC"] = "0" if mode == "default" else "1"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, name, str(ddim_batch)], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{name} ({mode}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=_WORKLOADS, default=list(_WORKLOADS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ddim-batch", type=int, default=64)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    rows = []
    for name in args.only:
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for mode in ("default", "tuned"):
                r = _run(mode, name, args.ddim_batch)
                if mode not in best or r["seconds"] < best[mode]["seconds"]:
                    best[mode] = r
        rows.append({"workload": name, "default_s": round(best["default"]["seconds"], 3),
                     "tuned_s": round(best["tuned"]["seconds"], 3),
                     "default_faults": best["default"]["faults"], "tuned_faults": best["tuned"]["faults"],
                     "speedup": round(best["default"]["seconds"] / best["tuned"]["seconds"], 2),
                     "threads": best["tuned"]["threads"]})
        if not args.json:
            r = rows[-1]
            print(f"{name:16s} default {r['default_s']:7.2f} s ({r['default_faults']:>8d} faults)   tuned "
                  f"{r['tuned_s']:7.2f} s ({r['tuned_faults']:>8d} faults)   speed-up {r['speedup']:.2f}x", flush=True)
    if args.json:
        print(json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
