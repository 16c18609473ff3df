"""Argument checks shared by the ``visualize`` modules (the public functions' counts and indices)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spurious._checks import positive_int

__all__ = ["check_batch_size", "check_neurons", "positive_int"]


def check_batch_size(batch_size: int | None) -> int | None:
    """``None`` (one batch per class) or a positive integer."""
    if batch_size is None:
        return None
    return positive_int("batch_size", batch_size, " (or None for one batch per class)")


def check_neurons(neurons: Sequence[int] | np.ndarray, d: int) -> np.ndarray:
    """Neuron indices as int64 [M], each in ``0..d-1``."""
    idx = np.asarray(neurons, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= d):
        raise ValueError(f"neuron index out of range: valid 0..{d - 1} (got {idx.tolist()})")
    return idx
