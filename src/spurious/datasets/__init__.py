"""Dataset readers: image folders, ImageNet, file lists, unlabeled pools and Spurious ImageNet.

Every reader returns an :class:`ImageDataset` whose records are sorted by a stable id (the path
relative to the dataset root) and whose ``__getitem__`` never raises for a bad file: it returns
``(index, None, reason)`` instead, and :func:`collate_images` drops such items from the batch and
reports them. Listing uses ``os.scandir`` and never opens an image, so millions of files list in
seconds.

Example:
    >>> ds = open_dataset("imagenet:/data/imagenet/val", transform=my_transform)  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=8,
    ...                                      collate_fn=collate_images)          # doctest: +SKIP
    >>> for images, indices, failed in loader: ...                               # doctest: +SKIP
"""

from __future__ import annotations

from ._dataset import ImageDataset, ImageRecord, collate_images, default_transform
from ._images import IMAGE_EXTENSIONS, ImageDecodeError, load_image
from ._labels import LabelMatch, match_class_names, read_class_map
from ._readers import (
    DATASET_KINDS,
    dataset_kind,
    file_list,
    image_folder,
    image_pool,
    imagenet_folder,
    open_dataset,
    parse_spurious_folder,
    spurious_imagenet,
)

__all__ = [
    "DATASET_KINDS",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageDecodeError",
    "ImageRecord",
    "LabelMatch",
    "collate_images",
    "dataset_kind",
    "default_transform",
    "file_list",
    "image_folder",
    "image_pool",
    "imagenet_folder",
    "load_image",
    "match_class_names",
    "open_dataset",
    "parse_spurious_folder",
    "read_class_map",
    "spurious_imagenet",
]

