"""SpuFix beside the retraining baseline DFR on the planted data, both demo models (issue 20, item 4).

For ``demo:robust`` and ``demo:standard``: the original model, plain SpuFix (no labels; components from
a review), transferred SpuFix (the other model's components, matched over the same training images),
and DFR (a new last layer fitted on group labels of a held-out set), each scored by ``spurious.score``
(``--fix`` takes every head) on

* the planted spurious split and the benchmark the demo built (mAUC; the demo's classes with spurious
  images),
* the val split: group metrics (groups: class x planted feature present/absent) on the *evaluation
  half* of the val images (``groups/val-eval.csv``), val accuracy on all val images.

The held-out set of DFR is the other half of the val images (``groups/val-dfr.csv``: every other image
of each (class, feature) group by id, 300 of the 600 val images at the demo's default size), so DFR is
never evaluated on an image it was fitted on, except in the val-accuracy column (all val images).

Components: the robust model's are the demo's review (the two simulated labelers, ``agreed_components``
of its label store); the demo does not review the standard model, so its components come from the
same kind of ground-truth rule (``bench_fix_planted.choose_components``: among the top 10 by eigenvalue,
those whose 20 max-activating training images show the class's planted feature in >= 80 % of cases).

    python bench/bench_compare_planted.py --out /tmp/spurious-compare          # runs the demo first (minutes)
    python bench/bench_compare_planted.py --out /tmp/spurious-compare --reuse  # reuses OUT/demo-out

Prints one JSON object and a Markdown table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402
from bench_fix_planted import choose_components  # noqa: E402

from spurious.datasets import image_folder, spurious_imagenet  # noqa: E402
from spurious.demo import run_demo  # noqa: E402
from spurious.demo.planted import load_planted, write_planted_groups  # noqa: E402
from spurious.dfr import dfr  # noqa: E402
from spurious.fix import FixHead, fix, load_fix, transfer  # noqa: E402
from spurious.label.store import LabelStore  # noqa: E402
from spurious.score import score  # noqa: E402
from spurious.workspace import Workspace  # noqa: E402


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    r = fn(*args, **kwargs)
    return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--reuse", action="store_true", help="reuse OUT/demo-out (a finished `spurious demo` run)")
    args = ap.parse_args()
    demo_out = args.out / "demo-out"
    t0 = time.perf_counter()
    if not args.reuse:
        run_demo(demo_out, progress=False)
    demo_seconds = time.perf_counter() - t0
    ws = {v: demo_out / f"ws-{v}" for v in ("robust", "standard")}
    specs = {v: Workspace.open(ws[v]).model_spec for v in ws}
    planted_root = demo_out / "planted"
    planted = load_planted(planted_root.resolve())
    names = list(planted.class_names)
    work = args.out / "compare"

    # components: the robust model's review, the ground-truth rule for the standard model
    store = LabelStore(ws["robust"])
    reviewed = store.review_counts()["components"]
    comps = {"robust": store.agreed_components(2)}
    comps["standard"], _ = choose_components(ws["standard"], str(planted.root))
    comp_labels = {"robust": f"verdicts on {reviewed} reviewed components (2 labelers)",
                   "standard": "ground-truth rule on the top-10 components of 4 classes (40 components)"}
    other = {"robust": "standard", "standard": "robust"}

    groups_dfr = write_planted_groups(planted, work / "groups" / "val-dfr.csv", part="dfr")
    groups_eval = write_planted_groups(planted, work / "groups" / "val-eval.csv", part="eval")
    n_dfr = sum(1 for _ in open(groups_dfr)) - 1
    n_eval = sum(1 for _ in open(groups_eval)) - 1

    heads: dict[str, list[tuple[str, FixHead, str, float]]] = {v: [] for v in ws}
    for v in ws:
        c = {str(k): ls for k, ls in comps[v].items()}
        if c:
            r, secs = _timed(fix, ws[v], c, out=work / f"{v}-spufix", overwrite=True)
            heads[v].append(("SpuFix", load_fix(r.path), comp_labels[v], secs))
        c_other = {str(k): ls for k, ls in comps[other[v]].items()}
        if c_other:
            r, secs = _timed(transfer, ws[other[v]], ws[v], c_other, out=work / f"{v}-transfer", overwrite=True)
            heads[v].append((f"SpuFix transferred from {other[v]}", load_fix(r.path), "none new ("
                             + comp_labels[other[v]].split(" (")[0] + f" of the {other[v]} model)", secs))
        r, secs = _timed(dfr, ws[v], groups_dfr, split="val", out=work / f"{v}-dfr", overwrite=True)
        heads[v].append(("DFR", load_fix(r.fix.path), f"{r.images} held-out images with class and group "
                         f"(balanced refits of {r.balanced_size} per group, C={r.c})", secs))

    all_heads = [h for v in ws for _, h, _, _ in heads[v]]
    val = image_folder(planted.val, class_names=list(planted.class_folders))
    planted_classes = sorted({k for f in planted.features for k in f.classes})
    res: dict[str, Any] = {}
    t = time.perf_counter()
    res["planted"] = score([specs["robust"], specs["standard"]], spurious=spurious_imagenet(planted.spurious,
                           class_names=names), val=val, class_names=names, classes=planted_classes, fixes=all_heads,
                           out=work / "score-planted", progress=False, plots=False, groups=groups_eval)
    bench_dir = demo_out / "benchmark"
    if bench_dir.is_dir():
        res["benchmark"] = score([specs["robust"], specs["standard"]], spurious=bench_dir, val=val, class_names=names,
                                 fixes=all_heads, out=work / "score-benchmark", progress=False, plots=False,
                                 groups=groups_eval)
    score_seconds = time.perf_counter() - t

    rows = []
    for v in ws:
        for method, head, labels, secs in [("original", None, "none", 0.0), *heads[v]]:
            label = specs[v] if head is None else f"{specs[v]} + {head.name}"
            p = res["planted"].row(label)
            b = res["benchmark"].row(label) if "benchmark" in res else None
            rows.append({"model": v, "method": method, "mauc_planted": round(p.mauc, 4),
                         "mauc_benchmark": None if b is None else round(b.mauc, 4),
                         "worst_group_accuracy": round(p.worst_group_accuracy, 4), "worst_group": p.worst_group,
                         "mean_accuracy": round(p.mean_accuracy, 4),
                         "group_average_accuracy": round(p.group_average_accuracy, 4),
                         "val_accuracy": round(p.val_accuracy, 4), "labels": labels, "seconds": round(secs, 2)})
    table = ["| model | method | mAUC spurious split | mAUC built benchmark | worst-group acc | mean acc "
             "| group-avg acc | val acc | labels needed | fit s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mb = "-" if r["mauc_benchmark"] is None else f"{r['mauc_benchmark']:.3f}"
        table.append(f"| {r['model']} | {r['method']} | {r['mauc_planted']:.3f} | {mb} | "
                     f"{r['worst_group_accuracy']:.3f} | {r['mean_accuracy']:.3f} | {r['group_average_accuracy']:.3f} | "
                     f"{r['val_accuracy']:.3f} | {r['labels']} | {r['seconds']:.2f} |")
    emit({"demo_seconds": round(demo_seconds, 1), "score_seconds": round(score_seconds, 1),
          "held_out_images": n_dfr, "eval_images": n_eval,
          "benchmark_images": res["benchmark"].rows[0].spurious_images if "benchmark" in res else 0,
          "components": {v: {str(k): ls for k, ls in c.items()} for v, c in comps.items()},
          "rows": rows})
    print("\n".join(table))


if __name__ == "__main__":
    main()
