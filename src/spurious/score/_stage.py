"""The ``score`` stage: one forward pass per image and model, cached predictions, metrics, outputs."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard, cast

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spurious import __version__
from spurious._checks import positive_int
from spurious._dist import all_sum, init_distributed, on_main_rank, resolve_device
from spurious._io import (
    JSONDict,
    atomic_path,
    read_json,
    sha256_strings,
    slug,
    utc_now,
    write_json,
)
from spurious.agreement import label_agreement, report_agreement
from spurious.datasets import collate_images
from spurious.datasets._dataset import BlockBatches

from ._inputs import (
    Benchmark,
    ClassMapSpec,
    DatasetSpec,
    check_paths,
    class_map_for,
    class_map_hash,
    label_model,
    resolve_inputs,
)
from ._result import ClassScore, GroupScore, Preds, ScoreResult, ScoreRow
from .metrics import average_precision, class_extension_rate, roc_auc

if TYPE_CHECKING:
    from spurious.datasets import ImageDataset
    from spurious.datasets._dataset import Transform
    from spurious.fix import FixHead, SpuFix
    from spurious.models import Classifier, Preprocessing

    ModelArg = str | Classifier | SpuFix
    FixArg = str | os.PathLike[str] | FixHead | SpuFix

__all__ = ["ClassScore", "ScoreResult", "ScoreRow", "score"]

log = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("model", "reference")
ORIGINAL = "original"
_CACHE_FORMAT = 1
_TOPK = 5
_INPUTS = ("spurious", "val")

STATUS_OK = "ok"
STATUS_NO_SPURIOUS = "skipped: no spurious images"
STATUS_NO_VAL = "skipped: no validation images"
STATUS_UNMAPPED = "skipped: class not among the model's outputs"


# ----------------------------------------------------------------------------- transforms
class ReferenceResizeCrop:
    """The reference protocol for spurious images: resize the shorter side to the input size, center crop.

    What the reference code fed its models (torchvision ``Resize(S)`` then ``CenterCrop(S)`` on a
    PIL image, ``S`` the square input size): the aspect ratio is kept and nothing is stretched; it
    differs from a model's own preprocessing only in resizing to the input size itself instead of
    ``resize_size`` (no border cut off by a ``crop_pct`` < 1). A non-square input ``(H, W)`` gets the
    smallest aspect-preserving resize that covers it (for ``H = W`` exactly ``Resize(H)``), then the
    center ``(H, W)`` crop. Turns an RGB PIL image into a float32 ``[3, H, W]`` tensor in ``[0, 1]``
    with the classifier's interpolation (normalisation happens inside the classifier).
    """

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.size = tuple(int(s) for s in preprocessing.input_size)
        self.interpolation = str(preprocessing.interpolation)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        h, w = self.size
        width, height = img.size
        if width * h >= height * w:  # wider than the input: the height fits, as torchvision's int(S * long / short)
            new_w, new_h = int(h * width / height), h
        else:
            new_w, new_h = w, int(w * height / width)
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), Image.Resampling[self.interpolation.upper()])
        top, left = round((new_h - h) / 2.0), round((new_w - w) / 2.0)  # torchvision's center_crop
        img = img.crop((left, top, left + w, top + h))
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def _transform(clf: Classifier, protocol: str, input_name: str) -> tuple[Transform, str]:
    pre = clf.preprocessing
    if protocol == "reference" and input_name == "spurious":
        # "kind" names the transform: caches of the old stretching protocol ("resize") are not reused
        key: JSONDict = {"kind": "resize-short-side+center-crop", "size": list(pre.input_size),
               "interpolation": pre.interpolation}
        return ReferenceResizeCrop(pre), json.dumps(key, sort_keys=True)
    key = {"kind": "resize+crop", "size": list(pre.input_size), "resize": pre.resize_size,
           "interpolation": pre.interpolation}
    return pre, json.dumps(key, sort_keys=True)


# ----------------------------------------------------------------------------- models and fixes
@dataclass
class _Head:
    module: nn.Module
    name: str
    key: str


@dataclass
class _Entry:
    clf: Classifier
    spec: str
    fingerprint: str
    cmap: np.ndarray
    cmap_how: str
    folder: Path
    heads: list[_Head] = field(default_factory=list)
    computed: int = 0


def _spec_slug(spec: str) -> str:
    """A folder name for a spec: ``demo:robust@/x/ckpt.pt`` -> ``demo-robust@ckpt``."""
    arch, _, ckpt = spec.partition("@")
    return slug(arch if not ckpt else f"{arch}@{Path(ckpt).stem}", keep="._@-")


def _head_key(head: nn.Module) -> str:
    h = hashlib.sha256()
    h.update(str(getattr(head, "name", "")).encode())
    h.update(str(getattr(head, "model_fingerprint", "")).encode())
    h.update(json.dumps([int(c) for c in getattr(head, "classes", [])]).encode())
    for name, tensor in sorted(head.state_dict().items()):
        t = tensor.detach().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _is_spufix(obj: object) -> TypeGuard[SpuFix]:
    from spurious.models import Classifier

    return isinstance(obj, nn.Module) and isinstance(getattr(obj, "classifier", None), Classifier) \
        and isinstance(getattr(obj, "head", None), nn.Module)


def _load_fix_heads(fixes: FixArg | Sequence[FixArg]) -> list[nn.Module]:
    if isinstance(fixes, (str, os.PathLike, nn.Module)):
        fixes = [fixes]
    heads: list[nn.Module] = []
    for f in fixes:
        head: nn.Module
        if isinstance(f, (str, os.PathLike)):
            try:
                from spurious.fix import load_fix
            except ImportError as err:  # pragma: no cover - the fix stage ships with the package
                raise RuntimeError("fix artifacts need the spurious.fix module") from err
            head = load_fix(f)
        elif _is_spufix(f):
            head = f.head
        elif isinstance(f, nn.Module):
            head = f
        else:
            raise TypeError(f"a fix must be a fix artifact path or a FixHead module, got {type(f).__name__}")
        for attr in ("model_fingerprint", "name"):
            if not isinstance(getattr(head, attr, None), str):
                raise TypeError(f"the fix head {type(head).__name__} has no string attribute {attr!r}; "
                                "expected a spurious.fix.FixHead")
        heads.append(head)
    return heads


# ----------------------------------------------------------------------------- chunked cache
def _chunk_file(folder: Path, chunk: int, variant_key: str | None) -> Path:
    return folder / (f"c{chunk:05d}.npz" if variant_key is None else f"c{chunk:05d}.fix-{variant_key}.npz")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            # np.savez stub: mypy cannot rule out an "allow_pickle" key (bool) in **arrays; keys are array names
            np.savez(fh, **arrays)  # type: ignore[arg-type]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _plan_dir(entry: _Entry, input_name: str, ds: ImageDataset, tkey: str, chunk_size: int) -> tuple[Path, JSONDict]:
    plan = {
        "format": _CACHE_FORMAT,
        "model": {"spec": entry.spec, "fingerprint": entry.fingerprint},
        "data": {"fingerprint": ds.fingerprint(), "num_records": len(ds), "kind": ds.kind},
        "transform": json.loads(tkey),
        "class_map": class_map_hash(entry.cmap),
        "chunk_size": chunk_size,
        "topk": min(_TOPK, int(entry.clf.num_classes)),
    }
    digest = sha256_strings([json.dumps(plan, sort_keys=True)])
    return entry.folder / f"{input_name}-{digest}", plan


@dataclass
class _Job:
    entry: _Entry
    folder: Path
    todo: dict[int, list[str | None]]  # chunk -> variant keys (None = original) to write


@dataclass
class _Prepared:
    """A job with its class map on the model's device."""

    job: _Job
    device: torch.device
    cmap: torch.Tensor
    cols: torch.Tensor | None  # model outputs that the class map uses (None: all, in order)
    bench_of_col: torch.Tensor | None  # benchmark class of each of those outputs
    k: int

    @classmethod
    def of(cls, job: _Job) -> _Prepared:
        dev = job.entry.clf.device
        cmap = job.entry.cmap
        full = len(cmap) == int(job.entry.clf.num_classes) and bool((cmap == np.arange(len(cmap))).all())
        mapped = np.flatnonzero(cmap >= 0)
        return cls(job, dev, torch.as_tensor(cmap, device=dev),
                   None if full else torch.as_tensor(cmap[mapped], device=dev),
                   None if full else torch.as_tensor(mapped, device=dev),
                   min(_TOPK, int(job.entry.clf.num_classes)))


def _stats(logits: torch.Tensor, labels: torch.Tensor, cmap_t: torch.Tensor, cols: torch.Tensor | None,
           bench_of_col: torch.Tensor | None, k: int) -> dict[str, np.ndarray]:
    """Per image: log p(own class), benchmark-space prediction, top-k outputs and probabilities."""
    lp = torch.log_softmax(logits.double(), dim=1)
    own = cmap_t[labels]
    logp = lp.gather(1, own.clamp(min=0).unsqueeze(1)).squeeze(1)
    logp = torch.where(own >= 0, logp, torch.full_like(logp, float("nan")))
    if cols is None:
        pred = logits.argmax(dim=1)
    else:
        pred = bench_of_col[logits.index_select(1, cols).argmax(dim=1)]  # type: ignore[index]
    top = lp.topk(k, dim=1)
    return {"logp": logp.float().cpu().numpy(), "pred": pred.to(torch.int32).cpu().numpy(),
            "top_index": top.indices.to(torch.int32).cpu().numpy(),
            "top_prob": top.values.exp().float().cpu().numpy()}


def _run_group(jobs: list[_Job], ds: ImageDataset, chunk_ranges: dict[int, tuple[int, int]], batch_size: int,
               num_workers: int, progress: bool, desc: str) -> int:
    """Run every chunk that some job of this group needs; decode each batch once for all of them."""
    chunks = sorted({c for job in jobs for c in job.todo})
    if not chunks:
        return 0
    sampler = BlockBatches([(c, *chunk_ranges[c]) for c in chunks], batch_size)
    on_cuda = any(j.entry.clf.device.type == "cuda" for j in jobs)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_images,
                        pin_memory=on_cuda, prefetch_factor=4 if num_workers > 0 else None)
    labels_all = torch.from_numpy(ds.labels())
    remaining = {c: chunk_ranges[c][1] - chunk_ranges[c][0] for c in chunks}
    buffers: dict[tuple[int, int], dict[str | None, dict[str, list[np.ndarray]]]] = {}
    failed: dict[int, list[tuple[int, str]]] = {}
    rows: dict[int, list[np.ndarray]] = {}
    prepared = [_Prepared.of(j) for j in jobs]
    bar = tqdm(total=sum(remaining.values()), unit="img", desc=desc, disable=not progress, dynamic_ncols=True,
               smoothing=0.05)
    n_images = 0
    try:
        for (images, indices, bad), chunk in zip(loader, sampler.block_of_batch, strict=False):
            failed.setdefault(chunk, []).extend(bad)
            rows.setdefault(chunk, []).append(indices.numpy().astype(np.int64))
            if len(indices):
                labels = labels_all[indices]
                for p in prepared:
                    wanted = p.job.todo.get(chunk)
                    if wanted is None:
                        continue
                    x = images.to(p.device, non_blocking=True)
                    lab = labels.to(p.device)
                    phi, logits = p.job.entry.clf.phi_and_logits(x)
                    outs: dict[str | None, torch.Tensor] = {None: logits.float()}
                    for h in p.job.entry.heads:
                        if h.key in wanted:
                            outs[h.key] = h.module(phi, logits).float()
                    buf = buffers.setdefault((id(p.job), chunk), {})
                    for key, out in outs.items():
                        for name, arr in _stats(out, lab, p.cmap, p.cols, p.bench_of_col, p.k).items():
                            buf.setdefault(key, {}).setdefault(name, []).append(arr)
                    p.job.entry.computed += len(indices)
                n_images += len(indices)
            n = len(indices) + len(bad)
            remaining[chunk] -= n
            bar.update(n)
            if remaining[chunk] == 0:
                chunk_rows = np.concatenate(rows.pop(chunk))
                chunk_failed = failed.pop(chunk, [])
                for p in prepared:
                    if chunk in p.job.todo:
                        _write_chunk(p.job, chunk, chunk_rows, chunk_failed, buffers.pop((id(p.job), chunk), {}), p.k)
    finally:
        bar.close()
    return n_images


def _write_chunk(job: _Job, chunk: int, rows: np.ndarray, failed: list[tuple[int, str]],
                 buf: dict[str | None, dict[str, list[np.ndarray]]], k: int) -> None:
    empty = {"logp": np.zeros(0, np.float32), "pred": np.zeros(0, np.int32),
             "top_index": np.zeros((0, k), np.int32), "top_prob": np.zeros((0, k), np.float32)}
    # write the fix variants first: the original chunk file marks the chunk as started by a finished run
    for key in sorted(job.todo[chunk], key=lambda v: v is None):
        parts = buf.get(key, {})
        arrays = {name: (np.concatenate(parts[name]) if name in parts else empty[name]) for name in empty}
        if key is None:
            arrays["rows"] = rows
            arrays["failed_rows"] = np.array([i for i, _ in failed], dtype=np.int64)
            arrays["failed_reasons"] = np.array([r for _, r in failed], dtype=np.str_) if failed \
                else np.zeros(0, dtype="<U1")
        _save_npz(_chunk_file(job.folder, chunk, key), arrays)


# ----------------------------------------------------------------------------- assembling
def _load_preds(folder: Path, n_records: int, chunk_size: int, key: str | None, k: int) -> Preds:
    ok = np.zeros(n_records, bool)
    logp = np.full(n_records, np.nan, np.float32)
    pred = np.full(n_records, -1, np.int64)
    top_index = np.full((n_records, k), -1, np.int64)
    top_prob = np.zeros((n_records, k), np.float32)
    failed: list[tuple[int, str]] = []
    for chunk in range(math.ceil(n_records / chunk_size)):
        base_path = _chunk_file(folder, chunk, None)
        if not base_path.is_file():
            raise RuntimeError(f"cached predictions {base_path} are missing after the run (was a process killed?); "
                               "re-run the same command to compute them")
        base = _load_npz(base_path)
        data = base if key is None else _load_npz(_chunk_file(folder, chunk, key))
        rows = base["rows"]
        ok[rows] = True
        logp[rows] = data["logp"]
        pred[rows] = data["pred"]
        top_index[rows] = data["top_index"]
        top_prob[rows] = data["top_prob"]
        failed.extend(zip(base["failed_rows"].tolist(), base["failed_reasons"].tolist(), strict=False))
    return Preds(ok, logp, pred, top_index, top_prob, failed)


@dataclass
class _Groups:
    """The groups file matched to the validation images: group index per record (``-1``: not listed)."""

    path: str
    names: list[str]
    group_class: list[int]
    of: np.ndarray


def _open_groups(groups: str | os.PathLike[str], bench: Benchmark) -> _Groups:
    """Read the groups file and match it to the validation images by id or absolute path (never by order)."""
    from spurious.groups import match_groups, read_groups

    table = read_groups(groups, bench.class_names)
    val = bench.val
    records = [val.record(i) for i in range(len(val))]
    of = match_groups(table, [r.id for r in records], val.labels(), what=f"the validation set {val.spec}",
                      paths=[r.path for r in records])
    return _Groups(table.path, table.names, table.group_class, of)


def _group_scores(label: str, variant: str, entry: _Entry, val: Preds, labels: np.ndarray,
                  groups: _Groups) -> tuple[list[GroupScore], dict[str, float | str]]:
    from spurious.groups import group_metrics

    scored = val.ok & (entry.cmap[labels] >= 0) & (groups.of >= 0)
    m = group_metrics(val.pred == labels, np.where(scored, groups.of, -1), groups.names)
    rows = [GroupScore(label, variant, name, groups.group_class[g], int(m.counts[g]), float(m.accuracy[g]))
            for g, name in enumerate(groups.names)]
    return rows, {"worst_group_accuracy": m.worst_group_accuracy, "worst_group": m.worst_group,
                  "mean_accuracy": m.mean_accuracy, "group_average_accuracy": m.group_average_accuracy}


def _metrics(label: str, entry: _Entry, variant: str, spu: Preds, val: Preds, bench: Benchmark,
             cached: bool) -> tuple[ScoreRow, list[ClassScore]]:
    spu_labels, val_labels = bench.spurious.labels(), bench.val.labels()
    per_class = []
    for k in bench.classes:
        neg_rows = np.flatnonzero(spu.ok & (spu_labels == k))
        pos_rows = np.flatnonzero(val.ok & (val_labels == k))
        status = STATUS_OK
        if entry.cmap[k] < 0:
            status = STATUS_UNMAPPED
        elif neg_rows.size == 0:
            status = STATUS_NO_SPURIOUS
        elif pos_rows.size == 0:
            status = STATUS_NO_VAL
        auc = ap = ext = float("nan")
        if status == STATUS_OK:
            pos, neg = val.logp[pos_rows], spu.logp[neg_rows]
            auc, ap = roc_auc(pos, neg), average_precision(pos, neg)
            ext = class_extension_rate(spu.pred[neg_rows], k)
        per_class.append(ClassScore(label, variant, k, bench.class_names[k], int(pos_rows.size), int(neg_rows.size),
                                    auc, ap, ext, status))
    scored = [c for c in per_class if c.status == STATUS_OK]
    has_class = val.ok & (entry.cmap[val_labels] >= 0)
    acc = float(np.mean(val.pred[has_class] == val_labels[has_class])) if has_class.any() else float("nan")
    agreement = label_agreement(val_labels[has_class], val.pred[has_class])  # from the cached predictions
    present = np.unique(val_labels[val.ok])
    row = ScoreRow(
        model=label, spec=entry.spec, variant=variant, fingerprint=entry.fingerprint,
        mauc=float(np.mean([c.auc for c in scored])) if scored else float("nan"),
        map=float(np.mean([c.ap for c in scored])) if scored else float("nan"),
        mean_extension=float(np.mean([c.extension for c in scored])) if scored else float("nan"),
        val_accuracy=acc, val_complete=bool(present.size == len(bench.class_names)),
        classes_scored=len(scored), classes_skipped=len(per_class) - len(scored),
        spurious_images=int(spu.ok.sum()), val_images=int(val.ok.sum()),
        failed_images=len(spu.failed) + len(val.failed), class_map=entry.cmap_how, cached=cached,
        agreement=agreement,
    )
    return row, per_class


def _warn_skipped(per_class: list[ClassScore], first_label: str, bench: Benchmark) -> None:
    for status in (STATUS_NO_SPURIOUS, STATUS_NO_VAL):
        skipped = [c for c in per_class if c.model == first_label and c.status == status]
        if skipped:
            shown = ", ".join(f"{c.class_index} ({c.class_name})" for c in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            warnings.warn(f"{len(skipped)} of {len(bench.classes)} requested classes have "
                          f"{status[len('skipped: '):]} and are left out of the means: {shown}{more} "
                          f"(marked '{status}' in per_class.csv)", stacklevel=3)
    by_model: dict[str, int] = {}
    for c in per_class:
        if c.status == STATUS_UNMAPPED:
            by_model[c.model] = by_model.get(c.model, 0) + 1
    for model, n in by_model.items():
        warnings.warn(f"{model}: {n} of {len(bench.classes)} classes are not among the model's outputs (class map) "
                      "and are left out of its means", stacklevel=3)


# ----------------------------------------------------------------------------- the stage
def check_out_folder(out: Path, stage: str, what: str, *, ignore: frozenset[str] = frozenset()) -> None:
    """Refuse an output folder that is a file, or that holds something other than this stage's output.

    A missing or empty folder (or one holding only ``ignore``) is fine; otherwise its ``manifest.json``
    must name ``stage`` (a rerun of the same stage resumes there). ``what`` names the stage's output in
    the message (``"a score output folder (no manifest.json of the score stage)"``).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} is a file; pass a folder (--out DIR)")
    if not out.is_dir():
        return
    entries = {p.name for p in out.iterdir()}
    if not entries or entries <= ignore:
        return
    manifest = out / "manifest.json"
    found = None
    if manifest.is_file():
        try:
            found = read_json(manifest).get("stage")
        except (ValueError, OSError):
            found = None
    if found != stage:
        raise ValueError(f"{out} exists and is not {what}; pass an empty or new folder as out (--out DIR)")


def _check_out(out: Path) -> None:
    check_out_folder(out, "score", "a score output folder (no manifest.json of the score stage)",
                     ignore=frozenset({"inputs"}))


def _resolve_models(
    models: ModelArg | Sequence[ModelArg], device: str | torch.device | None, pretrained: bool,
    preprocessing: Preprocessing | Mapping[str, object] | None, model_config: str | os.PathLike[str] | None,
) -> tuple[list[Classifier], list[list[nn.Module]], list[tuple[Classifier, torch.device, bool]]]:
    """Load specs (with the preprocessing options), accept Classifier / SpuFix objects.

    Returns the classifiers, the inline fix heads and what to restore of caller-owned classifiers.
    """
    from spurious.models import Classifier, load_model

    if isinstance(models, (str, Classifier)) or _is_spufix(models):
        models = [models]
    if not isinstance(models, Sequence) or not models:
        raise ValueError("models must be a non-empty list of model specs or Classifier objects")
    specs = [m.strip() for m in models if isinstance(m, str)]
    dup = sorted({s for s in specs if specs.count(s) > 1})
    if dup:
        raise ValueError(f"model {dup[0]!r} is given twice; give each model once")
    follow = device is None or device == "auto"
    dev = resolve_device(device)
    bad = [m for m in models if not (isinstance(m, (str, Classifier)) or _is_spufix(m))]
    if bad:
        raise TypeError(f"a model must be a spec string or a spurious.models.Classifier, got {type(bad[0]).__name__}")
    if (preprocessing is not None or model_config is not None) and not specs:
        raise ValueError("preprocessing and model_config apply to models given as specs, and every model here is a "
                         "Classifier object; set its preprocessing instead (Classifier.set_preprocessing)")
    clfs, inline, restore = [], [], []
    try:
        for m in models:
            heads: list[nn.Module] = []
            if _is_spufix(m):
                heads = [m.head]
                m = m.classifier
            if isinstance(m, str):
                clf = load_model(m, pretrained=pretrained, device=dev, preprocessing=preprocessing,
                                 config=model_config).eval()
            else:
                clf = cast("Classifier", m)  # not a spec, and a SpuFix was unwrapped above
                restore.append((clf, clf.device, clf.training))
                if not follow:
                    clf.to(dev)
                clf.eval()
            clfs.append(clf)
            inline.append(heads)
    except BaseException:
        _restore(restore)
        raise
    return clfs, inline, restore


def score(
    models: ModelArg | Sequence[ModelArg],
    *,
    spurious: DatasetSpec,
    val: DatasetSpec,
    out: str | os.PathLike[str] = "score-out",
    val_labels: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    classes: Sequence[int | str] | None = None,
    class_map: ClassMapSpec = None,
    protocol: str = "model",
    fixes: FixArg | Sequence[FixArg] = (),
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = "auto",
    pretrained: bool = True,
    chunk_size: int = 4096,
    progress: bool = True,
    plots: bool = True,
    plot_models: Sequence[str] | None = None,
    preprocessing: Preprocessing | Mapping[str, object] | None = None,
    model_config: str | os.PathLike[str] | None = None,
    strict: bool = False,
    groups: str | os.PathLike[str] | None = None,
) -> ScoreResult:
    """Spurious score of one or more classifiers (DESIGN.md "Math": spurious score).

    For every requested class ``k`` and every model (and SpuFix variant): positives are the
    validation images of class ``k``, negatives the spurious images of class ``k``, and the score
    of an image is the softmax probability ``p_k(x)`` of class ``k`` over all the model's outputs
    (for a class map: of the output mapped to ``k``). Reports per class the ROC-AUC
    (:func:`~spurious.score.roc_auc`), the average precision (:func:`~spurious.score.average_precision`,
    what the reference code computed) and the class-extension rate (spurious images of ``k``
    predicted as ``k``), their means over the classes (mAUC, mAP), and the top-1 accuracy on the
    validation images. Classes without spurious or without validation images are left out of the
    means with a warning and marked in the per-class table.

    One label space: class folders and file lists of validation images are read in the label space
    of the first model with class names (folders matched by name: exact, ignoring case and
    separators, wnid, ``NN_name`` such as ``00_star``, or index), so the benchmark's classes carry
    the model's names; ImageNet wnid folders and a flat folder with a labels file are ImageNet-1k.
    The sanity figure of every row is its top-1 agreement with the validation labels against
    chance (Cohen's kappa, :mod:`spurious.agreement`), taken from the cached predictions; a
    suspect model gets a warning (``strict``: an error).

    Every image costs one forward pass per model; models with the same preprocessing share the
    decoded batch, and the SpuFix variants of a model reuse its forward pass (``phi`` and logits).
    Predictions are cached per model under ``OUT/cache/`` in chunks of ``chunk_size`` images, so an
    interrupted or repeated run (also with more models) recomputes nothing that is cached. Under
    ``torchrun`` every rank scores its share of the chunks and rank 0 writes the results.

    Args:
        models: model specs (``load_model``), :class:`~spurious.models.Classifier` objects or
            ``spurious.fix.SpuFix`` objects (scored as the original and the fixed variant).
        spurious: a folder in the published Spurious ImageNet layout (sub-folders
            ``<a>_<b>_<class>_..._<component>``; any subset of classes; a planted benchmark), or an
            ``ImageDataset``.
        val: validation images: class folders (ImageNet wnid folders, or any class folders such as
            the planted ``val/``), a ``list:`` file with labels, a flat folder together with
            ``val_labels``, or an ``ImageDataset``.
        out: output folder (new, empty, or an earlier score output: its caches are reused).
        val_labels: labels of a flat validation folder: ImageNet's ``LOC_val_solution.csv`` or lines
            ``filename label`` (a wnid, a class index or a class name).
        class_names: names of the benchmark label space; default: ImageNet-1k for wnid folders and
            flat ImageNet val; for other class folders and file lists the class names of the first
            model that has them (``Classifier.has_class_names``; no class map given), else the sorted
            folder names. A spurious folder's class token indexes this list.
        classes: benchmark classes to score (indices, names or wnids); default: every class with
            spurious images.
        class_map: how benchmark class ``k`` maps to a model output: ``None``/``"auto"`` (identity when
            the model has as many outputs as the benchmark has classes, else by wnid for an ImageNet
            benchmark, e.g. ImageNet-21k heads), ``"identity"``, ``"wnid"``, ``"names"`` (equal class
            names), a dict ``{class: output}``, a list (one output per class, -1 = none) or a JSON
            file holding either. A class map other than ``"auto"`` is stated in the validation
            set's own classes, so class folders then keep their sorted folder names.
        protocol: ``"model"`` (each model's own preprocessing for both inputs) or ``"reference"``
            (spurious images as the reference code fed them: the shorter side resized to the input
            size, aspect ratio kept, then the center crop, :class:`ReferenceResizeCrop`; validation
            images with the model's preprocessing).
        fixes: SpuFix artifacts (paths for ``spurious.fix.load_fix``) or ``FixHead`` modules; each
            adds a row ``"<spec> + <name>"`` for every model with its ``model_fingerprint``.
        batch_size: images per forward pass (default 64 on a GPU, 16 on the CPU).
        num_workers: decoding processes (default :func:`spurious.extract.default_num_workers`).
        device: ``"auto"`` (a GPU if any; a ``Classifier`` object stays where it is), ``"cpu"``,
            ``"cuda:N"``. A moved ``Classifier`` is moved back afterwards.
        pretrained: load hub weights for ``torchvision:``/``timm:`` specs.
        chunk_size: images per cached chunk (the unit of resumption and of work per rank).
        progress: progress bars on stderr.
        plots: write the PNG plots and the HTML report.
        plot_models: row labels (specs, or ``"<spec> + <fix name>"``) drawn in the class-wise AUC bars;
            the first one also gets the image strips. Default: the first four rows.
        preprocessing: preprocessing options for every model given as a spec (``load_model``'s
            ``preprocessing=``: a ``Preprocessing`` or some of its fields as a dict); checkpoints
            that differ state theirs in a config file beside them. Not applied to ``Classifier``
            objects.
        model_config: a model config file for every model given as a spec (``load_model``'s
            ``config=``); default: the one beside each checkpoint.
        strict: raise :class:`~spurious.agreement.AgreementError` (after writing the results) when a
            model does not agree with the validation labels, instead of warning.
        groups: a groups file (CSV or JSONL: ``image``, ``class``, ``group`` or attribute columns;
            :mod:`spurious.groups`) of validation images, matched by image id or absolute path: adds
            per-group accuracy, worst-group, mean and group-average accuracy to every row (and
            ``groups.csv``). Every image it lists must be a validation image of its class; images
            it does not list are left out of the group metrics only.

    Returns:
        a :class:`ScoreResult`; also written to ``OUT/scores.json``, ``scores.csv``, ``scores.md``,
        ``per_class.csv``, ``report.html`` (+ ``plots/*.png``) and ``manifest.json``.

    Raises:
        ValueError: an unknown model spec (with the closest names), a model given twice, a fix that
            matches no model, a bad class map, class or protocol, a folder that is not a score
            output, an invalid dataset layout, validation folders or labels that match none or
            several of the model's class names, preprocessing options without a model spec, or a
            groups file that does not match the validation images (how many and which).
        AgreementError: ``strict`` and a model's top-1 predictions do not agree with the
            validation labels (Cohen's kappa below ``spurious.agreement.KAPPA_MIN``).
        FileNotFoundError: a dataset folder, labels file, class map, groups file or fix artifact does not exist.
        TypeError: an argument of the wrong type.
    """
    t0 = time.perf_counter()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    chunk_size = None if chunk_size is None else positive_int("chunk_size", chunk_size)
    batch_size = None if batch_size is None else positive_int("batch_size", batch_size)
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    out_dir = Path(os.path.expanduser(os.fspath(out)))
    _check_out(out_dir)
    check_paths(spurious, val, val_labels)
    if groups is not None and not Path(os.path.expanduser(os.fspath(groups))).is_file():
        raise FileNotFoundError(f"groups file {os.fspath(groups)} does not exist")
    heads = _load_fix_heads(fixes)
    clfs, inline_heads, restore = _resolve_models(models, device, pretrained, preprocessing, model_config)
    try:
        namer, note = label_model(clfs, class_map)
        bench = resolve_inputs(spurious, val, val_labels=val_labels, class_names=class_names, classes=classes,
                               inputs_dir=out_dir / "inputs", namer=namer, note=note)
        matched = None if groups is None else _open_groups(groups, bench)
        return _score(clfs, inline_heads, heads, bench, out_dir, class_map=class_map, protocol=protocol,
                      batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size, progress=progress,
                      plots=plots, plot_models=plot_models, strict=strict, t0=t0, args={
                          "models": [c.spec for c in clfs], "spurious": bench.spurious.spec, "val": bench.val.spec,
                          "val_labels": None if val_labels is None else os.fspath(val_labels),
                          "classes": bench.classes, "class_map": class_map if isinstance(class_map, (str, type(None)))
                          else "explicit", "protocol": protocol, "batch_size": batch_size, "chunk_size": chunk_size,
                          "preprocessing": _jsonable_preprocessing(preprocessing),
                          "model_config": None if model_config is None else os.fspath(model_config),
                          "strict": strict, "groups": None if groups is None else os.fspath(groups)},
                      matched=matched)
    finally:
        _restore(restore)


def _jsonable_preprocessing(preprocessing: Preprocessing | Mapping[str, object] | None) -> JSONDict | None:
    """The stated preprocessing options, for the manifest."""
    if preprocessing is None:
        return None
    return dict(preprocessing) if isinstance(preprocessing, Mapping) else preprocessing.to_dict()


def _restore(restore: list[tuple[Classifier, torch.device, bool]]) -> None:
    """Put caller-owned classifiers back on their device and in their train/eval mode."""
    for clf, dev, training in restore:
        clf.to(dev)
        clf.train(training)


def _score(clfs: list[Classifier], inline_heads: list[list[nn.Module]], heads: list[nn.Module], bench: Benchmark,
           out: Path, *, class_map: ClassMapSpec, protocol: str, batch_size: int | None, num_workers: int | None,
           chunk_size: int, progress: bool, plots: bool, plot_models: Sequence[str] | None, strict: bool,
           t0: float, args: JSONDict, matched: _Groups | None = None) -> ScoreResult:
    from spurious.extract import default_num_workers

    entries: list[_Entry] = []
    seen: dict[str, str] = {}
    for clf in clfs:
        fp = clf.fingerprint()
        if seen.get(clf.spec) == fp:
            raise ValueError(f"model {clf.spec!r} (fingerprint {fp}) is given twice; give each model once")
        if clf.spec in seen:
            raise ValueError(f"two different models have the spec {clf.spec!r} (fingerprints {seen[clf.spec]} and "
                             f"{fp}); give them distinct Classifier.spec values so that their rows can be told apart")
        seen[clf.spec] = fp
        cmap, how = class_map_for(clf, class_map, bench)
        entries.append(_Entry(clf, clf.spec, fp, cmap, how, out / "cache" / f"{_spec_slug(clf.spec)}-{fp}"))
    # fix heads: every head applies to every model with its fingerprint
    for head in heads:
        targets = [e for e in entries if e.fingerprint == head.model_fingerprint]
        if not targets:
            given = ", ".join(f"{e.spec} ({e.fingerprint})" for e in entries)
            raise ValueError(f"the fix {head.name!r} was made for the model with fingerprint {head.model_fingerprint} "
                             f"({getattr(head, 'model_spec', '?')}), which is not among the models: {given}")
    for entry, own in zip(entries, inline_heads, strict=False):
        for head in [*own, *[h for h in heads if h.model_fingerprint == entry.fingerprint]]:
            if head.model_fingerprint != entry.fingerprint:
                raise ValueError(f"the fix {head.name!r} does not belong to {entry.spec!r} (fingerprint "
                                 f"{head.model_fingerprint} vs {entry.fingerprint})")
            head_key = _head_key(head)
            if any(h.key == head_key for h in entry.heads):
                continue
            names = {h.name for h in entry.heads}
            name, n = str(head.name), 2
            while name in names:
                name, n = f"{head.name} #{n}", n + 1
            module = copy.deepcopy(head).to(entry.clf.device).eval()
            entry.heads.append(_Head(module, name, head_key))

    any_cuda = any(e.clf.device.type == "cuda" for e in entries)
    info = init_distributed(entries[0].clf.device)
    bs = batch_size if batch_size is not None else (64 if any_cuda else 16)
    workers = default_num_workers() if num_workers is None else num_workers
    on_main_rank(lambda: _write_manifest(out, entries, bench, args, status="running"))

    # ---- compute what is not cached (this rank's chunks only)
    images_computed = 0
    datasets = {"spurious": bench.spurious, "val": bench.val}
    folders: dict[tuple[int, str], Path] = {}
    with torch.inference_mode():
        for input_name in _INPUTS:
            base = datasets[input_name]
            n = len(base)
            n_chunks = math.ceil(n / chunk_size)
            ranges = {c: (c * chunk_size, min((c + 1) * chunk_size, n)) for c in range(n_chunks)}
            mine = [c for c in range(n_chunks) if c % info.world_size == info.rank]
            groups: dict[str, tuple[Transform, list[_Job]]] = {}
            for i, entry in enumerate(entries):
                transform, tkey = _transform(entry.clf, protocol, input_name)
                folder, plan = _plan_dir(entry, input_name, base, tkey, chunk_size)
                folders[(i, input_name)] = folder
                folder.mkdir(parents=True, exist_ok=True)
                if info.is_main and not (folder / "plan.json").is_file():  # what the folder holds, for people
                    write_json(folder / "plan.json", plan)
                todo: dict[int, list[str | None]] = {}
                for c in mine:
                    keys: list[str | None] = [None] + [h.key for h in entry.heads]
                    missing = [key for key in keys if not _chunk_file(folder, c, key).is_file()]
                    if missing:
                        todo[c] = keys  # the forward pass is needed anyway: (re)write every variant
                groups.setdefault(tkey, (transform, []))[1].append(_Job(entry, folder, todo))
            for transform, jobs in groups.values():
                n_models = len([j for j in jobs if j.todo])
                images_computed += _run_group(
                    jobs, base.with_transform(transform), ranges, bs, workers, progress and info.is_main,
                    f"score {input_name} ({n_models} model{'s' if n_models != 1 else ''})")
    images_all = all_sum(images_computed)  # also a barrier: every rank's chunks are written
    computed_any = [all_sum(e.computed) > 0 for e in entries]
    if not info.is_main:
        return ScoreResult(str(out), [], [], bench.classes, bench.class_names, protocol, {}, images_computed,
                           round(time.perf_counter() - t0, 3), info.world_size, False)

    # ---- metrics from the caches
    rows: list[ScoreRow] = []
    per_class: list[ClassScore] = []
    preds_for_plots: dict[str, tuple[list[str], Preds]] = {}
    group_rows: list[GroupScore] = []
    failures: dict[str, list[tuple[int, str]]] = {}
    for i, entry in enumerate(entries):
        k = min(_TOPK, int(entry.clf.num_classes))
        variants: list[tuple[str, str | None]] = [(ORIGINAL, None)] + [(h.name, h.key) for h in entry.heads]
        for variant, key in variants:
            spu = _load_preds(folders[(i, "spurious")], len(bench.spurious), chunk_size, key, k)
            vp = _load_preds(folders[(i, "val")], len(bench.val), chunk_size, key, k)
            label = entry.spec if key is None else f"{entry.spec} + {variant}"
            row, classes_ = _metrics(label, entry, variant, spu, vp, bench, cached=not computed_any[i])
            if matched is not None:
                scores_, figures = _group_scores(label, variant, entry, vp, bench.val.labels(), matched)
                group_rows.extend(scores_)
                for name, value in figures.items():
                    setattr(row, name, value)
            rows.append(row)
            per_class.extend(classes_)
            preds_for_plots[label] = (entry.clf.class_names, spu)
            failures.setdefault("spurious", spu.failed)
            failures.setdefault("val", vp.failed)
    _warn_failed(failures, bench)
    if rows:
        _warn_skipped(per_class, rows[0].model, bench)
    result = ScoreResult(str(out), rows, per_class, bench.classes, bench.class_names, protocol,
                         images_computed=images_all, world_size=info.world_size, label_source=bench.label_source,
                         groups=group_rows, groups_file="" if matched is None else matched.path,
                         groups_images=0 if matched is None else int((matched.of >= 0).sum()))
    from ._report import write_outputs

    if plot_models is not None:
        unknown = [m for m in plot_models if m not in preds_for_plots]
        if unknown:
            raise ValueError(f"plot_models: {unknown[0]!r} is not a row; rows: {list(preds_for_plots)}")
    result.paths = write_outputs(result, out, bench, preds_for_plots, plots=plots, plot_models=plot_models)
    result.seconds = round(time.perf_counter() - t0, 3)
    result.paths["manifest"] = str(_write_manifest(out, entries, bench, args, status="complete", result=result))
    write_json(out / "scores.json", result.to_dict())
    for row in rows:
        if row.variant == ORIGINAL:
            report_agreement(row.agreement, what=f"the validation images {bench.val.spec}",
                             hint=f"spurious model {row.spec}", strict=strict)
    return result


def _warn_failed(failures: dict[str, list[tuple[int, str]]], bench: Benchmark) -> None:
    for input_name, failed in failures.items():
        if failed:
            ds = bench.spurious if input_name == "spurious" else bench.val
            i, reason = failed[0]
            warnings.warn(f"{len(failed)} of {len(ds)} {input_name} images could not be decoded and are skipped "
                          f"(e.g. {ds.record(i).id!r}: {reason})", stacklevel=3)


def _write_manifest(out: Path, entries: list[_Entry], bench: Benchmark, args: JSONDict, *, status: str,
                    result: ScoreResult | None = None) -> Path:
    manifest = {
        "stage": "score",
        "format": 1,
        "version": __version__,
        "created": utc_now(),
        "status": status,
        "args": args,
        "models": [{"spec": e.spec, "fingerprint": e.fingerprint, "class_map": e.cmap_how,
                    "num_classes": int(e.clf.num_classes), "class_names_source": e.clf.class_names_source,
                    "preprocessing": e.clf.preprocessing.to_dict(),
                    "preprocessing_source": e.clf.preprocessing_source,
                    "cache": str(e.folder.relative_to(out)),
                    "fixes": [{"name": h.name, "key": h.key} for h in e.heads]} for e in entries],
        "data": {name: {"spec": ds.spec, "kind": ds.kind, "fingerprint": ds.fingerprint(), "num_records": len(ds)}
                 for name, ds in (("spurious", bench.spurious), ("val", bench.val))},
        "label_space": {"num_classes": len(bench.class_names), "imagenet_1k": bench.is_imagenet,
                        "source": bench.label_source, "class_names": bench.class_names},
    }
    if result is not None:
        manifest["outputs"] = {k: str(Path(v).relative_to(out)) if Path(v).is_relative_to(out) else v
                               for k, v in result.paths.items()}
        manifest["seconds"] = result.seconds
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "manifest.json", manifest)
    return out / "manifest.json"
