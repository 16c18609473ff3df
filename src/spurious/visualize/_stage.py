"""The ``visualize`` stage: per class, NPFVs, selection, max-activating images, heatmaps, the sheet.

:func:`visualize` plans the run (``WS/visualize/plan.json``; a different plan is refused), then
computes every class whose ``components.json`` was not written under this plan
(:func:`_visualize_class`: one APGD batch for the candidate components and the baseline neurons,
the selection, the max-activating images re-loaded by id, GradCAM, PNGs, the sheet, the table
last), and finally writes ``manifest.json`` and ``index.html`` from the finished classes. Under
``torchrun`` class ``k`` goes to rank ``k % world_size``.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from spurious import __version__
from spurious._dist import (
    all_sum,
    barrier,
    init_distributed,
    on_main_rank,
    resolve_device,
)
from spurious._io import atomic_path, sha256_strings, utc_now, write_json
from spurious.counterfactual._index import shown_pairs
from spurious.datasets import ImageDataset
from spurious.gradcam import GradCAM, overlay
from spurious.models import Classifier, load_model
from spurious.npca import NPCA, load_npca
from spurious.visualize._checks import check_batch_size, positive_int
from spurious.visualize._max_activating import max_activating, max_activating_neurons
from spurious.visualize._neurons import (
    NeuronImportance,
    SetDiversity,
    diversity,
    neuron_importance,
)
from spurious.visualize._npfv import (
    FeatureVisualization,
    check_eps,
    chunks,
    default_eps,
    linear_targets,
    maximize_linear,
    select,
)
from spurious.visualize._report import class_page, index_page
from spurious.visualize._table import (
    SHEET_TABLE,
    read_sheet_table,
    sheet_classes,
    sheet_folder,
)
from spurious.workspace import (
    IncompatibleArtifactError,
    Workspace,
    prepare_artifact_dir,
)

if TYPE_CHECKING:
    from spurious.store import FeatureStore

__all__ = ["VisualizeResult", "visualize"]

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------- images on disk


def _bisect_id(dataset: ImageDataset, image_id: str) -> int:
    """Where ``image_id`` is, or would go, among the dataset's record ids (sorted by id): bisection that
    builds only the records it looks at (as :func:`bisect.bisect_left`)."""
    lo, hi = 0, len(dataset)
    while lo < hi:
        mid = (lo + hi) // 2
        if dataset.record(mid).id < image_id:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _load_by_id(dataset: ImageDataset, ids: Sequence[str],
                shape: tuple[int, ...]) -> tuple[torch.Tensor, list[str | None]]:
    """Preprocessed images [n, *shape] of ``ids`` (matched by id) and an error per id (None when loaded)."""
    out = torch.full((len(ids), *shape), 0.5)
    errors: list[str | None] = []
    linear: dict[str, int] | None = None
    for n, image_id in enumerate(ids):
        i = _bisect_id(dataset, image_id)
        if not (i < len(dataset) and dataset.record(i).id == image_id):
            if linear is None:  # not sorted as expected: one full scan, then a dict
                linear = {dataset.record(j).id: j for j in range(len(dataset))}
            i = linear.get(image_id, -1)
        if i < 0:
            errors.append(f"image id {image_id!r} is not in the dataset {dataset.spec}")
            continue
        _, image, reason = dataset[i]
        if image is None:
            errors.append(f"{image_id}: {reason}")
            continue
        if tuple(image.shape) != shape:
            errors.append(f"{image_id}: preprocessed to {tuple(image.shape)}, the model takes {shape}")
            continue
        out[n] = image
        errors.append(None)
    return out, errors


def _to_pil(x: torch.Tensor) -> Image.Image:
    arr = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def _save_png(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# ---------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class VisualizeResult:
    """Summary of a ``visualize`` run (what ``--json`` prints)."""

    path: str
    split: str
    classes: list[int]
    classes_done: int
    classes_reused: int
    candidates: int
    keep: int
    eps: float
    steps: int
    top_images: int
    index_html: str
    diversity: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_per_class: float = 0.0
    device: str = "cpu"
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """What the CLI prints."""
        lines = [f"visualized {self.classes_done} classes ({self.classes_reused} reused) -> {self.path}",
                 (f"eps {self.eps:.3g}, {self.steps} APGD steps, {self.candidates} candidates, {self.keep} kept; "
                  f"{self.seconds:.1f} s on {self.device}"),
                 f"report: {self.index_html}"]
        for kind, d in self.diversity.items():
            lines.append(f"diversity of the top-5 {kind}: {d['distinct']} distinct of {d['slots']} images, "
                         f"{d['identical_pairs']} identical pairs")
        return lines


def _class_done(ws: Workspace, k: int, phash: str) -> bool:
    try:
        return read_sheet_table(ws, k).plan == phash
    except (OSError, ValueError):
        return False


def _resolve_classifier(model: str | Classifier | None, ws: Workspace, device: torch.device) -> Classifier:
    if model is None:
        return ws.load_model(device=device).eval()  # checked against the manifest
    if isinstance(model, Classifier):
        clf = model.to(device)
    elif isinstance(model, str):
        clf = load_model(model, device=device)
    else:
        raise TypeError(f"model must be None (the workspace's model), a spec string or a Classifier, "
                        f"got {type(model).__name__}")
    ws.check_model(clf.fingerprint(), clf.spec, what="the model passed to visualize (model=..., --model)")
    return clf.eval()


def _open_images(data: str | os.PathLike[str] | ImageDataset | None, store: FeatureStore,
                 classifier: Classifier) -> ImageDataset:
    if isinstance(data, ImageDataset):
        ds = data.with_transform(classifier.preprocessing)
    else:
        try:
            ds = store.open_dataset(classifier.preprocessing, data)
        except (FileNotFoundError, ValueError) as err:
            raise FileNotFoundError(
                f"cannot re-open the training images of {store.path} ({err}); pass the dataset where they are now "
                "with data=... (--data DATA)") from None
    fingerprint = ds.fingerprint()
    if fingerprint != store.data_fingerprint:
        warnings.warn(
            f"the dataset {ds.spec} (data fingerprint {fingerprint}) lists other images or labels than the "
            f"features {store.path / 'manifest.json'} were extracted from ({store.manifest['data'].get('spec')}, data "
            f"fingerprint {store.data_fingerprint}); max-activating images are matched by id and ids it lacks are "
            "shown blank: pass the dataset the features were extracted from (--data), or re-extract the split "
            "from this one (`spurious extract WS --data DATA --split SPLIT --overwrite`)", stacklevel=3)
    return ds


def visualize(
    workspace: str | os.PathLike[str],
    *,
    classes: Sequence[int | str] | None = None,
    split: str = "train",
    candidates: int = 128,
    keep: int = 10,
    eps: float | None = None,
    steps: int = 200,
    top_images: int = 5,
    neurons: int = 5,
    device: str | torch.device | None = "auto",
    batch_size: int | None = None,
    seed: int = 0,
    data: str | os.PathLike[str] | ImageDataset | None = None,
    model: str | Classifier | None = None,
    cam_layer: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> VisualizeResult:
    """NPFVs, component selection, max-activating images, heatmaps and the neuron baseline -> ``WS/visualize``.

    Per class ``k``: NPFVs of the top ``candidates`` components by eigenvalue (one APGD batch together
    with the visualizations of the top ``neurons`` neurons), ranked by the class-``k`` probability at the
    NPFV; the first ``keep`` get their ``top_images`` max-activating training images (from the feature
    store) and GradCAM heatmaps of ``alpha_l^k`` on the NPFV and on those images (re-loaded from the
    dataset recorded in the feature store, matched by id, with the classifier's preprocessing).

    Args:
        workspace: a workspace with finished features for ``split`` and ``npca`` fitted on them.
        classes: class indices or names (default: every class with components).
        split: the labelled training split the neural PCA was fitted on.
        candidates: components per class that get an NPFV (top by eigenvalue; default 128).
        keep: components kept per class, by NPFV class probability (default 10).
        eps: L2 budget (default :func:`default_eps`: 30 at 3x224x224, scaled with sqrt of the input size).
        steps: APGD steps (default 200).
        top_images: max-activating images per component / neuron (default 5).
        neurons: neurons of the Salient ImageNet baseline per class (default 5; 0 = no baseline).
        device: ``auto`` | ``cpu`` | ``cuda[:N]``.
        batch_size: images per APGD / GradCAM batch (default: one batch per class).
        seed: APGD seed.
        data: where the training images are now (spec or ``ImageDataset``; default: the spec recorded
            when the features were extracted).
        model: the classifier (default: loaded from the workspace's model spec).
        cam_layer: module name (inside the wrapped model, as in ``named_modules()``) whose output
            GradCAM uses; default: :func:`spurious.gradcam.find_target_layer` (the last spatial block).
            An earlier, finer block localises better on small inputs (e.g. ``stages.1``, 8x8, for the
            64 px demo models, whose last block is 4x4).
        overwrite: discard a ``visualize/`` made with another plan.
        progress: progress bar on stderr.

    Raises:
        FileNotFoundError: no workspace, no features for ``split``, no ``npca`` yet, or the images
            cannot be re-opened.
        ValueError: unknown class, a class without components, or a bad argument.
        TypeError: a non-integer ``seed`` or a ``model`` that is not a spec or ``Classifier``.
        IncompatibleArtifactError: the neural PCA belongs to other features, ``model`` is not the
            workspace's model, or ``visualize/`` holds another plan (pass ``overwrite``).
    """
    candidates = positive_int("candidates", candidates)
    keep = positive_int("keep", keep)
    steps = positive_int("steps", steps)
    top_images = positive_int("top_images", top_images)
    if isinstance(neurons, bool) or not isinstance(neurons, (int, np.integer)) or neurons < 0:
        raise ValueError(f"neurons must be a non-negative integer, got {neurons!r}")
    batch_size = check_batch_size(batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    if eps is not None:
        eps = check_eps(eps)
    t0 = time.perf_counter()

    ws = Workspace.open(workspace)
    store = ws.feature_store(split)
    pca = load_npca(ws.root)
    if pca.manifest.get("split") != split or pca.manifest.get("data_fingerprint") != store.data_fingerprint:
        fitted = pca.manifest.get("split")
        raise IncompatibleArtifactError(
            f"the neural PCA {ws.npca_dir / 'manifest.json'} was fitted on split {fitted!r} (data fingerprint "
            f"{pca.manifest.get('data_fingerprint')}), not on the features of split {split!r} in {store.path} (data "
            f"fingerprint {store.data_fingerprint}) of workspace {ws.root} (model {ws.model_spec!r}, fingerprint "
            f"{ws.model_fingerprint}); pass --split {fitted} if those features are still there, or refit npca on "
            f"these: `spurious npca {ws.root} --split {split} --overwrite`")
    if classes is None:
        wanted = pca.classes
        if not wanted:
            raise ValueError(f"{ws.npca_dir} holds no class with components")
    else:
        wanted = sorted({ws.resolve_class(c) for c in classes})
        missing = [k for k in wanted if k not in pca]
        if missing:
            k = missing[0]
            raise ValueError(f"class {k} ({ws.class_names[k]}) has no neural PCA components (fewer than 2 training "
                             f"images, or not fitted); classes with components: {_some(pca.classes)}")

    dev = resolve_device(device)
    info = init_distributed(dev)
    classifier = _resolve_classifier(model, ws, dev)
    if cam_layer is not None:
        names = [n for n, _ in classifier.model.named_modules() if n]
        if not isinstance(cam_layer, str) or cam_layer not in names:
            close = difflib.get_close_matches(str(cam_layer), names, n=5)
            raise ValueError(f"cam_layer {cam_layer!r} is not a module of {classifier.spec!r}"
                             + (f"; closest: {', '.join(close)}" if close else "")
                             + " (names as in model.named_modules(); omit it for the last spatial block)")
    eps_used = default_eps(classifier.input_size) if eps is None else float(eps)
    plan = {"format_version": _FORMAT_VERSION, "model_fingerprint": ws.model_fingerprint, "split": split,
            "data_fingerprint": store.data_fingerprint,
            "npca": {k: pca.manifest.get(k) for k in ("n_components", "precision")},
            "candidates": candidates, "keep": keep, "eps": eps_used, "steps": steps, "top_images": top_images,
            "neurons": int(neurons), "seed": int(seed)}
    if cam_layer is not None:  # only when set: plans made before the option existed stay valid
        plan["cam_layer"] = cam_layer
    phash = sha256_strings([json.dumps(plan, sort_keys=True)])
    out = ws.root / "visualize"

    def mismatch(old: dict[str, Any]) -> str:
        diffs = [f"{k}: {old.get(k)!r} vs {v!r}" for k, v in plan.items() if old.get(k) != v]
        return (f"{out} holds visualizations made with other settings ({out / 'plan.json'}: {'; '.join(diffs)}); "
                "pass --overwrite to redo them")

    on_main_rank(lambda: prepare_artifact_dir(out, plan, overwrite=overwrite, mismatch=mismatch))

    mine = [k for k in wanted if k % info.world_size == info.rank]
    todo = [k for k in mine if not _class_done(ws, k, phash)]
    W, _ = ws.head()
    importance = neuron_importance(store, W, todo) if (todo and neurons) else None
    ctx = _StageContext(ws=ws, store=store, pca=pca, classifier=classifier, out=out, phash=phash, plan=plan,
                        batch_size=batch_size, importance=importance, data=data)
    done = 0
    for k in tqdm(mine, desc="visualize", unit="class", disable=not (progress and info.is_main), dynamic_ncols=True):
        if k not in todo:
            continue
        _visualize_class(ctx, k)
        done += 1
    reused = len(mine) - done
    done, reused = all_sum(done), all_sum(reused)
    barrier()
    summary: dict[str, Any] = {}
    if info.is_main:
        summary = _write_stage_manifest(out, plan, phash, ws, args={
            "classes": wanted, "split": split, "candidates": candidates, "keep": keep, "eps": eps, "steps": steps,
            "top_images": top_images, "neurons": neurons, "device": str(dev), "batch_size": batch_size,
            "seed": seed, "data": data if data is None or isinstance(data, str) else str(getattr(data, "spec", data)),
            "world_size": info.world_size})
    barrier()
    seconds = time.perf_counter() - t0
    return VisualizeResult(path=str(out), split=split, classes=wanted, classes_done=done, classes_reused=reused,
                           candidates=candidates, keep=keep, eps=eps_used, steps=steps, top_images=top_images,
                           index_html=str(out / "index.html"), diversity=summary.get("diversity_total", {}),
                           seconds=round(seconds, 3), seconds_per_class=round(seconds / max(done, 1), 3),
                           device=str(dev), world_size=info.world_size)


def _some(items: Sequence[object], n: int = 10) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "") if items else "none"


@dataclass
class _StageContext:
    ws: Workspace
    store: FeatureStore
    pca: NPCA
    classifier: Classifier
    out: Path
    phash: str
    plan: dict[str, Any]
    batch_size: int | None
    importance: NeuronImportance | None
    data: str | os.PathLike[str] | ImageDataset | None
    _dataset: ImageDataset | None = None
    _cam: GradCAM | None = None

    def dataset(self) -> ImageDataset:
        if self._dataset is None:
            self._dataset = _open_images(self.data, self.store, self.classifier)
        return self._dataset

    def cam(self) -> GradCAM:
        if self._cam is None:
            self._cam = GradCAM(self.classifier, self.plan.get("cam_layer"))
        return self._cam


def _gradcam(ctx: _StageContext, x: torch.Tensor, A: np.ndarray, c: np.ndarray) -> torch.Tensor:
    """GradCAM heatmaps [n, H, W] of the linear targets ``<A_i, phi(x_i)> - c_i`` (chunks of ``batch_size``)."""
    if x.shape[0] == 0:
        return torch.zeros((0, *x.shape[2:]))
    cam = ctx.cam()
    At, ct = linear_targets(A, c, ctx.classifier.device)
    maps = []
    for sl in chunks(x.shape[0], ctx.batch_size):
        a, b = At[sl], ct[sl]

        def target(phi: torch.Tensor, logits: torch.Tensor, a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
            return (phi.to(a.dtype) * a).sum(dim=1) - b

        maps.append(cam.attribute(x[sl].to(ctx.classifier.device), target).detach().float().cpu())
    return torch.cat(maps)


def _top3(probs: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:3]
    return [{"class": int(j), "name": names[j], "probability": float(probs[j])} for j in order]


def _num(x: float) -> float | None:
    return None if not math.isfinite(float(x)) else float(x)


def _visualize_class(ctx: _StageContext, k: int) -> None:
    plan, clf, store = ctx.plan, ctx.classifier, ctx.store
    names = ctx.ws.class_names
    cdir = sheet_folder(ctx.ws, k)
    if cdir.exists():  # an interrupted earlier attempt: start the class afresh
        shutil.rmtree(cdir)
    cdir.mkdir(parents=True)
    basis = ctx.pca[k]
    n_cand = min(plan["candidates"], basis.num_components)
    comps = np.arange(n_cand)
    A_comp, c_comp = basis.projection(comps)

    # neuron baseline: top neurons by importance (images predicted as k)
    neuron_note = "" if plan["neurons"] else "neuron baseline not computed (neurons=0)"
    top_neurons = np.zeros(0, dtype=np.int64)
    n_predicted = 0
    if plan["neurons"] and ctx.importance is not None:
        n_predicted = int(ctx.importance.counts[np.flatnonzero(ctx.importance.classes == k)[0]])
        if n_predicted:
            top_neurons = ctx.importance.top(k, plan["neurons"])
        else:
            neuron_note = f"no image of split {plan['split']!r} is predicted as this class: no neuron baseline"
    A_neu = np.zeros((top_neurons.size, store.dim))
    A_neu[np.arange(top_neurons.size), top_neurons] = 1.0

    # one APGD batch: every candidate component + the baseline neurons
    A_all = np.concatenate([A_comp, A_neu])
    c_all = np.concatenate([c_comp, np.zeros(top_neurons.size)])
    images, values, probs = maximize_linear(clf, A_all, c_all, eps=plan["eps"], steps=plan["steps"],
                                            seed=plan["seed"], batch_size=ctx.batch_size)
    vis = FeatureVisualization("component", k, comps, images[:n_cand], values[:n_cand], probs[:n_cand],
                               plan["eps"], plan["steps"])
    sel = select(vis, min(plan["keep"], n_cand))
    pos = sel.order[:sel.selected.size]  # positions of the kept components among the candidates

    top = plan["top_images"]
    ma = max_activating(store, basis, sel.selected, top=top)
    mn = max_activating_neurons(store, k, top_neurons, top=top) if top_neurons.size else None

    # re-load the max-activating images (matched by id) and compute every heatmap
    ids = [i for row in ma.ids for i in row] + ([i for row in mn.ids for i in row] if mn else [])
    shape = tuple(clf.input_size)
    x_top, errors = _load_by_id(ctx.dataset(), ids, shape)
    for e in errors:
        if e is not None:
            warnings.warn(f"class {k}: a max-activating image could not be loaded and is shown blank ({e})",
                          stacklevel=3)
    A_top = np.concatenate([np.repeat(A_comp[pos], ma.rows.shape[1], axis=0),
                            np.repeat(A_neu, mn.rows.shape[1], axis=0) if mn else np.zeros((0, store.dim))])
    c_top = np.concatenate([np.repeat(c_comp[pos], ma.rows.shape[1]),
                            np.zeros(mn.rows.size if mn else 0)])
    vis_idx = np.concatenate([pos, n_cand + np.arange(top_neurons.size)])
    cams_vis = _gradcam(ctx, images[vis_idx], A_all[vis_idx], c_all[vis_idx])
    cams_top = _gradcam(ctx, x_top, A_top, c_top)

    def save(name: str, x: torch.Tensor, cam: torch.Tensor) -> tuple[str, str]:
        _save_png(cdir / f"{name}.png", _to_pil(x))
        _save_png(cdir / f"{name}_cam.png", overlay(x, cam))
        return f"{name}.png", f"{name}_cam.png"

    components: list[dict[str, Any]] = []
    t = 0
    for r, (l, p) in enumerate(zip(sel.selected.tolist(), pos.tolist(), strict=False)):
        png, cam_png = save(f"npfv_l{l:04d}", images[p], cams_vis[r])
        tops = []
        for j in range(ma.rows.shape[1]):
            tpng, tcam = save(f"top_l{l:04d}_{j}", x_top[t], cams_top[t])
            tops.append({"id": ma.ids[r][j], "row": int(ma.rows[r, j]), "alpha": float(ma.values[r, j]),
                         "probability": _num(ma.probability[r, j]), "png": tpng, "heatmap_png": tcam,
                         "error": errors[t]})
            t += 1
        components.append({"rank": r + 1, "component": int(l), "eigenvalue": float(basis.lam[l]),
                           "npfv_probability": float(probs[p, k]), "npfv_alpha": float(values[p]),
                           "npfv_top3": _top3(probs[p], names), "npfv_png": png, "npfv_heatmap_png": cam_png,
                           "top_images": tops})
    neuron_rows: list[dict[str, Any]] = []
    if mn is not None and ctx.importance is not None:  # else there are no baseline neurons
        importance_row = ctx.importance.importance[np.flatnonzero(ctx.importance.classes == k)[0]]
        for r, j in enumerate(top_neurons.tolist()):
            p = n_cand + r
            png, cam_png = save(f"neuron_j{j:05d}", images[p], cams_vis[sel.selected.size + r])
            tops = []
            for i in range(mn.rows.shape[1]):
                tpng, tcam = save(f"neuron_j{j:05d}_top_{i}", x_top[t], cams_top[t])
                tops.append({"id": mn.ids[r][i], "row": int(mn.rows[r, i]), "activation": float(mn.values[r, i]),
                             "probability": _num(mn.probability[r, i]), "png": tpng, "heatmap_png": tcam,
                             "error": errors[t]})
                t += 1
            neuron_rows.append({"rank": r + 1, "neuron": int(j), "importance": float(importance_row[j]),
                                "visualization_probability": float(probs[p, k]),
                                "visualization_activation": float(values[p]),
                                "visualization_top3": _top3(probs[p], names), "visualization_png": png,
                                "visualization_heatmap_png": cam_png, "top_images": tops})

    n_div = plan["neurons"] or 5
    div = {"components": diversity([c["id"] for c in comp["top_images"]] for comp in components[:n_div]).to_dict()}
    if neuron_rows:
        div["neurons"] = diversity([n["id"] for n in nr["top_images"]] for nr in neuron_rows).to_dict()
    table = {
        "format": "spurious-visualize-class", "version": _FORMAT_VERSION, "plan": ctx.phash, "class": k,
        "name": names[k], "n_images": int(basis.n), "eps": plan["eps"], "steps": plan["steps"],
        "input_size": list(shape), "model_spec": ctx.ws.model_spec,
        "candidates": [{"component": int(l), "eigenvalue": float(basis.lam[l]), "npfv_probability": float(sel.probability[i]),
                        "npfv_alpha": float(values[i])} for i, l in enumerate(comps.tolist())],
        "components": components,
        "neurons": {"n_predicted": n_predicted, "note": neuron_note, "top": neuron_rows},
        "diversity": div,
    }

    class_page(cdir / "index.html", table, names, shown_pairs(ctx.ws.root))
    write_json(cdir / SHEET_TABLE, table)  # last: marks the class as done


def _write_stage_manifest(out: Path, plan: dict[str, Any], phash: str, ws: Workspace,
                          args: dict[str, Any]) -> dict[str, Any]:
    """Rank 0, after every rank finished: ``manifest.json`` and ``index.html`` from the finished classes."""

    entries = []
    total: dict[str, SetDiversity] = {}
    for k in sheet_classes(ws):
        try:
            sheet = read_sheet_table(ws, k)
        except (OSError, ValueError):
            continue
        if sheet.plan != phash:
            continue
        table = sheet.document
        best = sheet.components[0] if sheet.components else None
        entries.append({"class": k, "name": table["name"], "dir": sheet.folder.name, "n_images": table["n_images"],
                        "selected": sheet.selected,
                        "best_npfv_probability": best["npfv_probability"] if best else None,
                        "neurons": [n["neuron"] for n in table["neurons"]["top"]],
                        "diversity": table["diversity"]})
        for kind, d in table["diversity"].items():
            total[kind] = total.get(kind, SetDiversity(0, 0, 0, 0, 0)) + SetDiversity(**d)
    totals = {kind: d.to_dict() for kind, d in total.items()}
    manifest = {"format": "spurious-visualize", "version": _FORMAT_VERSION, "package_version": __version__,
                "created": utc_now(), "plan_hash": phash, **plan, "model_spec": ws.model_spec,
                "args": args, "classes": entries, "diversity_total": totals}
    index_page(out / "index.html", manifest)
    write_json(out / "manifest.json", manifest)
    return manifest
