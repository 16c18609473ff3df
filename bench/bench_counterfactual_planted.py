"""Do counterfactuals remove / add the planted features? Measured on the embedded demo (planted truth).

For the robust demo model (``demo:robust``, the optimising model; ``demo:standard`` is the evaluation
model) and every planted (feature, class) pair, the pair's component is the one of the top 10 (by
eigenvalue) whose 20 max-activating training images show the feature most often
(``_common.planted_component_precision``). Then, with ``spurious.counterfactual.counterfactual`` at
the default budget (L2, eps = 30 sqrt(n / (3*224*224)) = 8.57 at 64 px, 100 APGD steps):

* remove: start images = val images of class k that show the feature (ground truth). Per image the
  change mass ``sum_c |x*_c - x_0,c|`` is summed inside the feature's exact pixel mask (minus the
  object) and inside the object's mask (masks re-rendered from the generator's plan, as in
  ``bench_visualize_planted._labelled``); the share of each is compared with the mask's share of the
  image's area. Pass: feature share > object share and > the feature mask's area share (medians).
  Also the fall of p(k) on both models.
* add: start images = (a) the stage's default (val images of the classes with the highest mean p(k),
  k excluded) and (b) stand-in-only pool images (a large non-class shape, no object, no feature).
  Reported: the rise of p(k), the share of images whose top-1 becomes k (target: a majority), and
  where the change went by colour: the share of the change mass on pixels of the counterfactual that
  the colour judge of ``bench_visualize_planted`` (fitted on class k's training pixels) calls
  feature-like, vs the share of such pixels in the image.

Prints one JSON object. The workspaces are built once with ``spurious.demo.prepare_workspaces``
(about 2 minutes; later runs reuse them and the counterfactual runs resume).

    python bench/bench_counterfactual_planted.py --out /tmp/bench-cf              # ~3 min on 2 CPUs
    python bench/bench_counterfactual_planted.py --out /tmp/bench-cf-fast --fast --steps 10   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, planted_component_precision
from bench_visualize_planted import ColourClassifier, _labelled, _pixel_sets, _quantise


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def _model_means(pairs: list[Any], k: int) -> list[dict[str, Any]]:
    out = []
    for m in range(len(pairs[0].models)):
        rows = [p.models[m] for p in pairs]
        before_k = np.array([r["before"]["top1"] == k for r in rows])
        after_k = np.array([r["after"]["top1"] == k for r in rows])
        out.append({"model": rows[0]["spec"], "role": rows[0]["role"],
                    "p_k_before": float(np.mean([r["before"]["probability"] for r in rows])),
                    "p_k_after": float(np.mean([r["after"]["probability"] for r in rows])),
                    "top1_k_before": float(before_k.mean()), "top1_k_after": float(after_k.mean()),
                    "became_k": float(after_k[~before_k].mean()) if (~before_k).any() else None})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/spurious-bench-counterfactual", help="scratch folder (demo workspaces)")
    p.add_argument("--fast", action="store_true", help="tiny planted data and tiny models (smoke run)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--n", type=int, default=12, help="start images per run (default 12)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    from spurious.counterfactual import counterfactual, counterfactual_pairs
    from spurious.demo.planted import PLANTED_FEATURES, load_planted
    from spurious.demo import prepare_workspaces
    from spurious.demo.train import train_demo_model

    out = Path(args.out)
    infos = {v: train_demo_model(v, tiny=args.fast, progress=False) for v in ("robust", "standard")}
    ws = out / "ws-robust"
    t0 = time.perf_counter()
    if not (ws / "npca" / "manifest.json").is_file():
        prepare_workspaces(out, fast=args.fast, progress=False)
    t_demo = time.perf_counter() - t0
    planted = load_planted(infos["robust"].planted_root)
    truth = planted.ground_truth()
    comp_of = {(r["feature"], r["class"]): (int(np.argmax(r["precision"])), float(np.max(r["precision"])))
               for r in planted_component_precision(ws, planted, top_k=20, search=10)}
    standins = [planted.root / r["id"] for r in truth
                if r["split"] == "pool" and not r["object"] and not r["features"] and r["stand_in_box"]][:args.n]
    folders = sorted(d.name for d in planted.val.iterdir() if d.is_dir())
    t0 = time.perf_counter()
    results = []
    for feature in PLANTED_FEATURES:
        for k in feature.classes:
            l, precision = comp_of[(feature.name, k)]
            common = {"steps": args.steps, "model": infos["robust"].spec, "eval_models": [infos["standard"].spec],
                      "device": args.device, "progress": False, "n_images": args.n}
            # remove, on val images of class k that show the feature
            images, kinds = _labelled(planted, "val", k, feature.name)
            with_feature = [i for i in range(len(kinds)) if (kinds[i] == 0).any()][:args.n]
            paths = [planted.val / folders[k] / f"{i:05d}.png" for i in with_feature]
            r = counterfactual(ws, k, l, mode="remove", images=paths, **common)
            by_id = {q.image_id: q for q in counterfactual_pairs(ws, k, l, mode="remove")}
            removed = [by_id[i] for i in r.images]
            share_f, share_o, area_f, area_o = [], [], [], []
            for i, pair in zip(with_feature, removed, strict=True):
                change = np.abs(_rgb(pair.counterfactual) - _rgb(pair.original)).sum(2)
                total = change.sum() or 1.0
                share_f.append(change[kinds[i] == 0].sum() / total)
                share_o.append(change[kinds[i] == 1].sum() / total)
                area_f.append(float(np.mean(kinds[i] == 0)))
                area_o.append(float(np.mean(kinds[i] == 1)))
            med = {n: float(np.median(v)) for n, v in (("feature", share_f), ("object", share_o),
                                                        ("feature_area", area_f), ("object_area", area_o))}
            remove = {"images": len(removed), "change_share_median": med, "models": _model_means(removed, k),
                      "pass_place": med["feature"] > med["object"] and med["feature"] > med["feature_area"]}

            # add, on the stage's default start images and on stand-in-only images
            colour = ColourClassifier(_pixel_sets(*_labelled(planted, "train", k, feature.name)))
            add = {}
            for name, kwargs in (("confused_val", {}), ("stand_in_only", {"images": standins})):
                r = counterfactual(ws, k, l, mode="add", **kwargs, **common)
                run = Path(r.run).relative_to(ws / "counterfactual").as_posix()
                by_id = {q.image_id: q for q in counterfactual_pairs(ws, k, l, mode="add") if q.record["run"] == run}
                pairs = [by_id[i] for i in r.images]
                mass, px = [], []
                for pair in pairs:
                    cf = _rgb(pair.counterfactual)
                    change = np.abs(cf - _rgb(pair.original)).sum(2)
                    like = colour.predict(_quantise(cf.round().astype(np.uint8))) == 0
                    mass.append(change[like].sum() / (change.sum() or 1.0))
                    px.append(float(like.mean()))
                means = _model_means(pairs, k)
                add[name] = {"images": len(pairs), "models": means,
                             "change_share_feature_colour_median": float(np.median(mass)),
                             "feature_colour_pixel_share_median": float(np.median(px)),
                             "majority_top1_k": (means[0]["top1_k_after"] or 0.0) > 0.5}
            results.append({"feature": feature.name, "class": k, "class_name": planted.class_names[k],
                            "component": l, "precision_at_20": precision, "remove": remove, "add": add})
    emit({"workspace": str(ws), "optimising_model": infos["robust"].spec, "eval_model": infos["standard"].spec,
          "steps": args.steps, "n": args.n, "seconds_demo": round(t_demo, 1),
          "seconds_counterfactual": round(time.perf_counter() - t0, 1), "pairs": results})


if __name__ == "__main__":
    main()
