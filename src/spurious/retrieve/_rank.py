"""Streaming rank of a pool's stored ``phi`` by many linear scores at once, with checkpoints.

``scores = phi @ A.T - c`` for all directions by one float32 matrix product per chunk (``[C, D] @
[D, n]``), the chunks read ahead by a thread (:class:`_ChunkReader`), a running top-``keep`` per
direction (:class:`TopK`) merged in with a threshold test: memory ``O(chunk + C * keep)`` whatever
the pool size. :func:`save_state` / :func:`load_state` checkpoint the running top-k and the
cursor, so a killed scan resumes where it stopped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spurious._io import atomic_path

if TYPE_CHECKING:
    from spurious.store import FeatureStore

__all__ = ["Ranking", "rank_pool"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 16384
_MAX_SCORES = 1 << 25  # scores computed at once (128 MiB of float32); more directions go in blocks


@dataclass
class Ranking:
    """Top rows per scored direction (``values`` descending; unfilled slots have row ``-1``).

    Attributes:
        rows: int64 [C, keep] pool rows.
        values: float32 [C, keep] ``phi @ A.T - c`` at those rows (``-inf`` where unfilled).
        rows_scanned: pool rows read.
        seconds: wall time of the scan.
    """

    rows: np.ndarray
    values: np.ndarray
    rows_scanned: int = 0
    seconds: float = 0.0


class TopK:
    """Running top-``keep`` per column of streamed ``[C, n]`` score blocks (bounded memory)."""

    def __init__(self, n_cols: int, keep: int) -> None:
        self.keep = keep
        self.values = np.full((n_cols, keep), -np.inf, dtype=np.float32)
        self.rows = np.full((n_cols, keep), -1, dtype=np.int64)
        self.threshold = np.full(n_cols, -np.inf, dtype=np.float32)

    def add(self, scores: np.ndarray, rows: np.ndarray, first: int = 0) -> None:
        """Merge ``scores`` [c, n] of pool ``rows`` [n] into columns ``first .. first + c - 1``; a score
        must beat the column's current cut (the threshold test makes most chunks nearly free)."""
        hit = scores > self.threshold[first:first + scores.shape[0], None]
        for i in np.flatnonzero(hit.any(axis=1)):
            j = first + int(i)
            idx = np.flatnonzero(hit[i])
            vals = np.concatenate([self.values[j], scores[i, idx]])
            rws = np.concatenate([self.rows[j], rows[idx]])
            part = np.argpartition(-vals, self.keep - 1)[: self.keep]
            self.values[j], self.rows[j] = vals[part], rws[part]
            self.threshold[j] = self.values[j].min()

    def merge(self, values: np.ndarray, rows: np.ndarray) -> None:
        """Fold in another partial top-k ``[C, keep]`` over disjoint rows (another rank's)."""
        for j in range(values.shape[0]):
            vals = np.concatenate([self.values[j], values[j]])
            rws = np.concatenate([self.rows[j], rows[j]])
            part = np.argpartition(-vals, self.keep - 1)[: self.keep]
            self.values[j], self.rows[j] = vals[part], rws[part]
            self.threshold[j] = self.values[j].min()

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, values)`` with each row sorted by value descending, ties by pool row."""
        order = np.lexsort((self.rows, -self.values.astype(np.float64)), axis=1)
        return np.take_along_axis(self.rows, order, 1), np.take_along_axis(self.values, order, 1)


def shard_table(store: FeatureStore) -> list[tuple[Path, int, int]]:
    """``(phi file, first global row, rows)`` of every non-empty shard of a feature store, in row order."""
    return [(sh.path("phi"), sh.start_row, sh.rows) for sh in store.shard_table()]


def _cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` (float16/32 -> float32); torch's vectorised, threaded cast is ~5x numpy's."""
    import torch

    if dst.flags.c_contiguous and src.flags.c_contiguous and src.dtype in (np.float16, np.float32):
        torch.from_numpy(dst).copy_(torch.from_numpy(src))
    else:
        dst[...] = src


class _ChunkReader:
    """Reader thread: fills float32 ``[chunk_rows, D]`` buffers from consecutive shards, ahead of use.

    Yields ``(rows, block, cursor)``: the global pool rows of the block, the block (a view of a
    recycled buffer, valid until the next item), and the cursor ``(shard position, offset)``
    just past it. The cast releases the GIL, so reading overlaps with the matrix product.
    """

    def __init__(self, shards: list[tuple[Path, int, int]], positions: Sequence[int], dim: int, chunk_rows: int,
                 start: tuple[int, int] = (0, 0), prefetch: int = 2) -> None:
        self.shards, self.positions, self.dim, self.chunk_rows = shards, list(positions), dim, chunk_rows
        self.start = start
        self.free: queue.Queue[np.ndarray] = queue.Queue()
        for _ in range(prefetch + 1):
            self.free.put(np.empty((chunk_rows, dim), dtype=np.float32))
        self.full: queue.Queue[tuple[np.ndarray, np.ndarray, int, tuple[int, int]] | BaseException | None] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="spurious-retrieve-reader", daemon=True)

    def _produce(self) -> None:
        try:
            pos, offset = self.start
            while pos < len(self.positions) and not self.stop.is_set():
                buf = self.free.get()
                if self.stop.is_set():
                    break
                filled, parts = 0, []
                while filled < self.chunk_rows and pos < len(self.positions):
                    path, base, n = self.shards[self.positions[pos]]
                    take = min(n - offset, self.chunk_rows - filled)
                    mm = np.load(path, mmap_mode="c")  # copy-on-write: writable for torch, never written
                    _cast_into(buf[filled:filled + take], mm[offset:offset + take])
                    del mm
                    parts.append(np.arange(base + offset, base + offset + take, dtype=np.int64))
                    filled += take
                    offset += take
                    if offset == n:
                        pos, offset = pos + 1, 0
                self.full.put((np.concatenate(parts), buf, filled, (pos, offset)))
        except BaseException as err:  # handed to the consumer, which re-raises it
            self.full.put(err)
        finally:
            self.full.put(None)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
        self.thread.start()
        last: np.ndarray | None = None
        try:
            while True:
                item = self.full.get()
                if last is not None:
                    self.free.put(last)
                    last = None
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                rows, buf, n, cursor = item
                last = buf
                yield rows, buf[:n], cursor
        finally:
            self.stop.set()
            self.free.put(np.empty((0, self.dim), dtype=np.float32))  # wake a producer waiting for a buffer
            while self.thread.is_alive():
                try:
                    self.full.get(timeout=0.05)
                except queue.Empty:
                    pass
            self.thread.join()


def rank_pool(
    store: FeatureStore,
    A: np.ndarray,
    c: np.ndarray | None = None,
    keep: int = 625,
    *,
    eligible: Callable[[np.ndarray], np.ndarray] | None = None,
    groups: np.ndarray | None = None,
    score_filter: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = False,
) -> Ranking:
    """Top ``keep`` pool rows per direction by ``phi @ A.T - c``, streamed over a feature store.

    With ``A``/``c`` from :meth:`spurious.npca.ClassBasis.projection` the scores are
    ``alpha_l^k(x)`` (DESIGN.md: ``alpha = phi . (w_k ⊙ v_l) <1, v_l> - const``). One float32
    matrix product per chunk for all directions (in blocks of directions when ``C`` is so large that
    the ``[C, chunk_rows]`` scores would pass 128 MiB); memory ``O(chunk_rows * D + C * keep)``.

    Args:
        store: a finished :class:`spurious.store.FeatureStore`.
        A: float [C, D] directions; ``c``: float [C] offsets (default 0).
        keep: rows kept per direction (>= 1).
        eligible: optional ``rows [n] -> bool [G, n]``: only eligible rows can be kept; row ``g`` of
            the mask applies to the directions of group ``g``.
        groups: int [C], the group of each direction (default: its own, ``G = C``).
        score_filter: optional ``(scores [c, n], rows [n], first) -> bool [c, n]``: a row can be kept
            for direction ``first + i`` only where row ``i`` of the mask is True (a test that needs the
            score itself, e.g. the dependence test of :func:`retrieve`).
        chunk_rows: rows per matrix product (>= 1).
        progress: progress bar on stderr.

    Returns:
        A :class:`Ranking`, each row of which is sorted by score descending.

    Raises:
        ValueError: shapes that do not match the store, or a bad ``keep``/``chunk_rows``.
    """
    A = np.asarray(A, dtype=np.float32)
    if A.ndim != 2 or A.shape[1] != store.dim:
        raise ValueError(f"A must have shape [C, {store.dim}] (the store's feature dimension), got {A.shape}")
    c32 = np.zeros(A.shape[0], np.float32) if c is None else np.asarray(c, dtype=np.float32).reshape(-1)
    if c32.shape != (A.shape[0],):
        raise ValueError(f"c must have shape [{A.shape[0]}], got {c32.shape}")
    for name, value in (("keep", keep), ("chunk_rows", chunk_rows)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    shards = shard_table(store)
    top = TopK(A.shape[0], int(keep))
    t0 = time.perf_counter()
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64).reshape(-1)
        if groups.shape != (A.shape[0],):
            raise ValueError(f"groups must have shape [{A.shape[0]}] (one group per direction), got {groups.shape}")
    scanned = scan(shards, range(len(shards)), A, c32, top, store.dim, int(chunk_rows), eligible, groups, progress,
                    score_filter=score_filter)
    rows, values = top.sorted()
    return Ranking(rows=rows, values=values, rows_scanned=scanned, seconds=time.perf_counter() - t0)


def scan(shards: list[tuple[Path, int, int]], positions: Sequence[int], A: np.ndarray, c32: np.ndarray, top: TopK,
          dim: int, chunk_rows: int, eligible: Callable[[np.ndarray], np.ndarray] | None, groups: np.ndarray | None,
          progress: bool, start: tuple[int, int] = (0, 0),
          on_chunk: Callable[[tuple[int, int]], None] | None = None,
          score_filter: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None) -> int:
    """Stream ``shards[positions]`` from ``start`` into ``top``; returns the rows read."""
    from tqdm.auto import tqdm

    total = sum(shards[p][2] for p in positions[start[0]:]) - start[1]
    A = np.ascontiguousarray(A, dtype=np.float32)
    scanned = 0
    with tqdm(total=total, unit="img", unit_scale=True, desc="retrieve", disable=not progress,
              dynamic_ncols=True, smoothing=0.1) as bar:
        for rows, block, cursor in _ChunkReader(shards, positions, dim, chunk_rows, start):
            mask = eligible(rows) if eligible is not None else None  # [G, n]
            step = max(1, min(A.shape[0], _MAX_SCORES // max(1, rows.size)))
            for j0 in range(0, A.shape[0], step):
                scores = A[j0:j0 + step] @ block.T  # [c, n]: one product for every selected component
                scores -= c32[j0:j0 + step, None]
                if mask is not None:
                    sub = mask[groups[j0:j0 + step]] if groups is not None else mask[j0:j0 + step]
                    scores[~sub] = -np.inf
                if score_filter is not None:
                    scores[~score_filter(scores, rows, j0)] = -np.inf
                top.add(scores, rows, j0)
            scanned += rows.size
            bar.update(rows.size)
            if on_chunk is not None:
                on_chunk(cursor)
    return scanned


def save_state(path: Path, top: TopK, cursor: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, values=top.values, rows=top.rows, cursor=np.array(cursor, dtype=np.int64))


def load_state(path: Path, top: TopK, shards: list[tuple[Path, int, int]],
                positions: Sequence[int]) -> tuple[tuple[int, int], int]:
    """Restore a checkpoint (same plan: the folder was kept); returns (cursor, rows already done)."""
    if not path.is_file():
        return (0, 0), 0
    try:
        with np.load(path) as z:
            values, rows, cursor = z["values"], z["rows"], tuple(int(x) for x in z["cursor"])
    except (OSError, ValueError, KeyError):
        return (0, 0), 0
    if values.shape != top.values.shape:
        return (0, 0), 0
    top.values[:], top.rows[:] = values, rows
    top.threshold[:] = values.min(axis=1)
    done = sum(shards[p][2] for p in positions[:cursor[0]]) + cursor[1]
    log.info("resuming retrieval after %d pool rows", done)
    return (cursor[0], cursor[1]), done
