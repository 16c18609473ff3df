"""The feature store: ``phi`` of every image of a split, sharded ``.npy`` memmaps plus an index.

Written by :func:`spurious.extract.extract`; read here. Layout of ``WS/features/<split>/``::

    manifest.json                 written last: the store is complete iff it exists
    plan.json                     what is being extracted (model, data, shard size, dtype, top-k)
    shards/NNNNN.phi.npy          [n, D] float16 | float32   penultimate features phi(x)
    shards/NNNNN.rows.npy         [n] int64                  dataset record index of each row
    shards/NNNNN.topk_index.npy   [n, k] int32               top-k predicted classes
    shards/NNNNN.topk_logit.npy   [n, k] float32             their logits
    shards/NNNNN.logsumexp.npy    [n] float32                logsumexp of all logits (softmax = exp(logit - lse))
    shards/NNNNN.json             shard done-marker: record range, failed images (written last)
    index.jsonl                   one line per row: {"row", "id", "label"}
    labels.npy                    [N] int64 label of each row (-1 = unlabeled)

Rows are the decodable images in dataset order (sorted ids); shard ``i`` covers dataset records
``[i * shard_size, (i + 1) * shard_size)``, so the store does not depend on how many processes wrote it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from spurious import __version__
from spurious._io import (
    JSONDict,
    atomic_path,
    read_json,
    save_npy,
    sha256_strings,
    utc_now,
    write_json,
)
from spurious.agreement import Agreement, label_agreement, not_checked

if TYPE_CHECKING:
    from spurious.datasets import ImageDataset
    from spurious.datasets._dataset import Transform

__all__ = ["FeatureStore", "SHARD_ARRAYS", "ShardInfo", "finalize_store", "shard_name",
           "write_shard"]

SHARD_ARRAYS = ("phi", "rows", "topk_index", "topk_logit", "logsumexp")


def shard_name(i: int) -> str:
    """File stem of shard ``i`` (``00042``)."""
    return f"{i:05d}"


class ShardInfo(NamedTuple):
    """One non-empty shard of a finished store: its global rows are ``start_row .. start_row + rows - 1``.

    Attributes:
        index: shard number (file stem :func:`shard_name`).
        start_row: first global row of the shard.
        rows: number of rows.
        directory: the store's ``shards/`` folder.
    """

    index: int  # type: ignore[assignment]  # public field name; shadows tuple.index on purpose
    start_row: int
    rows: int
    directory: Path

    def path(self, what: str = "phi") -> Path:
        """File of one of :data:`SHARD_ARRAYS` (``phi``: ``[rows, D]``, memory-mappable with ``np.load``)."""
        if what not in SHARD_ARRAYS:
            raise ValueError(f"unknown shard array {what!r}; valid: {', '.join(SHARD_ARRAYS)}")
        return self.directory / f"{shard_name(self.index)}.{what}.npy"


class FeatureStore:
    """Read-only view of a finished feature store (memory-mapped; never loads the split whole).

    Args:
        path: ``WS/features/<split>`` directory holding ``manifest.json``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(
                f"{self.path} holds no finished feature store (no manifest.json); run `spurious extract` "
                "(an interrupted extraction resumes when re-run with the same arguments)"
            )
        self.manifest: JSONDict = read_json(mpath)
        self._shards = [s for s in self.manifest["shards"] if s["rows"] > 0]
        self._offsets = np.cumsum([0] + [s["rows"] for s in self._shards])

    # ------------------------------------------------------------------ facts
    def __len__(self) -> int:
        return int(self.manifest["num_rows"])

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def model_fingerprint(self) -> str:
        return str(self.manifest["model"]["fingerprint"])

    @property
    def agreement(self) -> Agreement:
        """The model's top-1 agreement with the labels (:class:`spurious.agreement.Agreement`).

        Stores written before the check existed read as not checked.
        """
        d = self.manifest.get("agreement")
        return not_checked("the store predates the check") if d is None else Agreement.from_dict(d)

    def open_dataset(self, transform: Transform | None = None,
                     spec: str | os.PathLike[str] | None = None) -> ImageDataset:
        """Re-open the images of this split with the labels they were extracted with.

        Args:
            transform: the dataset transform (e.g. the model's preprocessing).
            spec: where the images are now (default: the spec they were extracted from).
        """
        from spurious import imagenet
        from spurious.datasets import open_dataset

        kwargs = dict(self.manifest["data"].get("open_kwargs") or {})
        if kwargs.get("wnids") == "imagenet-1k":
            kwargs["wnids"] = imagenet.wnids()
        return open_dataset(spec if spec is not None else self.manifest["data"]["spec"], transform=transform,
                            **kwargs)

    @property
    def label_source(self) -> str:
        """How the labels were assigned (e.g. folder names matched to the model's class names)."""
        return str(self.manifest["data"].get("label_source") or "")

    @property
    def data_fingerprint(self) -> str:
        return str(self.manifest["data"]["fingerprint"])

    @cached_property
    def labels(self) -> np.ndarray:
        """int64 [N]: label of every row (-1 for unlabeled images)."""
        return np.load(self.path / "labels.npy", mmap_mode="r")

    @cached_property
    def ids(self) -> list[str]:
        """Image id (relative path) of every row, in row order."""
        out: list[str] = []
        with open(self.path / "index.jsonl", encoding="utf-8") as fh:
            for line in fh:
                out.append(json.loads(line)["id"])
        return out

    def rows_of_class(self, k: int) -> np.ndarray:
        """Row indices (sorted) of the images labelled ``k``."""
        return np.flatnonzero(np.asarray(self.labels) == k)

    def rows_of_ids(self, ids: Sequence[str]) -> np.ndarray:
        """Row index of each id; ``KeyError`` naming the first id the store does not hold."""
        where = {i: r for r, i in enumerate(self.ids)}
        try:
            return np.array([where[i] for i in ids], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"image id {err.args[0]!r} is not in the feature store {self.path}") from None

    # ------------------------------------------------------------------ arrays
    def _memmap(self, i: int, what: str) -> np.ndarray:
        return np.load(self.path / "shards" / f"{shard_name(self._shards[i]['index'])}.{what}.npy", mmap_mode="r")

    def _take(self, rows: np.ndarray | slice | None, what: str) -> np.ndarray:
        if rows is None:
            rows = np.arange(len(self))
        elif isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        first = self._memmap(0, what) if self._shards else None
        shape = (rows.size,) + (first.shape[1:] if first is not None else (self.dim,))
        out = np.empty(shape, dtype=first.dtype if first is not None else self.dtype)
        for s in np.unique(shard_of):
            sel = shard_of == s
            local = rows[sel] - self._offsets[s]
            out[sel] = self._memmap(int(s), what)[local]
        return out

    def phi(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Features of ``rows`` ([n, D], the store's dtype). Loads only those rows."""
        return self._take(rows, "phi")

    def topk(self, rows: np.ndarray | slice | None = None, *, logits: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k predicted classes (int32 [n, k]) and their softmax probabilities (float32 [n, k]),
        or with ``logits=True`` their logits as stored (float32 [n, k], descending)."""
        idx = self._take(rows, "topk_index")
        logit = self._take(rows, "topk_logit")
        if logits:
            return idx, logit
        lse = self._take(rows, "logsumexp")
        return idx, np.exp(logit - lse[:, None]).astype(np.float32)

    def shard_table(self) -> list[ShardInfo]:
        """The non-empty shards in row order (files and global row ranges), for streaming readers
        that need more control than :meth:`iter_phi` (e.g. their own buffers or a resume cursor)."""
        return [ShardInfo(int(s["index"]), int(self._offsets[i]), int(s["rows"]), self.path / "shards")
                for i, s in enumerate(self._shards)]

    def iter_phi(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Stream ``(first_row, phi[first_row:first_row + n])`` chunks in row order (bounded memory)."""
        for i, shard in enumerate(self._shards):
            mm = self._memmap(i, "phi")
            base = int(self._offsets[i])
            for start in range(0, shard["rows"], chunk_rows):
                yield base + start, np.asarray(mm[start : start + chunk_rows])


# ---------------------------------------------------------------------------- writing


def plan_hash(plan: JSONDict) -> str:
    """Hash of an extraction plan; shard markers record it so a shard is reused only under the same plan."""
    return sha256_strings([json.dumps(plan, sort_keys=True)])


def write_shard(shards_dir: Path, shard: int, arrays: dict[str, np.ndarray], meta: JSONDict) -> None:
    """Write one shard's arrays (:data:`SHARD_ARRAYS`), then its done-marker ``NNNNN.json`` (atomic, in that order)."""
    stem = shards_dir / shard_name(shard)
    for name in SHARD_ARRAYS:
        save_npy(f"{stem}.{name}.npy", arrays[name])
    write_json(f"{stem}.json", {"index": shard, **meta})


def shard_done(shards_dir: Path, shard: int, plan_hash: str) -> bool:
    """True when shard ``shard`` was finished under the plan ``plan_hash``."""
    marker = shards_dir / f"{shard_name(shard)}.json"
    try:
        meta = read_json(marker)
    except (OSError, ValueError):
        return False
    if meta.get("plan") != plan_hash:
        return False
    return all((shards_dir / f"{shard_name(shard)}.{w}.npy").is_file() for w in SHARD_ARRAYS)


def finalize_store(out: Path, plan: JSONDict, plan_hash: str, n_shards: int,
                   record: Callable[[int], tuple[str, int]], *, skipped: Sequence[tuple[str, str]] = (),
                   class_names: Sequence[str] | None = None, root: str = "", seconds: float = 0.0,
                   label_source: str = "", unchecked_reason: str = "",
                   open_kwargs: JSONDict | None = None) -> FeatureStore:
    """Merge finished shards into ``index.jsonl``, ``labels.npy`` and (last) ``manifest.json``.

    The manifest also records the model's top-1 agreement with the labels
    (:func:`spurious.agreement.label_agreement`), unless ``unchecked_reason`` says why not.

    Args:
        record: maps a dataset record index (``rows.npy`` entries) to ``(id, label)``.
        label_source: how the labels were assigned (recorded and shown in summaries).
        unchecked_reason: non-empty to skip the agreement check (e.g. a spurious benchmark split).
        open_kwargs: how ``open_dataset`` was called (class names, class map), so that later stages
            re-open the images with the same labels (:meth:`FeatureStore.open_dataset`).
    """
    shards_dir = out / "shards"
    missing = [i for i in range(n_shards) if not shard_done(shards_dir, i, plan_hash)]
    if missing:
        raise RuntimeError(f"cannot merge {out}: shards {missing[:10]} are not finished; re-run to resume")
    shards, failed, label_parts, top1_parts = [], [], [], []
    with atomic_path(out / "index.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        row = 0
        for i in range(n_shards):
            meta = read_json(shards_dir / f"{shard_name(i)}.json")
            shard_labels = []
            for r in np.load(shards_dir / f"{shard_name(i)}.rows.npy"):
                rid, label = record(int(r))
                fh.write(json.dumps({"row": row, "id": rid, "label": int(label)}) + "\n")
                shard_labels.append(int(label))
                row += 1
            label_parts.append(np.asarray(shard_labels, dtype=np.int64))
            top1_parts.append(np.load(shards_dir / f"{shard_name(i)}.topk_index.npy")[:, 0].astype(np.int64))
            failed.extend(meta["failed"])
            shards.append({"index": i, "start": meta["start"], "stop": meta["stop"], "rows": meta["rows"]})
    labels = np.concatenate(label_parts) if label_parts else np.zeros(0, np.int64)
    top1 = np.concatenate(top1_parts) if top1_parts else np.zeros(0, np.int64)
    agreement = not_checked(unchecked_reason) if unchecked_reason else label_agreement(labels, top1)
    save_npy(out / "labels.npy", labels)
    n_records = plan["data"]["num_records"]
    if failed:
        with atomic_path(out / "failed.jsonl") as tmp:
            tmp.write_text("".join(json.dumps({"id": i, "reason": r}) + "\n" for i, r in failed), encoding="utf-8")
        warnings.warn(f"{len(failed)} of {n_records} images could not be decoded and were skipped "
                      f"(first: {failed[0][0]}: {failed[0][1]}); the full list is in {out / 'failed.jsonl'}",
                      stacklevel=3)
    if skipped:
        warnings.warn(f"{len(skipped)} files in {root} are not images and were ignored "
                      f"(first: {skipped[0][0]}: {skipped[0][1]})", stacklevel=3)
    manifest = {
        "format": "spurious-features",
        "version": 1,
        "package_version": __version__,
        "created": utc_now(),
        **plan,
        "data": {**plan["data"], "class_names": list(class_names) if class_names is not None else None,
                 "label_source": label_source, "open_kwargs": dict(open_kwargs or {})},
        "agreement": agreement.to_dict(),
        "num_rows": int(labels.shape[0]),
        "shards": shards,
        "failed": {"count": len(failed), "examples": failed[:20]},
        "skipped_files": {"count": len(skipped), "examples": [list(x) for x in skipped[:20]]},
        "seconds": round(seconds, 3),
    }
    write_json(out / "manifest.json", manifest)
    return FeatureStore(out)
