"""Start images of the counterfactual stage: given by the user, or chosen from the workspace's features.

* ``images``: files (decoded with :func:`spurious.datasets.load_image`, then the model's preprocessing:
  resize + centre crop) or a tensor ``[N, 3, H, W]`` in ``[0, 1]`` of the model's input size;
* ``data``: the first ``n`` images (in id order) of a dataset spec;
* default for ``remove``: the component's max-activating training images (the ``n`` images labelled
  ``k`` with the largest ``alpha_l^k``, from the stored ``phi``, :func:`spurious.visualize.max_activating`);
* default for ``add``: validation images of the classes most confused with ``k``. Every class ``j != k``
  gets the mean of ``p(k)`` over its validation images (softmax of the stored ``phi`` through the
  workspace head); the ``confused`` classes with the highest mean are taken in that order, and the
  ``n`` images are drawn from them round-robin, each class's images in id order, leaving out those
  already predicted as ``k``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spurious.datasets import ImageDataset, ImageDecodeError, load_image, open_dataset
from spurious.models import Classifier
from spurious.npca import ClassBasis
from spurious.workspace import Workspace

__all__ = ["StartImages", "confused_classes", "start_images"]


@dataclass
class StartImages:
    """Start images with where they came from.

    Attributes:
        ids: one name per image (a file path, a dataset id, or ``tensor[i]``).
        images: float32 ``[N, 3, H, W]`` in ``[0, 1]`` on the CPU (the model's input size).
        labels: the label of each image when known (dataset images), else ``None``.
        source: ``"images"``, ``"data"``, ``"max-activating"`` or ``"confused-classes"``.
        detail: e.g. the confused classes and their mean ``p(k)`` (for the sheet).
    """

    ids: list[str]
    images: Tensor
    labels: list[int | None]
    source: str
    detail: dict[str, Any] = field(default_factory=dict)


def _from_paths(paths: Sequence[str | os.PathLike[str]], classifier: Classifier) -> StartImages:
    tensors = []
    for path in paths:
        try:
            image = load_image(path)
        except ImageDecodeError as err:
            raise ValueError(f"cannot read start image {os.fspath(path)}: {err.reason}") from None
        except OSError as err:
            raise ValueError(f"cannot read start image {os.fspath(path)}: {err.strerror or type(err).__name__}") \
                from None
        tensors.append(classifier.preprocessing(image))
    return StartImages([os.fspath(p) for p in paths], torch.stack(tensors), [None] * len(tensors), "images")


def _load_ids(dataset: ImageDataset, ids: Sequence[str]) -> Tensor:
    """Preprocessed images of ``ids`` (matched by id; datasets are sorted by id)."""

    class _Ids(Sequence[str]):
        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, i: Any) -> Any:
            return dataset.record(i).id

    view = _Ids()
    out = []
    for image_id in ids:
        i = bisect.bisect_left(view, image_id)
        if not (i < len(view) and view[i] == image_id):
            raise ValueError(f"start image {image_id!r} is not in the dataset {dataset.spec} any more; pass the "
                             "images with --images / --data")
        _, image, reason = dataset[i]
        if image is None:
            raise ValueError(f"cannot read start image {image_id} of {dataset.spec}: {reason}")
        out.append(image)
    return torch.stack(out)


def confused_classes(ws: Workspace, k: int, split: str = "val") -> list[tuple[int, float, int]]:
    """Classes ``j != k`` by descending mean ``p(k)`` over their images of ``split``: ``(j, mean p(k), images)``.

    ``p(k)`` is the softmax of ``W phi + b`` (the workspace head) on the stored ``phi``, in float64.
    """
    store = ws.feature_store(split)
    W, b = ws.head()
    labels = np.asarray(store.labels)
    p = np.empty(labels.shape[0])
    for start in range(0, labels.shape[0], 65536):
        logits = store.phi(np.arange(start, min(start + 65536, labels.shape[0]))).astype(np.float64) @ W.T + b
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        p[start:start + e.shape[0]] = e[:, k] / e.sum(axis=1)
    out = [(int(j), float(p[labels == j].mean()), int((labels == j).sum()))
           for j in np.unique(labels) if j >= 0 and j != k]
    return sorted(out, key=lambda t: (-t[1], t[0]))


def _confused_starts(ws: Workspace, k: int, n: int, confused: int, split: str,
                     classifier: Classifier) -> StartImages:
    ranking = confused_classes(ws, k, split)
    if not ranking:
        raise ValueError(f"split {split!r} has no labelled images of classes other than {k}; pass start images "
                         "with --images or --data")
    top = ranking[:confused]
    store = ws.feature_store(split)
    W, b = ws.head()
    per_class = []
    for j, _, _ in top:
        rows = store.rows_of_class(j)
        logits = store.phi(rows).astype(np.float64) @ W.T + b
        per_class.append(rows[logits.argmax(axis=1) != k].tolist())  # already predicted k: nothing to add
    chosen: list[tuple[int, int]] = []
    depth = 0
    while len(chosen) < n and any(depth < len(r) for r in per_class):
        for (j, _, _), rows in zip(top, per_class, strict=True):
            if depth < len(rows) and len(chosen) < n:
                chosen.append((rows[depth], j))
        depth += 1
    ids = [store.ids[r] for r, _ in chosen]
    images = _load_ids(store.open_dataset(classifier.preprocessing), ids)
    detail = {"split": split, "classes": [{"class": j, "name": ws.class_names[j], "mean_probability": m,
                                           "images": c} for j, m, c in top]}
    return StartImages(ids, images, [j for _, j in chosen], "confused-classes", detail)


def _max_activating_starts(ws: Workspace, basis: ClassBasis, component: int, n: int, split: str,
                           classifier: Classifier) -> StartImages:
    from spurious.visualize import max_activating

    store = ws.feature_store(split)
    ma = max_activating(store, basis, [component], top=n)
    ids = list(ma.ids[0])
    images = _load_ids(store.open_dataset(classifier.preprocessing), ids)
    return StartImages(ids, images, [basis.k] * len(ids), "max-activating",
                       {"split": split, "alpha": [float(v) for v in ma.values[0]]})


def start_images(ws: Workspace, basis: ClassBasis, component: int, classifier: Classifier, *, mode: str,
                 images: Sequence[str | os.PathLike[str]] | Tensor | None, data: str | ImageDataset | None, n: int,
                 split: str, val_split: str, confused: int) -> StartImages:
    """The start images of one run (see the module docstring for the rules)."""
    if images is not None and data is not None:
        raise ValueError("pass start images either as files / a tensor (images=, --images) or as a dataset "
                         "(data=, --data), not both")
    if isinstance(images, Tensor):
        x = images.detach().float().cpu()
        return StartImages([f"tensor[{i}]" for i in range(x.shape[0])], x, [None] * x.shape[0], "images")
    if images is not None:
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if not images:
            raise ValueError("images is empty; pass at least one start image file")
        return _from_paths(images, classifier)
    if data is not None:
        ds = data.with_transform(classifier.preprocessing) if isinstance(data, ImageDataset) \
            else open_dataset(data, transform=classifier.preprocessing)
        if len(ds) == 0:
            raise ValueError(f"the dataset {ds.spec} holds no images")
        ids = [ds.record(i).id for i in range(min(n, len(ds)))]
        labels: list[int | None] = [int(ds.record(i).label) for i in range(len(ids))]
        return StartImages(ids, _load_ids(ds, ids), labels, "data", {"spec": ds.spec})
    if mode == "remove":
        return _max_activating_starts(ws, basis, component, n, split, classifier)
    return _confused_starts(ws, basis.k, n, confused, val_split, classifier)
