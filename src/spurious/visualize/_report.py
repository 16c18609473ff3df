"""Static HTML of the ``visualize`` stage: one inspection sheet per class and ``visualize/index.html``.

Every data string (class names, image ids, model spec) goes through :func:`spurious._html.esc`
(directly or through the helpers that escape their text arguments).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spurious._html import esc, fmt, img, link, table, write_page
from spurious.counterfactual._index import shown_pairs
from spurious.counterfactual._report import pair_figures
from spurious.visualize._table import read_sheet_table, sheet_classes
from spurious.workspace import Workspace

if TYPE_CHECKING:
    from spurious.counterfactual._index import CounterfactualPair

__all__ = ["class_page", "index_page", "refresh_sheets"]

_DIVERSITY_HELP = (
    "Each set is the top images of one of the first five selected components (or of the five most important "
    "neurons). distinct: different images among all sets; repeated: images that appear in more than one set; "
    "identical pairs: pairs of slots in two different sets that hold the same image. Fully diverse sets have "
    "repeated = identical pairs = 0."
)



ROBUSTNESS_NOTE = (
    "Neural PCA feature visualizations (NPFVs) are only meaningful for an adversarially robust model. "
    "On a standard (non-robust) model the same optimisation returns adversarial noise that raises "
    "alpha without showing any recognisable feature; judge such a model by its max-activating images "
    "and heatmaps instead. Even on a robust model, a feature that needs many pixels in fixed places "
    "(a frame along the image border) can lie beyond the NPFV's small budget: the NPFV then shows "
    "something else, and only the max-activating images and their heatmaps show the feature."
)
"""Shown on every inspection sheet (visualize) and repeated in the docs."""

def _width(input_size: Sequence[int]) -> int:
    """Display width of a thumbnail: small inputs are enlarged (pixelated), large ones shrunk a little."""
    h = int(input_size[-1])
    return h * max(1, round(112 / h)) if h < 112 else 160


def _g(x: float) -> str:
    """A number with 4 significant digits (eigenvalues and alphas span many orders of magnitude)."""
    return f"{x:.4g}"


def _prob(p: float | None) -> str:
    return "p=n/a" if p is None else f"p={p:.3f}"


def _top3(entries: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"{e['name']} ({e['probability']:.3f})" for e in entries)


def _gallery(first: Sequence[tuple[str, str, str]], tops: Sequence[dict[str, Any]], value_key: str, width: int) -> str:
    figs = [img(src, alt, width=width, caption=cap) for src, alt, cap in first]
    for i, t in enumerate(tops):
        cap = f"#{i + 1} {value_key}={t[value_key]:.3g} {_prob(t['probability'])}"
        if t.get("error"):
            cap += " (not loaded)"
        figs.append(img(t["png"], f"max-activating image {t['id']}", width=width, caption=cap))
        figs.append(img(t["heatmap_png"], f"GradCAM of {t['id']}", width=width, caption=t["id"]))
    return f'<div class="row">{"".join(figs)}</div>'


def _diversity_table(div: dict[str, dict[str, int]]) -> str:
    rows = [[kind, d["sets"], d["slots"], d["distinct"], d["repeated"], d["identical_pairs"]] for kind, d in div.items()]
    return table(["top-5 of", "sets", "images shown", "distinct", "repeated", "identical pairs"], rows)


def class_page(path: Path, data: dict[str, Any], names: Sequence[str],
               counterfactuals: Mapping[tuple[int, int], Sequence[CounterfactualPair]] | None = None) -> Path:
    """Write the inspection sheet of one class from its ``components.json`` content ``data``.

    ``counterfactuals`` (from :func:`spurious.counterfactual.shown_pairs`): per ``(k, l)`` the
    remove- and add-pair shown under the component's card when the counterfactual stage made them.
    """
    pairs = counterfactuals or {}
    w = _width(data["input_size"])
    parts = [f'<div class="note">{esc(ROBUSTNESS_NOTE)}</div>',
             (f'<p class="muted">model {esc(data["model_spec"])}; {data["n_images"]} training images labelled '
              f'{esc(data["name"])}; NPFV: L2 APGD from the gray image, eps={data["eps"]:.3g}, {data["steps"]} '
              f'steps; {len(data["candidates"])} candidate components (top by eigenvalue) ranked by the probability '
              f'of this class at their NPFV. {link("../index.html", "All classes")} · '
              f'{link("components.json", "components.json")}</p>'),
             "<h2>Selected components</h2>"]
    for comp in data["components"]:
        head = table(["rank", "component", "eigenvalue", "p(class) at NPFV", "alpha at NPFV", "top-3 at NPFV"],
                     [[comp["rank"], comp["component"], _g(comp["eigenvalue"]), comp["npfv_probability"],
                       _g(comp["npfv_alpha"]), _top3(comp["npfv_top3"])]], left_cols=(5,))
        first = [(comp["npfv_png"], f"NPFV of component {comp['component']}", "NPFV"),
                 (comp["npfv_heatmap_png"], f"GradCAM on the NPFV of component {comp['component']}", "NPFV GradCAM")]
        parts.append(f'<div class="card"><h3>#{comp["rank"]}: component {comp["component"]}</h3>{head}'
                     f'{_gallery(first, comp["top_images"], "alpha", w)}'
                     f'{pair_figures(pairs.get((int(data["class"]), int(comp["component"])), ()), path.parent)}</div>')

    neu = data["neurons"]
    parts.append("<h2>Neuron baseline (Salient ImageNet)</h2>")
    if neu["top"]:
        parts.append(f'<p class="muted">Importance of neuron j = mean of phi_j(x) W_kj over the {neu["n_predicted"]} '
                     "training images predicted as this class; the most important neurons, their feature "
                     "visualization (same budget) and their max-activating training images (largest phi_j).</p>")
    if neu["note"]:
        parts.append(f'<p class="note">{esc(neu["note"])}</p>')
    for n in neu["top"]:
        head = table(["rank", "neuron", "importance", "p(class) at visualization", "phi_j at visualization",
                      "top-3 at visualization"],
                     [[n["rank"], n["neuron"], _g(n["importance"]), n["visualization_probability"],
                       _g(n["visualization_activation"]), _top3(n["visualization_top3"])]], left_cols=(5,))
        first = [(n["visualization_png"], f"visualization of neuron {n['neuron']}", "visualization"),
                 (n["visualization_heatmap_png"], f"GradCAM on the visualization of neuron {n['neuron']}", "GradCAM")]
        parts.append(f'<div class="card"><h3>#{n["rank"]}: neuron {n["neuron"]}</h3>{head}'
                     f'{_gallery(first, n["top_images"], "activation", w)}</div>')

    parts.append("<h2>Diversity of the max-activating images</h2>")
    parts.append(f'<p class="muted">{esc(_DIVERSITY_HELP)}</p>{_diversity_table(data["diversity"])}')
    parts.append("<h2>All candidates</h2><details><summary>probability of this class at each candidate's NPFV"
                 "</summary>" + table(["component", "eigenvalue", "p(class) at NPFV", "alpha at NPFV"],
                                      [[c["component"], _g(c["eigenvalue"]), c["npfv_probability"], _g(c["npfv_alpha"])]
                                       for c in data["candidates"]]) + "</details>")
    return write_page(path, f"Class {data['class']}: {data['name']}", "\n".join(parts),
                      subtitle="neural PCA components for review: NPFV, max-activating training images, GradCAM")


def index_page(path: Path, manifest: dict[str, Any]) -> Path:
    """Write ``visualize/index.html``: one row per finished class, with links and diversity numbers."""
    rows = []
    for e in manifest["classes"]:
        comp = e["diversity"].get("components", {})
        neu = e["diversity"].get("neurons", {})
        rows.append([link(f"{e['dir']}/index.html", f"{e['class']}: {e['name']}"), e["n_images"],
                     ", ".join(str(c) for c in e["selected"]), fmt(e["best_npfv_probability"]),
                     ", ".join(str(j) for j in e["neurons"]) or "-",
                     fmt(comp.get("identical_pairs")), fmt(neu.get("identical_pairs"))])
    tot = manifest["diversity_total"]
    body = [f'<div class="note">{esc(ROBUSTNESS_NOTE)}</div>',
            (f'<p class="muted">model {esc(manifest["model_spec"])}; split {esc(manifest["split"])}; eps '
             f'{manifest["eps"]:.3g}, {manifest["steps"]} APGD steps; {manifest["candidates"]} candidates, '
             f'{manifest["keep"]} kept per class.</p>'),
            table(["class", "training images", "selected components (best first)", "best p(class) at NPFV",
                   "top neurons", "identical pairs (components)", "identical pairs (neurons)"], rows,
                  html_cols=(0,), left_cols=(0, 2, 4)),
            "<h2>Diversity over all classes</h2>", f'<p class="muted">{esc(_DIVERSITY_HELP)}</p>',
            _diversity_table(tot) if tot else "<p>-</p>"]
    return write_page(path, "Neural PCA components by class", "\n".join(body),
                      subtitle=f"{len(manifest['classes'])} classes")


def refresh_sheets(workspace: str | os.PathLike[str] | Workspace, classes: Sequence[int] | None = None) -> list[Path]:
    """Rewrite the inspection sheets from their ``components.json`` and the counterfactual index.

    The counterfactual stage runs after ``visualize``; it calls this so that each sheet shows, under every
    selected component, the component's remove- and add-pair (:func:`spurious.counterfactual.shown_pairs`).
    Nothing is recomputed; a class without a sheet is skipped.

    Args:
        workspace: the workspace.
        classes: class indices (default: every class with a sheet).

    Returns:
        the sheets written.
    """
    root = workspace.root if isinstance(workspace, Workspace) else Path(workspace)
    have = sheet_classes(root)
    wanted = have if classes is None else [k for k in dict.fromkeys(int(c) for c in classes) if k in set(have)]
    pairs = shown_pairs(root)
    written = []
    for k in wanted:
        sheet = read_sheet_table(root, k)
        if "input_size" not in sheet.document:  # the earlier bare-list layout has no sheet data
            continue
        written.append(class_page(sheet.folder / "index.html", sheet.document, (), pairs))
    return written
