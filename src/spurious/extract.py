"""Stage 1, ``extract``: stream penultimate features ``phi(x)`` and top-k predictions to the store.

Resumable (finished shards are never recomputed; a killed run picks up where it stopped) and
distributed (under ``torchrun`` each rank writes its own shards, rank 0 merges). The store layout
is documented in :mod:`spurious.store`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spurious._checks import positive_int
from spurious._dist import (
    all_sum,
    barrier,
    init_distributed,
    on_main_rank,
    resolve_device,
)
from spurious._io import JSONDict
from spurious.agreement import report_agreement
from spurious.datasets import ImageDataset, collate_images
from spurious.datasets._dataset import BlockBatches
from spurious.store import (
    FeatureStore,
    finalize_store,
    plan_hash,
    shard_done,
    write_shard,
)
from spurious.workspace import Workspace, prepare_artifact_dir

if TYPE_CHECKING:
    from spurious.models import Classifier, Preprocessing

__all__ = ["ExtractResult", "extract", "default_num_workers"]

log = logging.getLogger(__name__)

_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ExtractResult:
    """Summary of one ``extract`` run (also what ``--json`` prints)."""

    path: str
    split: str
    num_records: int
    num_rows: int
    num_failed: int
    num_skipped_files: int
    dim: int
    dtype: str
    shards_total: int
    shards_computed: int
    shards_reused: int
    images_computed: int
    seconds: float
    images_per_second: float
    world_size: int
    complete: bool
    label_source: str = ""
    agreement: JSONDict | None = None

    def to_dict(self) -> JSONDict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """What the CLI prints."""
        from spurious.agreement import Agreement

        lines = [
            f"extracted {self.num_rows} images ({self.num_failed} undecodable skipped, {self.num_skipped_files} "
            f"non-image files ignored) -> {self.path}",
            f"D={self.dim} {self.dtype}; shards computed {self.shards_computed}, reused {self.shards_reused}; "
            f"{self.images_per_second:.1f} images/s",
        ]
        if self.label_source:
            lines.append(f"labels: {self.label_source}")
        if self.agreement is not None:
            lines.append(Agreement.from_dict(self.agreement).describe())
        return lines


def default_num_workers() -> int:
    """Decoding workers: all CPUs this process may use, capped at 8 (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


RANDOM_WEIGHTS_SEED = 0
"""Seed of the random weights of ``pretrained=False`` (``--random-weights``): recorded in the workspace
manifest, so every later stage recreates the same weights and fingerprint without downloading anything."""


def _resolve_model(model: str | Classifier | None, ws_root: Path, pretrained: bool, device: torch.device,
                   preprocessing: Preprocessing | Mapping[str, object] | None,
                   model_config: str | os.PathLike[str] | None) -> Classifier:
    from spurious.models import Classifier, load_model

    if isinstance(model, Classifier):
        return model.to(device).eval()
    if model is None:
        if not (ws_root / "manifest.json").is_file():
            raise ValueError(
                f"{ws_root} is a new workspace: pass the model (--model SPEC, e.g. torchvision:resnet50)"
            )
        ws = Workspace.open(ws_root)
        if preprocessing is None and model_config is None:
            return ws.load_model(device=device, pretrained=pretrained).eval()
        model = ws.model_spec
    if not isinstance(model, str):
        raise TypeError(f"model must be a spec string or a spurious.models.Classifier, got {type(model).__name__}")
    return load_model(model, pretrained=pretrained, device=device, preprocessing=preprocessing,
                      config=model_config, seed=None if pretrained else RANDOM_WEIGHTS_SEED).eval()


def _resolve_data(data: str | os.PathLike[str] | ImageDataset, classifier: Classifier,
                  class_map: str | os.PathLike[str] | Mapping[str, int | str] | None,
                  ) -> tuple[ImageDataset, JSONDict]:
    """Open ``data`` in the model's label space: class folders and list labels are matched by name.

    Returns:
        The dataset and the ``open_dataset`` keywords that re-open it (recorded in the store).
    """
    from spurious import imagenet
    from spurious.datasets import (
        dataset_kind,
        open_dataset,
        read_class_map,
    )

    if isinstance(data, ImageDataset):
        if class_map is not None:
            raise ValueError("class_map applies to a dataset spec or path, not to an ImageDataset; "
                             "build the dataset with the class names you want")
        ds = data if data.transform is not None else data.with_transform(classifier.preprocessing)
        _check_label_range(ds, classifier)
        return ds, ({"class_names": ds.class_names} if ds.kind in ("folder", "list") else {})
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(
            f"data must be a dataset spec/path or a spurious.datasets.ImageDataset, got {type(data).__name__}"
        )
    cmap = read_class_map(class_map) if isinstance(class_map, (str, os.PathLike)) else class_map
    kind = dataset_kind(data)
    names = classifier.class_names if classifier.has_class_names else None
    is_in1k = classifier.class_names_source == "ImageNet-1k"
    if kind in ("folder", "list"):
        if cmap is not None and names is None:
            raise ValueError(f"a class map needs the model's class names, but {classifier.spec!r} has none "
                             "(state them in the checkpoint's config file: \"class_names\": [...])")
        ds = open_dataset(data, transform=classifier.preprocessing, class_names=names, class_map=cmap,
                          wnids=imagenet.wnids() if is_in1k else None)
        # recorded so later stages re-open the same labels (FeatureStore.open_dataset expands the wnids)
        kwargs: JSONDict = {"class_names": names, "class_map": cmap, "wnids": "imagenet-1k" if is_in1k else None}
    else:
        if cmap is not None:
            raise ValueError(f"a class map applies to folder: and list: datasets, not to a {kind!r} dataset")
        if kind == "imagenet" and (classifier.num_classes != imagenet.NUM_CLASSES
                                   or (names is not None and not is_in1k)):
            raise ValueError(
                f"{data} is read as ImageNet wnid folders, labelled with ImageNet-1k indices, but "
                f"{classifier.spec!r} has {classifier.num_classes} classes "
                f"({'its own names' if names is not None else 'without names'}); read it with folder:{data} "
                "to match folders to the model's class names (and --class-map FILE for the rest)"
            )
        own_space = kind == "spurious-imagenet" and classifier.num_classes != imagenet.NUM_CLASSES
        kwargs = {"class_names": classifier.class_names} if own_space else {}
        ds = open_dataset(data, transform=classifier.preprocessing, **kwargs)
    _check_label_range(ds, classifier)
    return ds, {k: v for k, v in kwargs.items() if v is not None}


def _check_label_range(ds: ImageDataset, classifier: Classifier) -> None:
    labels = ds.labels()
    if len(labels) and int(labels.max()) >= classifier.num_classes:
        raise ValueError(
            f"{ds.spec}: label {int(labels.max())} is outside the {classifier.num_classes} classes of "
            f"{classifier.spec!r} ({ds.label_source or 'labels as given'}); match the data to the model's class "
            "names (folder names or --class-map FILE)"
        )


def extract(
    workspace: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | ImageDataset,
    model: str | Classifier | None = None,
    split: str = "train",
    batch_size: int | None = None,
    num_workers: int | None = None,
    dtype: str = "float16",
    topk: int = 5,
    shard_size: int = 4096,
    device: str | torch.device | None = "auto",
    pretrained: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    amp: bool = False,
    preprocessing: Preprocessing | Mapping[str, object] | None = None,
    model_config: str | os.PathLike[str] | None = None,
    class_map: str | os.PathLike[str] | Mapping[str, int | str] | None = None,
    strict: bool = False,
) -> ExtractResult:
    """Extract ``phi(x)`` and top-k predictions of every image of ``data`` into ``WS/features/<split>``.

    Args:
        workspace: workspace directory (created on first use; later runs must use the same model).
        data: dataset spec (``folder:DIR``, ``imagenet:DIR``, ``list:FILE``, ``pool:DIR``,
            ``spurious-imagenet:DIR`` or a bare path) or a :class:`spurious.datasets.ImageDataset`.
        model: model spec (see :func:`spurious.models.load_model`) or a ``Classifier``; defaults
            to the workspace's model.
        split: name of the feature split (``train``, ``val``, ``pool`` ...).
        batch_size: images per forward pass (default: 64 on a GPU, 16 on the CPU, where large
            batches are slower: their activations do not fit in the caches).
        num_workers: decoding processes (default :func:`default_num_workers`; 0 decodes in-process).
        dtype: storage dtype of ``phi``: ``float16`` (default, half the disk) or ``float32``.
        topk: number of top predictions stored per image (capped at the number of classes).
        shard_size: images per shard: the unit of resumption and of work per rank.
        device: ``auto`` (this rank's GPU if any, else CPU), ``cpu``, ``cuda:N``.
        pretrained: load hub weights for ``torchvision:``/``timm:`` specs (needs internet). ``False``:
            random weights drawn with seed :data:`RANDOM_WEIGHTS_SEED`, recorded in the manifest so that
            later stages recreate them (for smoke runs and scale tests).
        overwrite: discard an existing store of this split made from other data or settings.
        progress: show a progress bar on stderr (rank 0 only).
        amp: run the forward pass under CUDA bfloat16 autocast (GPU only; features are stored as
            float16/32 either way).
        preprocessing: a :class:`spurious.models.Preprocessing` or some of its fields (a dict) for a
            model spec: they replace the checkpoint's config file and the architecture's defaults.
        model_config: the model config file to use (default: the one beside the checkpoint).
        class_map: folder name / list label -> class (name or index), or a JSON/CSV file of it, for
            folders that do not carry the model's class names.
        strict: raise :class:`spurious.agreement.AgreementError` (after writing the store) when the
            model does not agree with the labels (see :mod:`spurious.agreement`), instead of warning.

    Returns:
        An :class:`ExtractResult`. ``complete`` is False only on non-zero ranks, which leave the merge to rank 0.

    Raises:
        FileNotFoundError: the data path does not exist.
        ValueError: bad arguments, an empty dataset, or float16 overflow (use ``dtype="float32"``).
        IncompatibleArtifactError: the workspace or split was made with another model or dataset.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    dev = resolve_device(device)
    if batch_size is None:
        batch_size = 64 if dev.type == "cuda" else 16
    batch_size = positive_int("batch_size", batch_size)
    shard_size = positive_int("shard_size", shard_size)
    topk = positive_int("topk", topk)
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    t0 = time.perf_counter()
    info = init_distributed(dev)
    ws_root = Path(workspace)
    classifier = _resolve_model(model, ws_root, pretrained, dev, preprocessing, model_config)
    dataset, open_kwargs = _resolve_data(data, classifier, class_map)
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.spec} holds no images")
    on_main_rank(lambda: Workspace.create(ws_root, classifier))
    ws = Workspace.open(ws_root)
    ws.check_model(classifier.fingerprint(), classifier.spec)
    hint = f"spurious model {classifier.spec}"
    out = ws.features_dir(split)
    shards_dir = out / "shards"
    k = min(topk, classifier.num_classes)
    n_records = len(dataset)
    n_shards = math.ceil(n_records / shard_size)
    plan: JSONDict = {
        "model": {"spec": classifier.spec, "fingerprint": classifier.fingerprint()},
        "data": {"spec": dataset.spec, "kind": dataset.kind, "fingerprint": dataset.fingerprint(),
                 "num_records": n_records},
        "dim": int(classifier.num_features),
        "dtype": dtype,
        "topk": k,
        "shard_size": shard_size,
    }
    phash = plan_hash(plan)

    on_main_rank(lambda: _prepare_output(out, plan, overwrite))
    if (out / "manifest.json").is_file():  # finished earlier with the same plan: nothing to do
        finished = FeatureStore(out)
        report_agreement(finished.agreement, what=f"{out} ({dataset.spec})", hint=hint, strict=strict)
        return _result(finished, split, 0, n_shards, 0, time.perf_counter() - t0, info.world_size, True)

    mine = [i for i in range(n_shards) if i % info.world_size == info.rank]
    todo = [i for i in mine if not shard_done(shards_dir, i, phash)]
    reused = len(mine) - len(todo)
    if reused:
        log.info("rank %d: resuming, %d of %d shards already done", info.rank, reused, len(mine))
    ranges = [(i, i * shard_size, min((i + 1) * shard_size, n_records)) for i in todo]
    n_todo_images = sum(stop - start for _, start, stop in ranges)
    computed = _run_shards(classifier, dataset, ranges, shards_dir, phash, k, dtype, batch_size,
                           num_workers, dev, progress and info.is_main, amp)
    computed_all = all_sum(computed)  # gloo/nccl collective: also a barrier
    images_all = all_sum(n_todo_images)
    store = _merge(out, dataset, open_kwargs, plan, phash, n_shards, time.perf_counter() - t0) if info.is_main else None
    barrier()
    seconds = time.perf_counter() - t0
    if store is None:  # non-zero rank: rank 0 merged and reports the store
        return ExtractResult(str(out), split, n_records, 0, 0, 0, plan["dim"], dtype, n_shards, computed,
                             reused, n_todo_images, round(seconds, 3),
                             round(n_todo_images / max(seconds, 1e-9), 2), info.world_size, False)
    report_agreement(store.agreement, what=f"{out} ({dataset.spec})", hint=hint, strict=strict)
    return _result(store, split, computed_all, n_shards, images_all, seconds, info.world_size, True)


def _result(store: FeatureStore, split: str, computed: int, n_shards: int, images: int, seconds: float,
            world: int, complete: bool) -> ExtractResult:
    m = store.manifest
    return ExtractResult(
        path=str(store.path), split=split, num_records=m["data"]["num_records"], num_rows=len(store),
        num_failed=m["failed"]["count"], num_skipped_files=m["skipped_files"]["count"], dim=store.dim,
        dtype=str(store.dtype), shards_total=n_shards, shards_computed=computed, shards_reused=n_shards - computed,
        images_computed=images, seconds=round(seconds, 3),
        images_per_second=round(images / max(seconds, 1e-9), 2), world_size=world, complete=complete,
        label_source=store.label_source, agreement=store.agreement.to_dict(),
    )


def _prepare_output(out: Path, plan: JSONDict, overwrite: bool) -> None:
    prepare_artifact_dir(out, plan, overwrite=overwrite, mismatch=lambda old: _plan_mismatch(out, old, plan))
    (out / "shards").mkdir(exist_ok=True)


def _plan_mismatch(out: Path, old: JSONDict, new: JSONDict) -> str:
    diffs = []
    if old["model"] != new["model"]:
        diffs.append(f"model {old['model']['spec']!r} (fingerprint {old['model']['fingerprint']}) vs "
                     f"{new['model']['spec']!r} (fingerprint {new['model']['fingerprint']})")
    if old["data"] != new["data"]:
        diffs.append(f"data {old['data']['spec']!r} ({old['data']['num_records']} images, fingerprint "
                     f"{old['data']['fingerprint']}) vs {new['data']['spec']!r} ({new['data']['num_records']} "
                     f"images, fingerprint {new['data']['fingerprint']})")
    if old["dim"] != new["dim"]:
        diffs.append(f"feature dimension {old['dim']} vs {new['dim']}")
    for key in ("dtype", "topk", "shard_size"):
        if old[key] != new[key]:
            diffs.append(f"{key} {old[key]!r} vs {new[key]!r}")
    return (f"{out} was extracted with other settings: {'; '.join(diffs)}; use another --split name, "
            "or --overwrite to discard it")


@dataclass
class _ShardBuffer:
    """What one shard has gathered so far: arrays per batch, and ``(id, reason)`` of the images that failed."""

    arrays: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {"phi": [], "rows": [], "idx": [], "logit": [], "lse": []})
    failed: list[tuple[str, str]] = field(default_factory=list)


@torch.inference_mode()
def _run_shards(classifier: Classifier, dataset: ImageDataset, ranges: list[tuple[int, int, int]], shards_dir: Path,
                phash: str, k: int, dtype: str, batch_size: int, num_workers: int | None,
                device: torch.device, progress: bool, amp: bool) -> int:
    if not ranges:
        return 0
    sampler = BlockBatches(ranges, batch_size)
    workers = default_num_workers() if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_images,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers > 0 else None)
    remaining = {shard: stop - start for shard, start, stop in ranges}
    bounds = {shard: (start, stop) for shard, start, stop in ranges}
    buffers: dict[int, _ShardBuffer] = {}
    bar = tqdm(total=sum(remaining.values()), unit="img", desc="extract", disable=not progress,
               dynamic_ncols=True, smoothing=0.05)
    use_amp = amp and device.type == "cuda"
    done = 0
    try:
        for (images, indices, failed), shard in zip(loader, sampler.block_of_batch, strict=False):
            buf = buffers.setdefault(shard, _ShardBuffer())
            if len(indices):
                x = images.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    phi, logits = classifier.phi_and_logits(x)
                phi = phi.float()
                logits = logits.float()
                top = logits.topk(k, dim=1)
                buf.arrays["phi"].append(phi.cpu().numpy())
                buf.arrays["rows"].append(indices.numpy().astype(np.int64))
                buf.arrays["idx"].append(top.indices.cpu().numpy().astype(np.int32))
                buf.arrays["logit"].append(top.values.cpu().numpy())
                buf.arrays["lse"].append(torch.logsumexp(logits, dim=1).cpu().numpy())
            buf.failed.extend((dataset.record(i).id, reason) for i, reason in failed)
            n = len(indices) + len(failed)
            remaining[shard] -= n
            bar.update(n)
            if remaining[shard] == 0:
                _write_shard(shards_dir, shard, bounds[shard], buffers.pop(shard), phash, dtype,
                             classifier.num_features, k)
                done += 1
    finally:
        bar.close()
    return done


def _write_shard(shards_dir: Path, shard: int, bounds: tuple[int, int], buf: _ShardBuffer,
                 phash: str, dtype: str, dim: int, k: int) -> None:
    def cat(key: str, shape: tuple[int, ...], dt: type[np.generic]) -> np.ndarray:
        return np.concatenate(buf.arrays[key]) if buf.arrays[key] else np.zeros(shape, dtype=dt)

    phi32 = cat("phi", (0, dim), np.float32)
    phi = phi32.astype(dtype)
    if not np.isfinite(phi).all():
        if np.isfinite(phi32).all():
            raise ValueError(f"features of shard {shard} overflow float16 (max |phi| = {np.abs(phi32).max():.3g}); "
                             "re-run with dtype='float32' (--dtype float32)")
        raise ValueError(f"the model produced non-finite features in shard {shard}; check the model and inputs")
    arrays = {
        "phi": phi,
        "rows": cat("rows", (0,), np.int64),
        "topk_index": cat("idx", (0, k), np.int32),
        "topk_logit": cat("logit", (0, k), np.float32),
        "logsumexp": cat("lse", (0,), np.float32),
    }
    write_shard(shards_dir, shard, arrays, {"start": bounds[0], "stop": bounds[1], "rows": int(phi.shape[0]),
                                           "failed": buf.failed, "plan": phash})


def _merge(out: Path, dataset: ImageDataset, open_kwargs: JSONDict, plan: JSONDict, phash: str, n_shards: int,
           seconds: float) -> FeatureStore:
    labels = dataset.labels()

    def record(r: int) -> tuple[str, int]:
        return dataset.record(r).id, int(labels[r])

    return finalize_store(out, plan, phash, n_shards, record,
                          skipped=list(getattr(dataset, "skipped", [])), class_names=dataset.class_names,
                          root=str(dataset.root), seconds=seconds,
                          label_source=getattr(dataset, "label_source", ""),
                          open_kwargs=open_kwargs,
                          unchecked_reason=_unchecked_reason(dataset))


def _unchecked_reason(dataset: ImageDataset) -> str:
    if dataset.kind == "spurious-imagenet":
        return "a spurious benchmark split (its images show a class's spurious feature, not the class)"
    if dataset.kind == "pool" or not (dataset.labels() >= 0).any():
        return "no labelled images"
    return ""
