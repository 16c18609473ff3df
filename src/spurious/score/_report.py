"""Result files of the ``score`` stage: CSV, Markdown, plots and the static HTML report."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from spurious import _html
from spurious._io import JSONDict, atomic_path, slug

from . import plots as _plots
from ._inputs import Benchmark
from ._result import Preds, ScoreResult, ScoreRow

_ROW_FIELDS = ("model", "spec", "variant", "fingerprint", "mauc", "map", "mean_extension", "val_accuracy",
               "val_chance", "val_kappa", "val_labels_ok", "val_complete", "classes_scored", "classes_skipped",
               "spurious_images", "val_images", "failed_images", "class_map", "cached", "worst_group_accuracy",
               "worst_group", "mean_accuracy", "group_average_accuracy")
_GROUP_FIELDS = ("model", "variant", "group", "class_index", "images", "accuracy")
_CLASS_FIELDS = ("model", "variant", "class_index", "class_name", "val_images", "spurious_images", "auc", "ap",
                 "extension", "status")
STRIP_CLASSES = 8
STRIP_IMAGES = 6


def _cell(v: object) -> object:
    if isinstance(v, float):
        return "" if v != v else f"{v:.6f}"
    return v


def _write_csv(path: Path, fields: Sequence[str], records: Sequence[JSONDict]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(fields)
            for rec in records:
                writer.writerow([_cell(rec[f]) for f in fields])
    return path


def _row_record(r: ScoreRow) -> JSONDict:
    """A ``scores.csv`` row: the ScoreRow with its label agreement flattened (``val_accuracy`` is its ``p_o``)."""
    a = r.agreement
    agreement = {"val_chance": a.chance, "val_kappa": a.kappa, "val_labels_ok": a.ok}
    return {f: agreement[f] if f in agreement else getattr(r, f) for f in _ROW_FIELDS}


def _agreement_cell(r: ScoreRow) -> str:
    a = r.agreement
    if not a.checked:
        return "-"
    return f"{a.kappa:.3f}" + ("" if a.ok else " SUSPECT")


def _md(v: object, digits: int = 3) -> str:
    if isinstance(v, float):
        return "-" if v != v else f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")


def _markdown(result: ScoreResult) -> str:
    lines = ["# Spurious score", "",
             f"Protocol: `{result.protocol}`; {len(result.classes)} classes requested. mAUC / mAP / extension are "
             "means over the scored classes; higher AUC = less reliance on the spurious features.", "",
             f"Validation labels: {_md(result.label_source)}. Label kappa: Cohen's kappa of the top-1 predictions "
             "with the validation labels (chance-corrected val accuracy); near 0 means a wrong preprocessing or "
             "label matching, and every other figure of that row is meaningless.", "",
             "| model | mAUC | mAP | class extension | val accuracy | chance | label kappa | classes scored "
             "| skipped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {_md(r.model)} | {_md(r.mauc)} | {_md(r.map)} | {_md(r.mean_extension)} | "
                     f"{_md(r.val_accuracy)} | {_md(r.agreement.chance)} | {_agreement_cell(r)} | "
                     f"{r.classes_scored} | {r.classes_skipped} |")
    labels = [r.model for r in result.rows]
    auc = {(c.model, c.class_index): c for c in result.per_class}
    lines += ["", "## ROC-AUC per class", "",
              "| class | name | " + " | ".join(_md(m) for m in labels) + " |",
              "|---|---|" + "---|" * len(labels)]
    for k in result.classes:
        cells = []
        for m in labels:
            c = auc[(m, k)]
            cells.append(_md(c.auc) if c.status == "ok" else c.status)
        lines.append(f"| {k} | {_md(result.class_names[k])} | " + " | ".join(cells) + " |")
    if result.groups_file:
        lines += ["", "## Groups", "", f"{GROUPS_NOTE} Groups file: `{result.groups_file}` "
                  f"({result.groups_images} validation images).", "",
                  "| model | worst-group accuracy | worst group | mean accuracy | group-average accuracy |",
                  "|---|---|---|---|---|"]
        for r in result.rows:
            lines.append(f"| {_md(r.model)} | {_md(r.worst_group_accuracy)} | {_md(r.worst_group)} | "
                         f"{_md(r.mean_accuracy)} | {_md(r.group_average_accuracy)} |")
    return "\n".join(lines) + "\n"


GROUPS_NOTE = ("Group metrics over the validation images of the groups file (a group = a class and its group "
               "value): worst-group accuracy = the lowest per-group accuracy; mean accuracy = the accuracy over "
               "all those images (group accuracies weighted by group size); group-average accuracy = the "
               "unweighted mean of the group accuracies.")


def write_outputs(result: ScoreResult, out: Path, bench: Benchmark, preds: Mapping[str, tuple[Sequence[str], Preds]],
                  *, plots: bool,
                  plot_models: Sequence[str] | None = None) -> dict[str, str]:
    """Write scores.csv, per_class.csv, scores.md and (with ``plots``) the PNGs and report.html.

    ``preds`` maps a row's model label to its model's class names and its predictions on the
    spurious images (for the strips of misread images).
    """
    paths: dict[str, str] = {}
    paths["scores_csv"] = str(_write_csv(out / "scores.csv", _ROW_FIELDS, [_row_record(r) for r in result.rows]))
    paths["per_class_csv"] = str(_write_csv(out / "per_class.csv", _CLASS_FIELDS,
                                            [{f: getattr(c, f) for f in _CLASS_FIELDS} for c in result.per_class]))
    with atomic_path(out / "scores.md") as tmp:
        tmp.write_text(_markdown(result), encoding="utf-8")
    paths["scores_md"] = str(out / "scores.md")
    if result.groups_file:
        paths["groups_csv"] = str(_write_csv(out / "groups.csv", _GROUP_FIELDS,
                                             [{f: getattr(g, f) for f in _GROUP_FIELDS} for g in result.groups]))
    paths["scores_json"] = str(out / "scores.json")
    if not plots or not result.rows:
        return paths
    selected = list(plot_models) if plot_models else [r.model for r in result.rows][:4]
    plot_dir = out / "plots"
    paths["plot_scatter"] = str(_plots.plot_scatter(result.rows, plot_dir / "scatter.png"))
    paths["plot_class_auc"] = str(_plots.plot_class_auc(result.per_class, selected, plot_dir / "class_auc.png"))
    names = _names(result)
    strips = _strips(result, bench, preds, selected[0], plot_dir, names[selected[0]])
    paths["report_html"] = str(_write_html(result, out, selected, strips, names))
    return paths


def _names(result: ScoreResult) -> dict[str, str]:
    """Row label -> the name shown in the HTML and the plots (full specs stay in CSV/JSON)."""
    return _plots.display_names([r.model for r in result.rows], {r.model: r.variant for r in result.rows})


def _strips(result: ScoreResult, bench: Benchmark, preds: Mapping[str, tuple[Sequence[str], Preds]], model: str,
            plot_dir: Path, shown: str) -> list[JSONDict]:
    """The classes with the lowest AUC of ``model``: their most confidently misread spurious images."""
    from spurious.datasets import load_image

    names, spu = preds[model]
    scored = sorted((c for c in result.class_scores(model) if c.status == "ok"), key=lambda c: (c.auc, c.class_index))
    labels = bench.spurious.labels()
    strips = []
    for c in scored[:STRIP_CLASSES]:
        rows = np.flatnonzero(spu.ok & (labels == c.class_index))
        rows = rows[np.argsort(-spu.logp[rows], kind="stable")][:STRIP_IMAGES]
        images, captions, thumbs = [], [], []
        for j, r in enumerate(rows):
            rec = bench.spurious.record(int(r))
            try:
                im = load_image(rec.path)
            except (OSError, ValueError):
                continue
            im.thumbnail((112, 112))
            tops = [(names[int(i)] if 0 <= int(i) < len(names) else str(int(i)), float(p))
                    for i, p in zip(spu.top_index[r][:3], spu.top_prob[r][:3], strict=False)]
            caption = "\n".join(f"{n[:18]} {p:.2f}" for n, p in tops)
            thumb = plot_dir / "thumbs" / slug(model) / f"{c.class_index}_{j}.png"
            thumb.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(thumb) as tmp:
                im.save(tmp, format="PNG")
            images.append(im)
            captions.append(caption)
            thumbs.append((thumb, rec.id, tops))
        if not images:
            continue
        png = _plots.plot_strip(images, captions, f"{shown}: class {c.class_index} ({c.class_name}), AUC {c.auc:.3f}",
                                plot_dir / f"strip_{slug(model)}_{c.class_index}.png")
        strips.append({"score": c, "png": png, "thumbs": thumbs})
    return strips


def _spec_table(result: ScoreResult, names: dict[str, str]) -> str:
    """Short name -> full spec, for the specs whose short name differs (empty when none does)."""
    rows = [[names[r.model], r.spec] for r in result.rows if r.variant == _plots.ORIGINAL and names[r.model] != r.spec]
    if not rows:
        return ""
    return ('<p class="muted">Models are named by the part of their spec before <code>@</code> (plus the checkpoint '
            "file name where two would share a name); the full specs, as in scores.csv and scores.json:</p>"
            + _html.table(["name", "spec"], rows, left_cols=(0, 1)))


def _write_html(result: ScoreResult, out: Path, selected: Sequence[str], strips: list[JSONDict],
                names: dict[str, str]) -> Path:
    rel = lambda p: Path(p).relative_to(out).as_posix()
    parts = ['<p class="muted">Positives: validation images of class k; negatives: spurious images of class k; '
             "score: softmax probability of class k. AUC 1 = the spurious images never look like the class; "
             "the class-extension rate is the fraction of spurious images predicted as the class.</p>"]
    parts.append(f'<p class="muted">Validation labels: {_html.esc(result.label_source)}. Label kappa: Cohen\'s '
                 "kappa of the top-1 predictions with the validation labels (chance-corrected accuracy); near 0 "
                 "means a wrong preprocessing or label matching.</p>")
    parts.append("<h2>Models</h2>")
    parts.append(_html.table(
        ["model", "mAUC", "mAP", "class extension", "val accuracy", "label kappa", "classes scored", "skipped",
         "images (spurious / val)"],
        [[names[r.model], r.mauc, r.map, r.mean_extension, r.val_accuracy, _agreement_cell(r), r.classes_scored,
          r.classes_skipped, f"{r.spurious_images} / {r.val_images}"] for r in result.rows]))
    parts.append(_spec_table(result, names))
    if result.groups_file:
        parts.append(_groups_html(result, names))
    parts.append("<h2>Spurious score vs accuracy</h2>")
    parts.append(_html.img(rel(result_path(out, "scatter.png")), "mAUC vs validation accuracy"))
    parts.append("<h2>Class-wise ROC-AUC</h2>")
    parts.append(f'<p class="muted">Rows shown: {_html.esc(", ".join(names[m] for m in selected))}</p>')
    parts.append(_html.img(rel(result_path(out, "class_auc.png")), "class-wise AUC bars"))
    if strips:
        parts.append(f"<h2>Most affected classes of {_html.esc(names[selected[0]])}</h2>")
        parts.append('<p class="muted">The spurious images with the highest probability of the class, with the '
                     "model's top-3 predictions.</p>")
        for s in strips:
            c = s["score"]
            parts.append(f'<div class="card"><h3>class {c.class_index}: {_html.esc(c.class_name)} &mdash; AUC '
                         f"{c.auc:.3f}, AP {c.ap:.3f}, extension {c.extension:.2f}</h3><div class=\"row\">")
            for thumb, image_id, tops in s["thumbs"]:
                caption = "; ".join(f"{n} {p:.2f}" for n, p in tops)
                parts.append(_html.img(rel(thumb), image_id, caption=caption))
            parts.append(f'</div><p class="muted">{_html.link(rel(s["png"]), "strip as PNG")}</p></div>')
    parts.append("<h2>Per class</h2>")
    header = ["class", "name", "val images", "spurious images"] + [f"AUC {names[r.model]}" for r in result.rows]
    by = {(c.model, c.class_index): c for c in result.per_class}
    body = []
    for k in result.classes:
        first = by[(result.rows[0].model, k)]
        cells: list[object] = [k, result.class_names[k], first.val_images, first.spurious_images]
        for r in result.rows:
            c = by[(r.model, k)]
            cells.append(c.auc if c.status == "ok" else c.status)
        body.append(cells)
    parts.append(_html.table(header, body, left_cols=(1,)))
    parts.append(f'<p class="muted">Files: {_html.link("scores.csv", "scores.csv")}, '
                 f'{_html.link("per_class.csv", "per_class.csv")}, {_html.link("scores.md", "scores.md")}, '
                 f'{_html.link("scores.json", "scores.json")}</p>')
    return _html.write_page(out / "report.html", "Spurious score", "\n".join(parts),
                            subtitle=f"protocol {result.protocol}; {len(result.classes)} classes")


def _groups_html(result: ScoreResult, names: dict[str, str]) -> str:
    """The group metrics: one row per model row, then the accuracy of every group."""
    group_names = list(dict.fromkeys(g.group for g in result.groups))
    acc = {(g.model, g.group): g for g in result.groups}
    first = result.rows[0].model
    parts = ["<h2>Groups</h2>",
             f'<p class="muted">{_html.esc(GROUPS_NOTE)} Groups file: {_html.esc(result.groups_file)} '
             f"({result.groups_images} validation images).</p>",
             _html.table(["model", "worst-group accuracy", "worst group", "mean accuracy", "group-average accuracy"],
                         [[names[r.model], r.worst_group_accuracy, r.worst_group, r.mean_accuracy,
                           r.group_average_accuracy] for r in result.rows], left_cols=(0, 2)),
             _html.table(["group", "images"] + [f"acc. {names[r.model]}" for r in result.rows],
                         [[name, acc[(first, name)].images] + [acc[(r.model, name)].accuracy for r in result.rows]
                          for name in group_names], left_cols=(0,))]
    return "\n".join(parts)


def result_path(out: Path, name: str) -> Path:
    return out / "plots" / name
