"""The ``counterfactual`` stage: one (class, component, mode) run written to ``WS/counterfactual/``."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spurious import __version__
from spurious._dist import resolve_device
from spurious._io import atomic_path, read_json, sha256_strings, utc_now, write_json
from spurious.counterfactual._dvce import (
    DOMAIN_CHECK_IMAGES,
    DiffusionModel,
    DomainCheck,
    DvceSettings,
    check_dvce_settings,
    domain_check,
    domain_check_skipped,
    dvce_images,
    load_diffusion,
)
from spurious.counterfactual._index import FOLDER, INDEX_FORMAT
from spurious.counterfactual._optimize import (
    ImageScores,
    check_basis_fits,
    check_component,
    check_eps,
    check_mode,
    check_norm,
    check_start_images,
    check_weight,
    counterfactual_images,
    score_images,
)
from spurious.counterfactual._report import index_page, run_page
from spurious.counterfactual._starts import start_images
from spurious.datasets import ImageDataset
from spurious.models import Classifier, load_model
from spurious.npca import load_npca
from spurious.visualize._report import refresh_sheets
from spurious.workspace import Workspace, prepare_artifact_dir

__all__ = ["CounterfactualResult", "counterfactual"]

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CounterfactualResult:
    """Summary of one ``counterfactual`` run (what ``--json`` prints).

    ``models`` holds, per model (the optimising one first), the mean of ``alpha_l^k`` and ``p(k)``
    before and after, and the share of images whose top-1 class is ``k`` before and after.
    """

    path: str
    run: str
    k: int
    class_name: str
    component: int
    mode: str
    norm: str
    eps: float | None
    steps: int
    source: str
    pairs: int
    pairs_done: int
    pairs_reused: int
    images: list[str] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    sheet: str = ""
    index_json: str = ""
    seconds: float = 0.0
    device: str = "cpu"
    engine: str = "image"
    diffusion: dict[str, Any] | None = None
    diffusion_check: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """What the CLI prints."""
        if self.diffusion is not None:
            d = self.diffusion
            how = (f"DVCE on {d['model']}: C_c {d['class_weight']:g}, C_a {d['component_weight']:g}, C_d "
                   f"{d['distance_weight']:g} ({d['distance']}), {self.steps} of {d['steps']} steps")
        else:
            how = f"{self.norm} eps {self.eps:.4g}, {self.steps} steps"
        lines = [f"{self.mode} component {self.component} of class {self.k} ({self.class_name}): {self.pairs} "
                 f"images from {self.source} ({self.pairs_done} done, {self.pairs_reused} reused), {how}, "
                 f"{self.seconds:.1f} s on {self.device}"]
        for m in self.models:
            alpha = "" if m["alpha_before"] is None else \
                f"alpha {m['alpha_before']:.3g} -> {m['alpha_after']:.3g}, "
            lines.append(f"  {m['role']:<9} {m['spec']}: {alpha}p(k) {m['probability_before']:.3f} -> "
                         f"{m['probability_after']:.3f}, top-1 = k {m['top1_is_k_before']:.0%} -> "
                         f"{m['top1_is_k_after']:.0%}")
        if self.diffusion_check is not None:
            lines.append(self.diffusion_check["line"])
        lines.append(f"sheet: {self.sheet}")
        return lines


# ---------------------------------------------------------------------------- models


def _resolve_model(model: str | Classifier | None, ws: Workspace, device: torch.device, what: str) -> Classifier:
    if model is None:
        clf = ws.load_model(device=device)
    elif isinstance(model, Classifier):
        clf = model.to(device)
    elif isinstance(model, str):
        clf = load_model(model, device=device)
    else:
        raise TypeError(f"{what} must be None (the workspace's model), a spec string or a Classifier, "
                        f"got {type(model).__name__}")
    if list(clf.class_names) != ws.class_names:
        diff = next((i for i, (a, b) in enumerate(zip(clf.class_names, ws.class_names, strict=False)) if a != b),
                    min(len(clf.class_names), len(ws.class_names)))
        raise ValueError(f"{what} {clf.spec!r} has {clf.num_classes} classes, the workspace {ws.root} "
                         f"{ws.num_classes}, and they differ from class {diff} on; a counterfactual compares p(k) "
                         "across models, so every model must have the workspace's class names")
    return clf.eval()


def _scores_dict(s: ImageScores, i: int, names: Sequence[str]) -> dict[str, Any]:
    return {"alpha": None if s.alpha is None else float(s.alpha[i]), "probability": float(s.probability[i]),
            "logit": float(s.logit[i]), "top1": int(s.top1[i]), "top1_name": names[int(s.top1[i])]}


# ---------------------------------------------------------------------------- images


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array, mode="RGB").save(tmp, format="PNG")


def _rgb(x: Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _signed_difference(delta: Tensor) -> np.ndarray:
    """``0.5 + 0.5 delta / max|delta|`` per image: gray = unchanged, brighter / darker = the change, amplified."""
    scale = float(delta.abs().max())
    return _rgb(0.5 + 0.5 * delta / scale if scale > 0 else torch.full_like(delta, 0.5))


def _heatmap(original: Tensor, delta: Tensor) -> np.ndarray:
    """Where the change is: ``sum_c |delta_c|`` per pixel, / its max, coloured over the original."""
    from spurious.gradcam import overlay

    mass = delta.abs().sum(0)
    top = float(mass.max())
    heat = mass / top if top > 0 else torch.zeros_like(mass)
    return np.asarray(overlay(original.clamp(0, 1), heat.clamp(0, 1), alpha=0.6, colormap="inferno"))


# ---------------------------------------------------------------------------- the stage


def _npca_identity(npca_manifest: dict[str, Any]) -> str:
    keys = ("model_fingerprint", "split", "data_fingerprint", "n_components", "precision")
    return sha256_strings(repr(npca_manifest.get(k)) for k in keys)


def _image_hash(x: Tensor) -> str:
    import hashlib

    return hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _run_summary(records: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    out = []
    for m, first in enumerate(records[0]["models"] if records else []):
        def mean(part: str, key: str, m: int = m) -> float | None:
            vals = [r["models"][m][part][key] for r in records]
            return None if any(v is None for v in vals) else float(np.mean(vals))

        out.append({"spec": first["spec"], "fingerprint": first["fingerprint"], "role": first["role"],
                    "alpha_before": mean("before", "alpha"), "alpha_after": mean("after", "alpha"),
                    "probability_before": mean("before", "probability"),
                    "probability_after": mean("after", "probability"),
                    "top1_is_k_before": float(np.mean([r["models"][m]["before"]["top1"] == k for r in records])),
                    "top1_is_k_after": float(np.mean([r["models"][m]["after"]["top1"] == k for r in records]))})
    return out


def counterfactual(
    workspace: str | os.PathLike[str],
    k: int | str,
    component: int,
    *,
    mode: str = "remove",
    images: Sequence[str | os.PathLike[str]] | Tensor | None = None,
    data: str | ImageDataset | None = None,
    n_images: int = 8,
    norm: str = "l2",
    eps: float | None = None,
    steps: int = 100,
    keep_weight: float = 0.0,
    logprob_weight: float = 0.0,
    model: str | Classifier | None = None,
    eval_models: Sequence[str | Classifier] = (),
    split: str = "train",
    val_split: str = "val",
    confused: int = 3,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    engine: str = "image",
    diffusion: str | os.PathLike[str] | None = None,
    class_weight: float = DvceSettings.class_weight,
    component_weight: float = DvceSettings.component_weight,
    distance_weight: float = DvceSettings.distance_weight,
    distance: str = DvceSettings.distance,
    diffusion_steps: int = DvceSettings.steps,
    t_start: float = DvceSettings.t_start,
) -> CounterfactualResult:
    """Feature counterfactuals of component ``component`` of class ``k`` on real images -> ``WS/counterfactual/``.

    Adds (``mode="add"``: maximises ``alpha_l^k``) or removes (``"remove"``: minimises it) the
    component in each start image inside the ``norm`` ball of radius ``eps`` in ``[0, 1]^n`` (see the
    package docstring for the objective and its optional terms), then scores the originals and the
    counterfactuals on the optimising model and on every ``eval_models`` entry. Writes four PNGs and the
    numbers per pair, a ``run.json`` and an HTML sheet per run, and rebuilds ``index.json`` (read it with
    :func:`spurious.counterfactual.counterfactual_pairs`). Resumable: a pair already written under the
    same settings, model fingerprints and start-image bytes is not recomputed.

    Args:
        workspace: a workspace with ``npca``.
        k: class index or name; ``component``: ``l``, 0-based, by eigenvalue.
        mode: ``"add"`` or ``"remove"``.
        images: start image files, or a tensor ``[N, 3, H, W]`` in ``[0, 1]`` of the model's input size.
        data: a dataset spec (or :class:`spurious.datasets.ImageDataset`): its first ``n_images`` images.
        n_images: images chosen by default or from ``data`` (default 8).
        norm: ``"l2"`` (default), ``"linf"`` or ``"l1"`` (sparse edits).
        eps: radius (default: :func:`spurious.counterfactual.default_budget`; 30 at 224 px for L2).
        steps: APGD steps (default 100).
        keep_weight: weight of the term keeping the other components and classes at their start values.
        logprob_weight: weight of the class log-probability term.
        model: the optimising model: ``None`` (the workspace's), a spec, or a Classifier with the
            workspace's class names and feature dimension (e.g. a robust model).
        eval_models: further models (specs or Classifiers, same class names and input size) to score on.
        split: the training split (max-activating images); ``val_split``: the split of the default
            ``add`` start images; ``confused``: how many confused classes they come from.
        batch_size: images per APGD batch (default all); ``device``: ``auto`` | ``cpu`` | ``cuda[:N]``.
        seed: APGD seed / the diffusion noise; ``overwrite``: discard ``WS/counterfactual`` made for another
            model or npca.
        progress: log each batch.
        engine: ``"image"`` (APGD in a ball around each image, the default) or ``"diffusion"`` (DVCE,
            :mod:`spurious.counterfactual._dvce`: guided denoising of the noised image with an unconditional
            diffusion model; ``norm``, ``eps``, ``steps``, ``keep_weight`` and ``logprob_weight`` are unused).
        diffusion: the diffusers folder of the diffusion engine (``model_index.json``, ``unet/``, ``scheduler/``).
        class_weight, component_weight, distance_weight: DVCE's ``C_c``, ``C_a``, ``C_d`` (>= 0).
        distance: ``"l1"`` (DVCE's) or ``"l2"``; ``diffusion_steps``: the scheduler's chain;
            ``t_start``: the share of it that is run, from the noised start image (DVCE: 100 of 200).

    Raises:
        FileNotFoundError: no workspace, no npca, or no features for a default start-image split.
        ValueError: a class or component that does not exist, ``eps <= 0``, an unknown mode, norm or
            engine, unreadable start images or images of the wrong size, a model with other class names or
            another feature dimension; for the diffusion engine: no ``diffusion`` folder given, a folder that
            is not an unconditional diffusers UNet2DModel with a DDPM/DDIM scheduler, an image size the UNet
            cannot take, bad DVCE settings.
        FileNotFoundError: also a ``diffusion`` folder that does not exist.
        IncompatibleArtifactError: ``WS/counterfactual`` was made for another model / npca.
    """
    t0 = time.perf_counter()
    mode, key = check_mode(mode), check_norm(norm)
    keep_weight = check_weight(keep_weight, "keep_weight")
    logprob_weight = check_weight(logprob_weight, "logprob_weight")
    if eps is not None:
        check_eps(eps, key, (3, 224, 224))
    for name, value in (("n_images", n_images), ("steps", steps), ("confused", confused)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if engine not in ("image", "diffusion"):
        raise ValueError(f"unknown engine {engine!r}; use 'image' (APGD around each image) or 'diffusion' (DVCE)")
    dvce: DvceSettings | None = None
    if engine == "diffusion":
        if diffusion is None:
            raise ValueError("engine='diffusion' needs a diffusion model: diffusion= / --diffusion DIR (a diffusers "
                             "folder with model_index.json, unet/ and scheduler/), or --diffusion demo on the CLI")
        dvce = check_dvce_settings(DvceSettings(class_weight=class_weight, component_weight=component_weight,
                                                distance_weight=distance_weight, distance=distance,
                                                steps=diffusion_steps, t_start=t_start))
    elif diffusion is not None:
        raise ValueError("diffusion= (--diffusion) is for engine='diffusion' (--engine diffusion)")
    ws = Workspace.open(workspace)
    kk = ws.resolve_class(k)
    pca = load_npca(ws.root)
    if kk not in pca:
        raise ValueError(f"class {kk} ({ws.class_names[kk]}) has no neural PCA components (classes with fewer "
                         "than 2 training images get none); pick another class")
    basis = pca[kk]
    component = check_component(basis, component)
    dev = resolve_device(device)
    clf = _resolve_model(model, ws, dev, "the optimising model (model=, --model)")
    check_basis_fits(clf, basis, "the optimising model")
    radius = check_eps(eps, key, clf.input_size)
    model_dm = None
    if dvce is not None and diffusion is not None:
        model_dm = load_diffusion(diffusion, device=dev)
        model_dm.image_size(clf.input_size[1:])  # the size check, before any work
    evals = [_resolve_model(m, ws, dev, "the evaluation model (eval_models=, --eval-model)") for m in eval_models]
    for e in evals:
        if tuple(e.input_size) != tuple(clf.input_size):
            raise ValueError(f"the evaluation model {e.spec!r} takes {e.input_size} inputs, the optimising model "
                             f"{clf.spec!r} {clf.input_size}; evaluate on models of the same input size")
    starts = start_images(ws, basis, component, clf, mode=mode, images=images, data=data, n=n_images, split=split,
                          val_split=val_split, confused=confused)
    check_start_images(starts.images, clf)

    root = ws.root / FOLDER
    plan = {"format": "spurious-counterfactual", "version": _FORMAT_VERSION, "model_fingerprint": ws.model_fingerprint,
            "npca": _npca_identity(pca.manifest)}

    def mismatch(old: dict[str, Any]) -> str:
        return (f"{root} holds counterfactuals made for another model or neural PCA ({root / 'plan.json'}: "
                f"{old.get('model_fingerprint')}/{old.get('npca')} vs {plan['model_fingerprint']}/{plan['npca']}); "
                "pass --overwrite to discard them")

    prepare_artifact_dir(root, plan, overwrite=overwrite, mismatch=mismatch)
    settings: dict[str, Any] = {
        "class": kk, "component": component, "mode": mode, "norm": key, "eps": radius, "steps": steps,
        "keep_weight": keep_weight, "logprob_weight": logprob_weight, "seed": seed, "model": clf.fingerprint(),
        "eval_models": [e.fingerprint() for e in evals]}
    engine_info: dict[str, Any] | None = None
    if dvce is not None and model_dm is not None:  # the image engine's settings (and run folders) stay as they were
        engine_info = {**dvce.to_dict(), "model": str(model_dm.path), "fingerprint": model_dm.fingerprint,
                       "denoising_steps": dvce.denoising_steps, "scheduler": type(model_dm.scheduler).__name__}
        settings.update({"engine": "diffusion", "norm": dvce.distance, "eps": None, "steps": dvce.steps,
                         "keep_weight": 0.0, "logprob_weight": 0.0,
                         "diffusion": {k: v for k, v in engine_info.items() if k != "model"}})
    shash = sha256_strings([repr(sorted(settings.items()))])[:8]
    run_rel = f"class_{kk:05d}/l{component:04d}/{mode}-{'dvce-' + dvce.distance if dvce else key}-{shash}"
    run_dir = root / run_rel
    run_dir.mkdir(parents=True, exist_ok=True)
    check_record: dict[str, Any] | None = None
    if model_dm is not None and dvce is not None:
        check_record = _diffusion_check(root, clf, model_dm, dvce, starts.images, seed)
        if check_record.get("agrees") is False:
            warnings.warn(check_record["warning"], UserWarning, stacklevel=2)
    hashes = [sha256_strings([shash, image_id, _image_hash(x)])
              for image_id, x in zip(starts.ids, starts.images, strict=True)]
    records: dict[int, dict[str, Any]] = {}
    for i, h in enumerate(hashes):
        path = run_dir / f"pair-{h}.json"
        if path.is_file():
            try:
                rec = read_json(path)
            except ValueError:  # a torn file: redo the pair
                continue
            if rec.get("hash") == h:
                records[i] = rec
    pending = [i for i in range(len(hashes)) if i not in records]
    reused = len(records)
    step = len(pending) if batch_size is None else batch_size
    models = [(clf, "optimised"), *((e, "eval") for e in evals)]
    for start in range(0, len(pending), max(step, 1)):
        chunk = pending[start:start + step]
        if progress:
            log.info("counterfactual %s class %d component %d: images %d-%d of %d", mode, kk, component,
                     start + 1, start + len(chunk), len(pending))
        x0 = starts.images[chunk]
        if model_dm is not None and dvce is not None:
            cf = dvce_images(clf, basis, component, x0, model_dm, mode=mode, settings=dvce, seed=seed)
        else:
            cf = counterfactual_images(clf, basis, component, x0, mode=mode, norm=key, eps=radius, steps=steps,
                                       keep_weight=keep_weight, logprob_weight=logprob_weight, seed=seed)
        scored = [(cf.before, cf.after)] + [(score_images(e, basis, component, x0),
                                             score_images(e, basis, component, cf.images)) for e in evals]
        for j, i in enumerate(chunk):
            h = hashes[i]
            delta = cf.images[j] - cf.original[j]
            files = {name: f"{run_rel}/pair-{h}_{name}.png"
                     for name in ("original", "counterfactual", "difference", "heatmap")}
            _png(root / files["original"], _rgb(cf.original[j]))
            _png(root / files["counterfactual"], _rgb(cf.images[j]))
            _png(root / files["difference"], _signed_difference(delta))
            _png(root / files["heatmap"], _heatmap(cf.original[j], delta))
            flat = delta.flatten().double()
            rec = {"hash": h, "id": starts.ids[i], "source": starts.source, "label": starts.labels[i],
                   "mode": mode, "norm": settings["norm"], "eps": settings["eps"], "steps": settings["steps"],
                   "run": run_rel, "files": files, "objective": float(cf.objective[j]),
                   **({"engine": "diffusion", "diffusion": engine_info} if engine_info else {}),
                   "distance": {"l2": float(flat.norm()), "linf": float(flat.abs().max()),
                                "l1": float(flat.abs().sum())},
                   "models": [{"spec": m.spec, "fingerprint": m.fingerprint(), "role": role,
                               "before": _scores_dict(b, j, ws.class_names),
                               "after": _scores_dict(a, j, ws.class_names)}
                              for (m, role), (b, a) in zip(models, scored, strict=True)]}
            write_json(run_dir / f"pair-{h}.json", rec)
            records[i] = rec
    ordered = [records[i] for i in range(len(hashes))]
    summary = _run_summary(ordered, kk)
    pairs = _merge_pairs(run_dir / "run.json", ordered)
    run = {"format": "spurious-counterfactual-run", "version": _FORMAT_VERSION, "package_version": __version__,
           "created": utc_now(), "settings": settings, "class_name": ws.class_names[kk],
           "models": [{"spec": m.spec, "fingerprint": m.fingerprint(), "role": role} for m, role in models],
           "start_images": {"source": starts.source, **starts.detail},
           **({"diffusion_check": check_record} if check_record is not None else {}),
           "summary": summary if len(pairs) == len(ordered) else _run_summary(pairs, kk), "pairs": pairs}
    sheet = run_page(run_dir / "index.html", run, ws.class_names)
    write_json(run_dir / "run.json", run)
    index_json = _write_index(root, ws)
    refresh_sheets(ws, [kk])  # the inspection sheet of class k shows the new pairs under the component
    return CounterfactualResult(
        path=str(root), run=str(run_dir), k=kk, class_name=ws.class_names[kk], component=component, mode=mode,
        norm=settings["norm"], eps=settings["eps"], steps=dvce.denoising_steps if dvce else steps,
        source=starts.source, pairs=len(ordered), pairs_done=len(pending), pairs_reused=reused,
        images=list(starts.ids), models=summary, sheet=str(sheet), index_json=str(index_json),
        seconds=round(time.perf_counter() - t0, 3), device=str(dev), engine=engine, diffusion=engine_info,
        diffusion_check=check_record)


def _diffusion_check(root: Path, clf: Classifier, diffusion: DiffusionModel, settings: DvceSettings, images: Tensor,
                     seed: int | None) -> dict[str, Any]:
    """The :class:`DomainCheck` of this diffusion model, guiding model and chain on this workspace, as a record.

    Run once on the first start images of the first DVCE run and kept in
    ``WS/counterfactual/diffusion-checks/<key>.json``; later runs read it. The record is the check's
    ``to_dict()`` with its summary ``line`` and ``warning``, or ``{"not_checked": why, "line": ...}``.
    """
    key = sha256_strings([diffusion.fingerprint, clf.fingerprint(), repr(settings.steps), repr(settings.t_start),
                          repr(seed)])[:16]
    path = root / "diffusion-checks" / f"{key}.json"
    if path.is_file():
        try:
            record = read_json(path)
        except ValueError:  # a torn file: check again
            record = None
        if isinstance(record, dict) and record.get("key") == key:
            return record
    why_not = domain_check_skipped(settings, min(DOMAIN_CHECK_IMAGES, int(images.shape[0])))
    if why_not is not None:
        return {"not_checked": f"it {why_not}", "line": f"diffusion check: not run (it {why_not})"}
    check: DomainCheck = domain_check(clf, images, diffusion, settings, n=DOMAIN_CHECK_IMAGES, seed=seed)
    record = {"key": key, **check.to_dict(), "line": check.line(), "warning": check.warning(diffusion.path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return record


def _merge_pairs(run_json: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs of a run folder: those of earlier calls with the same settings (other start images), then the new."""
    try:
        old = read_json(run_json)["pairs"] if run_json.is_file() else []
    except (ValueError, KeyError):
        old = []
    seen = {p["hash"] for p in new}
    return [p for p in old if p.get("hash") not in seen] + new


def _write_index(root: Path, ws: Workspace) -> Path:
    """Rebuild ``index.json``, ``index.html`` and ``manifest.json`` from every run's ``run.json``."""
    components: dict[str, list[dict[str, Any]]] = {}
    runs = []
    for path in sorted(root.glob("class_*/l*/*/run.json")):
        try:
            run = read_json(path)
        except ValueError:
            continue
        if run.get("format") != "spurious-counterfactual-run":
            continue
        s = run["settings"]
        rel = path.parent.relative_to(root).as_posix()
        runs.append({"run": rel, "class": s["class"], "class_name": run["class_name"], "component": s["component"],
                     "mode": s["mode"], "norm": s["norm"], "eps": s["eps"], "steps": s["steps"],
                     "engine": s.get("engine", "image"),
                     "pairs": len(run["pairs"]), "created": run["created"], "summary": run["summary"],
                     "sheet": f"{rel}/index.html"})
        components.setdefault(f"{s['class']}/{s['component']}", []).extend(run["pairs"])
    index = {"format": INDEX_FORMAT, "version": 1, "model_fingerprint": ws.model_fingerprint,
             "components": components}
    write_json(root / "index.json", index)
    index_page(root / "index.html", runs)
    plan = read_json(root / "plan.json")
    write_json(root / "manifest.json", {**plan, "package_version": __version__, "created": utc_now(),
                                        "model_spec": ws.model_spec, "runs": runs})
    return root / "index.json"

