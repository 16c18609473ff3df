"""Does ``visualize`` surface the planted spurious features? Measured on the embedded demo (planted truth).

For the demo model (default ``demo:robust``) and every planted (feature, class) pair of
``spurious.datasets.planted.PLANTED_FEATURES``:

1. ``spurious.visualize.visualize`` runs with its defaults (NPFVs of the top-128 components, ranked by
   the class probability at the NPFV, keep 10; 200 APGD steps; eps = 30 sqrt(n / (3*224*224))).
2. precision@20: for each of the 10 selected components, the share of its 20 max-activating training
   images (labelled k) whose ground truth (``index.jsonl``) lists the feature. The pair's component
   is the selected one with the highest precision (ties: the better NPFV rank). Pass: >= 0.8.
3. heatmap mass on the NPFV: every NPFV pixel is classified as feature-like, object-like or
   background-like by a colour-histogram classifier (RGB in 8x8x8 bins, Laplace smoothing, equal
   priors, the largest class-conditional likelihood wins) fitted on the class's training images with
   exact ground-truth masks (re-rendered from the generator's plan): feature pixels = the feature's
   mask minus the object (images with the feature), object pixels = the object's mask, background
   pixels = outside the object and every feature (images without the feature). The GradCAM map of
   alpha_l^k on the NPFV (the stage's PNG, re-read) is normalised to sum 1 and summed over each kind. Pass:
   mass(feature-like) > mass(object-like). To show that the colours separate the two kinds, the
   two-way (feature vs object likelihood) recall on the validation images' feature and object
   pixels is reported.
4. supplementary, exact boxes: mean GradCAM mass inside the feature box (minus the object box) and
   inside the object box on those of the 20 max-activating training images that show the feature.

Prints one JSON object. The demo workspace is built once with ``spurious.demo.prepare_workspaces`` (about
2 minutes; later runs reuse it) and ``visualize`` resumes per class, so a re-run only analyses.

    python bench/bench_visualize_planted.py --out /tmp/bench-vis              # demo:robust, ~25 min on 2 CPUs
    python bench/bench_visualize_planted.py --out /tmp/bench-vis --fast --steps 20   # tiny data, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit

BINS = 8


def _quantise(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> colour bin index [...] in [0, BINS**3)."""
    q = (rgb.astype(np.int64) * BINS) // 256
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def _box_mask(shape: tuple[int, int], box: list[int] | None) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    if box is not None:
        x0, y0, x1, y1 = box
        m[y0:y1, x0:x1] = True
    return m


def _pixel_sets(planted: Any, split: str, k: int, feature: str) -> dict[str, np.ndarray]:
    """Colour bins of feature / object / background pixels of class ``k``'s images in ``split``.

    Exact pixel masks: every image is re-rendered from the generator's plan (the same bytes as the
    files, see ``tests/test_planted.py``), which gives the object's and each feature's mask.
    Feature pixels: the feature's mask minus the object (water: every pixel that no object,
    label or feeder covers); object pixels: the object's mask; background pixels: outside the
    object and every feature, in the images without the feature.
    """
    from spurious.datasets import planted as gen

    out: dict[str, list[np.ndarray]] = {"feature": [], "object": [], "background": []}
    for item in gen._plan(planted.config):
        if item.split != split or item.label != k:
            continue
        r = gen._render_item(planted.config, item)
        bins = _quantise(r.image)
        obj = r.object_mask
        covered = obj.copy()
        for name, m in r.feature_masks.items():
            if name != "water":
                covered |= m
        out["object"].append(bins[obj])
        if feature in r.feature_masks:
            fmask = ~covered if feature == "water" else r.feature_masks[feature] & ~obj
            out["feature"].append(bins[fmask])
        else:
            out["background"].append(bins[~covered])
    return {name: np.concatenate(v) if v else np.zeros(0, np.int64) for name, v in out.items()}


class ColourClassifier:
    """Naive colour-histogram classifier: argmax_c P(bin | c) with Laplace smoothing (equal priors)."""

    kinds = ("feature", "object", "background")

    def __init__(self, sets: dict[str, np.ndarray]) -> None:
        n = BINS ** 3
        self.loglik = np.stack([np.log((np.bincount(sets[k], minlength=n) + 1.0) / (sets[k].size + n))
                                for k in self.kinds])  # [3, bins]

    def predict(self, bins: np.ndarray) -> np.ndarray:
        """0 = feature-like, 1 = object-like, 2 = background-like."""
        return np.argmax(self.loglik[:, bins], axis=0)

    def feature_vs_object(self, bins: np.ndarray) -> np.ndarray:
        """True where a pixel is more likely a feature pixel than an object pixel (two-way)."""
        return self.loglik[0, bins] > self.loglik[1, bins]


def _gradcam(clf: Any, x: torch.Tensor, A: np.ndarray, c: float, layer: str | None = None) -> np.ndarray:
    """GradCAM of ``alpha = <A, phi> - c`` at ``layer`` (default: the last spatial block, as ``visualize``)."""
    from spurious.gradcam import GradCAM

    a = torch.as_tensor(A, dtype=torch.float32, device=clf.device)
    cam = GradCAM(clf, layer).attribute(x.to(clf.device), lambda phi, logits: phi.float() @ a - c)
    return cam.cpu().numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/spurious-bench-visualize", help="scratch folder (demo workspaces)")
    p.add_argument("--variant", default="robust", choices=["robust", "standard"])
    p.add_argument("--fast", action="store_true", help="tiny planted data and tiny models (smoke run)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--keep", type=int, default=10)
    p.add_argument("--top", type=int, default=20, help="max-activating images for precision (default 20)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--cam-layer", default=None, help="GradCAM block (default: the last spatial one; stages.1 is 8x8)")
    args = p.parse_args()

    from spurious.datasets import PLANTED_FEATURES, load_planted
    from spurious.demo import prepare_workspaces
    from spurious.models import load_model
    from spurious.npca import load_npca
    from spurious.train import train_demo_model
    from spurious.visualize import max_activating, visualize
    from spurious.workspace import Workspace

    out = Path(args.out)
    info = train_demo_model(args.variant, tiny=args.fast, progress=False)
    ws_dir = out / f"ws-{args.variant}"
    t0 = time.perf_counter()
    if not (ws_dir / "npca" / "manifest.json").is_file():
        prepare_workspaces(out, fast=args.fast, progress=False)
    t_demo = time.perf_counter() - t0
    planted = load_planted(info.planted_root)
    truth = planted.ground_truth()
    pairs = [(f, k) for f in PLANTED_FEATURES for k in f.classes]
    classes = sorted({k for _, k in pairs})

    t0 = time.perf_counter()
    res = visualize(ws_dir, classes=classes, candidates=args.candidates, keep=args.keep, steps=args.steps,
                    cam_layer=args.cam_layer,
                    device=args.device, batch_size=args.batch_size, progress=True)
    t_vis = time.perf_counter() - t0

    ws = Workspace.open(ws_dir)
    store = ws.feature_store("train")
    pca = load_npca(ws_dir)
    clf = load_model(ws.model_spec, device=res.device)
    ids = store.ids
    data_root = Path(store.manifest["data"]["spec"].split(":", 1)[1])
    by_id = {r["id"]: r for r in truth}
    prefix = data_root.name + "/"  # store ids are relative to train/; index ids to the dataset root
    results = []
    for feature, k in pairs:
        table = json.loads((ws_dir / "visualize" / f"class_{k:05d}" / "components.json").read_text())
        selected = [c["component"] for c in table["components"]]
        basis = pca[k]
        rows = store.rows_of_class(k)
        has = {ids[r]: feature.name in {f["name"] for f in by_id[prefix + ids[r]]["features"]} for r in rows}
        ma = max_activating(store, basis, selected, top=args.top)
        prec = [float(np.mean([has[i] for i in row])) for row in ma.ids]
        best = int(np.argmax(prec))  # first maximum = best NPFV rank among ties
        comp = table["components"][best]
        l = comp["component"]
        A, c = basis.projection([l])

        # the NPFV's heatmap on feature-like vs object-like pixels
        colour = ColourClassifier(_pixel_sets(planted, "train", k, feature.name))
        held = _pixel_sets(planted, "val", k, feature.name)
        acc_f = float(np.mean(colour.feature_vs_object(held["feature"]))) if held["feature"].size else float("nan")
        acc_o = float(np.mean(~colour.feature_vs_object(held["object"])))
        npfv_rgb = np.asarray(Image.open(ws_dir / "visualize" / f"class_{k:05d}" / comp["npfv_png"]).convert("RGB"))
        x = torch.from_numpy(npfv_rgb.copy()).permute(2, 0, 1).float().div(255)[None]
        cam = _gradcam(clf, x, A[0], float(c[0]), args.cam_layer)[0].astype(np.float64)
        cam = cam / cam.sum() if cam.sum() > 0 else cam
        kind = colour.predict(_quantise(npfv_rgb))
        mass = {name: float(cam[kind == i].sum()) for i, name in enumerate(ColourClassifier.kinds)}
        share = {name: float(np.mean(kind == i)) for i, name in enumerate(ColourClassifier.kinds)}

        # supplementary: exact boxes on the max-activating training images that show the feature
        shown = [i for i in ma.ids[best] if has[i]]
        box_f, box_o = [], []
        if shown:
            imgs = torch.stack([clf.preprocessing(Image.open(data_root / i)) for i in shown])
            cams = _gradcam(clf, imgs, A[0], float(c[0]), args.cam_layer).astype(np.float64)
            for i, cm in zip(shown, cams):
                rec = by_id[prefix + i]
                if cm.shape != tuple(np.asarray(Image.open(data_root / i)).shape[:2]):
                    raise RuntimeError("the demo preprocessing is expected to keep the image size")
                cm = cm / cm.sum() if cm.sum() > 0 else cm
                obj = _box_mask(cm.shape, rec["object_box"])
                fbox = _box_mask(cm.shape, next(f["box"] for f in rec["features"] if f["name"] == feature.name))
                box_f.append(float(cm[fbox & ~obj].sum()))
                box_o.append(float(cm[obj].sum()))
        results.append({
            "feature": feature.name, "kind": feature.kind, "class": k, "class_name": ws.class_names[k],
            "base_rate": float(np.mean(list(has.values()))),
            "selected_components": selected,
            "precision_at_top_per_selected": [round(v, 3) for v in prec],
            "component": l, "selection_rank": comp["rank"], "eigenvalue_rank": l + 1,
            "npfv_probability": comp["npfv_probability"], "precision": prec[best],
            "pass_precision": prec[best] >= 0.8,
            "npfv_heatmap_mass": mass, "npfv_pixel_share": share,
            "pass_heatmap": mass["feature"] > mass["object"],
            "pixel_classifier_val_recall_feature_vs_object": {"feature": acc_f, "object": acc_o},
            "top_images_with_feature": len(shown),
            "top_images_cam_mass_feature_box": float(np.mean(box_f)) if box_f else None,
            "top_images_cam_mass_object_box": float(np.mean(box_o)) if box_o else None,
        })
    emit({"model": ws.model_spec, "workspace": str(ws_dir), "eps": res.eps, "steps": res.steps,
          "candidates": res.candidates, "keep": res.keep, "top": args.top, "device": res.device,
          "seconds_demo": round(t_demo, 1), "seconds_visualize": round(t_vis, 1),
          "classes_done": res.classes_done, "classes_reused": res.classes_reused,
          "diversity": res.diversity, "pairs": results,
          "all_pass": all(r["pass_precision"] and r["pass_heatmap"] for r in results)})


if __name__ == "__main__":
    main()
