"""DFR, the retraining baseline beside SpuFix: a new last layer fitted on a small group-balanced held-out set.

Deep Feature Reweighting (Kirichenko, Izmailov, Wilson 2022, "Last Layer Re-Training is Sufficient for
Robustness to Spurious Correlations", ICLR 2023; their ``dfr_evaluate_spurious.py``, DFR on validation
data): keep the features ``phi`` of the trained model, throw away its last layer and fit a new one, a
logistic regression on standardised ``phi`` of a held-out set whose groups (class x spurious
attribute, :mod:`spurious.groups`) are balanced by subsampling. Their recipe, followed here:

1. **C search** on half of the held-out set: split it in two halves (here per group, so that every group
   is in both); subsample every group of the first half to the size of its smallest group; standardise
   with the mean and standard deviation of that subsample; for every ``C`` of ``C_GRID`` = (1, 0.7, 0.3,
   0.1, 0.07, 0.03, 0.01) fit an L1-regularised logistic regression (liblinear); keep the ``C`` with the
   best worst-group accuracy on the second half (the first of the grid on ties).
2. **Final head**: ``retrains`` = 20 times, subsample every group of the whole held-out set to the size
   of its smallest group and fit with that ``C``; average the weights and intercepts.

Where this differs from their code: the final standardisation uses the whole held-out set (theirs the
training-set embeddings, which a user of this package may not have extracted); the halves of the C
search are drawn per group (theirs: one random half of the whole set, which can leave a small group
out of a half), and the search is done once (their ``num_retrains=1`` default); the class weights they
also searched for DFR on training data are not searched (their DFR-on-validation with balanced groups
uses equal weights too). For more than two classes liblinear fits one-vs-rest (one binary problem
per class) as their code did through scikit-learn; for two classes one binary fit, exported as the
logits ``(-z/2, z/2)`` so that the softmax is the fitted sigmoid.

The head: ``logits = W' phi + b'`` with the standardisation folded in, ``W' = W / s`` and ``b' = b - W' m``
(``m``, ``s`` the mean and standard deviation of the standardisation; ``s = 1`` where it is 0), stored
as a :class:`~spurious.fix.LastLayerHead` (``WS/dfr/dfr.safetensors``, the SpuFix artifact format,
kind ``"dfr"``), so ``score --fix`` and ``fix export`` take it like a SpuFix head.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spurious import __version__
from spurious._io import JSONDict, utc_now
from spurious.fix import (
    DFR_FILE,
    FixResult,
    LastLayerHead,
    _check_precision,
    _model_meta,
    _prepare_out,
    _write,
)
from spurious.groups import group_metrics, match_groups, read_groups
from spurious.workspace import Workspace

__all__ = ["C_GRID", "DFRFit", "DFRResult", "dfr", "fit_dfr"]

C_GRID: tuple[float, ...] = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
"""The inverse L1 strengths DFR searched on Waterbirds (their ``C_OPTIONS``)."""


@dataclass
class DFRFit:
    """A fitted DFR head in raw feature space: ``logits = phi @ W.T + b``.

    Attributes:
        W: [K, D] weights (standardisation folded in). b: [K] intercepts.
        c: the chosen inverse L1 strength.
        tune_worst_group: worst-group accuracy of every ``C`` on the tuning half (grid order).
        mean / scale: the standardisation (``scale`` 1 where the feature is constant).
        group_sizes: images per group in the held-out set; balanced_size: images per group in each refit.
    """

    W: np.ndarray
    b: np.ndarray
    c: float
    tune_worst_group: list[float]
    mean: np.ndarray
    scale: np.ndarray
    group_sizes: list[int]
    balanced_size: int


@dataclass
class DFRResult:
    """What :func:`dfr` wrote and chose (``--json`` prints :meth:`to_dict`)."""

    fix: FixResult
    split: str
    groups_file: str
    images: int
    groups: int
    smallest_group: str
    balanced_size: int
    c: float
    tune_worst_group: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> JSONDict:
        return {"path": self.fix.path, "manifest": self.fix.manifest, "kind": "dfr", "name": self.fix.name,
                "model_spec": self.fix.model_spec, "model_fingerprint": self.fix.model_fingerprint,
                "split": self.split, "groups_file": self.groups_file, "images": self.images, "groups": self.groups,
                "smallest_group": self.smallest_group, "balanced_size": self.balanced_size, "c": self.c,
                "tune_worst_group": self.tune_worst_group, "seconds": self.seconds}

    def summary_lines(self) -> list[str]:
        tune = ", ".join(f"C={c}: {a:.3f}" for c, a in self.tune_worst_group.items())
        return [f"{self.fix.name}: a new last layer for {self.fix.model_spec} from {self.images} held-out images "
                f"({self.split}) in {self.groups} groups -> {self.fix.path}",
                f"group-balanced refits of {self.balanced_size} images per group (smallest group: "
                f"{self.smallest_group}); C = {self.c} by worst-group accuracy on half of the set ({tune})"]


def _logreg_ovr(x: np.ndarray, y: np.ndarray, k: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """L1 logistic regression (liblinear), one-vs-rest for ``k > 2``; returns ``W [k, D]``, ``b [k]``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def binary(target: np.ndarray) -> tuple[np.ndarray, float]:
        try:  # scikit-learn >= 1.8 states the L1 penalty as l1_ratio=1 ('penalty' is deprecated there)
            model = LogisticRegression(C=c, solver="liblinear", l1_ratio=1.0, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=ConvergenceWarning)
                model.fit(x, target)
        except (TypeError, ValueError):  # older versions: no l1_ratio for liblinear
            model = LogisticRegression(C=c, solver="liblinear", penalty="l1", random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=ConvergenceWarning)
                model.fit(x, target)
        return np.asarray(model.coef_, dtype=np.float64)[0], float(model.intercept_[0])

    if k == 2:
        w, b = binary((y == 1).astype(np.int64))
        return np.stack([-w / 2, w / 2]), np.array([-b / 2, b / 2])
    rows = [binary((y == j).astype(np.int64)) for j in range(k)]
    return np.stack([w for w, _ in rows]), np.array([b for _, b in rows])


def _balanced(rows_by_group: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    n = min(len(r) for r in rows_by_group)
    return np.concatenate([rng.permutation(r)[:n] for r in rows_by_group])


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def fit_dfr(phi: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int, *,
            c_grid: Sequence[float] = C_GRID, retrains: int = 20, seed: int = 0,
            group_names: Sequence[str] | None = None) -> DFRFit:
    """Fit the DFR head on held-out features (module docstring: C search on half, balanced refits).

    Args:
        phi: [N, D] features. labels: [N] classes in ``0..num_classes-1``. groups: [N] group index.
        num_classes: ``K``; every class needs images.
        c_grid: inverse L1 strengths to search. retrains: balanced refits averaged. seed: subsampling seed.
        group_names: names for messages (default ``group <g>``).

    Raises:
        ValueError: a class without images, a group with fewer than 2 images (each half of the C search
            needs one), or fewer than 2 classes.
    """
    phi = np.asarray(phi, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    names = list(group_names) if group_names is not None else [f"group {g}" for g in range(int(groups.max()) + 1)]
    if num_classes < 2:
        raise ValueError(f"DFR needs a model with at least 2 classes, got {num_classes}")
    if retrains < 1 or not c_grid:
        raise ValueError("DFR needs retrains >= 1 and a non-empty C grid")
    empty = [k for k in range(num_classes) if not (labels == k).any()]
    if empty:
        raise ValueError(f"the DFR set has an empty group: class{'es' if len(empty) > 1 else ''} "
                         f"{', '.join(map(str, empty[:10]))} ha{'ve' if len(empty) > 1 else 's'} no image in it; "
                         "the new last layer needs held-out images of every class (add them to the groups file)")
    present = np.unique(groups)
    by_group = [np.flatnonzero(groups == g) for g in present]
    small = [(names[g], len(r)) for g, r in zip(present.tolist(), by_group, strict=True) if len(r) < 2]
    if small:
        shown = ", ".join(f"{n} ({c} image)" for n, c in small[:5])
        raise ValueError(f"the DFR set has {len(small)} group{'s' if len(small) > 1 else ''} with fewer than 2 images "
                         f"({shown}): the C search needs each group in both halves; add images of "
                         "these groups to the groups file or merge them into other groups")
    rng = np.random.default_rng(seed)
    # 1. C search: per-group halves, balanced first half, worst-group accuracy on the second
    fit_half, tune_half = [], []
    for r in by_group:
        p = rng.permutation(r)
        cut = (len(p) + 1) // 2
        fit_half.append(p[:cut])
        tune_half.append(p[cut:])
    train_rows = _balanced(fit_half, rng)
    tune_rows = np.concatenate(tune_half)
    mean, scale = _standardise(phi[train_rows])
    x_train, x_tune = (phi[train_rows] - mean) / scale, (phi[tune_rows] - mean) / scale
    tune_group = np.searchsorted(present, groups[tune_rows])
    worst: list[float] = []
    for c in c_grid:
        W, b = _logreg_ovr(x_train, labels[train_rows], num_classes, float(c))
        pred = (x_tune @ W.T + b).argmax(axis=1)
        worst.append(group_metrics(pred == labels[tune_rows], tune_group, [names[g] for g in present])
                     .worst_group_accuracy)
    best = float(c_grid[int(np.argmax(worst))])
    # 2. balanced refits on the whole set, averaged
    mean, scale = _standardise(phi)
    x = (phi - mean) / scale
    Ws, bs = [], []
    for _ in range(retrains):
        rows = _balanced(by_group, rng)
        W, b = _logreg_ovr(x[rows], labels[rows], num_classes, best)
        Ws.append(W)
        bs.append(b)
    W, b = np.mean(Ws, axis=0), np.mean(bs, axis=0)
    W_raw = W / scale
    return DFRFit(W=W_raw, b=b - W_raw @ mean, c=best, tune_worst_group=worst, mean=mean, scale=scale,
                  group_sizes=[len(r) for r in by_group], balanced_size=min(len(r) for r in by_group))


def dfr(
    workspace: str | os.PathLike[str],
    groups: str | os.PathLike[str],
    *,
    split: str,
    out: str | os.PathLike[str] | None = None,
    name: str | None = None,
    precision: str = "float32",
    retrains: int = 20,
    seed: int = 0,
    overwrite: bool = False,
) -> DFRResult:
    """DFR: fit a new last layer on the workspace's features of the held-out images of a groups file.

    Reads ``phi`` of ``split`` from the workspace's feature store (``spurious extract``), the groups of
    its images from ``groups`` (:mod:`spurious.groups`; matched by image id), fits the head with
    :func:`fit_dfr` and writes ``OUT/dfr.safetensors`` + ``OUT/manifest.json`` (default ``OUT =
    WS/dfr``), which ``score --fix`` and ``fix export`` accept like a SpuFix artifact.

    Args:
        workspace: a workspace with features of ``split``.
        groups: groups file of held-out images of ``split`` (every image it lists must be there).
        split: the feature split holding those images (keep them out of the images you evaluate on).
        out: artifact directory (default ``WS/dfr``).
        name: label in tables (default ``"DFR"``).
        precision: storage dtype of the head (``float32`` or ``float64``).
        retrains: balanced refits averaged (DFR: 20).
        seed: seed of the halves and the subsampling.
        overwrite: replace an existing artifact in ``out``.

    Raises:
        FileNotFoundError: no workspace, no features of ``split``, or no groups file.
        ValueError: a groups file that does not match the split's images (how many, which), a class
            without held-out images or a group with fewer than 2 (an empty group), bad ``precision``.
        FileExistsError: an artifact exists in ``out`` and ``overwrite`` is false.
    """
    t0 = time.perf_counter()
    dtype = _check_precision(precision)
    ws = Workspace.open(workspace)
    store = ws.feature_store(split)
    table = read_groups(groups, ws.class_names)
    group_of = match_groups(table, store.ids, np.asarray(store.labels), what=f"the {split!r} features of workspace {ws.root}")
    rows = np.flatnonzero(group_of >= 0)
    out_dir = Path(out) if out is not None else ws.root / "dfr"
    _prepare_out(out_dir, overwrite, DFR_FILE)
    fitted = fit_dfr(store.phi(rows), np.asarray(store.labels)[rows], group_of[rows], ws.num_classes, retrains=retrains,
                     seed=seed, group_names=table.names)
    present = np.unique(group_of[rows])
    smallest = table.names[int(present[int(np.argmin(fitted.group_sizes))])]
    k = ws.num_classes
    meta: JSONDict = {"created": utc_now(), "package_version": __version__, "model": _model_meta(ws),
                      "source": {"kind": "dfr", "workspace": str(ws.root), "split": split, "groups_file": table.path,
                                 "images": int(rows.size), "groups": len(present), "balanced_size": fitted.balanced_size,
                                 "c": fitted.c, "c_grid": list(C_GRID), "retrains": retrains, "seed": seed}}
    head = LastLayerHead(fitted.W, -fitted.b, np.arange(k), np.full(k, -1), num_classes=k, model_spec=ws.model_spec,
                         model_fingerprint=ws.model_fingerprint, name=name or "DFR", kind="dfr", meta=meta, dtype=dtype)
    args: JSONDict = {"workspace": str(workspace), "groups": os.fspath(groups), "split": split, "name": name,
                      "precision": precision, "retrains": retrains, "seed": seed, "method": "dfr"}
    written = _write(head, out_dir, args, None, {}, t0, file=DFR_FILE)
    return DFRResult(fix=written, split=split, groups_file=table.path, images=int(rows.size), groups=len(present),
                     smallest_group=smallest, balanced_size=fitted.balanced_size, c=fitted.c,
                     tune_worst_group={str(c): round(a, 6) for c, a in zip(C_GRID, fitted.tune_worst_group,
                                                                           strict=True)},
                     seconds=round(time.perf_counter() - t0, 3))
