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


def planted_component_precision(ws_dir: Path, planted, *, top_k: int = 20, search: int = 10) -> list[dict]:
    """Per planted (feature, class): share of each top-``search`` component's top-``top_k`` training images with the feature.

    The components are those of ``ws_dir``'s neural PCA (by eigenvalue); the truth is the planted
    ``index.jsonl``. ``top_k`` is capped at a quarter of the class's images. One dict per pair, in
    ``planted.features`` order: ``class``, ``class_name``, ``feature``, ``base_rate`` (share of the
    class's images with the feature) and ``precision`` (float array, one entry per component).
    """
    from spurious.npca import load_npca
    from spurious.workspace import Workspace

    store = Workspace.open(ws_dir).feature_store("train")
    pca = load_npca(ws_dir)
    truth = {r["id"][len("train/"):]: {f["name"] for f in r["features"]}
             for r in planted.ground_truth() if r["split"] == "train"}
    ids = store.ids
    out = []
    for feature in planted.features:
        for k in feature.classes:
            rows = store.rows_of_class(k)
            has = np.array([feature.name in truth[ids[r]] for r in rows])
            k_top = min(top_k, max(1, len(rows) // 4))
            comps = np.arange(min(search, pca[k].num_components))
            a = pca[k].alpha(store.phi(rows).astype(np.float64), comps)
            top = np.argsort(-a, axis=0, kind="stable")[:k_top]
            out.append({"class": k, "class_name": planted.class_names[k], "feature": feature.name,
                        "base_rate": float(has.mean()), "precision": has[top].mean(axis=0)})
    return out


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2))
    sys.stdout.flush()


def decode_and_forward(preprocess, paths: list, classifiers: list, batch_size: int, device) -> tuple[float, list[float]]:
    """The two parts of the bare bound ``1 / (decode + forward)``, each measured alone (seconds per image).

    Decodes and preprocesses every file in ``paths`` once (keeping ``4 * batch_size`` tensors), then times
    ``classifier.phi_and_logits`` over as many images as ``paths`` holds, cycling the kept batches, after a
    two-batch warm-up; one forward figure per classifier.
    """
    import time

    import torch

    from spurious.datasets import load_image

    keep = 4 * batch_size  # tensors kept for the forward timing; the rest are dropped
    tensors = []
    t = time.perf_counter()
    for path in paths:
        x = preprocess(load_image(path))
        if len(tensors) < keep:
            tensors.append(x)
    decode = (time.perf_counter() - t) / len(paths)

    batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
    n_batches = -(-len(paths) // batch_size)
    forwards = []
    with torch.inference_mode():
        for clf in classifiers:
            for x in batches[:2]:  # warm-up (allocator, kernels)
                clf.phi_and_logits(x.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for i in range(n_batches):
                clf.phi_and_logits(batches[i % len(batches)].to(device, non_blocking=True))
            if device.type == "cuda":
                torch.cuda.synchronize()
            forwards.append((time.perf_counter() - t) / (n_batches * batch_size))
    return decode, forwards
