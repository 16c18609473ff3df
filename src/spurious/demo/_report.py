"""The demo's static report ``OUT/report/index.html``: summary tables, what was found, links to
every stage's pages, plots.

Each planted feature found (a ``DemoResult.found`` entry: class ``k``, component ``l``) is shown
with the pictures the ``visualize`` stage wrote for it in the robust workspace: the NPFV, its
GradCAM, and the top max-activating training images each next to its GradCAM heatmap. The files
are found through ``OUT/ws-robust/visualize/class_KKKKK/components.json``; every link is relative
to the report folder, so the report keeps working when ``OUT`` is moved or copied, and a picture
that is missing is left out with a note.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from spurious import _html
from spurious.counterfactual._index import CounterfactualPair, shown_pairs
from spurious.counterfactual._report import pair_figures
from spurious.score.plots import display_names
from spurious.visualize import SHEET_TABLE, SheetTable, read_sheet_table, sheet_folder

__all__ = ["write_report"]

ROBUST_WS = "ws-robust"   # the demo workspace whose components the review labelled
TOP_SHOWN = 8             # max-activating images shown per component (the class sheet has them all)
_PLOTS = {"plot_scatter": "mAUC vs validation accuracy, arrows to SpuFix",
          "plot_class_auc": "class-wise ROC-AUC"}  # ScoreResult.paths keys -> what the plot shows


def _rel(target: str | os.PathLike[str], start: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), start.resolve())).as_posix()


def _thumb_width(data: dict[str, Any]) -> int:
    """Display width as on the inspection sheets: small inputs enlarged (pixelated), large ones 160 px."""
    try:
        h = int(data["input_size"][-1])
    except (KeyError, IndexError, TypeError, ValueError):
        return 112
    return h * max(1, round(112 / h)) if 0 < h < 112 else 160


def _class_sheet(out: Path, k: int) -> tuple[SheetTable | None, str | None]:
    """The table of class ``k``'s inspection sheet, or why it is unreadable."""
    path = sheet_folder(out / ROBUST_WS, k) / SHEET_TABLE
    shown = path.relative_to(out).as_posix()
    try:
        return read_sheet_table(out / ROBUST_WS, k), None
    except FileNotFoundError:
        return None, f"{shown} does not exist (visualize has not run for class {k})"
    except (OSError, ValueError) as e:  # the report names no absolute path: it may be moved
        return None, f"{shown} could not be read ({type(e).__name__}: {str(e).replace(str(path), shown)})"


class _Found(Protocol):
    """What a card needs of a found component (:class:`spurious.demo._pipeline.FoundComponent`)."""

    class_index: int
    class_name: str
    component: int
    feature: str | None
    precision_top20: float
    npfv_probability: float


def _found_card(f: _Found, out: Path, report_dir: Path,
                pairs: Mapping[tuple[int, int], Sequence[CounterfactualPair]]) -> str:
    """One found component: NPFV, NPFV GradCAM, top images with heatmaps; notes for what is missing."""
    title = (f"class {_html.esc(f.class_name)} ({f.class_index}), component {f.component} &rarr; "
             f"{_html.esc(f.feature or 'no planted feature')}")
    head = f'<div class="card"><h3>{title}</h3>'
    folder = sheet_folder(out / ROBUST_WS, f.class_index)
    sheet, problem = _class_sheet(out, f.class_index)
    if sheet is None:
        return f'{head}<p class="note">No pictures: {_html.esc(problem)}.</p></div>'
    comp = sheet.component(f.component)
    if comp is None:
        where = _html.esc(folder.relative_to(out).as_posix())
        return (f'{head}<p class="note">No pictures: component {f.component} is not among the components '
                f"visualized for class {f.class_index} (see {where}).</p></div>")
    width = _thumb_width(sheet.document)
    figs: list[str] = []
    missing: list[str] = []

    def pair(*pictures: tuple[Any, str, str]) -> None:
        """An image and its heatmap, kept side by side; missing files are skipped and listed."""
        shown = []
        for name, alt, caption in pictures:
            path = folder / str(name) if name else None
            if path is None or not path.is_file():
                missing.append(str(name) if name else f"({alt})")
                continue
            shown.append(_html.img(_rel(path, report_dir), alt, width=width, caption=caption))
        if shown:
            figs.append(f'<div class="row">{"".join(shown)}</div>')

    pair((comp.get("npfv_png"), f"NPFV of class {f.class_name}, component {f.component}", "NPFV"),
         (comp.get("npfv_heatmap_png"), f"GradCAM on the NPFV of class {f.class_name}, component {f.component}",
          "NPFV GradCAM"))
    tops: Sequence[Any] = comp.get("top_images") or []
    for i, t in enumerate(tops[:TOP_SHOWN]):
        if not isinstance(t, dict):
            continue
        image_id = str(t.get("id", f"#{i + 1}"))
        alpha = t.get("alpha")
        caption = f"#{i + 1} alpha={alpha:.3g}" if isinstance(alpha, (int, float)) else f"#{i + 1}"
        pair((t.get("png"), f"max-activating training image {image_id} (component {f.component})", caption),
             (t.get("heatmap_png"), f"GradCAM heatmap of {image_id} (component {f.component})", image_id))
    sheet_html = folder / "index.html"
    more = f"Showing {TOP_SHOWN} of {len(tops)} max-activating images; " if len(tops) > TOP_SHOWN else ""
    links = (f"{more}{_html.link(_rel(sheet_html, report_dir), 'inspection sheet of the class')}"
             if sheet_html.is_file() else more)
    body = f'<div class="row" style="gap:.75rem">{"".join(figs)}</div>' if figs else ""
    note = (f'<p class="note">{len(missing)} picture(s) missing, not shown: {_html.esc(", ".join(missing))}</p>'
            if missing else "")
    stats = (f'<p class="muted">Top-20 precision {_html.fmt(f.precision_top20, 2)} (share of its 20 '
             f"max-activating training images that show the feature); NPFV p(class) "
             f"{_html.fmt(f.npfv_probability)}. {links}</p>")
    cf = pair_figures(pairs.get((f.class_index, f.component), ()), report_dir, width=width)
    return f"{head}{stats}{body}{note}{cf}</div>"


def _model_cell(spec: str, names: dict[str, str]) -> str:
    """A table cell with the short name, the full spec as its tooltip."""
    return f'<span title="{_html.esc(spec)}">{_html.esc(names[spec])}</span>'


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
    if result.found:
        parts.append("<h3>What each found component looks like</h3>")
        parts.append('<p class="muted">Robust model, as on the inspection sheets of <code>visualize</code>. Per '
                     "component: its NPFV (the feature visualization: an image optimised to raise the component's "
                     "contribution alpha to the class logit) and the GradCAM on it, then its max-activating training "
                     "images, each followed by its GradCAM heatmap (where the component looks); then its counterfactuals "
                     "on real images: the component removed from a training image that shows it, and added to a "
                     "validation image of the class the model confuses most with this one (robust model, "
                     "`spurious counterfactual`), with p(class) before and after; last, marked DVCE, the component "
                     "painted onto such an image by the diffusion engine (Appendix H: guided denoising with the "
                     "embedded diffusion model, `spurious counterfactual --engine diffusion`).</p>")
        pairs = shown_pairs(out / ROBUST_WS)  # one read of the counterfactual index for every card
        parts.extend(_found_card(f, out, report_dir, pairs) for f in result.found)
    else:
        parts.append('<p class="note">The review agreed on no component, so there is nothing to show.</p>')

    names = display_names([m.model for m in result.models])
    parts.append("<h2>Spurious score before / after SpuFix</h2>")
    rows = []
    for m in result.models:
        rows.append([_model_cell(m.model, names), m.fix_kind, m.mauc_benchmark, m.mauc_benchmark_fixed, m.mauc_planted,
                     m.mauc_planted_fixed, m.val_accuracy, m.val_accuracy_fixed])
    parts.append(_html.table(["model", "SpuFix", "mAUC built benchmark", "fixed", "mAUC planted spurious split",
                              "fixed", "val accuracy", "fixed"], rows, html_cols=(0,)))
    specs = [[names[m.model], m.model] for m in result.models if names[m.model] != m.model]
    if specs:
        parts.append('<p class="muted">Model specs (the full ones are in the JSON and CSV outputs):</p>')
        parts.append(_html.table(["name", "spec"], specs, left_cols=(0, 1)))
    parts.append('<p class="muted">mAUC: mean over classes of the ROC-AUC separating validation images of the '
                 "class (positives) from spurious-only images of the class (negatives) by the class probability; "
                 "1 = no reliance on the spurious feature.</p>")

    compare = [(m, c) for m in result.models for c in m.compare]
    if compare:
        parts.append("<h2>SpuFix beside the retraining baseline DFR</h2>")
        parts.append(_html.table(
            ["model", "method", "mAUC planted spurious split", "mAUC built benchmark", "worst-group accuracy",
             "mean accuracy", "val accuracy", "labels needed", "fit seconds"],
            [[_model_cell(m.model, names), c.method, c.mauc_planted, c.mauc_benchmark, c.worst_group_accuracy,
              c.mean_accuracy, c.val_accuracy, c.labels, c.seconds] for m, c in compare],
            html_cols=(0,), left_cols=(0, 1, 7)))
        parts.append('<p class="muted">Groups: class x planted feature present/absent. DFR (Kirichenko et al. '
                     "2022) fits a new last layer on the group labels of half of the val images "
                     "(<code>groups/val-dfr.csv</code>); worst-group and mean accuracy are measured on the other "
                     "half (<code>groups/val-eval.csv</code>); val accuracy counts every val image, the DFR half "
                     "too. SpuFix needs no image labels, only the component review. Seconds: fitting the fix, "
                     "not the review or the labelling. The full comparison (both SpuFix kinds on both models) "
                     "is <code>bench/bench_compare_planted.py</code>, see docs/benchmarks.md.</p>")

    parts.append("<h2>Sanity check: do the models agree with the labels?</h2>")
    rows = []
    for m in result.models:
        a = m.train_agreement or {}
        if a.get("checked"):
            rows.append([_model_cell(m.model, names), a["labelled"], a["agreement"], a["chance"], a["kappa"],
                         "ok" if a["ok"] else "SUSPECT"])
    parts.append(_html.table(["model", "train images", "top-1 agreement", "chance", "Cohen's kappa", "verdict"], rows,
                             html_cols=(0,)))
    parts.append('<p class="muted">What <code>extract</code> checks on every labelled split: the top-1 prediction '
                 "against the stored label, and the agreement expected by chance from the label and prediction "
                 "frequencies alone. Below kappa 0.2 every later figure is suspect (wrong preprocessing or labels "
                 "matched to the wrong classes); see docs/usage.md, \"Your own model\".</p>")

    parts.append("<h2>Plots</h2>")
    for which, res in scored.items():
        for key, path in sorted(res.paths.items()):
            if str(path).endswith(".png"):
                what = _PLOTS.get(key, key)
                parts.append(_html.img(_rel(path, report_dir), f"{what}, {which}", caption=f"{which}: {what}"))

    parts.append("<h2>Stage pages</h2><ul>")
    links = [(out / ROBUST_WS / "visualize" / "index.html", "inspection sheets (visualize, robust model)"),
             (out / ROBUST_WS / "retrieve" / "gallery" / "index.html", "retrieved candidates (gallery)"),
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
