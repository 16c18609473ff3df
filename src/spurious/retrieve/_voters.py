"""Voters: models whose top-1 prediction on a pool image is a vote for that class.

``self`` (the workspace's model, predictions stored by ``extract``), other workspaces that
extracted the same pool (matched by image id), and models run here on the shortlisted images
(:class:`ModelVotes`, cached by image id).
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spurious._io import atomic_path, read_json, write_json
from spurious.workspace import Workspace

if TYPE_CHECKING:
    import torch

    from spurious.store import FeatureStore

__all__ = ["Voter"]


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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:60] or "model"


class ModelVotes:
    """Top-1 predictions of a model on pool images, cached by image id in ``cache_dir`` (resumable)."""

    def __init__(self, spec: str, cache_root: Path, ws: Workspace, device: str | torch.device | None, batch_size: int | None,
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


def check_voter_workspace(ws: Workspace, path: str | os.PathLike[str]) -> Workspace:
    other = Workspace.open(path)
    if other.num_classes != ws.num_classes:
        raise ValueError(
            f"voter workspace {path} has {other.num_classes} classes, {ws.root} has {ws.num_classes}; voters "
            "must share the workspace's class space (same classes, same order)")
    if other.class_names != ws.class_names:
        warnings.warn(f"voter workspace {path} names its classes differently than {ws.root}; "
                      "votes are counted by class index", stacklevel=4)
    return other


def voter_store(other: Workspace, pool: FeatureStore) -> FeatureStore:
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
