"""What a model source is: the interface between the registry (:mod:`._registry`) and a source.

A source serves a family of specs ``PREFIX:NAME`` (``torchvision``, ``timm``, a zoo registered with
:func:`~spurious.models.register_model_source`), or, with an empty prefix, whole specs such as
``efficientnet_lite0``. The registry parses the spec, finds the source, asks it to
:meth:`ModelSource.load` a :class:`LoadRequest`, and finishes the result the same way for every
source (stated preprocessing, class names, config file, checkpoint digest).

A source returns either a :class:`Network` (the module with the preprocessing and class names its
weights come with; the registry wraps it in a :class:`~spurious.models.Classifier` once the
preprocessing in force is known) or a ready :class:`~spurious.models.Classifier` (what a user's
factory returns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from spurious.imagenet import NUM_CLASSES
from spurious.imagenet import class_names as imagenet_class_names

from ._checkpoint import Checkpoint
from ._classifier import Classifier
from ._preprocessing import Preprocessing

__all__ = [
    "DefaultNames",
    "LoadRequest",
    "ModelSource",
    "Network",
    "WeightsDownloadError",
    "download_error",
    "imagenet_names",
]

DefaultNames = Callable[[int], "tuple[list[str], str] | None"]
"""``K -> (K class names, where they come from)``, or ``None`` when the source has none for ``K``."""


def imagenet_names(k: int) -> tuple[list[str], str] | None:
    """The ImageNet-1k class names when ``K = 1000``: the default of torchvision, timm and Lite0 weights."""
    return (imagenet_class_names(), "ImageNet-1k") if k == NUM_CLASSES else None


@dataclass(frozen=True)
class LoadRequest:
    """What the registry asks a source to build.

    Attributes:
        name: ``NAME`` of ``PREFIX:NAME`` (the whole spec for a source without prefix); checked
            with :meth:`ModelSource.unknown_reason`.
        spec: the canonical spec (``ARCH`` or ``ARCH@/abs/path``), for messages and :attr:`Classifier.spec`.
        pretrained: load the source's pretrained weights (ignored with a checkpoint).
        checkpoint: the weights file (exists), or ``None``.
        num_classes: ``K`` stated by the caller or the config file, or ``None``.
        device: where the caller wants the model (``None``: leave it where the source puts it).
    """

    name: str
    spec: str
    pretrained: bool
    checkpoint: Path | None
    num_classes: int | None
    device: str | torch.device | None


@dataclass(frozen=True)
class Network:
    """A network as a built-in source delivers it, before the registry wraps it.

    Attributes:
        model: maps normalised images ``[N, 3, H, W]`` to logits ``[N, K]``.
        preprocessing: the preprocessing its weights come with (the defaults options and config
            files override).
        preprocessing_source: where that preprocessing comes from, e.g.
            ``"defaults of timm:NAME (its pretrained_cfg)"``.
        checkpoint: the checkpoint it was loaded from (its normaliser mean/std count as stated).
        default_names: class names when the caller and the config file give none.
    """

    model: nn.Module
    preprocessing: Preprocessing
    preprocessing_source: str
    checkpoint: Checkpoint | None = None
    default_names: DefaultNames = imagenet_names


class ModelSource(Protocol):
    """A family of model specs, as the registry sees it.

    Attributes:
        prefix: ``PREFIX`` of its specs ``PREFIX:NAME``; ``""`` for a source whose :meth:`names`
            are whole specs (``efficientnet_lite0``).
    """

    prefix: str

    def names(self) -> list[str]:
        """The valid ``NAME`` values (for :func:`~spurious.models.list_models` and suggestions)."""
        ...

    def has(self, name: str) -> bool:
        """Whether ``name`` is one of its architectures (resolves a bare ``NAME@PATH``)."""
        ...

    def unknown_reason(self, name: str) -> str | None:
        """``None`` for a valid ``name``, else the reason shown after the spec, e.g. ``" (not a ...)"``."""
        ...

    def load(self, request: LoadRequest) -> Network | Classifier:
        """Build the model; errors name :attr:`LoadRequest.spec`."""
        ...


class WeightsDownloadError(OSError, RuntimeError):
    """Pretrained weights could not be downloaded (offline, blocked, not found).

    An ``OSError`` (the CLI exits with status 2 and one line) and, as it used to be, a ``RuntimeError``.
    """


def download_error(spec: str, error: BaseException) -> WeightsDownloadError:
    """The one-line error for weights of ``spec`` that could not be downloaded, with the ways out."""
    reason = " ".join(str(error).split())  # one line
    return WeightsDownloadError(
        f"could not download the pretrained weights of {spec!r} "
        f"({type(error).__name__}: {reason}). This machine may be offline. Pass a local checkpoint "
        f"as '{spec}@/path/to/weights.pt' (or checkpoint=...), or use pretrained=False for random "
        f"weights (CLI: --random-weights). For timm, HF_HUB_OFFLINE=1 makes this fail fast."
    )
