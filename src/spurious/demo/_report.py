"""The demo's static report ``OUT/report/index.html``: summary tables, links to every stage's pages, plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spurious import _html

__all__ = ["write_report"]


def _rel(target: str | os.PathLike[str], start: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), start.resolve())).as_posix()


def write_report(out: Path, result: Any, scored: dict[str, Any]) -> Path:
    """Write ``out/report/index.html`` for a :class:`~spurious.demo.DemoResult`; returns its path."""
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    who = ("two <b>simulated labelers</b> that answer from the planted ground truth (not people)"
           if result.labelers == "simulated" else "<b>people</b> in the web labelling UI (<code>--interactive</code>)")
    parts.append(f'<p class="note">Component review and image curation were done by {who}. '
                 "Models: the embedded demo classifiers trained on the planted data (a standard and an "
                 "adversarially trained one); components come from the robust model.</p>")

    parts.append("<h2>Planted features found</h2>")
    rows = []
    for f in result.found:
        rows.append([f.class_name, f.component, f.feature or "(none: not a planted feature)", f.precision_top20,
                     f.npfv_probability, f.retrieved, f.retrieval_precision, f.accepted])
    parts.append(_html.table(["class", "component", "planted feature", "top-20 precision", "NPFV p(class)",
                              "retrieved", "retrieval precision (top 50)", "accepted"], rows))
    if result.missed:
        parts.append("<p>Planted but not found by the review: " + _html.esc(", ".join(result.missed)) + "</p>")

    parts.append("<h2>Spurious score before / after SpuFix</h2>")
    rows = []
    for m in result.models:
        rows.append([m.model, m.fix_kind, m.mauc_benchmark, m.mauc_benchmark_fixed, m.mauc_planted,
                     m.mauc_planted_fixed, m.val_accuracy, m.val_accuracy_fixed])
    parts.append(_html.table(["model", "SpuFix", "mAUC built benchmark", "fixed", "mAUC planted spurious split",
                              "fixed", "val accuracy", "fixed"], rows))
    parts.append('<p class="muted">mAUC: mean over classes of the ROC-AUC separating validation images of the '
                 "class (positives) from spurious-only images of the class (negatives) by the class probability; "
                 "1 = no reliance on the spurious feature.</p>")

    parts.append("<h2>Sanity check: do the models agree with the labels?</h2>")
    rows = []
    for m in result.models:
        a = m.train_agreement or {}
        if a.get("checked"):
            rows.append([m.model, a["labelled"], a["agreement"], a["chance"], a["kappa"],
                         "ok" if a["ok"] else "SUSPECT"])
    parts.append(_html.table(["model", "train images", "top-1 agreement", "chance", "Cohen's kappa", "verdict"], rows))
    parts.append('<p class="muted">What <code>extract</code> checks on every labelled split: the top-1 prediction '
                 "against the stored label, and the agreement expected by chance from the label and prediction "
                 "frequencies alone. Below kappa 0.2 every later figure is suspect (wrong preprocessing or labels "
                 "matched to the wrong classes); see docs/usage.md, \"Your own model\".</p>")

    parts.append("<h2>Plots</h2>")
    for which, res in scored.items():
        for key, path in sorted(res.paths.items()):
            if str(path).endswith(".png"):
                parts.append(_html.img(_rel(path, report_dir), f"{which}: {key}", width=520,
                                       caption=f"{which}: {key}"))

    parts.append("<h2>Stage pages</h2><ul>")
    links = [(out / "ws-robust" / "visualize" / "index.html", "inspection sheets (visualize, robust model)"),
             (out / "ws-robust" / "retrieve" / "gallery" / "index.html", "retrieved candidates (gallery)"),
             (out / "benchmark" / "README.md", "built benchmark: dataset card"),
             (out / "score" / "report.html", "score report: built benchmark"),
             (out / "score-planted" / "report.html", "score report: planted spurious split")]
    for path, text in links:
        if path.exists():
            parts.append(f"<li>{_html.link(_rel(path, report_dir), text)}</li>")
    parts.append("</ul>")

    parts.append("<h2>Time</h2>")
    parts.append(_html.table(["step", "seconds"], sorted(result.timings.items(), key=lambda kv: 0)))
    return _html.write_page(report_dir / "index.html", "spurious demo report", "\n".join(parts),
                            subtitle=f"planted data {result.planted_root}; total {result.seconds:.0f} s")
