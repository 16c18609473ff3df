"""Evidence that a demo classifier learned the planted spurious features.

Both demo models learn the planted spurious features (feeder -> class 0, frame -> class 1, water
-> classes 2 and 3, scribble -> class 3): :func:`evaluate_demo_model` measures the validation
accuracy and, for every spurious (class, feature) pair, the fraction of its spurious-only images
(feature, no object) that the model assigns to that class. The numbers are logged and stored in
the checkpoint's metadata; :func:`evidence_lines` prints them as a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import Tensor

from spurious.datasets import IMAGE_EXTENSIONS, image_folder, load_image
from spurious.demo.planted import PlantedDataset
from spurious.models import Classifier

__all__ = ["DemoEvidence", "SpuriousEvidence", "evaluate_demo_model", "evidence_lines"]

SpuriousEvidence = TypedDict("SpuriousEvidence", {
    "class": int,
    "class_name": str,
    "feature": str,
    "feature_index": int,
    "kind": str,
    "folder": str,
    "num_images": int,
    "predicted_as_class": float,
    "mean_probability": float,
})
"""One spurious-only folder of :class:`DemoEvidence` (``class`` is a keyword, hence this form)."""


class DemoEvidence(TypedDict):
    """What :func:`evaluate_demo_model` returns (stored in the checkpoint's metadata)."""

    val_accuracy: float
    val_accuracy_per_class: list[float]
    num_val: int
    chance: float
    spurious: list[SpuriousEvidence]


def _predict(classifier: Classifier, paths: Sequence[str], batch_size: int) -> Tensor:
    """Softmax probabilities ``[N, K]`` of the images at ``paths`` (float32, CPU)."""
    probs = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack(
                [classifier.preprocessing(load_image(p)) for p in paths[start:start + batch_size]]
            )
            probs.append(classifier(batch).float().softmax(dim=1).cpu())
    k = classifier.num_classes
    return torch.cat(probs) if probs else torch.zeros((0, k))


def evaluate_demo_model(
    classifier: Classifier, planted: PlantedDataset, *, batch_size: int = 200
) -> DemoEvidence:
    """Evidence that a classifier learned the planted spurious features.

    Args:
        classifier: a classifier over the planted classes (e.g. ``load_model("demo:robust")``).
        planted: the planted dataset it was trained on (:func:`~spurious.demo.planted.load_planted`).
        batch_size: images per forward pass.

    Returns:
        a JSON-able dict: ``val_accuracy`` (top-1 on ``planted.val``), ``val_accuracy_per_class``
        (list, by class), ``num_val``, ``chance`` (``1 / K``), and ``spurious``: one dict per
        spurious-only folder (``planted.spurious``; each image shows the feature but no object)
        with ``class``, ``class_name``, ``feature``, ``feature_index``, ``kind``, ``folder``,
        ``num_images``, ``predicted_as_class`` (fraction with ``argmax = class``; the "class
        extension" rate of DESIGN.md) and ``mean_probability`` (mean softmax probability of
        ``class``).

    Raises:
        ValueError: the classifier's number of classes differs from the dataset's.
    """
    k_total = len(planted.class_names)
    if classifier.num_classes != k_total:
        raise ValueError(
            f"the classifier has {classifier.num_classes} classes but the planted dataset at "
            f"{planted.root} has {k_total}; evaluate a model trained on that dataset"
        )
    val = image_folder(planted.val, class_names=list(planted.class_folders))
    probs = _predict(classifier, [r.path for r in val.records], batch_size)
    labels = torch.from_numpy(val.labels())
    correct = probs.argmax(dim=1) == labels
    per_class = [
        float(correct[labels == k].float().mean()) if bool((labels == k).any()) else float("nan")
        for k in range(k_total)
    ]
    spurious: list[SpuriousEvidence] = []
    for (k, j), folder in sorted(planted.spurious_folders.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        paths = sorted(str(p) for p in (planted.spurious / folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        p = _predict(classifier, paths, batch_size)
        feature = planted.features[j]
        spurious.append({
            "class": k,
            "class_name": planted.class_names[k],
            "feature": feature.name,
            "feature_index": j,
            "kind": feature.kind,
            "folder": folder,
            "num_images": len(paths),
            "predicted_as_class": float((p.argmax(dim=1) == k).float().mean()) if paths else float("nan"),
            "mean_probability": float(p[:, k].mean()) if paths else float("nan"),
        })
    return {
        "val_accuracy": float(correct.float().mean()),
        "val_accuracy_per_class": per_class,
        "num_val": int(labels.numel()),
        "chance": 1.0 / k_total,
        "spurious": spurious,
    }


def evidence_lines(evidence: DemoEvidence) -> list[str]:
    """The evidence of :func:`evaluate_demo_model` as a small text table."""
    lines = [
        (f"val accuracy {evidence['val_accuracy']:.3f} ({evidence['num_val']} images); "
         f"chance {evidence['chance']:.3f}"),
        f"  {'class':<12} {'feature':<9} {'kind':<16} {'spurious-only -> class':>22} {'mean p':>7}",
    ]
    for s in evidence["spurious"]:
        lines.append(
            f"  {str(s['class']) + ' ' + s['class_name']:<12} {s['feature']:<9} {s['kind']:<16} "
            f"{s['predicted_as_class']:>15.3f} (n={s['num_images']:<3}) {s['mean_probability']:>7.3f}"
        )
    return lines
