"""Shared fixtures: tiny deterministic models and generated image folders (all offline, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "2")


def write_images(root: Path, per_class: dict[str, int], *, size: int = 40, seed: int = 0) -> Path:
    """Random-colour PNG/JPEG images in class folders; returns ``root``."""
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = rng.integers(0, 256, size=3)
            arr = np.clip(base + rng.normal(0, 30, size=(size, size + 8, 3)), 0, 255).astype(np.uint8)
            ext = ".png" if i % 2 else ".jpg"
            Image.fromarray(arr).save(folder / f"img_{i:03d}{ext}")
    return root


class TinyNet(torch.nn.Module):
    """A 2-conv CNN with a linear head: phi has D=12, K classes."""

    def __init__(self, num_classes: int = 3, width: int = 12) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def tiny_classifier(num_classes: int = 3, seed: int = 0, spec: str = "test:tiny"):  # type: ignore[no-untyped-def]
    from spurious.models import Classifier, Preprocessing

    torch.manual_seed(seed)
    net = TinyNet(num_classes).eval()
    pre = Preprocessing(input_size=(32, 32), resize_size=32, crop_pct=1.0, interpolation="bilinear",
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Classifier.from_module(net, pre, [chr(ord("a") + i) for i in range(num_classes)], spec)  # = folder names


@pytest.fixture
def tiny_model():  # type: ignore[no-untyped-def]
    return tiny_classifier()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "data", {"a": 7, "b": 6, "c": 5})
