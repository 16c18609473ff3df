"""The Salient ImageNet neuron baseline and the diversity of max-activating sets.

Importance of neuron ``j`` for class ``k`` is ``mean_{x predicted k} phi_j(x) W_kj`` (over the images
of the split whose stored top-1 prediction is ``k``, :func:`neuron_importance`); the most important
neurons get the treatment of the components (:func:`neuron_visualization`: ``argmax phi_j(x)``
under the NPFV constraints; max-activating images in :mod:`spurious.visualize._max_activating`).
:func:`diversity` counts how often the same training image shows up in several max-activating sets,
e.g. those of the top-5 components versus those of the top-5 neurons.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from spurious.visualize._checks import check_batch_size, check_neurons, positive_int
from spurious.visualize._npfv import FeatureVisualization, maximize_linear, resolve_eps

if TYPE_CHECKING:
    from spurious.models import Classifier
    from spurious.store import FeatureStore

__all__ = ["NeuronImportance", "SetDiversity", "diversity", "neuron_importance", "neuron_visualization"]


# ---------------------------------------------------------------------------- neuron baseline


def neuron_visualization(classifier: Classifier, neurons: Sequence[int] | np.ndarray, *, k: int = -1,
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
    steps = positive_int("steps", steps)
    batch_size = check_batch_size(batch_size)
    eps = resolve_eps(eps, classifier)
    idx = check_neurons(neurons, classifier.num_features)
    A = np.zeros((idx.size, classifier.num_features))
    A[np.arange(idx.size), idx] = 1.0
    images, value, probs = maximize_linear(classifier, A, np.zeros(idx.size), eps=eps, steps=steps, seed=seed,
                                           batch_size=batch_size)
    return FeatureVisualization("neuron", int(k), idx, images, value, probs, eps, steps)


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


def neuron_importance(store: FeatureStore, W: np.ndarray, classes: Sequence[int] | np.ndarray | None = None, *,
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
    chunk_rows = positive_int("chunk_rows", chunk_rows)
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
