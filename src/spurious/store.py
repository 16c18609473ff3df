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
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from spurious._io import read_json

__all__ = ["FeatureStore", "shard_name"]


def shard_name(i: int) -> str:
    """File stem of shard ``i`` (``00042``)."""
    return f"{i:05d}"


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
        self.manifest: dict[str, Any] = read_json(mpath)
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

    def topk(self, rows: np.ndarray | slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k predicted classes (int32 [n, k]) and their softmax probabilities (float32 [n, k])."""
        idx = self._take(rows, "topk_index")
        logit = self._take(rows, "topk_logit")
        lse = self._take(rows, "logsumexp")
        return idx, np.exp(logit - lse[:, None]).astype(np.float32)

    def iter_phi(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Stream ``(first_row, phi[first_row:first_row + n])`` chunks in row order (bounded memory)."""
        for i, shard in enumerate(self._shards):
            mm = self._memmap(i, "phi")
            base = int(self._offsets[i])
            for start in range(0, shard["rows"], chunk_rows):
                yield base + start, np.asarray(mm[start : start + chunk_rows])
