"""ImageNet-1k label space: wnids in the standard 1000-class order and readable class names.

The tables come from the copy that ships inside ``timm`` (no download), so the order is the one
every torchvision / timm ImageNet-1k classifier uses.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from timm.data import ImageNetInfo

__all__ = ["NUM_CLASSES", "class_names", "wnids", "wnid_to_index"]

NUM_CLASSES = 1000


@functools.cache
def _info() -> ImageNetInfo:
    from timm.data import ImageNetInfo

    return ImageNetInfo("imagenet-1k")


def wnids() -> list[str]:
    """The 1000 WordNet ids (``n01440764`` ...) in the standard class-index order."""
    return list(_info().label_names())


def class_names() -> list[str]:
    """Short readable class names (first lemma, e.g. ``"espresso"``), index-aligned with :func:`wnids`."""
    return [d.split(",")[0].strip() for d in _info().label_descriptions()]


@functools.cache
def wnid_to_index() -> dict[str, int]:
    """Map a WordNet id to its ImageNet-1k class index."""
    return {w: i for i, w in enumerate(wnids())}
