"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def simulate_features(path: Path, classes: int, per_class: int, dim: int, *, alpha: float = 1.0,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write ImageNet-shaped penultimate features (float16 .npy on disk) with a power-law spectrum.

    Each class has its own non-negative mean and eigenvalues ``lambda_i ~ i^-alpha`` in a random
    basis, like ReLU features. Returns (phi memmap [N, D], labels [N], W [K, D], b [K]).
    """
    rng = np.random.default_rng(seed)
    n = classes * per_class
    phi = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scale = np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -alpha)
    for k in range(classes):
        mean = rng.uniform(0.0, 1.0, size=dim)
        perm = rng.permutation(dim)
        z = rng.standard_normal((per_class, dim)) * scale
        phi[k * per_class:(k + 1) * per_class] = (z @ q[:, perm].T + mean).astype(np.float16)
    phi.flush()
    labels = np.repeat(np.arange(classes), per_class)
    W = rng.normal(0, 1 / np.sqrt(dim), size=(classes, dim)).astype(np.float32)
    b = rng.normal(0, 0.1, size=classes).astype(np.float32)
    return np.load(path, mmap_mode="r"), labels, W, b


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2))
    sys.stdout.flush()
