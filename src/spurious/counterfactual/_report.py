"""HTML sheets of the counterfactual stage: one per run, and ``WS/counterfactual/index.html`` linking them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spurious._html import esc, fmt, img, link, table, write_page

if TYPE_CHECKING:
    from spurious.counterfactual._index import CounterfactualPair

__all__ = ["index_page", "pair_figures", "run_page"]

_NOTE = ("A counterfactual shows what the component looks like in a real image only on a model whose gradients are "
         "perceptually aligned (an adversarially robust one); on a standard model the same optimisation returns "
         "adversarial noise. Check the evaluation models: does the edit made on one model move the other?")


def _numbers(models: list[dict[str, Any]]) -> str:
    rows = []
    for m in models:
        b, a = m["before"], m["after"]
        rows.append([f"{m['role']}: {m['spec']}", b["alpha"], a["alpha"], b["probability"], a["probability"],
                     f"{b['top1_name']} -> {a['top1_name']}"])
    return table(["model", "alpha before", "alpha after", "p(k) before", "p(k) after", "top-1"], rows,
                 left_cols=(0, 5))


def _pair_caption(pair: CounterfactualPair) -> str:
    """``remove: p(k) 0.91 -> 0.20, alpha 3.1 -> -0.4, top-1 hummingbird -> feeder`` on the optimising model."""
    m = pair.optimised
    b, a = m["before"], m["after"]
    how = "DVCE " if pair.engine == "diffusion" else ""
    return (f"{how}{pair.mode}: p(k) {fmt(b['probability'])} -> {fmt(a['probability'])}, alpha {fmt(b['alpha'])} -> "
            f"{fmt(a['alpha'])}, top-1 {b['top1_name']} -> {a['top1_name']} ({m['spec']})")


def pair_figures(pairs: Sequence[CounterfactualPair], page_dir: Path, *, width: int = 128) -> str:
    """One row per pair (original, counterfactual, signed change, where it changed) with its before/after
    numbers, for a page written in ``page_dir`` (image paths relative to it); ``""`` for no pair."""
    rows = []
    for pair in pairs:
        figs = "".join(
            img(os.path.relpath(path, page_dir), f"{name} ({pair.mode}) of {pair.image_id}", width=width, caption=name)
            for name, path in (("original", pair.original), ("counterfactual", pair.counterfactual),
                               ("signed change", pair.difference), ("where it changed", pair.heatmap)))
        rows.append(f'<div class="row">{figs}</div><p class="muted">{esc(_pair_caption(pair))}; start image '
                    f'{esc(pair.image_id)} ({esc(pair.source)})</p>')
    if not rows:
        return ""
    return "<h4>Counterfactuals on real images</h4>" + "".join(rows)


def run_page(path: Path, run: dict[str, Any], class_names: Sequence[str]) -> Path:
    """The sheet of one run: per pair the original, the counterfactual, the signed difference and the heatmap."""
    s = run["settings"]
    k = s["class"]
    title = f"{'Add' if s['mode'] == 'add' else 'Remove'} component {s['component']} of class {class_names[k]}"
    starts = run["start_images"]
    origin = esc(starts["source"])
    if starts.get("classes"):
        origin += " (" + ", ".join(f"{esc(c['name'])}: mean p(k) {fmt(c['mean_probability'])}"
                                   for c in starts["classes"]) + ")"
    summary_rows = [[f"{m['role']}: {m['spec']}", m["alpha_before"], m["alpha_after"], m["probability_before"],
                     m["probability_after"], m["top1_is_k_before"], m["top1_is_k_after"]] for m in run["summary"]]
    if s.get("engine") == "diffusion":
        d = s["diffusion"]
        how = (f"DVCE (diffusion, {esc(d['scheduler'])}, model {esc(d['fingerprint'])}): the last "
               f"{d['denoising_steps']} of {d['steps']} steps from the noised image, class weight C_c "
               f"{fmt(d['class_weight'])}, component weight C_a {fmt(d['component_weight'])}, distance weight C_d "
               f"{fmt(d['distance_weight'])} ({esc(d['distance'])}), seed {s['seed']}")
    else:
        how = (f"{esc(s['norm'])} ball, eps {fmt(s['eps'], 4)}, {s['steps']} APGD steps, keep weight "
               f"{fmt(s['keep_weight'])}, log-probability weight {fmt(s['logprob_weight'])}")
    check = run.get("diffusion_check")
    checked = []
    if check is not None:
        css = "note" if check.get("agrees") is False else "muted"
        checked = [f'<p class="{css}">{esc(check["line"])}</p>']
    body = [f'<p class="note">{esc(_NOTE)}</p>', f"<p>{how}; start images: {origin}.</p>", *checked,
            "<h2>Means over the images</h2>",
            table(["model", "alpha before", "alpha after", "p(k) before", "p(k) after", "top-1 = k before",
                   "top-1 = k after"], summary_rows), "<h2>Pairs</h2>"]
    prefix = "../../../"  # the run folder is class_K/lL/RUN under WS/counterfactual
    for pair in run["pairs"]:
        f = pair["files"]
        figs = "".join(img(prefix + f[name], f"{name} of {pair['id']}", width=160, caption=caption)
                       for name, caption in (("original", "original"), ("counterfactual", "counterfactual"),
                                             ("difference", "signed change (gray = none)"),
                                             ("heatmap", "where it changed")))
        d = pair["distance"]
        body.append(f'<div class="card"><h3>{esc(pair["id"])}</h3><div class="row">{figs}</div>'
                    f'<p class="muted">change: L2 {fmt(d["l2"])}, L-inf {fmt(d["linf"])}, L1 {fmt(d["l1"], 1)}</p>'
                    f"{_numbers(pair['models'])}</div>")
    return write_page(path, title, "\n".join(body), subtitle=f"run {run['settings']['mode']} / {path.parent.name}")


def index_page(path: Path, runs: list[dict[str, Any]]) -> Path:
    """``WS/counterfactual/index.html``: every run with its mean before/after numbers on the optimising model."""
    rows = []
    for r in runs:
        m = r["summary"][0] if r["summary"] else {}
        mode = r["mode"] if r.get("engine", "image") == "image" else f"{r['mode']} (DVCE)"
        rows.append([link(r["sheet"], f"{r['class_name']} / component {r['component']}"), mode, r["norm"],
                     r["eps"], r["steps"], r["pairs"], m.get("alpha_before"), m.get("alpha_after"),
                     m.get("probability_before"), m.get("probability_after")])
    body = (f'<p class="note">{esc(_NOTE)}</p>'
            + table(["run", "mode", "norm", "eps", "steps", "images", "alpha before", "alpha after", "p(k) before",
                     "p(k) after"], rows, html_cols=(0,)))
    return write_page(path, "Feature counterfactuals", body, subtitle=f"{len(runs)} runs")
