"""Plots of the ``score`` stage (matplotlib, Agg canvas; no pyplot, no global backend change).

* :func:`plot_scatter`: mAUC against validation accuracy, one point per model, an arrow from each
  model to each of its SpuFix variants;
* :func:`plot_class_auc`: class-wise ROC-AUC bars of selected model rows;
* :func:`plot_strip`: one class's spurious images with a model's top-3 predictions.

Text from data (model specs, class names) is drawn with ``parse_math=False``, so a ``$`` in a
name is shown as is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spurious._io import atomic_path

__all__ = ["plot_class_auc", "plot_scatter", "plot_strip"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", bbox_inches="tight")
    return path


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def plot_scatter(rows: Sequence[Any], path: str | os.PathLike[str]) -> Path:
    """mAUC (y) against validation accuracy (x): one point per model, arrows to its SpuFix variants.

    Args:
        rows: :class:`~spurious.score.ScoreRow` objects (original rows and fixed variants).
        path: the PNG to write.

    Returns:
        ``path``.
    """
    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    originals = [r for r in rows if r.variant == "original"]
    for i, r in enumerate(originals):
        color = _COLORS[i % len(_COLORS)]
        if not (np.isfinite(r.val_accuracy) and np.isfinite(r.mauc)):
            continue
        ax.scatter([r.val_accuracy], [r.mauc], color=color, s=40, zorder=3, label=_short(r.spec))
        for f in (f for f in rows if f.spec == r.spec and f.fingerprint == r.fingerprint and f.variant != "original"):
            if not (np.isfinite(f.val_accuracy) and np.isfinite(f.mauc)):
                continue
            ax.annotate("", xy=(f.val_accuracy, f.mauc), xytext=(r.val_accuracy, r.mauc),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 1.5}, zorder=2)
            ax.scatter([f.val_accuracy], [f.mauc], color=color, marker="*", s=90, zorder=3)
            ax.annotate(f.variant if len(f.variant) <= 28 else f.variant[:25] + "...", (f.val_accuracy, f.mauc), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=color, parse_math=False)
    ax.set_xlabel("validation accuracy", parse_math=False)
    ax.set_ylabel("mean ROC-AUC on the spurious benchmark (mAUC)", parse_math=False)
    ax.set_title("Spurious score vs accuracy (arrows: SpuFix)", parse_math=False)
    ax.grid(True, alpha=0.3)
    if originals:
        legend = ax.legend(fontsize=7, loc="best")
        for text in legend.get_texts():
            text.set_parse_math(False)
    ax.margins(0.15)
    return _save(fig, path)


def plot_class_auc(per_class: Sequence[Any], models: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Class-wise ROC-AUC bars of the given rows, classes sorted by the first row's AUC.

    Args:
        per_class: :class:`~spurious.score.ClassScore` objects.
        models: row labels to draw (at most 8 are drawn).
        path: the PNG to write.

    Returns:
        ``path``.
    """
    models = list(models)[:8]
    table: dict[str, dict[int, float]] = {m: {} for m in models}
    names: dict[int, str] = {}
    for c in per_class:
        if c.model in table and c.status == "ok":
            table[c.model][c.class_index] = c.auc
            names[c.class_index] = c.class_name
    first = table[models[0]] if models else {}
    classes = sorted(names, key=lambda k: (first.get(k, 2.0), k))
    n = max(len(classes), 1)
    fig = _figure(min(max(6.0, 0.22 * n * max(1, len(models)) + 2), 40.0), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(models))
    x = np.arange(len(classes))
    for i, m in enumerate(models):
        values = [table[m].get(k, np.nan) for k in classes]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, color=_COLORS[i % len(_COLORS)],
               label=_short(m))
    ax.set_xticks(x)
    ax.set_xticklabels([_short(names[k], 18) for k in classes], rotation=90 if n > 8 else 0, fontsize=7)
    for label in ax.get_xticklabels():
        label.set_parse_math(False)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("ROC-AUC (val vs spurious)", parse_math=False)
    ax.set_title("Class-wise spurious score (lower = relies more on the spurious feature)", parse_math=False)
    if models:
        legend = ax.legend(fontsize=7, loc="lower right")
        for text in legend.get_texts():
            text.set_parse_math(False)
    return _save(fig, path)


def plot_strip(images: Sequence[Any], captions: Sequence[str], title: str, path: str | os.PathLike[str]) -> Path:
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
    for i, (im, caption) in enumerate(zip(images, captions)):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(np.asarray(im))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(caption, fontsize=6.5, parse_math=False)
    fig.suptitle(title, fontsize=9, parse_math=False)
    return _save(fig, path)
