"""The dataset object every reader returns, and the batch collation that tolerates bad files."""

from __future__ import annotations

import copy
import functools
import hashlib
import operator
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ._images import ImageDecodeError, load_image

__all__ = ["ImageDataset", "ImageRecord", "collate_images", "default_transform"]

Transform = Callable[[Image.Image], torch.Tensor]
"""A dataset transform: a decoded RGB image -> a float ``[3, H, W]`` tensor (e.g. a model's ``Preprocessing``)."""

RecordMeta = Mapping[str, Any]
"""A record's reader-specific extras: JSON values such as ``{"component": 12, "folder": "..."}``."""



class _FrozenMeta(Mapping[str, Any]):
    """Read-only, picklable view of a record's ``meta`` dict (shared between record objects)."""

    __slots__ = ("_data",)

    def __init__(self, data: RecordMeta | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:  # Any: a JSON value
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)

    def __getstate__(self) -> tuple[dict[str, Any]]:
        return (self._data,)  # a non-empty tuple, so __setstate__ also runs for an empty dict

    def __setstate__(self, state: tuple[dict[str, Any]]) -> None:
        self._data = state[0]


_NO_META: RecordMeta = _FrozenMeta()


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image of a dataset.

    Attributes:
        id: Stable identifier: the POSIX path relative to the dataset root (for a file list, the
            path as written in the list, normalised). Artifacts are matched by this id, never by
            loader order.
        path: Absolute path of the file on disk.
        label: Class index into the dataset's ``class_names``; ``-1`` when unlabeled.
        meta: Reader-specific extras, e.g. ``{"component": 12, "folder": "..."}`` for
            Spurious ImageNet. Compared by ``==`` but not hashed (so records stay hashable);
            read-only for records built by a dataset.
    """

    id: str
    path: str
    label: int
    meta: RecordMeta = field(default_factory=dict, hash=False)


def default_transform(image: Image.Image) -> torch.Tensor:
    """The transform used when none is given: RGB image -> float32 ``[3, H, W]`` in ``[0, 1]``."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous().float().div_(255.0)


class _StringTable:
    """Immutable list of strings packed into one UTF-8 buffer plus offsets.

    A Python list of millions of ``str`` touched from DataLoader worker processes gets copied page
    by page (reference counts are writes); two numpy arrays do not, and pickle fast.
    """

    __slots__ = ("_buf", "_off")

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._off = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._off[1:])
        self._buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i: int) -> str:
        return self._buf[self._off[i] : self._off[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        buf = self._buf.tobytes()
        off = self._off.tolist()
        for a, b in zip(off[:-1], off[1:], strict=False):
            yield buf[a:b].decode("utf-8")

    def take(self, indices: np.ndarray) -> _StringTable:
        return _StringTable([self[int(i)] for i in indices])


class ImageDataset(torch.utils.data.Dataset):
    """A list of image files with labels, decoded lazily and never raising for a bad file.

    Built by the readers (:func:`open_dataset`, :func:`image_folder`, ...), not directly.
    Records are sorted by id, so two listings of the same data give the same order and
    :meth:`fingerprint`. Internally ids and labels are packed numpy arrays, so the dataset stays
    small in DataLoader workers even for millions of images; :attr:`records` is built on first use.

    Attributes:
        kind: ``"folder"``, ``"imagenet"``, ``"list"``, ``"pool"`` or ``"spurious-imagenet"``.
        root: Absolute folder the ids are relative to.
        spec: Canonical spec, ``"<kind>:<absolute path>"``; ``open_dataset(spec)`` lists the same
            data again (for a file list opened with a non-default ``root``, pass that root too).
        class_names: Names indexed by label, or ``None`` when the label space is unknown.
        skipped: ``(id, reason)`` of entries found while listing that are not images (unknown
            extension, broken symlink, symlink loop, file outside the class folders, ...).
            Dot-files and folders, ``__MACOSX`` and a top-level Spurious ImageNet ``timestamp.txt``
            are ignored silently.
        transform: Applied to the RGB ``PIL.Image`` in :meth:`__getitem__`; when ``None``,
            :func:`default_transform` (float32 ``[3, H, W]`` in ``[0, 1]``) is used.
        label_source: One line saying how the reader assigned the labels, e.g.
            ``"folder names matched to the given class names (6 exact, 2 as NN_name)"``;
            ``""`` when unknown.
    """

    def __init__(
        self,
        *,
        kind: str,
        root: str | os.PathLike[str],
        spec: str,
        ids: Sequence[str] | _StringTable,
        labels: Sequence[int] | np.ndarray,
        class_names: Sequence[str] | None,
        skipped: Sequence[tuple[str, str]] = (),
        transform: Transform | None = None,
        meta: Sequence[RecordMeta] | None = None,
        label_source: str = "",
    ) -> None:
        """Internal constructor; ``ids`` must already be sorted (readers guarantee it)."""
        self.kind = kind
        self.root = Path(root)
        self.spec = spec
        self.class_names: list[str] | None = None if class_names is None else list(class_names)
        self.skipped: list[tuple[str, str]] = list(skipped)
        self.transform = transform
        self.label_source = label_source
        self._root_str = os.fspath(self.root)
        self._ids = ids if isinstance(ids, _StringTable) else _StringTable(ids)
        self._labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self._meta = None if meta is None else [_FrozenMeta(m) for m in meta]
        if len(self._labels) != len(self._ids) or (
            self._meta is not None and len(self._meta) != len(self._ids)
        ):
            raise ValueError("ids, labels and meta must have the same length")

    # ------------------------------------------------------------------ records
    def __len__(self) -> int:
        return len(self._ids)

    def _index(self, i: int) -> int:
        i = operator.index(i)
        n = len(self._ids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return i

    def _path(self, rel: str) -> str:
        # ids are normalised, so only a file-list id can start with ".." (absolute ids win in join)
        path = os.path.join(self._root_str, rel)
        return os.path.normpath(path) if rel.startswith("..") else path

    def record(self, i: int) -> ImageRecord:
        """Record ``i``, built on the fly (cheap; prefer this to :attr:`records` for huge pools)."""
        i = self._index(i)
        rel = self._ids[i]
        meta = _NO_META if self._meta is None else self._meta[i]
        return ImageRecord(rel, self._path(rel), int(self._labels[i]), meta)

    @functools.cached_property
    def records(self) -> list[ImageRecord]:
        """All records, sorted by id (built once, on first access)."""
        labels = self._labels.tolist()
        metas = self._meta if self._meta is not None else [_NO_META] * len(labels)
        return [
            ImageRecord(rel, self._path(rel), label, meta)
            for rel, label, meta in zip(self._ids, labels, metas, strict=False)
        ]

    def labels(self) -> np.ndarray:
        """Labels of all records, ``int64 [N]`` (a copy; ``-1`` = unlabeled)."""
        return self._labels.copy()

    @functools.cached_property
    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for rel, label in zip(self._ids, self._labels.tolist(), strict=False):
            h.update(f"{rel}\0{label}\n".encode())
        return h.hexdigest()[:16]

    def fingerprint(self) -> str:
        """16 hex digits of sha256 over ``id \\0 label \\n`` (UTF-8) of every record, in order.

        Identifies the listing (which files, which labels, which order), not the pixels nor the
        transform; stages store it in manifests to refuse mixing artifacts of different data.
        """
        return self._fingerprint

    # ------------------------------------------------------------------ loading
    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        """Load, convert and transform image ``i``.

        Args:
            i: Record index (negative indices count from the end).

        Returns:
            ``(i, image, None)`` on success, with ``image = transform(load_image(path))``;
            ``(i, None, reason)`` when the file is missing, unreadable or undecodable, or the
            transform fails on it. Never raises for a bad file (only ``IndexError`` for a bad
            index), so a long extraction job survives any single file.
        """
        i = self._index(i)
        path = self._path(self._ids[i])
        try:
            image = load_image(path)
        except ImageDecodeError as e:
            return i, None, e.reason
        except OSError as e:
            return i, None, f"cannot read file ({e.strerror or type(e).__name__})"
        transform = self.transform if self.transform is not None else default_transform
        try:
            return i, transform(image), None
        except Exception as e:  # noqa: BLE001 - one odd image must not end a multi-hour job
            return i, None, f"transform failed ({type(e).__name__}: {e})"

    # ------------------------------------------------------------------ derived datasets
    def with_transform(self, transform: Transform | None) -> ImageDataset:
        """Shallow copy sharing the listing, with another transform."""
        new = copy.copy(self)
        new.transform = transform
        return new

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """A dataset of the given records, in the given order (e.g. one shard of the work).

        Args:
            indices: Record indices in ``[0, len(self))``; repeats allowed.

        Returns:
            A new dataset with the same kind, root, spec, class names, label source, skipped list
            and transform;
            its :meth:`fingerprint` is that of the subset.

        Raises:
            ValueError: an index is out of range or not an integer.
        """
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be a 1-D sequence of integers, got dtype {idx.dtype}")
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise ValueError(f"subset index {bad} out of range [0, {n})")
        return ImageDataset(
            kind=self.kind,
            root=self.root,
            spec=self.spec,
            ids=self._ids.take(idx),
            labels=self._labels[idx],
            class_names=self.class_names,
            skipped=self.skipped,
            transform=self.transform,
            meta=None if self._meta is None else [self._meta[int(j)] for j in idx],
            label_source=self.label_source,
        )

    # ------------------------------------------------------------------ misc
    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state.pop("records", None)  # rebuilt on demand; keeps worker start-up fast
        return state

    def __repr__(self) -> str:
        n_cls = "None" if self.class_names is None else str(len(self.class_names))
        return (
            f"ImageDataset(spec={self.spec!r}, images={len(self)}, classes={n_cls}, "
            f"skipped={len(self.skipped)})"
        )


def collate_images(
    batch: list[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """``collate_fn`` for :class:`ImageDataset` that drops failed items and reports them.

    Args:
        batch: Items of :meth:`ImageDataset.__getitem__`.

    Returns:
        ``(images, indices, failed)``: ``images`` float ``[B', C, H, W]`` stacked from the items
        that loaded (in batch order), ``indices`` int64 ``[B']`` their dataset indices, and
        ``failed`` the ``(index, reason)`` of the others. When every item failed, ``images`` is an
        empty float32 tensor of shape ``[0, 3, 0, 0]`` and ``indices`` an empty int64 tensor.

    Raises:
        ValueError: the good images do not all have the same shape (use a transform that
            resizes/crops to a fixed size).
    """
    good: list[torch.Tensor] = []
    indices: list[int] = []
    failed: list[tuple[int, str]] = []
    for index, image, error in batch:
        if image is None:
            failed.append((int(index), error if error is not None else "unknown error"))
        else:
            good.append(image)
            indices.append(int(index))
    if not good:
        return torch.empty((0, 3, 0, 0)), torch.empty((0,), dtype=torch.int64), failed
    shapes = {tuple(t.shape) for t in good}
    if len(shapes) > 1:
        raise ValueError(
            f"images in a batch have different shapes {sorted(shapes)}; "
            "give the dataset a transform that resizes and crops to a fixed size"
        )
    return torch.stack(good), torch.tensor(indices, dtype=torch.int64), failed


class BlockBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices that never straddle a block boundary, block by block.

    A block is a contiguous range of indices saved together (a feature shard of ``extract``, a
    cached chunk of ``score``); ``block_of_batch[i]`` names the block of batch ``i``, so a loop over
    ``zip(loader, sampler.block_of_batch)`` knows when a block is complete.

    Args:
        blocks: ``(block, start, stop)`` per block, in the order to visit them.
        batch_size: the largest batch; the last batch of a block may be smaller.
    """

    def __init__(self, blocks: Sequence[tuple[int, int, int]], batch_size: int) -> None:
        self.batches: list[list[int]] = []
        self.block_of_batch: list[int] = []
        for block, start, stop in blocks:
            for b in range(start, stop, batch_size):
                self.batches.append(list(range(b, min(b + batch_size, stop))))
                self.block_of_batch.append(block)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
