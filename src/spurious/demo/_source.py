"""The ``demo:`` model source: the embedded demo classifiers, registered as a plugin.

``pyproject.toml`` names :func:`register` in the entry-point group
:data:`spurious.models.PLUGIN_GROUP`, so ``load_model("demo:robust")`` finds the demo models
without any core module importing the demo; training code loads only when a demo model is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from spurious.models import Classifier, register_model_source

__all__ = ["register"]


def _factory(
    name: str,
    *,
    pretrained: bool,
    checkpoint: Path | None,
    device: str | torch.device | None,
) -> Classifier:
    from spurious.demo._models import load_demo_model

    ckpt: str | os.PathLike[str] | None = checkpoint
    return load_demo_model(name, pretrained=pretrained, checkpoint=ckpt, device=device)


def _names() -> list[str]:
    from spurious.demo._models import demo_model_names

    return demo_model_names()


def register() -> None:
    """Register ``demo:standard``, ``demo:robust`` and their ``-tiny`` variants."""
    register_model_source("demo", _factory, _names, _plugin=True)
