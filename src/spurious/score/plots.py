"""Plots of the ``score`` stage (matplotlib, Agg canvas; no pyplot, no global backend change).

* :func:`plot_scatter`: mAUC against validation accuracy, one point per model, an arrow from each
  model to each of its SpuFix variants (a star, named in the legend);
* :func:`plot_class_auc`: class-wise ROC-AUC bars of selected model rows;
* :func:`plot_strip`: one class's spurious images with a model's top-3 predictions.

:func:`scatter_figure` and :func:`class_auc_figure` build the figures that the first two save.
Models are named by :func:`display_names` (``demo:robust``, not ``demo:robust@/long/path.pt``);
the CSV/JSON outputs keep the full specs. Legends sit outside the axes, right of the data, so
they never cover a bar or a point. Text from data (model specs, class names) is drawn with
``parse_math=False``, so a ``$`` in a name is shown as is.
"""

from __future__ import annotations

import os
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spurious._io import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image

    from ._result import ClassScore, ScoreRow

__all__ = ["class_auc_figure", "display_names", "plot_class_auc", "plot_scatter", "plot_strip", "scatter_figure"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
ORIGINAL = "original"  # the variant of a model's own (unfixed) row
LEGEND_WRAP = 44       # characters per legend line


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure


    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", bbox_inches="tight")
    return path


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


# ---------------------------------------------------------------------------- model names


def _spec_names(specs: Sequence[str]) -> dict[str, str]:
    """Distinct specs -> distinct readable names (see :func:`display_names`)."""
    def arch_only(spec: str) -> str:
        arch, _, ckpt = spec.partition("@")
        return arch.strip() or Path(ckpt.strip()).name or spec  # "@PATH": the file name

    def with_file(spec: str) -> str:
        arch, sep, ckpt = spec.partition("@")
        return f"{arch.strip()}@{Path(ckpt.strip()).name}" if sep and arch.strip() else arch_only(spec)

    def full(spec: str) -> str:
        return spec

    names = {s: arch_only(s) for s in specs}
    for rule in (with_file, full):
        counts = Counter(names.values())
        clashing = [s for s in specs if counts[names[s]] > 1]
        for s in clashing:
            names[s] = rule(s)
    return names


def display_names(labels: Iterable[str], variants: Mapping[str, str] | None = None) -> dict[str, str]:
    """Readable names of models and score rows, for legends, titles and HTML tables.

    A spec ``ARCH@/path/to/checkpoint.pt`` is shown as ``ARCH`` (``demo:robust``); where two
    specs would get the same name, as ``ARCH@checkpoint.pt`` (the file name only); where that
    clashes too, as the full spec. A SpuFix row ``"<spec> + <fix name>"`` is shown as
    ``"<name of spec> + <fix name>"``. Names are distinct for distinct labels.

    Args:
        labels: model specs or score row labels (``ScoreRow.model`` / ``ClassScore.model``).
        variants: row label -> its variant (``"original"`` or the fix name, as in
            ``ScoreRow.variant``), to split a row label into spec and fix name; a label not in
            it is taken as a spec.

    Returns:
        label -> display name, for every distinct label.
    """
    variants = variants or {}
    parts: dict[str, tuple[str, str | None]] = {}
    for label in labels:
        variant = variants.get(label, ORIGINAL)
        suffix = f" + {variant}"
        if variant != ORIGINAL and label.endswith(suffix) and len(label) > len(suffix):
            parts[label] = (label[:-len(suffix)], variant)
        else:
            parts[label] = (label, None)
    short = _spec_names(sorted({spec for spec, _ in parts.values()}))
    return {label: short[spec] + (f" + {variant}" if variant is not None else "")
            for label, (spec, variant) in parts.items()}


def _legend_outside(ax: Axes) -> None:
    """The legend right of the axes (top-aligned), so no bar or point is ever under it; long
    labels (a transferred fix names its source model) are wrapped at :data:`LEGEND_WRAP` characters."""
    legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    for text in legend.get_texts():
        text.set_parse_math(False)
        text.set_text(textwrap.fill(text.get_text(), LEGEND_WRAP, subsequent_indent="  ",
                                    break_on_hyphens=False, break_long_words=False))


# ---------------------------------------------------------------------------- plots


def scatter_figure(rows: Sequence[ScoreRow]) -> Figure:
    """The figure of :func:`plot_scatter` (legend labels: :func:`display_names` of the rows)."""
    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    names = display_names([r.model for r in rows], {r.model: r.variant for r in rows})
    originals = [r for r in rows if r.variant == ORIGINAL]
    labelled = False
    for i, r in enumerate(originals):
        color = _COLORS[i % len(_COLORS)]
        if not (np.isfinite(r.val_accuracy) and np.isfinite(r.mauc)):
            continue
        ax.scatter([r.val_accuracy], [r.mauc], color=color, s=40, zorder=3, label=names[r.model])
        labelled = True
        for f in (f for f in rows if f.spec == r.spec and f.fingerprint == r.fingerprint and f.variant != ORIGINAL):
            if not (np.isfinite(f.val_accuracy) and np.isfinite(f.mauc)):
                continue
            ax.annotate("", xy=(f.val_accuracy, f.mauc), xytext=(r.val_accuracy, r.mauc),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 1.5}, zorder=2)
            ax.scatter([f.val_accuracy], [f.mauc], color=color, marker="*", s=90, zorder=3, label=names[f.model])
    ax.set_xlabel("validation accuracy", parse_math=False)
    ax.set_ylabel("mean ROC-AUC on the spurious benchmark (mAUC)", parse_math=False)
    ax.set_title("Spurious score vs accuracy (arrows: SpuFix)", parse_math=False)
    ax.grid(True, alpha=0.3)
    if labelled:
        _legend_outside(ax)
    ax.margins(0.15)
    return fig


def plot_scatter(rows: Sequence[ScoreRow], path: str | os.PathLike[str]) -> Path:
    """mAUC (y) against validation accuracy (x): one point per model, arrows to its SpuFix variants.

    Args:
        rows: :class:`~spurious.score.ScoreRow` objects (original rows and fixed variants).
        path: the PNG to write.

    Returns:
        ``path``.
    """
    return _save(scatter_figure(rows), path)


def class_auc_figure(per_class: Sequence[ClassScore], models: Sequence[str]) -> Figure:
    """The figure of :func:`plot_class_auc` (legend labels: :func:`display_names` of the rows)."""
    models = list(models)[:8]
    names = display_names([c.model for c in per_class] + models, {c.model: c.variant for c in per_class})
    table: dict[str, dict[int, float]] = {m: {} for m in models}
    classes_named: dict[int, str] = {}
    for c in per_class:
        if c.model in table and c.status == "ok":
            table[c.model][c.class_index] = c.auc
            classes_named[c.class_index] = c.class_name
    first = table[models[0]] if models else {}
    classes = sorted(classes_named, key=lambda k: (first.get(k, 2.0), k))
    n = max(len(classes), 1)
    fig = _figure(min(max(6.0, 0.22 * n * max(1, len(models)) + 2), 40.0), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(models))
    x = np.arange(len(classes))
    for i, m in enumerate(models):
        values = [table[m].get(k, np.nan) for k in classes]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, color=_COLORS[i % len(_COLORS)],
               label=names[m])
    ax.set_xticks(x)
    ax.set_xticklabels([_short(classes_named[k], 18) for k in classes], rotation=90 if n > 8 else 0, fontsize=7)
    for label in ax.get_xticklabels():
        label.set_parse_math(False)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("ROC-AUC (val vs spurious)", parse_math=False)
    ax.set_title("Class-wise spurious score (lower = relies more on the spurious feature)", parse_math=False)
    if models:
        _legend_outside(ax)
    return fig


def plot_class_auc(per_class: Sequence[ClassScore], models: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Class-wise ROC-AUC bars of the given rows, classes sorted by the first row's AUC.

    Args:
        per_class: :class:`~spurious.score.ClassScore` objects.
        models: row labels to draw (at most 8 are drawn).
        path: the PNG to write.

    Returns:
        ``path``.
    """
    return _save(class_auc_figure(per_class, models), path)


def plot_strip(images: Sequence[Image.Image], captions: Sequence[str], title: str, path: str | os.PathLike[str]) -> Path:
    """One row of images with a caption under each (e.g. a class's spurious images and top-3 predictions).

    Args:
        images: RGB PIL images (any size; drawn at the same height).
        captions: one caption per image (multi-line allowed).
        title: figure title.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    n = max(1, len(images))
    fig = _figure(2.1 * n, 2.9)
    for i, (im, caption) in enumerate(zip(images, captions, strict=False)):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(np.asarray(im))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(caption, fontsize=6.5, parse_math=False)
    fig.suptitle(title, fontsize=9, parse_math=False)
    return _save(fig, path)
