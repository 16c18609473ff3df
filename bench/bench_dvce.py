"""DVCE (the diffusion engine of ``counterfactual``): its speed, and whether it paints the planted features.

Speed (always): seconds per image of plain denoising (the scheduler's steps from the noised start
image, no guidance) and of DVCE (the same steps plus, per step, one classifier forward and a backward
per non-zero term, at the denoised estimate) on the same start images, side by side in one run, at
the UNet's size on this machine; the guidance overhead is their ratio (target <= 2x).

Planted truth (skipped with ``--speed-only``): for the robust demo model (``demo:robust``, the guiding
model; ``demo:standard`` the evaluation model) and every planted (feature, class) pair, the pair's
component is the one of the top 10 whose 20 max-activating training images show the feature most
often (``_common.planted_component_precision``). Then ``add`` on (a) val images of the classes most
confused with k (the stage's default, k excluded) and (b) stand-in-only pool images (a large non-class
shape, no object, no feature), each with three engines on the same start images and guiding model:

* ``dvce``: ``--engine diffusion`` at DVCE's defaults (C_c 0.1, C_a 0.1, C_d 0.15, L1, last 100 of 200 steps);
* ``dvce_no_component``: the ablation C_a = 0 (class guidance only);
* ``image``: the image-space engine (APGD, L2, the default budget, ``--apgd-steps``).

Reported per run: the rise of p(k) (guiding and evaluation model), the share of images whose top-1
becomes k, the L1 distance to the original (in [0, 1] pixel units, summed), and where the change went
by colour (the colour judge of ``bench_visualize_planted``, fitted on class k's training pixels with
exact masks): the share of the change mass on pixels of the counterfactual called feature-like and
object-like, next to the share of such pixels. The paper's claim (Appendix H) holds where the
component term puts more change mass on feature-like pixels than the ablation, not on object-like ones.

``--diffusion``: a diffusers folder, ``demo`` (the embedded planted-data model,
``spurious.demo.diffusion.demo_diffusion_dir``), or ``random-tiny`` / ``random-64`` (random weights:
a tiny 32 px UNet for smoke runs, a 64 px UNet of realistic size for the speed figure).

    python bench/bench_dvce.py --out /tmp/bench-dvce                                  # the demo model, all of it
    python bench/bench_dvce.py --out /tmp/bench-dvce --speed-only --diffusion random-64 --images 2
    python bench/bench_dvce.py --out /tmp/bench-dvce-fast --fast --diffusion random-tiny --images 2 \\
        --diffusion-steps 20 --apgd-steps 5                                           # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, planted_component_precision
from bench_visualize_planted import ColourClassifier, _labelled, _pixel_sets, _quantise


def _random_unet(folder: Path, kind: str) -> Path:
    """A diffusers DDPMPipeline folder with random weights: ``random-tiny`` (32 px) or ``random-64``."""
    import diffusers

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    if kind == "random-tiny":
        unet = diffusers.UNet2DModel(sample_size=32, block_out_channels=(8, 16), layers_per_block=1,
                                     norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "UpBlock2D"))
    else:  # a DDPM-sized 64 px model: 4 levels, attention at 16 px
        unet = diffusers.UNet2DModel(sample_size=64, block_out_channels=(64, 128, 256, 256), layers_per_block=2,
                                     down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
    return folder


def _diffusion_folder(spec: str, out: Path) -> Path:
    if spec in ("random-tiny", "random-64"):
        return _random_unet(out / spec, spec)
    if spec == "demo":  # built by `spurious.demo.diffusion` (a separate module; imported by name here)
        import importlib

        return Path(importlib.import_module("spurious.demo.diffusion").demo_diffusion_dir())
    return Path(spec)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def _speed(clf: Any, basis: Any, component: int, x0: torch.Tensor, folder: Path, settings: Any,
           device: str) -> dict[str, Any]:
    """Seconds per image of plain denoising and of DVCE, same steps, same start images, one after the other."""
    from spurious.counterfactual._dvce import (
        _resize,
        denoise,
        dvce_images,
        load_diffusion,
    )

    dm = load_diffusion(folder, device=device)
    size = dm.image_size(clf.input_size[1:])
    x_unet = _resize(x0, size) * 2 - 1
    params = sum(p.numel() for p in dm.unet.parameters())
    denoise(dm, x_unet[:1], type(settings)(**{**settings.to_dict(), "steps": 4, "t_start": 0.5}))  # warm up
    t0 = time.perf_counter()
    denoise(dm, x_unet, settings, seed=0)
    plain = (time.perf_counter() - t0) / x0.shape[0]
    t0 = time.perf_counter()
    dvce_images(clf, basis, component, x0, dm, mode="add", settings=settings, seed=0)
    guided = (time.perf_counter() - t0) / x0.shape[0]
    return {"unet_parameters": params, "unet_size": list(size), "classifier": clf.spec,
            "classifier_size": list(clf.input_size), "images": int(x0.shape[0]),
            "denoising_steps": settings.denoising_steps, "device": device, "threads": torch.get_num_threads(),
            "seconds_per_image_plain": round(plain, 3), "seconds_per_image_dvce": round(guided, 3),
            "overhead": round(guided / plain, 2), "pass_overhead_le_2x": guided / plain <= 2.0}


def _judged(pairs: list[Any], k: int, colour: ColourClassifier) -> dict[str, Any]:
    before_k = np.array([p.optimised["before"]["top1"] == k for p in pairs])
    after_k = np.array([p.optimised["after"]["top1"] == k for p in pairs])
    models = []
    for m in range(len(pairs[0].models)):
        rows = [p.models[m] for p in pairs]
        models.append({"model": rows[0]["spec"], "role": rows[0]["role"],
                       "p_k_before": float(np.mean([r["before"]["probability"] for r in rows])),
                       "p_k_after": float(np.mean([r["after"]["probability"] for r in rows])),
                       "top1_k_after": float(np.mean([r["after"]["top1"] == k for r in rows]))})
    mass_f, mass_o, px_f, px_o = [], [], [], []
    for pair in pairs:
        cf = _rgb(pair.counterfactual)
        change = np.abs(cf - _rgb(pair.original)).sum(2)
        kind = colour.predict(_quantise(cf.round().astype(np.uint8)))
        total = change.sum() or 1.0
        mass_f.append(change[kind == 0].sum() / total)
        mass_o.append(change[kind == 1].sum() / total)
        px_f.append(float((kind == 0).mean()))
        px_o.append(float((kind == 1).mean()))
    return {"images": len(pairs), "models": models,
            "became_k": float(after_k[~before_k].mean()) if (~before_k).any() else None,
            "l1_median": float(np.median([p.record["distance"]["l1"] for p in pairs])),
            "change_share_feature_colour_median": float(np.median(mass_f)),
            "change_share_object_colour_median": float(np.median(mass_o)),
            "feature_colour_pixel_share_median": float(np.median(px_f)),
            "object_colour_pixel_share_median": float(np.median(px_o)),
            "feature_where_changed": float(np.median(mass_f)) > float(np.median(px_f))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/spurious-bench-dvce", help="scratch folder (demo workspaces, random UNets)")
    p.add_argument("--diffusion", default="demo", help="diffusers folder | demo | random-tiny | random-64")
    p.add_argument("--fast", action="store_true", help="tiny planted data and tiny models (smoke run)")
    p.add_argument("--images", type=int, default=8, help="start images per run and for the speed figure (default 8)")
    p.add_argument("--diffusion-steps", type=int, default=200, help="scheduler chain (default 200, DVCE's)")
    p.add_argument("--t-start", type=float, default=0.5, help="share of the chain run (default 0.5, DVCE's)")
    p.add_argument("--apgd-steps", type=int, default=100, help="steps of the image-space engine (default 100)")
    p.add_argument("--speed-only", action="store_true", help="only the speed figure")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    from spurious.counterfactual import (
        DvceSettings,
        counterfactual,
        counterfactual_pairs,
    )
    from spurious.demo import prepare_workspaces
    from spurious.demo.planted import PLANTED_FEATURES, load_planted
    from spurious.demo.train import train_demo_model
    from spurious.models import load_model
    from spurious.npca import load_npca

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = _diffusion_folder(args.diffusion, out)
    infos = {v: train_demo_model(v, tiny=args.fast, progress=False) for v in ("robust", "standard")}
    ws = out / "ws-robust"
    if not (ws / "npca" / "manifest.json").is_file():
        prepare_workspaces(out, fast=args.fast, progress=False)
    planted = load_planted(infos["robust"].planted_root)
    clf = load_model(infos["robust"].spec, device=args.device)
    settings = DvceSettings(steps=args.diffusion_steps, t_start=args.t_start)
    folders = sorted(d.name for d in planted.val.iterdir() if d.is_dir())
    speed_files = [planted.val / folders[1] / f"{i:05d}.png" for i in range(args.images)]
    x0 = torch.stack([clf.preprocessing(Image.open(f).convert("RGB")) for f in speed_files])
    speed = _speed(clf, load_npca(ws)[0], 0, x0, folder, settings, args.device)
    result: dict[str, Any] = {"diffusion": str(folder), "speed": speed}
    if args.speed_only:
        emit(result)
        return

    truth = planted.ground_truth()
    comp_of = {(r["feature"], r["class"]): (int(np.argmax(r["precision"])), float(np.max(r["precision"])))
               for r in planted_component_precision(ws, planted, top_k=20, search=10)}
    standins = [planted.root / r["id"] for r in truth
                if r["split"] == "pool" and not r["object"] and not r["features"] and r["stand_in_box"]][:args.images]
    dvce = {"engine": "diffusion", "diffusion": folder, "diffusion_steps": args.diffusion_steps,
            "t_start": args.t_start}
    engines = {"dvce": dvce, "dvce_no_component": {**dvce, "component_weight": 0.0},
               "image": {"steps": args.apgd_steps}}
    t0 = time.perf_counter()
    rows = []
    for feature in PLANTED_FEATURES:
        for k in feature.classes:
            l, precision = comp_of[(feature.name, k)]
            colour = ColourClassifier(_pixel_sets(*_labelled(planted, "train", k, feature.name)))
            row: dict[str, Any] = {"feature": feature.name, "class": k, "class_name": planted.class_names[k],
                                   "component": l, "precision_at_20": precision}
            for start, kwargs in (("confused_val", {}), ("stand_in_only", {"images": standins})):
                ids = None
                for name, engine in engines.items():
                    r = counterfactual(ws, k, l, mode="add", model=infos["robust"].spec,
                                       eval_models=[infos["standard"].spec], n_images=args.images,
                                       device=args.device, progress=False, **kwargs, **engine)
                    if ids is not None and list(r.images) != ids:
                        raise RuntimeError(f"{name} started from other images than the first engine")
                    ids = list(r.images)
                    run = Path(r.run).relative_to(ws / "counterfactual").as_posix()
                    by_id = {q.image_id: q for q in counterfactual_pairs(ws, k, l, mode="add")
                             if q.record["run"] == run}
                    row.setdefault(start, {})[name] = {**_judged([by_id[i] for i in r.images], k, colour),
                                                       "seconds": r.seconds}
            rows.append(row)
    result.update({"workspace": str(ws), "guiding_model": infos["robust"].spec,
                   "eval_model": infos["standard"].spec, "settings": settings.to_dict(),
                   "apgd_steps": args.apgd_steps, "seconds_planted": round(time.perf_counter() - t0, 1),
                   "pairs": rows})
    emit(result)


if __name__ == "__main__":
    main()
