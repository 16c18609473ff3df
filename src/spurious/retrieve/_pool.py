"""The pool: its feature store, image ids and files, and the top-1 predictions stored with it."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spurious._io import sha256_file
from spurious.workspace import IncompatibleArtifactError, Workspace

if TYPE_CHECKING:
    from spurious.store import FeatureStore


def resolve_pool(ws: Workspace, pool: str | os.PathLike[str], pool_split: str) -> FeatureStore:
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


def pool_paths_resolver(store: FeatureStore) -> Callable[[str], str | None]:
    """Absolute file path of a pool id, from the store's data spec (None for imported features)."""
    from spurious.datasets import DATASET_KINDS

    spec = str(store.manifest["data"].get("spec", ""))
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]+):(.*)", spec, flags=re.S)
    if m is None or m.group(1).lower() not in DATASET_KINDS:
        return lambda _id: None
    kind, target = m.group(1).lower(), Path(m.group(2)).expanduser()
    root = target.parent if kind == "list" else target
    return lambda i: os.path.normpath(os.path.join(root, i))


def iter_index(store: FeatureStore) -> Iterator[dict[str, Any]]:
    with open(store.path / "index.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def id_keys(store: FeatureStore) -> np.ndarray:
    """uint64 key of every row's image id (8 bytes of blake2b), streamed from the index."""
    keys = np.empty(len(store), dtype=np.uint64)
    for i, rec in enumerate(iter_index(store)):
        keys[i] = int.from_bytes(hashlib.blake2b(rec["id"].encode("utf-8"), digest_size=8).digest(), "little")
    return keys


def ids_of_rows(store: FeatureStore, rows: np.ndarray) -> dict[int, str]:
    """Image ids of a few rows, streamed from the index (never the whole id list in memory)."""
    want = set(int(r) for r in rows.tolist())
    out: dict[int, str] = {}
    if not want:
        return out
    last = max(want)
    for i, rec in enumerate(iter_index(store)):
        if i in want:
            out[i] = rec["id"]
        if i >= last:
            break
    return out


def stored_top1(store: FeatureStore) -> np.ndarray:
    """int32 [N]: each row's top-1 predicted class (read shard by shard)."""
    parts = [store.topk(np.arange(sh.start_row, sh.start_row + sh.rows), logits=True)[0][:, 0]
             for sh in store.shard_table()]
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


def top1_and_gap(store: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
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


def aligned_top1(pool: FeatureStore, other: FeatureStore, pool_keys: Callable[[], np.ndarray]) -> tuple[np.ndarray, int]:
    """``other``'s top-1 for every pool row, matched by image id (-1 where ``other`` lacks the id)."""
    top1 = stored_top1(other)
    if sha256_file(pool.path / "index.jsonl") == sha256_file(other.path / "index.jsonl"):
        return top1, len(pool)  # same ids in the same rows: no join needed
    okeys = id_keys(other)
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
