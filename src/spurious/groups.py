"""Group labels of images (a groups file) and the group metrics of the spurious-correlation literature.

A *groups file* says which group every listed image belongs to, as Waterbirds, CelebA or SpuCo do:
CSV (with a header) or JSONL (one JSON object per line), with the columns

* ``image``: the image's id in the dataset it describes (the path relative to the dataset folder, as
  every artifact names images, e.g. ``00_star/00000.png``) or its absolute path;
* ``class``: its class (a class name or index of the label space);
* ``group``: its group within the class (any text), **or** instead one or more attribute columns
  (e.g. ``place`` or ``feeder,water``), whose values together name the group.

The group of an image is its class *and* that value, ``(y, a)`` as in Waterbirds: ``star/present`` and
``moon/present`` are two groups. Images are matched to a dataset by identity (id or absolute path),
never by order; an image of the file that is not in the dataset, or whose class differs from the
dataset's label, is an error that names how many and which.

Metrics over the images of the groups file (:func:`group_metrics`):

* per-group accuracy ``acc_g``: the fraction of the images of group ``g`` predicted as their class;
* worst-group accuracy: ``min_g acc_g`` over the groups with images;
* mean accuracy: the accuracy over all images of the file, ``sum_g (n_g / N) acc_g``: the group
  accuracies weighted by the group sizes of the evaluated set (DFR's ``test_mean_acc``; on a test set
  drawn like the training set, as the planted val split is, this is the accuracy on the training
  distribution that the Waterbirds literature reports as "mean accuracy");
* group-average accuracy: the unweighted mean ``(1 / G) sum_g acc_g`` (every group counts the same).
"""

from __future__ import annotations

import csv
import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["GroupMetrics", "GroupTable", "group_metrics", "match_groups", "read_groups"]

IMAGE_COLUMN = "image"
CLASS_COLUMN = "class"
GROUP_COLUMN = "group"
_SHOWN = 5


@dataclass
class GroupTable:
    """A parsed groups file.

    Attributes:
        path: the file.
        images: the image column, one entry per row.
        classes: class index of every row, ``int64 [R]``.
        group: group index of every row, ``int64 [R]`` (into :attr:`names`).
        names: group names ``"<class name>/<value>"``, sorted by (class, value).
        group_class: class index of every group.
        columns: the columns that name the group within a class (``["group"]`` or the attributes).
    """

    path: str
    images: list[str]
    classes: np.ndarray
    group: np.ndarray
    names: list[str]
    group_class: list[int]
    columns: list[str]

    @property
    def num_groups(self) -> int:
        return len(self.names)


@dataclass
class GroupMetrics:
    """Group metrics of one set of predictions (see the module docstring for the definitions).

    ``accuracy[g]`` is ``nan`` and ``counts[g]`` 0 for a group without scored images.
    """

    names: list[str]
    counts: np.ndarray
    accuracy: np.ndarray
    worst_group_accuracy: float
    worst_group: str
    mean_accuracy: float
    group_average_accuracy: float


def _class_of(value: str, class_names: Sequence[str], where: str) -> int:
    text = value.strip()
    if text in class_names:
        return list(class_names).index(text)
    if text.lstrip("-").isdigit():
        k = int(text)
        if 0 <= k < len(class_names):
            return k
        raise ValueError(f"{where}: class index {k} is outside 0-{len(class_names) - 1}")
    close = difflib.get_close_matches(text, list(class_names), n=3)
    hint = f" (closest: {', '.join(map(repr, close))})" if close else ""
    raise ValueError(f"{where}: {text!r} is not a class name{hint}; give a class name or index "
                     f"0-{len(class_names) - 1}")


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"groups file {path} is not UTF-8 text") from err
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise ValueError(f"groups file {path} is empty; expected a CSV header 'image,class,group' or JSONL lines")
    rows: list[dict[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson") or first.startswith("{"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"groups file {path} line {n} is not a JSON object ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"groups file {path} line {n} is not a JSON object")
            rows.append({str(k): "" if v is None else str(v) for k, v in obj.items()})
        return rows
    reader = csv.DictReader(text.splitlines())
    for row in reader:
        if None in row:
            raise ValueError(f"groups file {path} line {reader.line_num} has more cells than the header")
        rows.append({k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
    return rows


def read_groups(path: str | os.PathLike[str], class_names: Sequence[str]) -> GroupTable:
    """Read a groups file (module docstring) in the label space ``class_names``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing ``image``/``class`` column, no group or attribute column, an empty
            cell, an image listed twice, or an unknown class.
    """
    file = Path(os.path.expanduser(os.fspath(path)))
    if not file.is_file():
        raise FileNotFoundError(f"groups file {file} does not exist")
    rows = _rows(file)
    if not rows:
        raise ValueError(f"groups file {file} lists no images")
    columns = list(rows[0])
    missing = [c for c in (IMAGE_COLUMN, CLASS_COLUMN) if c not in columns]
    if missing:
        raise ValueError(f"groups file {file} has no column {' and '.join(map(repr, missing))} (its columns: "
                         f"{', '.join(columns)}); expected 'image', 'class' and 'group' or attribute columns")
    attrs = [GROUP_COLUMN] if GROUP_COLUMN in columns else [c for c in columns if c not in (IMAGE_COLUMN,
                                                                                           CLASS_COLUMN)]
    if not attrs:
        raise ValueError(f"groups file {file} has only the columns 'image' and 'class'; add a 'group' column or "
                         "attribute columns (e.g. 'place') that name each image's group within its class")
    images: list[str] = []
    classes: list[int] = []
    values: list[str] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, start=2):
        where = f"groups file {file} row {n - 1}"
        cells = [row.get(c, "") for c in (IMAGE_COLUMN, CLASS_COLUMN, *attrs)]
        if any(c == "" for c in cells):
            empty = [c for c, v in zip((IMAGE_COLUMN, CLASS_COLUMN, *attrs), cells, strict=True) if v == ""]
            raise ValueError(f"{where}: empty {', '.join(empty)}; every row needs an image, a class and its group")
        image = cells[0]
        if image in seen:
            raise ValueError(f"{where}: image {image!r} is listed twice (also row {seen[image]}); list each image once")
        seen[image] = n - 1
        images.append(image)
        classes.append(_class_of(cells[1], class_names, where))
        values.append(cells[2] if attrs == [GROUP_COLUMN] else ",".join(f"{a}={v}" for a, v in zip(attrs, cells[2:],
                                                                                                   strict=True)))
    keys = sorted(set(zip(classes, values, strict=True)))
    index = {key: g for g, key in enumerate(keys)}
    return GroupTable(
        path=str(file), images=images, classes=np.asarray(classes, dtype=np.int64),
        group=np.asarray([index[key] for key in zip(classes, values, strict=True)], dtype=np.int64),
        names=[f"{class_names[k]}/{v}" for k, v in keys], group_class=[k for k, _ in keys], columns=attrs)


def match_groups(table: GroupTable, ids: Sequence[str], labels: np.ndarray, *, what: str,
                 paths: Sequence[str] | None = None) -> np.ndarray:
    """Group index of every record of a dataset (``-1``: not in the groups file), matched by identity.

    Args:
        table: the groups file.
        ids: the records' ids (paths relative to the dataset folder).
        labels: the records' labels (same label space as the table).
        what: the dataset, for messages (e.g. ``"the validation set /data/val"``).
        paths: the records' absolute paths (an ``image`` cell may give either).

    Raises:
        ValueError: images of the file that are not records (how many, the first few, and an id of the
            dataset as an example), or whose class differs from the record's label.
    """
    by_key: dict[str, int] = {rid: r for r, rid in enumerate(ids)}
    if paths is not None:
        for r, p in enumerate(paths):
            by_key.setdefault(os.path.normpath(p), r)
    rows = np.full(len(table.images), -1, dtype=np.int64)
    unmatched: list[str] = []
    for j, image in enumerate(table.images):
        i: int | None = by_key.get(image)
        if i is None and os.path.isabs(image):
            i = by_key.get(os.path.normpath(image))
        if i is None:
            i = by_key.get(Path(image).as_posix().removeprefix("./"))
        if i is None:
            unmatched.append(image)
        else:
            rows[j] = i
    if unmatched:
        shown = ", ".join(map(repr, unmatched[:_SHOWN])) + (f" and {len(unmatched) - _SHOWN} more"
                                                            if len(unmatched) > _SHOWN else "")
        example = f" such as {ids[0]!r}" if len(ids) else ""
        raise ValueError(f"groups file {table.path}: {len(unmatched)} of {len(table.images)} images are not images "
                         f"of {what}: {shown}; the image column must hold the dataset's image ids (paths relative "
                         f"to its folder{example}) or absolute paths")
    found = rows >= 0
    wrong = np.flatnonzero(found & (np.asarray(labels)[rows.clip(min=0)] != table.classes))
    if wrong.size:
        shown = ", ".join(f"{table.images[j]!r} (file: class {int(table.classes[j])}, dataset: "
                          f"{int(labels[rows[j]])})" for j in wrong[:_SHOWN])
        raise ValueError(f"groups file {table.path}: {wrong.size} of {len(table.images)} images have a class other "
                         f"than their label in {what}: {shown}; fix the class column or the dataset")
    group_of = np.full(len(ids), -1, dtype=np.int64)
    group_of[rows] = table.group
    return group_of


def group_metrics(correct: np.ndarray, group_of: np.ndarray, names: Sequence[str]) -> GroupMetrics:
    """Per-group, worst-group, mean and group-average accuracy (module docstring).

    Args:
        correct: per record, whether it is predicted as its class (bool).
        group_of: per record, its group index, ``-1`` for records left out (not in the groups file,
            not decoded, or of a class the model does not have).
        names: the group names.
    """
    correct = np.asarray(correct, dtype=bool)
    group_of = np.asarray(group_of, dtype=np.int64)
    scored = group_of >= 0
    n_groups = len(names)
    counts = np.bincount(group_of[scored], minlength=n_groups)
    hits = np.bincount(group_of[scored], weights=correct[scored].astype(np.float64), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    present = counts > 0
    if not present.any():
        return GroupMetrics(list(names), counts, acc, float("nan"), "", float("nan"), float("nan"))
    worst = int(np.flatnonzero(present)[np.argmin(acc[present])])
    return GroupMetrics(list(names), counts, acc, float(acc[worst]), names[worst],
                        float(hits.sum() / counts.sum()), float(np.mean(acc[present])))
