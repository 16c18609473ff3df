"""Stage ``retrieve``: rank an unlabeled pool by component value and keep what several models agree on.

How the paper found real images that show a spurious feature without the class object: rank a
large pool (OpenImages, ~9M images) by ``alpha_l^k`` for every selected component ``(k, l)``,
keep the images that at least ``m`` of ``n`` classifiers predict as class ``k``, and hand the top
``N`` per component to people (``spurious label``, curate task) who confirm that the object is
absent. :mod:`spurious.benchmark` turns the confirmed images into a benchmark.

Ranking. ``alpha_l^k(x) = <1, v_l> <v_l, w_k ⊙ phi(x) - mu_k> = phi(x) . a_l - c_l`` (DESIGN.md), so
the pool's stored ``phi`` is ranked for *all* selected components at once by one float32 matrix
product per chunk, ``[C, D] @ [D, n]``, streamed over the pool's shards (a reader thread converts
the next chunk from float16 while BLAS works on this one); a running top-``keep`` per component is
merged in with a threshold test, so memory is ``O(chunk + C * keep)`` whatever the pool size.
The kept rows are re-scored in float64 (:meth:`spurious.npca.ClassBasis.alpha`) for the output.

Agreement. A *voter* is a model's top-1 prediction on the pool images:

* ``self``: the workspace's own model (its predictions were stored by ``extract``); counts by default;
* ``--agree WS2``: another workspace that extracted the same pool (its stored top-k), matched to
  the pool by image id (never by row order); images it lacks get no vote from it;
* ``--agree-model SPEC``: a model run on the pool images here. It runs only on the shortlist (the
  top ``N * oversample`` per component among the images that can still reach ``m`` votes), and its
  predictions are cached by image id in ``WS/retrieve/votes/<slug>/`` (kept across runs and
  ``--overwrite``), so each image is classified at most once.

A candidate needs ``votes >= m`` (default 2). Voters must share the workspace's class space (same
number of classes, same order: check this for models trained on other label sets). Without
``--agree-model`` voters the filter is applied while streaming and the result is exact: the top
``N`` by alpha among all agreed images. With them it is exact unless fewer than ``N`` of the
shortlist pass (then a warning says to raise ``oversample``).

Dependence (optional, ``dependence="flip"``). The method's *harmful* spurious feature is one
that is enough on its own to trigger the class. The test keeps a candidate for ``(k, l)`` only
when the workspace model predicts ``k`` and removing the component's positive part (SpuFix with
``S_k = {l}``, DESIGN.md) flips it: ``f_k(x) - max(alpha_l^k(x), 0) < max_{j != k} f_j(x)`` (plus an
optional margin). It needs no model run: ``f_k`` and the runner-up are the top-2 logits that
``extract`` stored, and ``alpha`` is the score being ranked, so it is applied while streaming
(leniently in float32, exactly in float64 on the kept rows). Default ``"none"``: on the planted
data the test removed most of the feature-only images too (docs/retrieve.md, "Measured").

Output ``WS/retrieve/``: ``plan.json``, ``candidates.jsonl`` (one JSON object per line: ``class``,
``component``, ``rank`` (0-based, alpha descending), ``id``, ``path`` (absolute path of the image
file, ``null`` for a pool imported without files), ``alpha``, ``votes``, ``models``), sorted by
(class, component, rank); ``gallery/index.html`` with one page per component; ``manifest.json``
(written last). A killed run resumes from its last checkpoint (``state/``); a finished run with the
same plan is reused; a different plan is refused unless ``overwrite``. Under ``torchrun`` each rank
ranks every ``world_size``-th shard and rank 0 merges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spurious import __version__
from spurious._io import atomic_path, read_json, sha256_file, utc_now, write_json
from spurious.components import ComponentSet, labelled_components, load_components
from spurious.visualize import read_sheet_table, sheet_classes
from spurious.workspace import IncompatibleArtifactError, Workspace

__all__ = [
    "DEPENDENCE_TESTS",
    "Ranking",
    "RetrieveResult",
    "Voter",
    "load_candidates",
    "components_to_retrieve",
    "rank_pool",
    "retrieve",
]

log = logging.getLogger(__name__)

_FORMAT = "spurious-retrieve"
_VERSION = 1
_DEFAULT_CHUNK_ROWS = 16384
_MAX_SCORES = 1 << 25  # scores computed at once (128 MiB of float32); more directions go in blocks
DEPENDENCE_TESTS = ("none", "flip")
"""Values of ``retrieve(dependence=...)``: no test (the paper), or the prediction must flip without the component."""


# ---------------------------------------------------------------------------- component selection


def _visualize_selection(ws: Workspace) -> dict[int, list[int]]:
    """The components that ``visualize`` selected for review, per finished class folder."""
    out: dict[int, list[int]] = {}
    for k in sheet_classes(ws):
        selected = read_sheet_table(ws, k).selected
        if selected:
            out[k] = sorted(set(selected))
    return out


def components_to_retrieve(
    workspace: str | os.PathLike[str] | Workspace,
    *,
    components: Mapping[int | str, Sequence[int]] | str | os.PathLike[str] | ComponentSet | None = None,
    classes: Sequence[int | str] | None = None,
    top_components: int | None = None,
    min_agree: int = 2,
) -> tuple[dict[int, list[int]], str]:
    """Which ``(k, l)`` to retrieve for, and where the choice came from.

    In order of precedence: ``components`` (a mapping, a component-set file or a
    :class:`~spurious.components.ComponentSet`, read, checked against the workspace's model and
    resolved by :mod:`spurious.components`); ``top_components`` (the top-N by eigenvalue of every
    fitted class); the label store's agreed components (``min_agree`` labelers said *spurious*,
    :func:`spurious.components.labelled_components`); the components ``visualize`` selected for
    review (:func:`spurious.visualize.read_sheet_table`). ``classes`` restricts any of these.

    Returns:
        ``({k: [l, ...]}, source)``; components sorted, checked against the fitted neural PCA.

    Raises:
        ValueError: nothing selected, an unknown class, or a component index past the fitted ones.
        IncompatibleArtifactError: ``components`` was made for another model.
    """
    from spurious.npca import (
        load_npca,  # torch is loaded on use, as everywhere in this module
    )

    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    pca = load_npca(ws.root)
    wanted = None if classes is None else {ws.resolve_class(c) for c in classes}
    if components is not None:
        cs = load_components(components)
        cs.check_model(ws.model_fingerprint, ws.model_spec, used_with=f"workspace {ws.root}")
        sel = {k: sorted(set(ls)) for k, ls in cs.resolve(ws).items()}
        source = f"component set {cs.source}"
    elif top_components is not None:
        if isinstance(top_components, bool) or not isinstance(top_components, (int, np.integer)) or top_components < 1:
            raise ValueError(f"top_components must be a positive integer, got {top_components!r}")
        ks = sorted(wanted) if wanted is not None else pca.classes
        sel = {k: list(range(min(int(top_components), pca[k].num_components))) for k in ks if k in pca}
        source = f"top {top_components} components by eigenvalue"
    else:
        sel = labelled_components(ws, min_agree=min_agree).resolve(ws)
        source = f"label store (>= {min_agree} labelers: spurious)"
        if not sel:
            sel, source = _visualize_selection(ws), "visualize selection"
    if wanted is not None:
        sel = {k: v for k, v in sel.items() if k in wanted}
    if not sel:
        raise ValueError(
            f"no components selected for {ws.root} (source: {source}); pass a component set "
            "(--components FILE), or --top-components N, or run `spurious visualize` / label components first")
    for k, comps in sel.items():
        if not 0 <= k < ws.num_classes:
            raise ValueError(f"component set names class {k}, outside this model's classes 0..{ws.num_classes - 1}")
        if k not in pca:
            raise ValueError(f"class {k} ({ws.class_names[k]}) has no neural PCA components; "
                             f"fitted classes: {len(pca.classes)} (run `spurious npca` for it)")
        n = pca[k].num_components
        bad = [c for c in comps if c >= n]
        if bad:
            raise ValueError(f"class {k}: component(s) {bad} out of range; it has {n} fitted components (0..{n - 1})")
    return dict(sorted(sel.items())), source


# ---------------------------------------------------------------------------- streaming rank


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


class _TopK:
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


def _shard_table(store: Any) -> list[tuple[Path, int, int]]:
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
        self.full: queue.Queue[Any] = queue.Queue()
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
    store: Any,
    A: np.ndarray,
    c: np.ndarray | None = None,
    keep: int = 625,
    *,
    eligible: Callable[[np.ndarray], np.ndarray] | None = None,
    groups: np.ndarray | None = None,
    score_filter: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None,
    chunk_rows: int = _DEFAULT_CHUNK_ROWS,
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
    shards = _shard_table(store)
    top = _TopK(A.shape[0], int(keep))
    t0 = time.perf_counter()
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64).reshape(-1)
        if groups.shape != (A.shape[0],):
            raise ValueError(f"groups must have shape [{A.shape[0]}] (one group per direction), got {groups.shape}")
    scanned = _scan(shards, range(len(shards)), A, c32, top, store.dim, int(chunk_rows), eligible, groups, progress,
                    score_filter=score_filter)
    rows, values = top.sorted()
    return Ranking(rows=rows, values=values, rows_scanned=scanned, seconds=time.perf_counter() - t0)


def _scan(shards: list[tuple[Path, int, int]], positions: Sequence[int], A: np.ndarray, c32: np.ndarray, top: _TopK,
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


# ---------------------------------------------------------------------------- voters


@dataclass(frozen=True)
class Voter:
    """One model whose top-1 prediction on a pool image is a vote for that class.

    Attributes:
        name: shown in summaries (``self``, a workspace path or a model spec).
        kind: ``"self"``, ``"workspace"`` or ``"model"``.
        spec: the model spec; ``fingerprint``: its head fingerprint.
        source: the workspace path (``workspace``/``self``) or the cache folder (``model``).
    """

    name: str
    kind: str
    spec: str
    fingerprint: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _iter_index(store: Any) -> Iterator[dict[str, Any]]:
    with open(store.path / "index.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _id_keys(store: Any) -> np.ndarray:
    """uint64 key of every row's image id (8 bytes of blake2b), streamed from the index."""
    keys = np.empty(len(store), dtype=np.uint64)
    for i, rec in enumerate(_iter_index(store)):
        keys[i] = int.from_bytes(hashlib.blake2b(rec["id"].encode("utf-8"), digest_size=8).digest(), "little")
    return keys



def _top1(store: Any) -> np.ndarray:
    """int32 [N]: each row's top-1 predicted class (read shard by shard)."""
    parts = [store.topk(np.arange(sh.start_row, sh.start_row + sh.rows), logits=True)[0][:, 0]
             for sh in store.shard_table()]
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


def _top1_and_gap(store: Any) -> tuple[np.ndarray, np.ndarray]:
    """int32 [N] top-1 class and float32 [N] ``f_top1 - f_runner-up`` of the store's model (shard by shard).

    Raises:
        ValueError: the store kept only the top-1 prediction (no runner-up logit).
    """
    if int(store.manifest.get("topk", 0)) < 2:
        raise ValueError(
            f"the dependence filter needs the runner-up logit, but the pool store {store.path} kept only the "
            f"top-{store.manifest.get('topk')} prediction; re-extract the pool with --topk 2 or more, or pass "
            "dependence='none' (--dependence none)")
    top1, gap = [], []
    for sh in store.shard_table():
        idx, logit = store.topk(np.arange(sh.start_row, sh.start_row + sh.rows), logits=True)
        top1.append(idx[:, 0].astype(np.int32))
        gap.append((logit[:, 0] - logit[:, 1]).astype(np.float32))
    if not top1:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(top1), np.concatenate(gap)


def _aligned_top1(pool: Any, other: Any, pool_keys: Callable[[], np.ndarray]) -> tuple[np.ndarray, int]:
    """``other``'s top-1 for every pool row, matched by image id (-1 where ``other`` lacks the id)."""
    top1 = _top1(other)
    if sha256_file(pool.path / "index.jsonl") == sha256_file(other.path / "index.jsonl"):
        return top1, len(pool)  # same ids in the same rows: no join needed
    okeys = _id_keys(other)
    order = np.argsort(okeys, kind="stable")
    sk = okeys[order]
    if sk.size > 1 and (sk[1:] == sk[:-1]).any():
        raise RuntimeError(f"duplicate image ids (or a 64-bit hash collision) in {other.path}/index.jsonl")
    pk = pool_keys()
    pos = np.searchsorted(sk, pk)
    pos_c = np.minimum(pos, max(sk.size - 1, 0))
    found = (pos < sk.size) & (sk[pos_c] == pk) if sk.size else np.zeros(pk.size, bool)
    out = np.full(len(pool), -1, dtype=np.int32)
    out[found] = top1[order[pos_c[found]]]
    return out, int(found.sum())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:60] or "model"


class _ModelVotes:
    """Top-1 predictions of a model on pool images, cached by image id in ``cache_dir`` (resumable)."""

    def __init__(self, spec: str, cache_root: Path, ws: Workspace, device: Any, batch_size: int | None,
                 num_workers: int | None) -> None:
        from spurious._dist import resolve_device
        from spurious.models import load_model

        self.device = resolve_device(device)
        self.clf = load_model(spec, device=self.device)
        if self.clf.num_classes != ws.num_classes:
            raise ValueError(
                f"voter model {spec!r} has {self.clf.num_classes} classes, the workspace model has "
                f"{ws.num_classes}; voters must share the workspace's class space (same classes, same order)")
        self.spec = self.clf.spec
        self.fingerprint = self.clf.fingerprint()
        self.dir = cache_root / f"{_slug(self.spec)}-{self.fingerprint[:8]}"
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 16)
        self.num_workers = num_workers
        meta = {"spec": self.spec, "fingerprint": self.fingerprint, "num_classes": self.clf.num_classes}
        if (self.dir / "meta.json").is_file() and read_json(self.dir / "meta.json") != meta:
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "meta.json", meta)

    def cached(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in sorted(self.dir.glob("part-*.npz")):
            with np.load(part, allow_pickle=False) as z:
                out.update(zip(z["ids"].tolist(), z["top1"].tolist(), strict=False))
        return out

    def predict(self, ids: Sequence[str], paths: Sequence[str], progress: bool) -> dict[str, int]:
        """Top-1 class of each id (-1 when the image cannot be read), computing only uncached ids."""
        import torch
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from spurious.datasets import ImageDataset, collate_images
        from spurious.extract import default_num_workers

        have = self.cached()
        todo = sorted({i: p for i, p in zip(ids, paths, strict=False) if i not in have}.items())
        if not todo:
            return have
        n_parts = len(list(self.dir.glob("part-*.npz")))
        ds = ImageDataset(kind="list", root="/", spec=f"retrieve-votes:{self.dir}", ids=[p for _, p in todo],
                          labels=[-1] * len(todo), class_names=None, transform=self.clf.preprocessing)
        workers = default_num_workers() if self.num_workers is None else self.num_workers
        part_size = 1024
        was_training = self.clf.training
        self.clf.eval()
        try:
            with torch.inference_mode(), tqdm(total=len(todo), unit="img", desc=f"votes {self.spec}",
                                              disable=not progress, dynamic_ncols=True) as bar:
                for start in range(0, len(todo), part_size):
                    sub = ds.subset(np.arange(start, min(start + part_size, len(todo))))
                    loader = DataLoader(sub, batch_size=self.batch_size, num_workers=workers,
                                        collate_fn=collate_images)
                    top1 = np.full(len(sub), -1, dtype=np.int32)
                    for images, indices, failed in loader:
                        if len(indices):
                            logits = self.clf(images.to(self.device))
                            top1[indices.numpy()] = logits.argmax(1).cpu().numpy()
                        bar.update(len(indices) + len(failed))
                    part_ids = np.array([i for i, _ in todo[start:start + len(sub)]], dtype=str)
                    with atomic_path(self.dir / f"part-{n_parts:05d}.npz") as tmp:
                        with open(tmp, "wb") as fh:
                            np.savez(fh, ids=part_ids, top1=top1)
                    n_parts += 1
                    have.update(zip(part_ids.tolist(), top1.tolist(), strict=False))
        finally:
            self.clf.train(was_training)
        return have


# ---------------------------------------------------------------------------- the stage


@dataclass
class RetrieveResult:
    """Summary of a ``retrieve`` run (what ``--json`` prints).

    Attributes:
        path: the ``WS/retrieve`` folder.
        pool: the pool's feature store; ``pool_rows``: its number of images.
        components: selected ``(k, l)`` pairs; ``source``: where the selection came from.
        voters: voter names; ``min_votes``: ``m``; ``top_n``: ``N``.
        candidates: candidates written, ``per_component``: ``"k/l" -> count``.
        short: components with fewer than ``top_n`` agreed candidates.
        dependence, dependence_margin: the dependence test applied (see :func:`retrieve`).
        reused: a finished run with the same plan was found; ``resumed_rows``: rows skipped thanks
            to a checkpoint.
        rank_seconds / images_per_second: the streamed ranking.
        gallery: the gallery's index page (``None`` without one).
    """

    path: str
    pool: str
    pool_rows: int
    components: int
    source: str
    voters: list[str]
    min_votes: int
    top_n: int
    candidates: int
    per_component: dict[str, int] = field(default_factory=dict)
    short: list[str] = field(default_factory=list)
    reused: bool = False
    resumed_rows: int = 0
    rank_seconds: float = 0.0
    images_per_second: float = 0.0
    seconds: float = 0.0
    gallery: str | None = None
    complete: bool = True
    dependence: str = "none"
    dependence_margin: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        lines = [f"retrieve: {self.candidates} candidates for {self.components} components ({self.source}) "
                 f"from {self.pool_rows} pool images -> {self.path}/candidates.jsonl",
                 f"agreement: >= {self.min_votes} of {len(self.voters)} voters ({', '.join(self.voters)}); "
                 f"{_dependence_text(self.dependence, self.dependence_margin)}; top {self.top_n} per component"]
        if self.reused:
            lines.append("reused a finished run with the same plan")
        else:
            lines.append(f"ranked in {self.rank_seconds:.1f} s ({self.images_per_second:.0f} images/s)"
                         + (f", resumed after {self.resumed_rows} rows" if self.resumed_rows else ""))
        if self.short:
            lines.append(f"{len(self.short)} components have fewer than {self.top_n} agreed candidates: "
                         + ", ".join(self.short[:10]))
        if self.gallery:
            lines.append(f"gallery: {self.gallery}")
        return lines


def _resolve_pool(ws: Workspace, pool: str | os.PathLike[str], pool_split: str) -> Any:
    """The pool's feature store: a split of ``ws`` or ``pool_split`` of another workspace of the same model."""
    text = os.fspath(pool)
    if isinstance(pool, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text) and \
            (ws.features_dir(text) / "manifest.json").is_file():
        return ws.feature_store(text)
    path = Path(text)
    if (path / "manifest.json").is_file():
        other = Workspace.open(path)
        if other.model_fingerprint != ws.model_fingerprint:
            raise IncompatibleArtifactError(
                f"pool workspace {path} ({path / 'manifest.json'}) was extracted with model {other.model_spec!r} "
                f"(fingerprint {other.model_fingerprint}), but workspace {ws.root} has model {ws.model_spec!r} "
                f"(fingerprint {ws.model_fingerprint}); alpha needs the pool's phi from the same model: extract the "
                f"pool into this workspace (`spurious extract {ws.root} --data POOL --split pool`) or pass a pool "
                "workspace of this model")
        return other.feature_store(pool_split)
    have = ", ".join(ws.splits()) or "none"
    raise FileNotFoundError(
        f"pool {text!r} is neither a finished feature split of {ws.root} (finished: {have}) nor a workspace "
        f"directory; extract it first: `spurious extract {ws.root} --data pool:DIR --split pool`")


def _pool_paths_resolver(store: Any) -> Callable[[str], str | None]:
    """Absolute file path of a pool id, from the store's data spec (None for imported features)."""
    from spurious.datasets import DATASET_KINDS

    spec = str(store.manifest["data"].get("spec", ""))
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]+):(.*)", spec, flags=re.S)
    if m is None or m.group(1).lower() not in DATASET_KINDS:
        return lambda _id: None
    kind, target = m.group(1).lower(), Path(m.group(2)).expanduser()
    root = target.parent if kind == "list" else target
    return lambda i: os.path.normpath(os.path.join(root, i))


def _check_voter_workspace(ws: Workspace, path: str | os.PathLike[str]) -> Workspace:
    other = Workspace.open(path)
    if other.num_classes != ws.num_classes:
        raise ValueError(
            f"voter workspace {path} has {other.num_classes} classes, {ws.root} has {ws.num_classes}; voters "
            "must share the workspace's class space (same classes, same order)")
    if other.class_names != ws.class_names:
        warnings.warn(f"voter workspace {path} names its classes differently than {ws.root}; "
                      "votes are counted by class index", stacklevel=3)
    return other


def _voter_store(other: Workspace, pool: Any) -> Any:
    """The voter workspace's features of the pool: the split with the pool's data fingerprint (the same
    listing), else the split of the same name, else ``pool``; images are matched by id either way."""
    from spurious.store import FeatureStore

    for split in other.splits():
        s = FeatureStore(other.features_dir(split))
        if s.data_fingerprint == pool.data_fingerprint:
            return other.feature_store(split)
    for name in (pool.path.name, "pool"):
        if name in other.splits():
            return other.feature_store(name)
    raise FileNotFoundError(
        f"voter workspace {other.root} has no features of the pool: no split with its data fingerprint "
        f"{pool.data_fingerprint} and no split named {pool.path.name!r} or 'pool' (finished: "
        f"{', '.join(other.splits()) or 'none'}); "
        f"extract the same pool images there: `spurious extract {other.root} --data POOL --split {pool.path.name}`")


def _plan_mismatch(out: Path, old: dict[str, Any], new: dict[str, Any]) -> str:
    def model(plan: dict[str, Any]) -> str:
        m = plan.get("model") or {}
        return f"{m.get('spec')!r} (fingerprint {m.get('fingerprint')})"

    def pool(plan: dict[str, Any]) -> str:
        p = plan.get("pool") or {}
        return f"{p.get('store')} (data fingerprint {p.get('data_fingerprint')}, {p.get('rows')} rows)"

    full = {"model": model, "pool": pool}  # never cut: the fingerprints are what differs
    diffs = [f"{k}: {full[k](old)} vs {full[k](new)}" if k in full else
             f"{k}: {json.dumps(old.get(k))[:120]} vs {json.dumps(v)[:120]}" for k, v in new.items() if old.get(k) != v]
    return (f"{out} holds a retrieval made with another plan ({out / 'plan.json'}: "
            f"{'; '.join(diffs) or 'format'}); pass overwrite=True (--overwrite) to replace it")


def _prepare_out(out: Path, plan: dict[str, Any], overwrite: bool) -> None:
    """Like :func:`spurious.workspace.prepare_artifact_dir`, but the vote cache survives an overwrite."""
    plan_path = out / "plan.json"
    if plan_path.is_file():
        old = read_json(plan_path)
        if old == plan:
            return
        if not overwrite:
            raise IncompatibleArtifactError(_plan_mismatch(out, old, plan))
    elif out.exists() and any(p.name != "votes" for p in out.iterdir()) and not overwrite:
        raise IncompatibleArtifactError(f"{out} exists but holds no plan.json; pass overwrite=True (--overwrite)")
    if out.exists():
        for p in out.iterdir():
            if p.name == "votes":
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(plan_path, plan)


def load_candidates(workspace: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The candidates of a finished retrieval, in file order (class, component, rank).

    Each dict has ``class``, ``component``, ``rank``, ``id``, ``path``, ``alpha``, ``votes``, ``models``.

    Raises:
        FileNotFoundError: the workspace has no finished retrieval.
    """
    ws = Workspace.open(workspace)
    out = ws.root / "retrieve"
    if not (out / "manifest.json").is_file():
        raise FileNotFoundError(f"no finished retrieval in {ws.root}; run `spurious retrieve {ws.root}` first")
    with open(out / "candidates.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def retrieve(
    workspace: str | os.PathLike[str],
    *,
    pool: str | os.PathLike[str] = "pool",
    pool_split: str = "pool",
    components: Mapping[int | str, Sequence[int]] | str | os.PathLike[str] | ComponentSet | None = None,
    classes: Sequence[int | str] | None = None,
    top_components: int | None = None,
    agree: Sequence[str | os.PathLike[str]] = (),
    agree_models: Sequence[str] = (),
    self_vote: bool = True,
    min_votes: int = 2,
    dependence: str = "none",
    dependence_margin: float = 0.0,
    top_n: int = 625,
    oversample: int = 4,
    chunk_rows: int = _DEFAULT_CHUNK_ROWS,
    device: Any = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    gallery: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    checkpoint_seconds: float = 60.0,
) -> RetrieveResult:
    """Rank the pool by ``alpha_l^k`` for every selected component and keep the agreed top ``top_n``.

    Args:
        workspace: workspace with neural PCA (``spurious npca``).
        pool: a feature split of ``workspace`` (default ``"pool"``) or another workspace directory of
            the same model, whose split ``pool_split`` is used.
        components, classes, top_components: which ``(k, l)``; see :func:`components_to_retrieve`.
        agree: other workspaces that extracted the same pool images (voters; matched by image id).
        agree_models: model specs run on the shortlisted pool images (voters; cached by image id).
        self_vote: the workspace's own model is a voter (default).
        dependence: ``"none"`` (default: the paper's plain ranking) or ``"flip"``: keep a candidate
            for ``(k, l)`` only when the workspace model's prediction of ``k`` depends on that
            component: ``k`` is its top-1 class and
            ``f_k(x) - max(alpha_l^k(x), 0) < max_{j != k} f_j(x) + dependence_margin``, i.e. removing
            the component's positive part (SpuFix for ``S_k = {l}``) flips the prediction. Uses the
            logits ``extract`` stored (top-k with k >= 2); independent of the voters.
        dependence_margin: logits added to the runner-up in the ``flip`` test (0: a strict flip;
            larger values also keep candidates that the removal brings within this many logits of
            flipping).
        min_votes: ``m``: a candidate needs at least ``m`` voters predicting its class (default 2).
        top_n: ``N``: candidates kept per component (default 625, the curate queue).
        oversample: shortlist ``top_n * oversample`` per component for ``agree_models`` voters.
        chunk_rows: pool rows per matrix product (memory ~ ``chunk_rows * D * 4 B * 3``).
        device: where ``agree_models`` run (``auto``/``cpu``/``cuda``); ranking runs on the CPU.
        batch_size, num_workers: for ``agree_models`` (default 64 on GPU / 16 on CPU; CPUs up to 8).
        gallery: write the HTML gallery.
        overwrite: replace a retrieval made with another plan.
        progress: progress bars on stderr.
        checkpoint_seconds: save the running state at most this often (resume after a kill).

    Returns:
        A :class:`RetrieveResult`; ``complete`` is False on non-zero torchrun ranks.

    Raises:
        FileNotFoundError: no workspace, no neural PCA, or no pool features.
        ValueError: bad counts, no components, fewer than ``min_votes`` voters, a voter with another
            class space, or a voter that is the workspace's own model.
        IncompatibleArtifactError: the pool was extracted with another model, or ``WS/retrieve``
            holds a run with another plan (without ``overwrite``).
    """
    from spurious._dist import barrier, init_distributed, on_main_rank
    from spurious.npca import load_npca

    t0 = time.perf_counter()
    min_votes = _check_count("min_votes", min_votes)
    top_n = _check_count("top_n", top_n)
    if dependence not in DEPENDENCE_TESTS:
        raise ValueError(f"dependence must be one of {', '.join(map(repr, DEPENDENCE_TESTS))}, got {dependence!r}")
    if isinstance(dependence_margin, bool) or not isinstance(dependence_margin, (int, float, np.integer, np.floating)) \
            or not np.isfinite(dependence_margin):
        raise ValueError(f"dependence_margin must be a finite number of logits, got {dependence_margin!r}")
    dependence_margin = float(dependence_margin)
    if dependence == "none" and dependence_margin != 0.0:
        raise ValueError("dependence_margin only applies with dependence='flip' (--dependence flip)")
    oversample = _check_count("oversample", oversample)
    chunk_rows = _check_count("chunk_rows", chunk_rows)
    ws = Workspace.open(workspace)
    pca = load_npca(ws.root)
    sel, source = components_to_retrieve(ws, components=components, classes=classes, top_components=top_components)
    store = _resolve_pool(ws, pool, pool_split)
    info = init_distributed(_cpu())

    # ---- voters
    voters: list[Voter] = []
    if self_vote:
        voters.append(Voter("self", "self", ws.model_spec, ws.model_fingerprint, str(ws.root)))
    other_ws = []
    for path in agree:
        other = _check_voter_workspace(ws, path)
        if other.model_fingerprint == ws.model_fingerprint:
            raise ValueError(
                f"voter workspace {path} ({Path(path) / 'manifest.json'}: model {other.model_spec!r}, fingerprint "
                f"{other.model_fingerprint}) has the model of workspace {ws.root} ({ws.model_spec!r}, fingerprint "
                f"{ws.model_fingerprint}), which is already the 'self' voter: pass workspaces of other models")
        other_ws.append(other)
        voters.append(Voter(str(path), "workspace", other.model_spec, other.model_fingerprint, str(other.root)))
    model_voters = []
    for spec in agree_models:  # loaded now, so that a bad spec fails before the long scan
        mv = _ModelVotes(spec, ws.root / "retrieve" / "votes", ws, device, batch_size, num_workers)
        if mv.fingerprint == ws.model_fingerprint:
            raise ValueError(
                f"voter model {mv.spec!r} (fingerprint {mv.fingerprint}) is the model of workspace {ws.root} "
                f"({ws.model_spec!r}, fingerprint {ws.model_fingerprint}), which is already the 'self' voter: "
                "pass models other than the workspace's own")
        model_voters.append(mv)
        voters.append(Voter(str(spec), "model", mv.spec, mv.fingerprint, str(mv.dir)))
    fps = [v.fingerprint for v in voters]
    if len(set(fps)) != len(fps):
        raise ValueError(f"the same model appears twice among the voters ({', '.join(v.name for v in voters)}); "
                         "each model votes once")
    if len(voters) < min_votes:
        raise ValueError(
            f"min_votes={min_votes} but only {len(voters)} voter(s) ({', '.join(v.name for v in voters) or 'none'}); "
            "add voters with --agree WS2 (a workspace of another model that extracted the same pool) or "
            "--agree-model SPEC, or lower --min-votes")
    voter_stores = [_voter_store(o, store) for o in other_ws]

    pairs = [(k, l) for k, comps in sel.items() for l in comps]
    lazy = len(agree_models) > 0
    keep = top_n * oversample if lazy else top_n
    plan: dict[str, Any] = {
        "format": _FORMAT, "version": _VERSION,
        "model": {"spec": ws.model_spec, "fingerprint": ws.model_fingerprint},
        "pool": {"store": str(store.path.resolve()), "data_fingerprint": store.data_fingerprint, "rows": len(store)},
        "components": {str(k): v for k, v in sel.items()},
        "voters": [{"kind": v.kind, "name": v.name, "fingerprint": v.fingerprint or None,
                    "data": s.data_fingerprint if s is not None else None}
                   for v, s in zip(voters, [None] * int(self_vote) + voter_stores + [None] * len(agree_models), strict=False)],
        "min_votes": min_votes, "top_n": top_n, "keep": keep,
        "dependence": {"test": dependence, "margin": dependence_margin},
    }
    out = ws.root / "retrieve"
    on_main_rank(lambda: _prepare_out(out, plan, overwrite))
    if (out / "manifest.json").is_file():
        return _reused_result(out)

    # ---- votes of the precomputed voters, aligned to pool rows by image id
    key_cache: list[np.ndarray] = []

    def pool_keys() -> np.ndarray:
        if not key_cache:
            key_cache.append(_id_keys(store))
        return key_cache[0]

    dep_top1, dep_gap = _top1_and_gap(store) if dependence == "flip" else (None, None)
    pre_top1 = []
    if self_vote:
        pre_top1.append(dep_top1 if dep_top1 is not None else _top1(store))
    for v, s in zip(voters[int(self_vote):], voter_stores, strict=False):
        t1, matched = _aligned_top1(store, s, pool_keys)
        if matched == 0:
            raise ValueError(f"voter workspace {v.name}: none of its {len(s)} images (split {s.path.name!r}) has "
                             f"an id of the pool {store.path}; it must extract the same pool images")
        if matched < len(store):
            warnings.warn(f"voter workspace {v.name} covers {matched} of {len(store)} pool images; it does not vote "
                          "on the others", stacklevel=2)
        pre_top1.append(t1)
    T = np.stack(pre_top1) if pre_top1 else np.zeros((0, len(store)), np.int32)  # [V_pre, N]
    need = min_votes - len(agree_models)  # votes an image needs from the precomputed voters
    col_class = np.array([k for k, _ in pairs], dtype=np.int64)
    uniq, col_pos = np.unique(col_class, return_inverse=True)

    def eligible(rows: np.ndarray) -> np.ndarray:
        t = T[:, rows]  # [V_pre, n]
        votes = (t[None, :, :] == uniq[:, None, None]).sum(axis=1)  # [classes, n]
        return votes >= need

    # ---- stream the pool (this rank's shards), with checkpoints
    A_parts, c_parts = [], []
    for k, comps in sel.items():
        Ak, ck = pca[k].projection(comps)
        A_parts.append(Ak)
        c_parts.append(ck)
    A = np.concatenate(A_parts).astype(np.float32)
    c32 = np.concatenate(c_parts).astype(np.float32)
    shards = _shard_table(store)
    positions = list(range(info.rank, len(shards), info.world_size))
    state_path = out / "state" / f"rank-{info.rank:05d}-of-{info.world_size:05d}.npz"
    top = _TopK(len(pairs), keep)
    start, resumed = _load_state(state_path, top, shards, positions)
    last_save = [time.perf_counter()]

    def checkpoint(cursor: tuple[int, int], force: bool = False) -> None:
        if force or time.perf_counter() - last_save[0] >= checkpoint_seconds:
            _save_state(state_path, top, cursor)
            last_save[0] = time.perf_counter()

    dep_filter = None
    if dep_top1 is not None and dep_gap is not None:
        def dep_filter(scores: np.ndarray, rows: np.ndarray, first: int) -> np.ndarray:
            # float32 alpha here: lenient by 1e-3 logits so that no row passing the exact float64 test
            # (applied again below) is lost; a lenient-only row costs a slot at worst
            g = dep_gap[rows].astype(np.float32)
            cut = g - np.float32(dependence_margin) - np.float32(1e-3) * (1 + np.abs(g))
            ks = col_class[first:first + scores.shape[0], None]
            return (dep_top1[rows][None, :] == ks) & (np.maximum(scores, 0) > cut[None, :])

    t_rank = time.perf_counter()
    scanned = _scan(shards, positions, A, c32, top, store.dim, chunk_rows, eligible if need > 0 else None,
                    col_pos, progress and info.is_main, start, checkpoint, score_filter=dep_filter)
    checkpoint((len(positions), 0), force=True)
    rank_seconds = time.perf_counter() - t_rank
    barrier()
    if not info.is_main:
        return RetrieveResult(str(out), str(store.path), len(store), len(pairs), source, [v.name for v in voters],
                              min_votes, top_n, 0, complete=False)
    for r in range(1, info.world_size):
        with np.load(out / "state" / f"rank-{r:05d}-of-{info.world_size:05d}.npz") as z:
            top.merge(z["values"], z["rows"])
    rows, _ = top.sorted()

    # ---- exact alphas, lazy votes, agreement, top N
    paths_of = _pool_paths_resolver(store)
    shortlist = np.unique(rows[rows >= 0])
    ids_of = _ids_of_rows(store, shortlist)
    lazy_top1 = []
    if lazy:
        missing = [r for r in shortlist.tolist() if paths_of(ids_of[r]) is None]
        if missing:
            raise ValueError(f"pool {store.path} was imported without image files; --agree-model needs the images")
        for mv in model_voters:
            preds = mv.predict([ids_of[r] for r in shortlist.tolist()],
                               [paths_of(ids_of[r]) for r in shortlist.tolist()], progress)  # type: ignore[misc]
            lazy_top1.append({r: preds.get(ids_of[r], -1) for r in shortlist.tolist()})
    records: list[dict[str, Any]] = []
    per_component: dict[str, int] = {}
    short: list[str] = []
    j = 0
    for k, comps in sel.items():
        for l in comps:
            cand = rows[j][rows[j] >= 0]
            a = pca[k].alpha(store.phi(cand), [l])[:, 0] if cand.size else np.zeros(0)
            order = np.lexsort((cand, -a))
            cand, a = cand[order], a[order]
            votes = (T[:, cand] == k).sum(axis=0) if T.shape[0] else np.zeros(cand.size, np.int64)
            for lt in lazy_top1:
                votes = votes + np.array([lt[int(r)] == k for r in cand], dtype=np.int64)
            ok = votes >= min_votes
            if dep_top1 is not None and dep_gap is not None:  # the exact dependence test, on the float64 alpha
                ok &= (dep_top1[cand] == k) & (np.maximum(a, 0) > dep_gap[cand].astype(np.float64) - dependence_margin)
            cand, a, votes = cand[ok][:top_n], a[ok][:top_n], votes[ok][:top_n]
            for rank, (r, av, nv) in enumerate(zip(cand.tolist(), a.tolist(), votes.tolist(), strict=False)):
                records.append({"class": k, "component": l, "rank": rank, "id": ids_of[r], "path": paths_of(ids_of[r]),
                                "alpha": float(av), "votes": int(nv), "models": len(voters)})
            per_component[f"{k}/{l}"] = int(cand.size)
            if cand.size < top_n:
                short.append(f"{k}/{l}: {cand.size}")
            j += 1
    if lazy and short:
        warnings.warn(f"{len(short)} components have fewer than {top_n} agreed candidates among their shortlist of "
                      f"{keep}; a larger oversample (now {oversample}) may find more", stacklevel=2)
    with atomic_path(out / "candidates.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
    if gallery:
        _write_gallery(out / "gallery", ws, sel, records, per_component, voters, min_votes,
                       _dependence_text(dependence, dependence_margin))
    seconds = time.perf_counter() - t0
    result = RetrieveResult(
        path=str(out), pool=str(store.path), pool_rows=len(store), components=len(pairs), source=source,
        voters=[v.name for v in voters], min_votes=min_votes, top_n=top_n, candidates=len(records),
        per_component=per_component, short=short, reused=False, resumed_rows=resumed,
        rank_seconds=round(rank_seconds, 3), images_per_second=round(scanned / max(rank_seconds, 1e-9), 1),
        seconds=round(seconds, 3), gallery=str(out / "gallery" / "index.html") if gallery else None,
        dependence=dependence, dependence_margin=dependence_margin)
    manifest = {
        "format": _FORMAT, "version": _VERSION, "package_version": __version__, "created": utc_now(),
        "model": plan["model"], "pool": {**plan["pool"], "spec": store.manifest["data"].get("spec")},
        "source": source, "components": plan["components"], "voters": [v.to_dict() for v in voters],
        "min_votes": min_votes, "top_n": top_n, "keep": keep, "dependence": plan["dependence"],
        "world_size": info.world_size,
        "args": {"pool": os.fspath(pool), "pool_split": pool_split, "self_vote": self_vote, "oversample": oversample,
                 "chunk_rows": chunk_rows},
        "result": result.to_dict(),
    }
    write_json(out / "manifest.json", manifest)
    shutil.rmtree(out / "state", ignore_errors=True)
    return result


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def _ids_of_rows(store: Any, rows: np.ndarray) -> dict[int, str]:
    """Image ids of a few rows, streamed from the index (never the whole id list in memory)."""
    want = set(int(r) for r in rows.tolist())
    out: dict[int, str] = {}
    if not want:
        return out
    last = max(want)
    for i, rec in enumerate(_iter_index(store)):
        if i in want:
            out[i] = rec["id"]
        if i >= last:
            break
    return out


def _save_state(path: Path, top: _TopK, cursor: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, values=top.values, rows=top.rows, cursor=np.array(cursor, dtype=np.int64))


def _load_state(path: Path, top: _TopK, shards: list[tuple[Path, int, int]],
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


def _reused_result(out: Path) -> RetrieveResult:
    fields = dict(read_json(out / "manifest.json")["result"])
    fields["reused"] = True
    return RetrieveResult(**fields)


def _dependence_text(test: str, margin: float) -> str:
    if test == "none":
        return "no dependence test"
    return "the prediction must flip without the component" + (f" (margin {margin:g} logits)" if margin else "")


def _write_gallery(root: Path, ws: Workspace, sel: dict[int, list[int]], records: list[dict[str, Any]],
                   per_component: dict[str, int], voters: list[Voter], min_votes: int, dependence: str,
                   thumbs: int = 100) -> None:
    """``gallery/index.html`` plus one page per component with its top candidates (thumbnails link the files)."""
    from spurious import _html as H

    by_comp: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for rec in records:
        by_comp.setdefault((rec["class"], rec["component"]), []).append(rec)
    names = ws.class_names
    rows = []
    for k, comps in sel.items():
        for l in comps:
            page = f"class_{k:05d}_l{l:04d}.html"
            recs = by_comp.get((k, l), [])
            figs = []
            for rec in recs[:thumbs]:
                cap = f"#{rec['rank']} a={rec['alpha']:.2f} v={rec['votes']}/{rec['models']}"
                if rec["path"]:
                    try:
                        src = os.path.relpath(rec["path"], root)
                    except ValueError:  # another drive (Windows): link the file itself
                        src = Path(rec["path"]).as_uri()
                    figs.append(H.img(src, rec["id"], width=96, caption=cap))
                else:
                    figs.append(f"<figure><figcaption>{H.esc(rec['id'])}<br>{H.esc(cap)}</figcaption></figure>")
            more = f"<p class=\"muted\">showing {min(len(recs), thumbs)} of {len(recs)}</p>"
            H.write_page(root / page, f"class {k} ({names[k]}), component {l}",
                         f"<div class=\"row\">{''.join(figs)}</div>{more}",
                         subtitle=f"pool images ranked by alpha, kept when >= {min_votes} of {len(voters)} "
                                  f"models predict the class; {dependence}")
            rows.append([f"{k} {names[k]}", l, per_component.get(f"{k}/{l}", 0), H.link(page, "open")])
    body = H.table(["class", "component", "candidates", "gallery"], rows, html_cols=(3,))
    H.write_page(root / "index.html", "retrieved candidates", body,
                 subtitle=f"voters: {', '.join(v.name for v in voters)} (>= {min_votes}); {dependence}")
