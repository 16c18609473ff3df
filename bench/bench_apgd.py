"""APGD cost per step against one forward+backward pass of the same batch, and its memory.

(a) Speed, side by side in one process: the NPFV objective ``alpha``-style (a random linear form
    ``<u_i, phi(x_i)>`` per image) on the same batch and model, measured interleaved:
    * ``fwd+bwd``: one forward pass and one input-gradient backward pass;
    * ``APGD step``: the time from one call of the objective inside an ``apgd`` run to the next,
      i.e. everything one step costs (forward, backward, two exact projections, momentum,
      bookkeeping), timed by a wrapper around the objective;
    the wrapper times one plain fwd+bwd right before each call (outside the step intervals), so
    every step has a fwd+bwd sample taken seconds apart; ``--reps`` runs of ``--steps`` steps;
    the median of the paired ratios (robust to the load swings of a shared machine) and the
    ratio of the medians.
    Target: ``step / fwd+bwd <= 1.2``. Run for ``--model`` at its input size and for ``--demo-model``.
(b) Memory: the peak RSS growth of one APGD step (``steps=1``) per batch size, each in a fresh
    subprocess, a least-squares line through the points, and the largest batch that fits ``--ram-gib``.
(c) With CUDA: images * steps / s of a longer run on the GPU (skipped without one).
(d) GradCAM on the demo model: on the planted spurious-only images (feature, no class object),
    how often the maximum of the class logit's heatmap lies in the planted feature's box, and the
    share of the heat inside it, for the default layer and the ones in ``--gradcam-layers``.

    python bench/bench_apgd.py --batch 4 --reps 3 --steps 4 --demo-batch 128 --memory-batches 2,4,8,16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit

from spurious.apgd import apgd
from spurious.models import load_model


def _setup(spec: str, batch: int, device: str, seed: int = 0) -> tuple[Any, torch.Tensor, Any]:
    torch.manual_seed(seed)
    pretrained = spec.startswith("demo:")  # hub weights cannot be downloaded here; demo models are local
    clf = load_model(spec, pretrained=pretrained, device=device)
    _, height, width = clf.input_size
    x0 = torch.full((batch, 3, height, width), 0.5, device=clf.device)
    u = torch.randn((batch, clf.num_features), generator=torch.Generator().manual_seed(seed)).to(clf.device)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return (clf.phi(x) * u).sum(dim=1)

    return clf, x0, objective


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Any, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def speed(spec: str, batch: int, reps: int, steps: int, eps: float | None, device: str) -> dict[str, Any]:
    clf, x0, objective = _setup(spec, batch, device)
    radius = eps if eps is not None else 30.0 * x0.shape[-1] / 224  # DESIGN.md: 30 at 224, scaled
    dev = clf.device

    def fwd_bwd() -> None:
        x = x0.clone().requires_grad_(True)
        torch.autograd.grad(objective(x).sum(), x)

    t_fb: list[float] = []
    t_step: list[float] = []
    last: list[float] = []

    def paired_objective(x: torch.Tensor) -> torch.Tensor:
        # one APGD step = from just before call k to the start of call k + 1; a plain fwd+bwd pass
        # of the same batch is timed right before each call, outside the step intervals
        _sync(dev)
        if last:
            t_step.append(time.perf_counter() - last[0])
        t_fb.append(_time(fwd_bwd, dev))
        last[:] = [time.perf_counter()]
        return objective(x)

    fwd_bwd()  # warm-up
    apgd(objective, x0, eps=radius, steps=1)
    for _ in range(reps):
        last.clear()
        apgd(paired_objective, x0, eps=radius, steps=steps)
        t_fb.pop()  # the fwd+bwd before the last call has no step after it
    ratios = [b / a for a, b in zip(t_fb, t_step)]
    fb, step = statistics.median(t_fb), statistics.median(t_step)
    return {
        "model": spec, "input": list(clf.input_size), "batch": batch, "eps": round(radius, 3),
        "reps": reps, "steps_per_rep": steps, "device": str(dev), "threads": torch.get_num_threads(),
        "fwd_bwd_seconds_median": round(fb, 4), "apgd_step_seconds_median": round(step, 4),
        "ratio_of_medians": round(step / fb, 3),
        "median_paired_ratio": round(statistics.median(ratios), 3),
        "fwd_bwd_samples": [round(t, 4) for t in t_fb], "apgd_step_samples": [round(t, 4) for t in t_step],
    }


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(spec: str, batch: int) -> None:
    """One APGD step in this (fresh) process; prints the peak RSS growth as JSON."""
    _, x0, objective = _setup(spec, batch, "cpu")
    before = _rss_kib("VmRSS")
    try:  # reset the peak (VmHWM) so model loading does not count
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    apgd(objective, x0, eps=30.0, steps=1)
    peak = _rss_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"batch": batch, "baseline_mib": before / 1024, "peak_mib": peak / 1024,
                      "growth_mib": (peak - before) / 1024}))


def memory(spec: str, batches: list[int], ram_gib: float) -> dict[str, Any]:
    points = []
    for b in batches:
        out = subprocess.run([sys.executable, __file__, "--memory-child", spec, str(b)], check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        points.append(json.loads(out.stdout.strip().splitlines()[-1]))
    n = np.array([p["batch"] for p in points], dtype=float)
    growth = np.array([p["growth_mib"] for p in points])
    slope, intercept = np.polyfit(n, growth, 1)
    baseline = float(np.median([p["baseline_mib"] for p in points]))
    budget = ram_gib * 1024
    max_batch = int((budget - baseline - intercept) // slope) if slope > 0 else None
    return {
        "model": spec, "points": [{k: round(v, 1) if isinstance(v, float) else v for k, v in p.items()} for p in points],
        "fit_growth_mib": {"per_image": round(float(slope), 1), "intercept": round(float(intercept), 1)},
        "process_baseline_mib": round(baseline, 1), "ram_gib": ram_gib, "largest_batch_that_fits": max_batch,
    }


def cuda_throughput(spec: str, batch: int, steps: int) -> dict[str, Any]:
    clf, x0, objective = _setup(spec, batch, "cuda")
    apgd(objective, x0, eps=30.0 * x0.shape[-1] / 224, steps=2)  # warm-up
    torch.cuda.reset_peak_memory_stats(clf.device)
    seconds = _time(lambda: apgd(objective, x0, eps=30.0 * x0.shape[-1] / 224, steps=steps), clf.device)
    return {"model": spec, "batch": batch, "steps": steps, "seconds": round(seconds, 2),
            "images_steps_per_second": round(batch * steps / seconds, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated(clf.device) / 2**20, 1),
            "gpu": torch.cuda.get_device_name(clf.device)}


def gradcam_planted(variant: str, layers: list[str], per_feature: int) -> dict[str, Any]:
    """GradCAM of the class logit on planted spurious-only images: does it land on the feature?"""
    from PIL import Image

    from spurious.demo.train import train_demo_model
    from spurious.gradcam import GradCAM

    info = train_demo_model(variant, progress=False)  # the cached checkpoint (trains if missing)
    clf = load_model(info.spec)
    rows = [json.loads(line) for line in (info.planted_root / "index.jsonl").read_text().splitlines()]
    out: dict[str, Any] = {"model": info.spec, "planted_root": str(info.planted_root), "layers": {}}
    features = sorted({f["name"] for r in rows if r["split"] == "spurious" for f in r["features"]})
    for layer in layers:
        cam = GradCAM(clf, layer or None)
        per: dict[str, Any] = {}
        for feature in features:
            sel = [r for r in rows if r["split"] == "spurious" and r["features"]
                   and r["features"][0]["name"] == feature][:per_feature]
            box_of = [next(f["box"] for f in r["features"] if f["name"] == feature) for r in sel]
            if not sel or any(b[2] - b[0] >= clf.input_size[2] for b in box_of):
                continue  # whole-image features (frame, water) cannot be localised
            x = torch.stack([torch.from_numpy(np.asarray(Image.open(info.planted_root / r["id"]).convert("RGB"),
                                                         dtype=np.float32) / 255).permute(2, 0, 1) for r in sel])
            k = int(sel[0]["label"])
            maps = cam.attribute(x, lambda phi, logits, k=k: logits[:, k]).numpy()
            hits, mass, area = 0, [], []
            for m, (x0, y0, x1, y1) in zip(maps, box_of):
                r_, c_ = np.unravel_index(m.argmax(), m.shape)
                hits += int(x0 <= c_ < x1 and y0 <= r_ < y1)
                mass.append(float(m[y0:y1, x0:x1].sum() / max(float(m.sum()), 1e-12)))
                area.append((x1 - x0) * (y1 - y0) / m.size)
            per[feature] = {"class": k, "images": len(sel), "argmax_in_box": hits,
                            "heat_share_in_box": round(float(np.mean(mass)), 3),
                            "box_area_share": round(float(np.mean(area)), 3)}
        out["layers"][cam.layer] = per
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="torchvision:resnet50", help="model spec (random weights unless demo:)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="samples per round (fwd+bwd passes, APGD steps)")
    p.add_argument("--eps", type=float, default=None, help="default: 30 * side / 224")
    p.add_argument("--demo-model", default="demo:robust", help="'' to skip")
    p.add_argument("--demo-batch", type=int, default=128)
    p.add_argument("--demo-steps", type=int, default=8)
    p.add_argument("--memory-batches", default="2,4,8,16", help="'' to skip the memory part")
    p.add_argument("--ram-gib", type=float, default=24.0)
    p.add_argument("--cuda-batch", type=int, default=128)
    p.add_argument("--cuda-steps", type=int, default=50)
    p.add_argument("--gradcam-demo", default="robust", help="demo variant for (d); '' to skip")
    p.add_argument("--gradcam-layers", default=",stages.1", help="comma list; empty = find_target_layer")
    p.add_argument("--gradcam-images", type=int, default=40, help="spurious-only images per feature")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--memory-child", nargs=2, metavar=("SPEC", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "apgd", "torch": torch.__version__, "cpus": os.cpu_count()}
    result["speed"] = [speed(args.model, args.batch, args.reps, args.steps, args.eps, "cpu")]
    if args.demo_model:
        result["speed"].append(speed(args.demo_model, args.demo_batch, args.reps, args.demo_steps, None, "cpu"))
    if args.memory_batches:
        batches = [int(b) for b in args.memory_batches.split(",")]
        result["memory"] = memory(args.model, batches, args.ram_gib)
    if args.gradcam_demo:
        layers = args.gradcam_layers.split(",")
        result["gradcam_planted"] = gradcam_planted(args.gradcam_demo, layers, args.gradcam_images)
    if torch.cuda.is_available():
        result["cuda"] = [cuda_throughput(args.model, args.cuda_batch, args.cuda_steps)]
        if args.demo_model:
            result["cuda"].append(cuda_throughput(args.demo_model, args.cuda_batch, args.cuda_steps))
    else:
        result["cuda"] = "not available on this machine"
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    emit(result)


if __name__ == "__main__":
    main()
