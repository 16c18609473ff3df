"""Max-activating training images: the images *labelled* ``k`` with the largest target value.

The targets are ``alpha_l^k`` of a component (:func:`max_activating`, from the stored ``phi`` with
:meth:`spurious.npca.ClassBasis.alpha`) or a single neuron ``phi_j`` (:func:`max_activating_neurons`,
the neuron baseline). No model runs: the feature store is streamed a chunk of rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from spurious.visualize._checks import check_neurons, positive_int

if TYPE_CHECKING:
    from spurious.npca import ClassBasis
    from spurious.store import FeatureStore

__all__ = ["MaxActivating", "max_activating", "max_activating_neurons"]


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


def _top_rows(store: FeatureStore, rows: np.ndarray, score: Callable[[np.ndarray], np.ndarray], m: int, top: int,
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


def _with_probability(store: FeatureStore, k: int, kind: str, index: np.ndarray, values: np.ndarray,
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


def max_activating(store: FeatureStore, basis: ClassBasis, components: Sequence[int] | np.ndarray | None = None, *,
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
    top = positive_int("top", top)
    chunk_rows = positive_int("chunk_rows", chunk_rows)
    if basis.mu.shape[0] != store.dim:
        raise ValueError(f"the basis has D={basis.mu.shape[0]} but the store {store.path} has D={store.dim}")
    comps = basis._components(components)
    rows = store.rows_of_class(basis.k)
    if rows.size == 0:
        raise ValueError(f"the store {store.path} has no images labelled {basis.k}")
    values, best = _top_rows(store, rows, lambda phi: basis.alpha(phi, comps), comps.size, min(top, rows.size),
                             chunk_rows)
    return _with_probability(store, basis.k, "component", comps, values, best)


def max_activating_neurons(store: FeatureStore, k: int, neurons: Sequence[int] | np.ndarray, *, top: int = 5,
                           chunk_rows: int = 65536) -> MaxActivating:
    """Max-activating training images of neurons: the images labelled ``k`` with the largest ``phi_j``.

    Args:
        store: the labelled training feature store.
        k: the class.
        neurons: indices ``j`` into ``phi``.
        top: images per neuron (capped at the class size).
    """
    top = positive_int("top", top)
    chunk_rows = positive_int("chunk_rows", chunk_rows)
    idx = check_neurons(neurons, store.dim)
    rows = store.rows_of_class(int(k))
    if rows.size == 0:
        raise ValueError(f"the store {store.path} has no images labelled {k}")
    values, best = _top_rows(store, rows, lambda phi: phi[:, idx], idx.size, min(top, rows.size), chunk_rows)
    return _with_probability(store, int(k), "neuron", idx, values, best)
