"""The workspace: one directory per (model, datasets) audit, shared by every stage.

Layout (see the README)::

    WS/manifest.json          model spec, fingerprint, label space, package version
    WS/head.safetensors       the model's linear head W [K, D], b [K] (float32)
    WS/features/<split>/      feature store written by ``extract`` (see :mod:`spurious.store`)
    WS/npca/                  class-wise neural PCA written by ``npca``

Stages refuse to mix artifacts of different models or datasets: every artifact records the
model fingerprint (a hash of all weights, the preprocessing and the class names) and the data
fingerprint it was made from.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spurious import __version__
from spurious._io import (
    FINGERPRINT_SCHEME,
    JSONDict,
    atomic_path,
    head_fingerprint,
    read_json,
    sha256_strings,
    utc_now,
    write_json,
)
from spurious.store import FeatureStore, finalize_store, plan_hash, write_shard

if TYPE_CHECKING:
    import torch

    from spurious.models import Classifier

__all__ = ["IncompatibleArtifactError", "Workspace", "head_fingerprint", "import_features", "prepare_artifact_dir"]

_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class IncompatibleArtifactError(ValueError):
    """An artifact was made with another model, dataset or feature dimension than this run uses."""


class Workspace:
    """Handle on a workspace directory.

    Use :meth:`create` (first stage that knows the model) or :meth:`open` (every later stage).
    """

    def __init__(self, root: Path, manifest: JSONDict) -> None:
        self.root = root
        self.manifest = manifest

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Workspace:
        """Open an existing workspace; ``FileNotFoundError`` when it was never created."""
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{root} is not a spurious workspace (no manifest.json); "
                "create one with `spurious extract WS --model SPEC --data DATA`"
            )
        manifest = read_json(path)
        if manifest.get("format") != "spurious-workspace":
            raise ValueError(f"{path} is not a spurious workspace manifest (format={manifest.get('format')!r})")
        return cls(root, manifest)

    @classmethod
    def create(cls, root: str | os.PathLike[str], classifier: Classifier) -> Workspace:
        """Open ``root`` for ``classifier`` (a :class:`spurious.models.Classifier`), creating it if new.

        Raises:
            IncompatibleArtifactError: the workspace exists and was made with another model.
        """
        W, b = (t.detach().float().cpu().numpy() for t in classifier.head())
        stated: JSONDict = {
            "preprocessing_source": classifier.preprocessing_source,
            "class_names_source": classifier.class_names_source,
            "config_file": classifier.config_path,
        }
        if classifier.random_weights_seed is not None:  # every later stage recreates the same random weights
            stated["random_weights_seed"] = classifier.random_weights_seed
        return cls.create_from_head(root, W, b, spec=classifier.spec, class_names=classifier.class_names,
                                    fingerprint=classifier.fingerprint(),
                                    preprocessing=classifier.preprocessing.to_dict(), model_info=stated)

    @classmethod
    def create_from_head(cls, root: str | os.PathLike[str], W: np.ndarray, b: np.ndarray, *, spec: str,
                         class_names: list[str] | None = None, fingerprint: str | None = None,
                         preprocessing: JSONDict | None = None,
                         model_info: JSONDict | None = None) -> Workspace:
        """Open or create a workspace from a bare linear head ``W`` [K, D], ``b`` [K].

        For features computed elsewhere (see :func:`import_features`). The
        fingerprint defaults to :func:`head_fingerprint` of ``W, b``; ``model_info`` adds keys to the
        manifest's ``model`` record (where the preprocessing and class names were stated).
        """
        root = Path(root)
        W = np.ascontiguousarray(W, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
        if W.ndim != 2 or b.shape != (W.shape[0],):
            raise ValueError(f"head must be W [K, D] and b [K], got {W.shape} and {b.shape}")
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(W.shape[0])]
        if len(names) != W.shape[0]:
            raise ValueError(f"{len(names)} class names for a head with {W.shape[0]} classes")
        model = {
            "spec": spec,
            "fingerprint": fingerprint or head_fingerprint(W, b),
            "num_classes": int(W.shape[0]),
            "num_features": int(W.shape[1]),
            "class_names_hash": sha256_strings(names),
            "preprocessing": preprocessing,
            "fingerprint_scheme": FINGERPRINT_SCHEME if fingerprint else 0,
            **(model_info or {}),
        }
        if (root / "manifest.json").is_file():
            ws = cls.open(root)
            ws.check_model(model["fingerprint"], spec)
            return ws
        if root.exists() and not root.is_dir():
            raise ValueError(f"workspace path {root} exists and is not a directory; pick another path")
        root.mkdir(parents=True, exist_ok=True)
        from safetensors.numpy import save_file

        with atomic_path(root / "head.safetensors") as tmp:
            save_file({"W": W, "b": b}, str(tmp))
        manifest = {
            "format": "spurious-workspace",
            "version": 1,
            "package_version": __version__,
            "created": utc_now(),
            "model": model,
            "class_names": names,
        }
        write_json(root / "manifest.json", manifest)
        return cls(root, manifest)

    # ------------------------------------------------------------------ model facts
    @property
    def model_spec(self) -> str:
        return str(self.manifest["model"]["spec"])

    @property
    def model_fingerprint(self) -> str:
        return str(self.manifest["model"]["fingerprint"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["model"]["num_classes"])

    @property
    def num_features(self) -> int:
        return int(self.manifest["model"]["num_features"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """The model's linear head: ``W`` float32 [K, D] and ``b`` float32 [K]."""
        from safetensors.numpy import load_file

        tensors = load_file(str(self.root / "head.safetensors"))
        return tensors["W"], tensors["b"]

    @property
    def preprocessing(self) -> JSONDict | None:
        """The preprocessing the workspace's model was used with (``Preprocessing.to_dict``), if recorded."""
        pre = self.manifest["model"].get("preprocessing")
        return None if pre is None else dict(pre)

    def load_model(self, *, device: str | torch.device | None = None, pretrained: bool = True) -> Classifier:
        """The workspace's model, loaded with the preprocessing and class names it was recorded with.

        Returns a :class:`spurious.models.Classifier` whose fingerprint is checked against the
        manifest (the checkpoint file may have changed since). A workspace made with random weights
        (``extract --random-weights``) records their seed, and gets the same random weights back
        (nothing is downloaded).

        Raises:
            IncompatibleArtifactError: the loaded model is not the one the workspace was made with.
        """
        from spurious.models import Preprocessing, load_model

        pre = self.preprocessing
        seed = self.manifest["model"].get("random_weights_seed")
        clf = load_model(
            self.model_spec, device=device, pretrained=pretrained and seed is None, class_names=self.class_names,
            preprocessing=None if pre is None else Preprocessing.from_dict(pre),
            seed=None if seed is None else int(seed),
        )
        if pre is not None:
            clf.preprocessing_source = str(self.manifest["model"].get("preprocessing_source") or "workspace manifest")
        clf.class_names_source = str(self.manifest["model"].get("class_names_source") or clf.class_names_source)
        self.check_model(clf.fingerprint(), clf.spec, what="the model loaded for it now")
        return clf

    def check_model(self, fingerprint: str, spec: str | None = None, *, what: str = "this run's model") -> None:
        """Raise :class:`IncompatibleArtifactError` unless ``fingerprint`` is this workspace's model.

        Args:
            fingerprint: the other model's fingerprint.
            spec: its spec, for the message.
            what: what the other model is, for the message (e.g. ``"the features of split train"``).
        """
        if fingerprint == self.model_fingerprint:
            return
        scheme = self.manifest["model"].get("fingerprint_scheme")
        if scheme is None and self.manifest["model"].get("preprocessing") is not None:
            old = ("; the workspace was made by an older spurious whose fingerprint covered only the head: "
                   "extract again into a new workspace directory")
        else:
            old = ""
        raise IncompatibleArtifactError(
            f"workspace {self.root} was made with model {self.model_spec!r} "
            f"(fingerprint {self.model_fingerprint}); {what} is "
            f"{spec or 'another model'!r} (fingerprint {fingerprint}): the weights, the preprocessing or the "
            f"class names differ (compare `spurious model SPEC` with {self.root}/manifest.json); "
            f"use a separate workspace directory per model{old}"
        )

    def resolve_class(self, k: int | str) -> int:
        """Class index from an index or a class name; ``ValueError`` naming the valid range."""
        names = self.class_names
        if isinstance(k, str) and not k.lstrip("-").isdigit():
            if k in names:
                return names.index(k)
            import difflib

            close = difflib.get_close_matches(k, names, n=5)
            hint = f"; did you mean: {', '.join(close)}" if close else ""
            raise ValueError(f"unknown class {k!r}{hint} (classes are 0..{len(names) - 1} or their names)")
        idx = int(k)
        if not 0 <= idx < len(names):
            raise ValueError(f"unknown class {idx}: this model has classes 0..{len(names) - 1}")
        return idx

    # ------------------------------------------------------------------ artifact paths
    def features_dir(self, split: str) -> Path:
        if not _SPLIT_RE.match(split):
            raise ValueError(f"invalid split name {split!r}: use letters, digits, '_', '-' or '.'")
        return self.root / "features" / split

    def splits(self) -> list[str]:
        """Names of the feature splits that finished extracting."""
        base = self.root / "features"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "manifest.json").is_file())

    @property
    def npca_dir(self) -> Path:
        return self.root / "npca"

    def feature_store(self, split: str) -> FeatureStore:
        """Open the finished feature store of ``split`` (a :class:`spurious.store.FeatureStore`)."""
        path = self.features_dir(split)
        if not (path / "manifest.json").is_file():
            have = ", ".join(self.splits()) or "none"
            raise FileNotFoundError(
                f"no finished features for split {split!r} in {self.root} (finished splits: {have}); "
                f"run `spurious extract {self.root} --data DATA --split {split}` first"
            )
        store = FeatureStore(path)
        self.check_model(store.model_fingerprint, store.manifest["model"].get("spec"),
                         what=f"the model of its features {path}")
        from spurious.agreement import report_agreement

        report_agreement(store.agreement, what=f"{path} ({store.manifest['data'].get('spec')})",
                         hint=f"spurious model {self.model_spec}")
        return store


def prepare_artifact_dir(out: Path, plan: JSONDict, *, overwrite: bool,
                         mismatch: Callable[[JSONDict], str]) -> None:
    """Make ``out`` ready for an artifact described by ``plan`` (recorded in ``out/plan.json``).

    A directory made under the same plan is kept (its finished parts are resumed); one made under
    another plan, or a non-empty one without a plan, is refused unless ``overwrite``, which
    deletes it.

    Raises:
        IncompatibleArtifactError: with ``mismatch(old_plan)`` as the message (or a note that the
            directory holds no plan).
    """
    plan_path = out / "plan.json"
    if plan_path.is_file():
        old = read_json(plan_path)
        if old != plan:
            if not overwrite:
                raise IncompatibleArtifactError(mismatch(old))
            shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise IncompatibleArtifactError(f"{out} exists but holds no plan.json; pass overwrite=True (--overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not plan_path.is_file():
        write_json(plan_path, plan)


def import_features(workspace: str | os.PathLike[str], phi: np.ndarray, labels: Sequence[int] | np.ndarray,
                    ids: Sequence[str], *, split: str = "train", dtype: str = "float16", topk: int = 5,
                    shard_size: int = 4096, data_spec: str = "import", chunk_rows: int = 65536) -> FeatureStore:
    """Write features computed elsewhere into ``WS/features/<split>`` (the workspace must hold the head).

    Top-k predictions are computed from the workspace head. ``phi`` may be a memmap: it is read
    ``shard_size`` rows at a time. Rows are stored in the given order; ``ids`` must be unique.

    Args:
        workspace: a workspace made by :meth:`Workspace.create_from_head` (or extract).
        phi: [N, D] features; ``labels``: [N] ints (-1 = unlabeled); ``ids``: [N] unique image ids.
    """
    ws = Workspace.open(workspace)
    phi_shape = tuple(phi.shape)
    labels = np.asarray(labels, dtype=np.int64)
    ids = list(ids)
    if len(phi_shape) != 2 or phi_shape[1] != ws.num_features:
        raise ValueError(f"feature dimension mismatch: phi has shape {phi_shape}, the workspace model has "
                         f"D={ws.num_features}")
    if labels.shape != (phi_shape[0],) or len(ids) != phi_shape[0]:
        raise ValueError(f"labels ({labels.shape[0]}) and ids ({len(ids)}) must have one entry per row of phi "
                         f"({phi_shape[0]})")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    W, b = ws.head()
    k = min(topk, W.shape[0])
    n = phi_shape[0]
    n_shards = -(-n // shard_size)
    plan = {"model": {"spec": ws.model_spec, "fingerprint": ws.model_fingerprint},
            "data": {"spec": data_spec, "kind": "import", "fingerprint": sha256_strings(
                f"{i}\t{int(y)}" for i, y in zip(ids, labels, strict=False)), "num_records": n},
            "dim": ws.num_features, "dtype": dtype, "topk": k, "shard_size": shard_size}
    phash = plan_hash(plan)
    out = ws.features_dir(split)
    if out.exists():
        raise ValueError(f"{out} already exists; pick another split name")
    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True)
    write_json(out / "plan.json", plan)
    for i in range(n_shards):
        start, stop = i * shard_size, min((i + 1) * shard_size, n)
        x = np.asarray(phi[start:stop], dtype=np.float32)
        logits = x @ W.T + b
        idx = np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int32)
        top = np.take_along_axis(logits, idx, 1).astype(np.float32)
        m = logits.max(1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(1))).astype(np.float32)
        write_shard(shards_dir, i, {"phi": x.astype(dtype), "rows": np.arange(start, stop, dtype=np.int64),
                                    "topk_index": idx, "topk_logit": top, "logsumexp": lse},
                    {"start": start, "stop": stop, "rows": stop - start, "failed": [], "plan": phash})
    return finalize_store(out, plan, phash, n_shards, lambda r: (ids[r], int(labels[r])))
