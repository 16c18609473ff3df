"""Implementation of :mod:`spurious.visualize` (see the package docstring)."""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from spurious import __version__
from spurious._dist import (
    all_sum,
    barrier,
    init_distributed,
    on_main_rank,
    resolve_device,
)
from spurious._io import atomic_path, sha256_strings, utc_now, write_json
from spurious.visualize._report import class_page, index_page
from spurious.visualize._table import (
    SHEET_TABLE,
    read_sheet_table,
    sheet_classes,
    sheet_folder,
)
from spurious.workspace import (
    IncompatibleArtifactError,
    Workspace,
    prepare_artifact_dir,
)

__all__ = [
    "FeatureVisualization",
    "MaxActivating",
    "NeuronImportance",
    "Selection",
    "SetDiversity",
    "VisualizeResult",
    "default_eps",
    "diversity",
    "max_activating",
    "max_activating_neurons",
    "neuron_importance",
    "neuron_visualization",
    "npfv",
    "select_components",
    "visualize",
]

log = logging.getLogger(__name__)

REFERENCE_EPS = 30.0
"""The paper's L2 budget for 3x224x224 inputs."""
REFERENCE_VALUES = 3 * 224 * 224

_FORMAT_VERSION = 1
# ---------------------------------------------------------------------------- small checks


def _positive_int(name: str, value: Any, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}{hint}")
    return int(value)


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    return _positive_int("batch_size", batch_size, " (or None for one batch per class)")


def default_eps(input_size: Sequence[int]) -> float:
    """L2 budget of the NPFV for an input of ``input_size`` values: ``30 sqrt(n / (3 * 224 * 224))``.

    ``eps = 30`` is the paper's budget at 3x224x224; scaling with ``sqrt(n)`` keeps the per-value
    RMS change ``eps / sqrt(n)`` (~0.039) the same at any input size (3x64x64: 8.57; 3x32x32: 4.29).

    Args:
        input_size: ``(3, H, W)`` (or any shape; only the product counts).
    """
    n = int(np.prod([int(s) for s in input_size]))
    if n < 1:
        raise ValueError(f"input_size must have positive entries, got {tuple(input_size)}")
    return REFERENCE_EPS * math.sqrt(n / REFERENCE_VALUES)


def _resolve_eps(eps: float | None, classifier: Any) -> float:
    if eps is None:
        return default_eps(classifier.input_size)
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) or not eps > 0 \
            or not math.isfinite(float(eps)):
        raise ValueError(f"eps must be a positive finite number (L2 radius around the gray image), got {eps!r}")
    return float(eps)


def _check_basis(classifier: Any, basis: Any) -> None:
    from spurious.npca import ClassBasis

    if not isinstance(basis, ClassBasis):
        raise TypeError(f"basis must be a spurious.npca.ClassBasis, got {type(basis).__name__}")
    if basis.w.shape[0] != classifier.num_features:
        raise ValueError(f"the basis of class {basis.k} has D={basis.w.shape[0]} but the classifier has "
                         f"D={classifier.num_features}: it was fitted for another model")
    if not 0 <= basis.k < classifier.num_classes:
        raise ValueError(f"basis class {basis.k} is not a class of the classifier (0..{classifier.num_classes - 1})")
    W, _ = classifier.head()
    if not np.allclose(basis.w.astype(np.float64), W[basis.k].double().cpu().numpy(), rtol=1e-4, atol=1e-6):
        raise ValueError(f"the basis of class {basis.k} was fitted for another model: its weight row w_k differs "
                         "from the classifier's head")


# ---------------------------------------------------------------------------- feature visualization


@dataclass
class FeatureVisualization:
    """Inputs maximising linear functions of ``phi`` from the gray image (NPFVs or neuron visualizations).

    Attributes:
        kind: ``"component"`` (target ``alpha_l^k``) or ``"neuron"`` (target ``phi_j``).
        k: the class the components belong to / the neurons were chosen for.
        index: int [M]: component ``l`` (0-based, eigenvalue order) or neuron ``j`` of each image.
        images: float32 [M, 3, H, W] in [0, 1] on the CPU, within ``eps`` (L2) of the gray image.
        value: float64 [M]: the target at the image (``alpha_l^k(x*)`` or ``phi_j(x*)``).
        probabilities: float64 [M, K]: softmax of the logits at each image.
        eps: the L2 budget used; ``steps``: APGD iterations.
    """

    kind: str
    k: int
    index: np.ndarray
    images: torch.Tensor
    value: np.ndarray
    probabilities: np.ndarray
    eps: float
    steps: int

    def class_probability(self, k: int | None = None) -> np.ndarray:
        """Softmax probability [M] of class ``k`` (default: :attr:`k`) at every image."""
        return self.probabilities[:, self.k if k is None else k]


@contextlib.contextmanager
def _inputs_only(classifier: Any) -> Iterator[None]:
    """Eval mode and no parameter gradients while optimising the input; the caller's state is restored."""
    was_training = classifier.training
    flags = [(p, p.requires_grad) for p in classifier.parameters()]
    try:
        classifier.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        classifier.train(was_training)


def _linear_targets(A: np.ndarray, c: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(np.asarray(A), dtype=torch.float32, device=device),
            torch.as_tensor(np.asarray(c), dtype=torch.float32, device=device))


def _chunks(m: int, batch_size: int | None) -> Iterator[slice]:
    step = m if batch_size is None else batch_size
    for start in range(0, m, max(step, 1)):
        yield slice(start, min(start + step, m))


def _maximize_linear(classifier: Any, A: np.ndarray, c: np.ndarray, *, eps: float, steps: int, seed: int | None,
                     batch_size: int | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """APGD from the gray image on ``t_i(x) = <A_i, phi(x)> - c_i``, one image per row of ``A`` [M, D].

    All rows run as one APGD batch (chunks of ``batch_size`` when given). Returns the images
    (CPU float32 [M, 3, H, W]), the targets at them (float64 [M]) and the softmax there (float64 [M, K]).
    """
    from spurious.apgd import apgd

    dev = classifier.device
    At, ct = _linear_targets(A, c, dev)
    m = At.shape[0]
    images, values, probs = [], [], []
    with _inputs_only(classifier):
        for sl in _chunks(m, batch_size):
            a, b = At[sl], ct[sl]

            def objective(x: torch.Tensor, a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
                phi = classifier.phi(x)
                return (phi.to(a.dtype) * a).sum(dim=1) - b

            x0 = torch.full((a.shape[0], *classifier.input_size), 0.5, dtype=torch.float32, device=dev)
            result = apgd(objective, x0, eps=eps, norm="l2", steps=steps, seed=seed)
            x = result.x.detach()
            with torch.no_grad():
                phi, logits = classifier.phi_and_logits(x)
                values.append(((phi.to(a.dtype) * a).sum(dim=1) - b).double().cpu())
                probs.append(torch.softmax(logits.double(), dim=1).cpu())
            images.append(x.float().cpu())
    return torch.cat(images), torch.cat(values).numpy(), torch.cat(probs).numpy()


def npfv(classifier: Any, basis: Any, components: Sequence[int] | np.ndarray | None = None, *,
         eps: float | None = None, steps: int = 200, batch_size: int | None = None,
         seed: int | None = 0) -> FeatureVisualization:
    """Neural PCA feature visualizations: ``x*_l = argmax alpha_l^k(x)`` s.t. ``||x - x_0||_2 <= eps``, ``x in [0,1]^n``.

    ``x_0`` is the gray image (all 0.5); the problem is solved with APGD (L2), all components as
    one batch. The objective of image ``i`` is ``alpha_{l_i}^k(x_i) = <A_i, phi(x_i)> - c_i`` with
    ``A, c`` from :meth:`spurious.npca.ClassBasis.projection`. The classifier's training mode and
    ``requires_grad`` flags are restored afterwards.

    Args:
        classifier: a :class:`spurious.models.Classifier` (inputs in [0, 1]); runs on its device.
        basis: the class's :class:`spurious.npca.ClassBasis` (fitted for this classifier).
        components: 0-based component indices (default: all stored).
        eps: L2 budget (default :func:`default_eps` of the classifier's input size).
        steps: APGD iterations (default 200, as in the paper).
        batch_size: images per APGD batch (default: all at once).
        seed: APGD seed.

    Returns:
        A :class:`FeatureVisualization` of kind ``"component"``.
    """
    _check_basis(classifier, basis)
    steps = _positive_int("steps", steps)
    batch_size = _check_batch_size(batch_size)
    eps = _resolve_eps(eps, classifier)
    comps = basis._components(components)
    A, c = basis.projection(comps)
    images, value, probs = _maximize_linear(classifier, A, c, eps=eps, steps=steps, seed=seed, batch_size=batch_size)
    return FeatureVisualization("component", basis.k, comps, images, value, probs, eps, steps)


def neuron_visualization(classifier: Any, neurons: Sequence[int] | np.ndarray, *, k: int = -1,
                         eps: float | None = None, steps: int = 200, batch_size: int | None = None,
                         seed: int | None = 0) -> FeatureVisualization:
    """Feature visualization of single neurons: ``x*_j = argmax phi_j(x)`` under the NPFV constraints.

    Args:
        classifier: a :class:`spurious.models.Classifier`.
        neurons: indices ``j`` into ``phi`` (0..D-1).
        k: the class the neurons were chosen for (recorded; -1 = none).
        eps, steps, batch_size, seed: as in :func:`npfv`.

    Returns:
        A :class:`FeatureVisualization` of kind ``"neuron"``.
    """
    steps = _positive_int("steps", steps)
    batch_size = _check_batch_size(batch_size)
    eps = _resolve_eps(eps, classifier)
    idx = _check_neurons(neurons, classifier.num_features)
    A = np.zeros((idx.size, classifier.num_features))
    A[np.arange(idx.size), idx] = 1.0
    images, value, probs = _maximize_linear(classifier, A, np.zeros(idx.size), eps=eps, steps=steps, seed=seed,
                                            batch_size=batch_size)
    return FeatureVisualization("neuron", int(k), idx, images, value, probs, eps, steps)


def _check_neurons(neurons: Sequence[int] | np.ndarray, d: int) -> np.ndarray:
    idx = np.asarray(neurons, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= d):
        raise ValueError(f"neuron index out of range: valid 0..{d - 1} (got {idx.tolist()})")
    return idx


# ---------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """Components of one class ranked by the class probability at their NPFV.

    Attributes:
        k: the class.
        candidates: int [c]: the components whose NPFV was computed (the top ``c`` by eigenvalue).
        probability: float64 [c]: softmax probability of class ``k`` at each candidate's NPFV.
        order: int [c]: positions into ``candidates`` by descending probability (ties: larger eigenvalue first).
        selected: int [keep]: the kept component indices, best first (``candidates[order[:keep]]``).
        visualization: the candidates' NPFVs (same order as ``candidates``).
    """

    k: int
    candidates: np.ndarray
    probability: np.ndarray
    order: np.ndarray
    selected: np.ndarray
    visualization: FeatureVisualization


def _select(vis: FeatureVisualization, keep: int) -> Selection:
    prob = vis.class_probability()
    order = np.argsort(-prob, kind="stable")  # candidates come in eigenvalue order: ties keep it
    return Selection(k=vis.k, candidates=vis.index, probability=prob, order=order,
                     selected=vis.index[order[:keep]], visualization=vis)


def select_components(classifier: Any, basis: Any, *, candidates: int = 128, keep: int = 10,
                      eps: float | None = None, steps: int = 200, batch_size: int | None = None,
                      seed: int | None = 0) -> Selection:
    """Component selection for human review (DESIGN.md): NPFVs of the top ``candidates`` components by
    eigenvalue, ranked by the softmax probability of class ``k`` at the NPFV; keep the first ``keep``.

    Args:
        classifier, basis: as in :func:`npfv`.
        candidates: how many top-eigenvalue components get an NPFV (capped at the number stored).
        keep: how many are kept (capped at ``candidates``).
        eps, steps, batch_size, seed: as in :func:`npfv`.
    """
    candidates = _positive_int("candidates", candidates)
    keep = _positive_int("keep", keep)
    _check_basis(classifier, basis)
    c = min(candidates, basis.num_components)
    vis = npfv(classifier, basis, np.arange(c), eps=eps, steps=steps, batch_size=batch_size, seed=seed)
    return _select(vis, min(keep, c))


# ---------------------------------------------------------------------------- max-activating images


@dataclass
class MaxActivating:
    """The training images of class ``k`` with the largest target value, per target.

    Attributes:
        k: the class (images *labelled* k).
        kind: ``"component"`` (``alpha_l^k``) or ``"neuron"`` (``phi_j``).
        index: int [M]: the components / neurons.
        rows: int64 [M, top]: feature-store rows, largest value first (ties: lower row first).
        ids: ``M`` lists of ``top`` image ids (matching ``rows``).
        values: float64 [M, top]: the target of each image.
        probability: float64 [M, top]: softmax probability of class ``k`` from the stored top-k
            predictions; NaN when ``k`` is not among an image's stored top-k.
    """

    k: int
    kind: str
    index: np.ndarray
    rows: np.ndarray
    ids: list[list[str]]
    values: np.ndarray
    probability: np.ndarray


def _top_rows(store: Any, rows: np.ndarray, score: Callable[[np.ndarray], np.ndarray], m: int, top: int,
              chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Streaming top-``top`` rows per column of ``score(phi)`` ([n, m]) over ``rows``; descending, stable."""
    best_v = np.empty((0, m))
    best_r = np.empty((0, m), dtype=np.int64)
    for start in range(0, rows.size, chunk_rows):
        part = rows[start:start + chunk_rows]
        vals = np.asarray(score(store.phi(part)), dtype=np.float64).reshape(part.size, m)
        v = np.concatenate([best_v, vals])
        r = np.concatenate([best_r, np.broadcast_to(part[:, None], vals.shape)])
        pick = np.argsort(-v, axis=0, kind="stable")[:top]  # earlier rows stay first among ties
        best_v, best_r = np.take_along_axis(v, pick, 0), np.take_along_axis(r, pick, 0)
    return best_v.T.copy(), best_r.T.copy()


def _with_probability(store: Any, k: int, kind: str, index: np.ndarray, values: np.ndarray,
                      rows: np.ndarray) -> MaxActivating:
    ids_all = store.ids
    flat = rows.reshape(-1)
    prob = np.full(flat.size, np.nan)
    if flat.size:
        idx, p = store.topk(flat)
        hit = idx == k
        prob[hit.any(axis=1)] = p[hit].astype(np.float64)
    return MaxActivating(k=k, kind=kind, index=index, rows=rows, ids=[[ids_all[r] for r in rr] for rr in rows.tolist()],
                         values=values, probability=prob.reshape(rows.shape))


def max_activating(store: Any, basis: Any, components: Sequence[int] | np.ndarray | None = None, *,
                   top: int = 5, chunk_rows: int = 65536) -> MaxActivating:
    """Max-activating training images of components: the images labelled ``k`` with the largest ``alpha_l^k``.

    Computed from the stored ``phi`` with :meth:`spurious.npca.ClassBasis.alpha` (no model run),
    streaming the class's rows ``chunk_rows`` at a time.

    Args:
        store: the labelled training :class:`spurious.store.FeatureStore` (the one the basis was fitted on).
        basis: the class's :class:`spurious.npca.ClassBasis`.
        components: 0-based component indices (default: all stored).
        top: images per component (capped at the class size).
    """
    top = _positive_int("top", top)
    chunk_rows = _positive_int("chunk_rows", chunk_rows)
    if basis.mu.shape[0] != store.dim:
        raise ValueError(f"the basis has D={basis.mu.shape[0]} but the store {store.path} has D={store.dim}")
    comps = basis._components(components)
    rows = store.rows_of_class(basis.k)
    if rows.size == 0:
        raise ValueError(f"the store {store.path} has no images labelled {basis.k}")
    values, best = _top_rows(store, rows, lambda phi: basis.alpha(phi, comps), comps.size, min(top, rows.size),
                             chunk_rows)
    return _with_probability(store, basis.k, "component", comps, values, best)


def max_activating_neurons(store: Any, k: int, neurons: Sequence[int] | np.ndarray, *, top: int = 5,
                           chunk_rows: int = 65536) -> MaxActivating:
    """Max-activating training images of neurons: the images labelled ``k`` with the largest ``phi_j``.

    Args:
        store: the labelled training feature store.
        k: the class.
        neurons: indices ``j`` into ``phi``.
        top: images per neuron (capped at the class size).
    """
    top = _positive_int("top", top)
    chunk_rows = _positive_int("chunk_rows", chunk_rows)
    idx = _check_neurons(neurons, store.dim)
    rows = store.rows_of_class(int(k))
    if rows.size == 0:
        raise ValueError(f"the store {store.path} has no images labelled {k}")
    values, best = _top_rows(store, rows, lambda phi: phi[:, idx], idx.size, min(top, rows.size), chunk_rows)
    return _with_probability(store, int(k), "neuron", idx, values, best)


# ---------------------------------------------------------------------------- neuron baseline


@dataclass
class NeuronImportance:
    """Salient ImageNet neuron importance: ``mean_{x predicted k} phi_j(x) W_kj``.

    Attributes:
        classes: int [C]: the classes (rows of ``importance``).
        importance: float64 [C, D]; NaN rows for classes no image is predicted as.
        counts: int64 [C]: images of the split whose stored top-1 prediction is the class.
    """

    classes: np.ndarray
    importance: np.ndarray
    counts: np.ndarray

    def top(self, k: int, n: int = 5) -> np.ndarray:
        """The ``n`` most important neurons of class ``k``, most important first (ties: lower index)."""
        where = np.flatnonzero(self.classes == k)
        if where.size == 0:
            raise ValueError(f"class {k} is not among the classes of this importance table "
                             f"({self.classes.tolist()[:10]}...)")
        i = int(where[0])
        if self.counts[i] == 0:
            raise ValueError(f"no image of the split is predicted as class {k}: its neuron importance is undefined")
        return np.argsort(-self.importance[i], kind="stable")[:n]


def neuron_importance(store: Any, W: np.ndarray, classes: Sequence[int] | np.ndarray | None = None, *,
                      chunk_rows: int = 65536) -> NeuronImportance:
    """Neuron importance of the Salient ImageNet baseline, for many classes in one pass over the store.

    ``importance[k, j] = W_kj * mean_{x in P_k} phi_j(x)`` with ``P_k`` the images of the split
    whose stored top-1 prediction is ``k`` (all images, whatever their label).

    Args:
        store: a feature store with top-k predictions (usually the training split).
        W: the head weights [K, D].
        classes: the classes to compute (default: all ``K``).
        chunk_rows: rows read at a time.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[1] != store.dim:
        raise ValueError(f"W must have shape [K, {store.dim}], got {W.shape}")
    chunk_rows = _positive_int("chunk_rows", chunk_rows)
    cls = np.arange(W.shape[0]) if classes is None else np.asarray(classes, dtype=np.int64).reshape(-1)
    if cls.size and (cls.min() < 0 or cls.max() >= W.shape[0]):
        raise ValueError(f"class index out of range 0..{W.shape[0] - 1}: {cls.tolist()}")
    pos = np.full(W.shape[0], -1, dtype=np.int64)
    pos[cls] = np.arange(cls.size)
    sums = np.zeros((cls.size, store.dim))
    counts = np.zeros(cls.size, dtype=np.int64)
    for start, phi in store.iter_phi(chunk_rows):
        top1 = store.topk(np.arange(start, start + phi.shape[0]))[0][:, 0]
        p = pos[top1]
        keep = p >= 0
        if not keep.any():
            continue
        p, x = p[keep], phi[keep].astype(np.float64)
        order = np.argsort(p, kind="stable")
        p, x = p[order], x[order]
        firsts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
        sums[p[firsts]] += np.add.reduceat(x, firsts, axis=0)
        counts += np.bincount(p, minlength=cls.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts[:, None]
    mean[counts == 0] = np.nan
    return NeuronImportance(classes=cls, importance=mean * W[cls], counts=counts)


# ---------------------------------------------------------------------------- diversity


@dataclass(frozen=True)
class SetDiversity:
    """How much a family of max-activating image sets overlaps (see :func:`diversity`).

    Attributes:
        sets: number of sets.
        slots: total number of images shown (sum of the set sizes).
        distinct: number of distinct images among all sets.
        repeated: number of distinct images that appear in more than one set.
        identical_pairs: pairs of slots in two different sets that hold the same image
            (``sum_{a<b} |S_a ∩ S_b|``; the paper's "identical pairs").
    """

    sets: int
    slots: int
    distinct: int
    repeated: int
    identical_pairs: int

    def __add__(self, other: SetDiversity) -> SetDiversity:
        return SetDiversity(self.sets + other.sets, self.slots + other.slots, self.distinct + other.distinct,
                            self.repeated + other.repeated, self.identical_pairs + other.identical_pairs)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def diversity(sets: Iterable[Iterable[Hashable]]) -> SetDiversity:
    """Overlap of max-activating sets, e.g. the top-5 images of each of the top-5 components or neurons.

    With sets ``S_1..S_m`` of image ids: ``slots = sum |S_a|``, ``distinct = |S_1 ∪ ... ∪ S_m|``,
    ``repeated`` = number of images in at least two sets, ``identical_pairs = sum_{a<b} |S_a ∩ S_b|``.
    Fully diverse sets give ``distinct == slots`` and ``repeated == identical_pairs == 0``; five
    identical sets of five give ``distinct = 5``, ``repeated = 5``, ``identical_pairs = 50``.

    Raises:
        ValueError: a set lists the same image twice.
    """
    families = [list(s) for s in sets]
    seen: dict[Hashable, int] = {}
    slots = 0
    for a, items in enumerate(families):
        if len(set(items)) != len(items):
            dup = next(x for x in items if items.count(x) > 1)
            raise ValueError(f"set {a} lists image {dup!r} more than once; each set must hold distinct images")
        slots += len(items)
        for x in items:
            seen[x] = seen.get(x, 0) + 1
    return SetDiversity(sets=len(families), slots=slots, distinct=len(seen),
                        repeated=sum(1 for n in seen.values() if n > 1),
                        identical_pairs=sum(n * (n - 1) // 2 for n in seen.values()))


# ---------------------------------------------------------------------------- images on disk


class _IdView(Sequence[str]):
    """Record ids of a dataset as a lazy sorted sequence (datasets are sorted by id) for bisection."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: Any) -> Any:
        return self.dataset.record(i).id


def _load_by_id(dataset: Any, ids: Sequence[str], shape: tuple[int, ...]) -> tuple[torch.Tensor, list[str | None]]:
    """Preprocessed images [n, *shape] of ``ids`` (matched by id) and an error per id (None when loaded)."""
    view = _IdView(dataset)
    out = torch.full((len(ids), *shape), 0.5)
    errors: list[str | None] = []
    linear: dict[str, int] | None = None
    for n, image_id in enumerate(ids):
        i = bisect.bisect_left(view, image_id)
        if not (i < len(view) and view[i] == image_id):
            if linear is None:  # not sorted as expected: one full scan, then a dict
                linear = {dataset.record(j).id: j for j in range(len(dataset))}
            i = linear.get(image_id, -1)
        if i < 0:
            errors.append(f"image id {image_id!r} is not in the dataset {dataset.spec}")
            continue
        _, image, reason = dataset[i]
        if image is None:
            errors.append(f"{image_id}: {reason}")
            continue
        if tuple(image.shape) != shape:
            errors.append(f"{image_id}: preprocessed to {tuple(image.shape)}, the model takes {shape}")
            continue
        out[n] = image
        errors.append(None)
    return out, errors


def _to_pil(x: torch.Tensor) -> Any:
    from PIL import Image

    arr = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def _save_png(path: Path, image: Any) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# ---------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class VisualizeResult:
    """Summary of a ``visualize`` run (what ``--json`` prints)."""

    path: str
    split: str
    classes: list[int]
    classes_done: int
    classes_reused: int
    candidates: int
    keep: int
    eps: float
    steps: int
    top_images: int
    index_html: str
    diversity: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_per_class: float = 0.0
    device: str = "cpu"
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """What the CLI prints."""
        lines = [f"visualized {self.classes_done} classes ({self.classes_reused} reused) -> {self.path}",
                 (f"eps {self.eps:.3g}, {self.steps} APGD steps, {self.candidates} candidates, {self.keep} kept; "
                  f"{self.seconds:.1f} s on {self.device}"),
                 f"report: {self.index_html}"]
        for kind, d in self.diversity.items():
            lines.append(f"diversity of the top-5 {kind}: {d['distinct']} distinct of {d['slots']} images, "
                         f"{d['identical_pairs']} identical pairs")
        return lines


def _class_done(ws: Workspace, k: int, phash: str) -> bool:
    try:
        return read_sheet_table(ws, k).plan == phash
    except (OSError, ValueError):
        return False


def _resolve_classifier(model: Any, ws: Workspace, device: torch.device) -> Any:
    from spurious.models import Classifier, load_model

    if model is None:
        return ws.load_model(device=device).eval()  # checked against the manifest
    if isinstance(model, Classifier):
        clf = model.to(device)
    elif isinstance(model, str):
        clf = load_model(model, device=device)
    else:
        raise TypeError(f"model must be None (the workspace's model), a spec string or a Classifier, "
                        f"got {type(model).__name__}")
    ws.check_model(clf.fingerprint(), clf.spec, what="the model passed to visualize (model=..., --model)")
    return clf.eval()


def _open_images(data: Any, store: Any, classifier: Any) -> Any:
    from spurious.datasets import ImageDataset

    if isinstance(data, ImageDataset):
        ds = data.with_transform(classifier.preprocessing)
    else:
        try:
            ds = store.open_dataset(classifier.preprocessing, data)
        except (FileNotFoundError, ValueError) as err:
            raise FileNotFoundError(
                f"cannot re-open the training images of {store.path} ({err}); pass the dataset where they are now "
                "with data=... (--data DATA)") from None
    fingerprint = ds.fingerprint()
    if fingerprint != store.data_fingerprint:
        warnings.warn(
            f"the dataset {ds.spec} (data fingerprint {fingerprint}) lists other images or labels than the "
            f"features {store.path / 'manifest.json'} were extracted from ({store.manifest['data'].get('spec')}, data "
            f"fingerprint {store.data_fingerprint}); max-activating images are matched by id and ids it lacks are "
            "shown blank: pass the dataset the features were extracted from (--data), or re-extract the split "
            "from this one (`spurious extract WS --data DATA --split SPLIT --overwrite`)", stacklevel=3)
    return ds


def visualize(
    workspace: str | os.PathLike[str],
    *,
    classes: Sequence[int | str] | None = None,
    split: str = "train",
    candidates: int = 128,
    keep: int = 10,
    eps: float | None = None,
    steps: int = 200,
    top_images: int = 5,
    neurons: int = 5,
    device: str | torch.device | None = "auto",
    batch_size: int | None = None,
    seed: int = 0,
    data: Any = None,
    model: Any = None,
    cam_layer: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> VisualizeResult:
    """NPFVs, component selection, max-activating images, heatmaps and the neuron baseline -> ``WS/visualize``.

    Per class ``k``: NPFVs of the top ``candidates`` components by eigenvalue (one APGD batch together
    with the visualizations of the top ``neurons`` neurons), ranked by the class-``k`` probability at the
    NPFV; the first ``keep`` get their ``top_images`` max-activating training images (from the feature
    store) and GradCAM heatmaps of ``alpha_l^k`` on the NPFV and on those images (re-loaded from the
    dataset recorded in the feature store, matched by id, with the classifier's preprocessing).

    Args:
        workspace: a workspace with finished features for ``split`` and ``npca`` fitted on them.
        classes: class indices or names (default: every class with components).
        split: the labelled training split the neural PCA was fitted on.
        candidates: components per class that get an NPFV (top by eigenvalue; default 128).
        keep: components kept per class, by NPFV class probability (default 10).
        eps: L2 budget (default :func:`default_eps`: 30 at 3x224x224, scaled with sqrt of the input size).
        steps: APGD steps (default 200).
        top_images: max-activating images per component / neuron (default 5).
        neurons: neurons of the Salient ImageNet baseline per class (default 5; 0 = no baseline).
        device: ``auto`` | ``cpu`` | ``cuda[:N]``.
        batch_size: images per APGD / GradCAM batch (default: one batch per class).
        seed: APGD seed.
        data: where the training images are now (spec or ``ImageDataset``; default: the spec recorded
            when the features were extracted).
        model: the classifier (default: loaded from the workspace's model spec).
        cam_layer: module name (inside the wrapped model, as in ``named_modules()``) whose output
            GradCAM uses; default: :func:`spurious.gradcam.find_target_layer` (the last spatial block).
            An earlier, finer block localises better on small inputs (e.g. ``stages.1``, 8x8, for the
            64 px demo models, whose last block is 4x4).
        overwrite: discard a ``visualize/`` made with another plan.
        progress: progress bar on stderr.

    Raises:
        FileNotFoundError: no workspace, no features for ``split``, no ``npca`` yet, or the images
            cannot be re-opened.
        ValueError: unknown class, a class without components, or a bad argument.
        TypeError: a non-integer ``seed`` or a ``model`` that is not a spec or ``Classifier``.
        IncompatibleArtifactError: the neural PCA belongs to other features, ``model`` is not the
            workspace's model, or ``visualize/`` holds another plan (pass ``overwrite``).
    """
    candidates = _positive_int("candidates", candidates)
    keep = _positive_int("keep", keep)
    steps = _positive_int("steps", steps)
    top_images = _positive_int("top_images", top_images)
    if isinstance(neurons, bool) or not isinstance(neurons, (int, np.integer)) or neurons < 0:
        raise ValueError(f"neurons must be a non-negative integer, got {neurons!r}")
    batch_size = _check_batch_size(batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    if eps is not None:
        eps = _resolve_eps(eps, None)
    t0 = time.perf_counter()

    from spurious.npca import load_npca

    ws = Workspace.open(workspace)
    store = ws.feature_store(split)
    pca = load_npca(ws.root)
    if pca.manifest.get("split") != split or pca.manifest.get("data_fingerprint") != store.data_fingerprint:
        fitted = pca.manifest.get("split")
        raise IncompatibleArtifactError(
            f"the neural PCA {ws.npca_dir / 'manifest.json'} was fitted on split {fitted!r} (data fingerprint "
            f"{pca.manifest.get('data_fingerprint')}), not on the features of split {split!r} in {store.path} (data "
            f"fingerprint {store.data_fingerprint}) of workspace {ws.root} (model {ws.model_spec!r}, fingerprint "
            f"{ws.model_fingerprint}); pass --split {fitted} if those features are still there, or refit npca on "
            f"these: `spurious npca {ws.root} --split {split} --overwrite`")
    if classes is None:
        wanted = pca.classes
        if not wanted:
            raise ValueError(f"{ws.npca_dir} holds no class with components")
    else:
        wanted = sorted({ws.resolve_class(c) for c in classes})
        missing = [k for k in wanted if k not in pca]
        if missing:
            k = missing[0]
            raise ValueError(f"class {k} ({ws.class_names[k]}) has no neural PCA components (fewer than 2 training "
                             f"images, or not fitted); classes with components: {_some(pca.classes)}")

    dev = resolve_device(device)
    info = init_distributed(dev)
    classifier = _resolve_classifier(model, ws, dev)
    if cam_layer is not None:
        names = [n for n, _ in classifier.model.named_modules() if n]
        if not isinstance(cam_layer, str) or cam_layer not in names:
            import difflib

            close = difflib.get_close_matches(str(cam_layer), names, n=5)
            raise ValueError(f"cam_layer {cam_layer!r} is not a module of {classifier.spec!r}"
                             + (f"; closest: {', '.join(close)}" if close else "")
                             + " (names as in model.named_modules(); omit it for the last spatial block)")
    eps_used = default_eps(classifier.input_size) if eps is None else float(eps)
    plan = {"format_version": _FORMAT_VERSION, "model_fingerprint": ws.model_fingerprint, "split": split,
            "data_fingerprint": store.data_fingerprint,
            "npca": {k: pca.manifest.get(k) for k in ("n_components", "precision")},
            "candidates": candidates, "keep": keep, "eps": eps_used, "steps": steps, "top_images": top_images,
            "neurons": int(neurons), "seed": int(seed)}
    if cam_layer is not None:  # only when set: plans made before the option existed stay valid
        plan["cam_layer"] = cam_layer
    phash = sha256_strings([json.dumps(plan, sort_keys=True)])
    out = ws.root / "visualize"

    def mismatch(old: dict[str, Any]) -> str:
        diffs = [f"{k}: {old.get(k)!r} vs {v!r}" for k, v in plan.items() if old.get(k) != v]
        return (f"{out} holds visualizations made with other settings ({out / 'plan.json'}: {'; '.join(diffs)}); "
                "pass --overwrite to redo them")

    on_main_rank(lambda: prepare_artifact_dir(out, plan, overwrite=overwrite, mismatch=mismatch))

    mine = [k for k in wanted if k % info.world_size == info.rank]
    todo = [k for k in mine if not _class_done(ws, k, phash)]
    W, _ = ws.head()
    importance = neuron_importance(store, W, todo) if (todo and neurons) else None
    ctx = _StageContext(ws=ws, store=store, pca=pca, classifier=classifier, out=out, phash=phash, plan=plan,
                        batch_size=batch_size, importance=importance, data=data)
    done = 0
    for k in tqdm(mine, desc="visualize", unit="class", disable=not (progress and info.is_main), dynamic_ncols=True):
        if k not in todo:
            continue
        _visualize_class(ctx, k)
        done += 1
    reused = len(mine) - done
    done, reused = all_sum(done), all_sum(reused)
    barrier()
    summary: dict[str, Any] = {}
    if info.is_main:
        summary = _write_stage_manifest(out, plan, phash, ws, args={
            "classes": wanted, "split": split, "candidates": candidates, "keep": keep, "eps": eps, "steps": steps,
            "top_images": top_images, "neurons": neurons, "device": str(dev), "batch_size": batch_size,
            "seed": seed, "data": data if data is None or isinstance(data, str) else str(getattr(data, "spec", data)),
            "world_size": info.world_size})
    barrier()
    seconds = time.perf_counter() - t0
    return VisualizeResult(path=str(out), split=split, classes=wanted, classes_done=done, classes_reused=reused,
                           candidates=candidates, keep=keep, eps=eps_used, steps=steps, top_images=top_images,
                           index_html=str(out / "index.html"), diversity=summary.get("diversity_total", {}),
                           seconds=round(seconds, 3), seconds_per_class=round(seconds / max(done, 1), 3),
                           device=str(dev), world_size=info.world_size)


def _some(items: Sequence[Any], n: int = 10) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "") if items else "none"


@dataclass
class _StageContext:
    ws: Workspace
    store: Any
    pca: Any
    classifier: Any
    out: Path
    phash: str
    plan: dict[str, Any]
    batch_size: int | None
    importance: NeuronImportance | None
    data: Any
    _dataset: Any = None
    _cam: Any = None

    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = _open_images(self.data, self.store, self.classifier)
        return self._dataset

    def cam(self) -> Any:
        if self._cam is None:
            from spurious.gradcam import GradCAM

            self._cam = GradCAM(self.classifier, self.plan.get("cam_layer"))
        return self._cam


def _gradcam(ctx: _StageContext, x: torch.Tensor, A: np.ndarray, c: np.ndarray) -> torch.Tensor:
    """GradCAM heatmaps [n, H, W] of the linear targets ``<A_i, phi(x_i)> - c_i`` (chunks of ``batch_size``)."""
    if x.shape[0] == 0:
        return torch.zeros((0, *x.shape[2:]))
    cam = ctx.cam()
    At, ct = _linear_targets(A, c, ctx.classifier.device)
    maps = []
    for sl in _chunks(x.shape[0], ctx.batch_size):
        a, b = At[sl], ct[sl]

        def target(phi: torch.Tensor, logits: torch.Tensor, a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
            return (phi.to(a.dtype) * a).sum(dim=1) - b

        maps.append(cam.attribute(x[sl].to(ctx.classifier.device), target).detach().float().cpu())
    return torch.cat(maps)


def _top3(probs: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:3]
    return [{"class": int(j), "name": names[j], "probability": float(probs[j])} for j in order]


def _num(x: float) -> float | None:
    return None if not math.isfinite(float(x)) else float(x)


def _visualize_class(ctx: _StageContext, k: int) -> None:
    from spurious.gradcam import overlay

    plan, clf, store = ctx.plan, ctx.classifier, ctx.store
    names = ctx.ws.class_names
    cdir = sheet_folder(ctx.ws, k)
    if cdir.exists():  # an interrupted earlier attempt: start the class afresh
        shutil.rmtree(cdir)
    cdir.mkdir(parents=True)
    basis = ctx.pca[k]
    n_cand = min(plan["candidates"], basis.num_components)
    comps = np.arange(n_cand)
    A_comp, c_comp = basis.projection(comps)

    # neuron baseline: top neurons by importance (images predicted as k)
    neuron_note = "" if plan["neurons"] else "neuron baseline not computed (neurons=0)"
    top_neurons = np.zeros(0, dtype=np.int64)
    n_predicted = 0
    if plan["neurons"] and ctx.importance is not None:
        n_predicted = int(ctx.importance.counts[np.flatnonzero(ctx.importance.classes == k)[0]])
        if n_predicted:
            top_neurons = ctx.importance.top(k, plan["neurons"])
        else:
            neuron_note = f"no image of split {plan['split']!r} is predicted as this class: no neuron baseline"
    A_neu = np.zeros((top_neurons.size, store.dim))
    A_neu[np.arange(top_neurons.size), top_neurons] = 1.0

    # one APGD batch: every candidate component + the baseline neurons
    A_all = np.concatenate([A_comp, A_neu])
    c_all = np.concatenate([c_comp, np.zeros(top_neurons.size)])
    images, values, probs = _maximize_linear(clf, A_all, c_all, eps=plan["eps"], steps=plan["steps"],
                                             seed=plan["seed"], batch_size=ctx.batch_size)
    vis = FeatureVisualization("component", k, comps, images[:n_cand], values[:n_cand], probs[:n_cand],
                               plan["eps"], plan["steps"])
    sel = _select(vis, min(plan["keep"], n_cand))
    pos = sel.order[:sel.selected.size]  # positions of the kept components among the candidates

    top = plan["top_images"]
    ma = max_activating(store, basis, sel.selected, top=top)
    mn = max_activating_neurons(store, k, top_neurons, top=top) if top_neurons.size else None

    # re-load the max-activating images (matched by id) and compute every heatmap
    ids = [i for row in ma.ids for i in row] + ([i for row in mn.ids for i in row] if mn else [])
    shape = tuple(clf.input_size)
    x_top, errors = _load_by_id(ctx.dataset(), ids, shape)
    for e in errors:
        if e is not None:
            warnings.warn(f"class {k}: a max-activating image could not be loaded and is shown blank ({e})",
                          stacklevel=3)
    A_top = np.concatenate([np.repeat(A_comp[pos], ma.rows.shape[1], axis=0),
                            np.repeat(A_neu, mn.rows.shape[1], axis=0) if mn else np.zeros((0, store.dim))])
    c_top = np.concatenate([np.repeat(c_comp[pos], ma.rows.shape[1]),
                            np.zeros(mn.rows.size if mn else 0)])
    vis_idx = np.concatenate([pos, n_cand + np.arange(top_neurons.size)])
    cams_vis = _gradcam(ctx, images[vis_idx], A_all[vis_idx], c_all[vis_idx])
    cams_top = _gradcam(ctx, x_top, A_top, c_top)

    def save(name: str, x: torch.Tensor, cam: torch.Tensor) -> tuple[str, str]:
        _save_png(cdir / f"{name}.png", _to_pil(x))
        _save_png(cdir / f"{name}_cam.png", overlay(x, cam))
        return f"{name}.png", f"{name}_cam.png"

    components: list[dict[str, Any]] = []
    t = 0
    for r, (l, p) in enumerate(zip(sel.selected.tolist(), pos.tolist(), strict=False)):
        png, cam_png = save(f"npfv_l{l:04d}", images[p], cams_vis[r])
        tops = []
        for j in range(ma.rows.shape[1]):
            tpng, tcam = save(f"top_l{l:04d}_{j}", x_top[t], cams_top[t])
            tops.append({"id": ma.ids[r][j], "row": int(ma.rows[r, j]), "alpha": float(ma.values[r, j]),
                         "probability": _num(ma.probability[r, j]), "png": tpng, "heatmap_png": tcam,
                         "error": errors[t]})
            t += 1
        components.append({"rank": r + 1, "component": int(l), "eigenvalue": float(basis.lam[l]),
                           "npfv_probability": float(probs[p, k]), "npfv_alpha": float(values[p]),
                           "npfv_top3": _top3(probs[p], names), "npfv_png": png, "npfv_heatmap_png": cam_png,
                           "top_images": tops})
    neuron_rows: list[dict[str, Any]] = []
    importance_row = (ctx.importance.importance[np.flatnonzero(ctx.importance.classes == k)[0]]
                      if ctx.importance is not None else None)
    for r, j in enumerate(top_neurons.tolist()):
        p = n_cand + r
        png, cam_png = save(f"neuron_j{j:05d}", images[p], cams_vis[sel.selected.size + r])
        tops = []
        for i in range(mn.rows.shape[1]):  # type: ignore[union-attr]
            tpng, tcam = save(f"neuron_j{j:05d}_top_{i}", x_top[t], cams_top[t])
            tops.append({"id": mn.ids[r][i], "row": int(mn.rows[r, i]), "activation": float(mn.values[r, i]),  # type: ignore[union-attr]
                         "probability": _num(mn.probability[r, i]), "png": tpng, "heatmap_png": tcam,  # type: ignore[union-attr]
                         "error": errors[t]})
            t += 1
        neuron_rows.append({"rank": r + 1, "neuron": int(j), "importance": float(importance_row[j]),  # type: ignore[index]
                            "visualization_probability": float(probs[p, k]), "visualization_activation": float(values[p]),
                            "visualization_top3": _top3(probs[p], names), "visualization_png": png,
                            "visualization_heatmap_png": cam_png, "top_images": tops})

    n_div = plan["neurons"] or 5
    div = {"components": diversity([c["id"] for c in comp["top_images"]] for comp in components[:n_div]).to_dict()}
    if neuron_rows:
        div["neurons"] = diversity([n["id"] for n in nr["top_images"]] for nr in neuron_rows).to_dict()
    table = {
        "format": "spurious-visualize-class", "version": _FORMAT_VERSION, "plan": ctx.phash, "class": k,
        "name": names[k], "n_images": int(basis.n), "eps": plan["eps"], "steps": plan["steps"],
        "input_size": list(shape), "model_spec": ctx.ws.model_spec,
        "candidates": [{"component": int(l), "eigenvalue": float(basis.lam[l]), "npfv_probability": float(sel.probability[i]),
                        "npfv_alpha": float(values[i])} for i, l in enumerate(comps.tolist())],
        "components": components,
        "neurons": {"n_predicted": n_predicted, "note": neuron_note, "top": neuron_rows},
        "diversity": div,
    }

    class_page(cdir / "index.html", table, names)
    write_json(cdir / SHEET_TABLE, table)  # last: marks the class as done


def _write_stage_manifest(out: Path, plan: dict[str, Any], phash: str, ws: Workspace,
                          args: dict[str, Any]) -> dict[str, Any]:
    """Rank 0, after every rank finished: ``manifest.json`` and ``index.html`` from the finished classes."""

    entries = []
    total: dict[str, SetDiversity] = {}
    for k in sheet_classes(ws):
        try:
            sheet = read_sheet_table(ws, k)
        except (OSError, ValueError):
            continue
        if sheet.plan != phash:
            continue
        table = sheet.document
        best = sheet.components[0] if sheet.components else None
        entries.append({"class": k, "name": table["name"], "dir": sheet.folder.name, "n_images": table["n_images"],
                        "selected": sheet.selected,
                        "best_npfv_probability": best["npfv_probability"] if best else None,
                        "neurons": [n["neuron"] for n in table["neurons"]["top"]],
                        "diversity": table["diversity"]})
        for kind, d in table["diversity"].items():
            total[kind] = total.get(kind, SetDiversity(0, 0, 0, 0, 0)) + SetDiversity(**d)
    totals = {kind: d.to_dict() for kind, d in total.items()}
    manifest = {"format": "spurious-visualize", "version": _FORMAT_VERSION, "package_version": __version__,
                "created": utc_now(), "plan_hash": phash, **plan, "model_spec": ws.model_spec,
                "args": args, "classes": entries, "diversity_total": totals}
    index_page(out / "index.html", manifest)
    write_json(out / "manifest.json", manifest)
    return manifest
