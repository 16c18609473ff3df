"""SpuFix on the planted data: does removing the planted spurious components help, and what does it cost?

1. ``spurious.demo.prepare_workspaces`` builds ``ws-robust`` and ``ws-standard`` (train/val/spurious/pool
   features, neural PCA with all components) from the embedded planted dataset and demo models.
2. The spurious components of the robust model are chosen from the ground truth, as the demo does:
   for every planted (feature, class), among the top-10 components by eigenvalue, those whose
   top-20 max-activating training images contain the feature in >= 80 % of cases.
3. Plain SpuFix of the robust model with those components; SpuFix transfer of the same components to
   the standard model (matched over the same training images by id).
4. From the stored features (no model re-run; logits = W phi + b, fixed = FixHead(phi, logits)):
   the mean ROC-AUC over the classes with spurious images (positives: val images of class k,
   negatives: the spurious-only images of class k; score: softmax probability of k), the rate of
   spurious-only images predicted as their class, and the val accuracy, before and after; then
   the same with one class fixed at a time (to separate each fix from its effect on the others).

    python bench/bench_fix_planted.py --out /tmp/spurious-fix-planted     # runs the demo first (minutes)
    python bench/bench_fix_planted.py --out /tmp/spurious-fix-planted --reuse   # seconds

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, planted_component_precision  # noqa: E402

from spurious.demo import prepare_workspaces  # noqa: E402
from spurious.demo.planted import load_planted  # noqa: E402
from spurious.fix import FixHead, fix, load_fix, transfer  # noqa: E402
from spurious.workspace import Workspace  # noqa: E402


def choose_components(ws_dir: Path, planted_root: str, *, search: int = 10, top_k: int = 20,
                      threshold: float = 0.8) -> tuple[dict[int, list[int]], list[dict]]:
    """Planted spurious components of each class from the ground truth (see the module docstring)."""
    chosen: dict[int, set[int]] = {}
    details = []
    for pair in planted_component_precision(ws_dir, load_planted(planted_root), top_k=top_k, search=search):
        k, precision = pair["class"], pair["precision"]
        picked = [int(l) for l in np.flatnonzero(precision >= threshold)]
        if picked:
            chosen.setdefault(k, set()).update(picked)
        details.append({"class": k, "class_name": pair["class_name"], "feature": pair["feature"],
                        "base_rate": round(pair["base_rate"], 3), "chosen": picked,
                        "precision_top10": [round(float(p), 2) for p in precision]})
    return {k: sorted(v) for k, v in sorted(chosen.items())}, details


def evaluate(ws_dir: Path, head: FixHead | None) -> dict:
    """Mean AUC / per-class AUC / spurious-as-class rate / val accuracy from the stored features."""
    ws = Workspace.open(ws_dir)
    W, b = (torch.from_numpy(t.astype(np.float64)) for t in ws.head())

    def logits_of(split: str) -> tuple[torch.Tensor, np.ndarray]:
        store = ws.feature_store(split)
        phi = torch.from_numpy(store.phi().astype(np.float64))
        logits = phi @ W.T + b
        if head is not None:
            logits = head(phi, logits)
        return logits, np.asarray(store.labels)

    val_logits, val_labels = logits_of("val")
    sp_logits, sp_labels = logits_of("spurious")
    val_p, sp_p = torch.softmax(val_logits, 1).numpy(), torch.softmax(sp_logits, 1).numpy()
    aucs, rates = {}, {}
    for k in sorted(set(sp_labels.tolist())):
        pos, neg = val_p[val_labels == k, k], sp_p[sp_labels == k, k]
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        aucs[str(k)] = round(float(roc_auc_score(y, np.r_[pos, neg])), 4)
        rates[str(k)] = round(float((sp_p[sp_labels == k].argmax(1) == k).mean()), 4)
    return {"mean_auc": round(float(np.mean(list(aucs.values()))), 4), "auc": aucs,
            "spurious_predicted_as_class": rates,
            "val_accuracy": round(float((val_p.argmax(1) == val_labels).mean()), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/spurious-fix-planted", help="demo output + fix artifacts")
    p.add_argument("--reuse", action="store_true", help="skip prepare_workspaces when the workspaces exist")
    args = p.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out)
    robust, standard = out / "ws-robust", out / "ws-standard"
    if args.reuse and (robust / "npca" / "manifest.json").is_file() and (standard / "npca" / "manifest.json").is_file():
        from spurious.demo.train import train_demo_model

        planted_root = str(train_demo_model("robust", progress=False).planted_root)
    else:
        planted_root = prepare_workspaces(out, progress=False).planted_root
    comps, details = choose_components(robust, planted_root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = fix(robust, comps, out=out / "fix-robust", overwrite=True, precision="float64")
        moved = transfer(robust, standard, comps, out=out / "fix-standard", overwrite=True, precision="float64")
    result = {
        "components": {str(k): v for k, v in comps.items()},
        "selection": details,
        "robust": {"before": evaluate(robust, None), "after": evaluate(robust, load_fix(plain.path)),
                   "fix": plain.name},
        "standard": {"before": evaluate(standard, None), "after": evaluate(standard, load_fix(moved.path)),
                     "fix": moved.name, "matched_images": moved.matched_images,
                     "condition_numbers": moved.condition_numbers},
        "warnings": [str(w.message) for w in caught],
    }
    # one class at a time: the AUC of the fixed class itself, and of the others (a shared feature
    # moves the spurious images' probability mass between the classes that share it)
    single = []
    for k, ls in comps.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h1 = load_fix(fix(robust, {k: ls}, out=out / "fix-single", overwrite=True, precision="float64").path)
            h2 = load_fix(transfer(robust, standard, {k: ls}, out=out / "fix-single-t", overwrite=True,
                                   precision="float64").path)
        single.append({"class": k, "components": ls, "robust_auc": evaluate(robust, h1)["auc"],
                       "standard_auc": evaluate(standard, h2)["auc"]})
    result["one_class_at_a_time"] = single
    for m in ("robust", "standard"):
        r = result[m]
        r["mean_auc_gain"] = round(r["after"]["mean_auc"] - r["before"]["mean_auc"], 4)
        r["val_accuracy_drop_points"] = round(100 * (r["before"]["val_accuracy"] - r["after"]["val_accuracy"]), 2)
    result["targets_met"] = all(result[m]["mean_auc_gain"] > 0 and result[m]["val_accuracy_drop_points"] <= 1.0
                                for m in ("robust", "standard"))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    emit(result)


if __name__ == "__main__":
    main()
