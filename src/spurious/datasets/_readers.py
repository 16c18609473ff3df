"""Readers for the supported dataset layouts and the ``open_dataset`` spec parser."""

from __future__ import annotations

import csv
import difflib
import json
import logging
import os
import posixpath
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from spurious._io import JSONDict

from .. import imagenet
from ._dataset import ImageDataset, RecordMeta, Transform
from ._images import IMAGE_EXTENSIONS
from ._labels import match_class_names
from ._scan import Listing, scan_tree, top_level

__all__ = [
    "DATASET_KINDS",
    "dataset_kind",
    "file_list",
    "image_folder",
    "image_pool",
    "imagenet_folder",
    "open_dataset",
    "parse_spurious_folder",
    "spurious_imagenet",
]

_log = logging.getLogger(__name__)

DATASET_KINDS: tuple[str, ...] = ("folder", "imagenet", "list", "pool", "spurious-imagenet")
"""Valid ``open_dataset`` spec prefixes, one per reader."""

_LIST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_SPURIOUS_PATTERN = "<a>_<b>_<class index 0-999>_..._<component index>, e.g. spurious_imagenet_281_cat_3"
_LAYOUTS = (
    "folder:DIR (one sub-folder per class), "
    "imagenet:DIR (ImageNet-1k wnid sub-folders such as n01440764), "
    f"spurious-imagenet:DIR (sub-folders named {_SPURIOUS_PATTERN}), "
    "pool:DIR (any tree of images, unlabeled), "
    "list:FILE (.csv with a 'path' and optional 'label' column, or .jsonl)"
)


def _extensions_text() -> str:
    return " ".join(sorted(IMAGE_EXTENSIONS))


# ---------------------------------------------------------------------- helpers
def _resolve(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.expanduser(os.fspath(path))).resolve()


def _existing_dir(root: str | os.PathLike[str], kind: str) -> Path:
    path = _resolve(root)
    if not path.exists():
        raise FileNotFoundError(f"dataset folder {os.fspath(root)!s} does not exist (resolved: {path})")
    if not path.is_dir():
        raise ValueError(
            f"{kind} dataset needs a directory, but {path} is a file; "
            "for a list of images use list:FILE (.csv or .jsonl)"
        )
    return path


def _empty_error(kind: str, root: Path, skipped: Sequence[tuple[str, str]]) -> ValueError:
    msg = f"no images found in {root} (read as {kind!r})."
    if skipped:
        ex_id, ex_reason = skipped[0]
        msg += f" {len(skipped)} entries were skipped, e.g. {ex_id!r}: {ex_reason}."
    msg += f" Accepted layouts: {_LAYOUTS}. Image extensions: {_extensions_text()} (any case)."
    return ValueError(msg)


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    """Validate a label space. Names may repeat (ImageNet has two classes called 'crane'): labels
    are indices, and a folder or list label that names a repeated class is reported as ambiguous
    by :func:`match_class_names`."""
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise TypeError(
            f"class_names must be a sequence of strings, got {type(class_names).__name__}"
        )
    names = list(class_names)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"class_names[{i}] must be a str, got {type(name).__name__}")
    return names


def _some(names: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def _class_folders(
    kind: str,
    root: Path,
    folders: Sequence[str],
    label_of: Mapping[str, int],
    class_names: Sequence[str] | None,
    skipped: list[tuple[str, str]],
    transform: Transform | None,
    label_source: str,
    meta_of: Mapping[str, RecordMeta] | None = None,
) -> ImageDataset:
    """Shared body of the class-folder layouts: scan each folder, label by folder, sort by id."""
    root_s = os.fspath(root)
    listing = Listing(skipped=skipped)
    for folder in folders:
        scan_tree(os.path.join(root_s, folder), folder + "/", listing, dataset_root=root_s)
    if not listing.images:
        raise _empty_error(kind, root, listing.skipped)
    present = {i.split("/", 1)[0] for i in listing.images}
    empty = [f for f in folders if f not in present]
    if empty:  # a class that silently vanished would skew every per-class figure
        listing.skipped.extend((f + "/", "class folder holds no images") for f in empty)
        warnings.warn(
            f"{root}: {len(empty)} class folder{'s hold' if len(empty) > 1 else ' holds'} no images: "
            f"{_some(empty)} (their classes get no images here; listed in the dataset's skipped entries)",
            stacklevel=3,
        )
    ids = sorted(listing.images)
    folder_of = [i.split("/", 1)[0] for i in ids]
    labels = [label_of[f] for f in folder_of]
    meta = None if meta_of is None else [meta_of[f] for f in folder_of]
    ds = ImageDataset(
        kind=kind,
        root=root,
        spec=f"{kind}:{root_s}",
        ids=ids,
        labels=labels,
        class_names=class_names,
        skipped=sorted(listing.skipped),
        transform=transform,
        meta=meta,
        label_source=label_source,
    )
    _log.info("%s: %d images, %d skipped entries", ds.spec, len(ds), len(ds.skipped))
    return ds


def _top_level_files_skipped(
    files: Sequence[str], other: Sequence[tuple[str, str]], ignore: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    skipped = list(other)
    for name in files:
        if name in ignore:
            continue
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            skipped.append((name, "image outside the class folders (use pool:DIR to read every image)"))
        else:
            skipped.append((name, "file outside the class folders"))
    return skipped


# ---------------------------------------------------------------------- readers
def image_folder(
    root: str | os.PathLike[str],
    *,
    transform: Transform | None = None,
    class_names: Sequence[str] | None = None,
    class_map: Mapping[str, int | str] | None = None,
    wnids: Sequence[str] | None = None,
) -> ImageDataset:
    """Read an ImageFolder layout: one sub-folder per class, images anywhere inside it.

    Args:
        root: Dataset folder.
        transform: See :class:`ImageDataset`.
        class_names: Label space, e.g. the model's class names. When given, each folder is
            matched to a class by name (:func:`match_class_names`: exact, ignoring case and
            separators, wnid, ``NN_name``, bare index), so any subset of the classes in any order
            gets the right labels. When ``None``: all-digit folder names are class indices
            (``2/``, ``10/`` -> 2, 10; ``class_names`` ``"0" .. "<max>"``), any other folders are
            labelled by sorted name and those names are the class names (torchvision
            ``ImageFolder`` order).
        class_map: Explicit ``folder -> class name or index`` entries, applied before the name
            rules (see :func:`read_class_map`); needs ``class_names``.
        wnids: One WordNet id per class of ``class_names``, to accept wnid folder names.

    Returns:
        Dataset of kind ``"folder"``, records sorted by id ``"<class folder>/<path inside>"``;
        ``label_source`` says which rule labelled the folders. Files directly in ``root`` are
        listed in ``skipped``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` is a file, has no class sub-folders or holds no images; a folder
            matches no class, several classes or the class of another folder (see
            :func:`match_class_names`); ``class_map`` or ``wnids`` without ``class_names``; two
            numeric folders with the same number (``2/`` and ``02/``).
        TypeError: ``class_names`` is not a sequence of strings.
    """
    path = _existing_dir(root, "folder")
    top = top_level(os.fspath(path))
    if not top.dirs:
        if any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in top.files):
            raise ValueError(
                f"{path} has images but no class sub-folders; read unlabeled images with "
                f"pool:{path} (or image_pool), or put each class in its own sub-folder"
            )
        raise _empty_error("folder", path, top.other)
    if class_names is not None:
        names = _check_class_names(class_names)
        match = match_class_names(
            top.dirs, names, class_map=class_map, wnids=wnids, what="class folder", where=str(path)
        )
        label_of, source = match.label_of, f"folder names {match.describe()}"
    elif class_map is not None or wnids is not None:
        given = "class_map" if class_map is not None else "wnids"
        raise ValueError(
            f"{path}: {given} needs class_names (the model's class names, in class-index order): "
            "folders are matched to those names"
        )
    else:
        names, label_of, source = _unnamed_folder_labels(path, top.dirs)
    skipped = _top_level_files_skipped(top.files, top.other)
    return _class_folders("folder", path, top.dirs, label_of, names, skipped, transform, source)


_MAX_NUMERIC_CLASS = 100_000
"""Largest folder number read as a class index when no class names are given (dates, ids and
other big numbers are read as plain names instead)."""


def _unnamed_folder_labels(
    path: Path, dirs: Sequence[str]
) -> tuple[list[str], dict[str, int], str]:
    """``(class_names, label_of, label_source)`` of class folders when no class names are given."""
    if all(re.fullmatch(r"[0-9]+", d) for d in dirs):
        numbers = {d: int(d) for d in dirs}
        if max(numbers.values()) <= _MAX_NUMERIC_CLASS:
            first: dict[int, str] = {}
            for d in dirs:
                if numbers[d] in first:
                    raise ValueError(
                        f"{path}: folders {first[numbers[d]]!r} and {d!r} are both class "
                        f"{numbers[d]} (numeric folder names are class indices); merge them"
                    )
                first[numbers[d]] = d
            names = [str(i) for i in range(max(numbers.values()) + 1)]
            return names, numbers, "numeric folder names are class indices"
        warnings.warn(
            f"{path}: folder numbers go up to {max(numbers.values())}, too large to be class "
            "indices, so the folders are labelled by sorted name (ImageFolder convention); pass "
            "class_names to label them by class",
            stacklevel=3,
        )
    names = list(dirs)
    label_of = {name: i for i, name in enumerate(names)}
    source = "sorted folder names (ImageFolder convention: no class names were given)"
    return names, label_of, source


def imagenet_folder(
    root: str | os.PathLike[str], *, transform: Transform | None = None
) -> ImageDataset:
    """Read an ImageNet train/val folder: wnid sub-folders labelled with the standard class index.

    Any subset of the 1000 classes may be present; labels are always ImageNet-1k indices
    (``n01440764 -> 0``), ``class_names`` is :func:`spurious.imagenet.class_names` (all 1000).

    Args:
        root: Folder holding ``n01440764/``, ``n01443537/`` ... (the flat official val folder
            must first be sorted into wnid folders).
        transform: See :class:`ImageDataset`.

    Returns:
        Dataset of kind ``"imagenet"``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: a sub-folder is not an ImageNet-1k wnid, there are no sub-folders, or no images.
    """
    path = _existing_dir(root, "imagenet")
    top = top_level(os.fspath(path))
    if not top.dirs:
        raise _empty_error("imagenet", path, top.other)
    w2i = imagenet.wnid_to_index()
    unknown = [d for d in top.dirs if d not in w2i]
    if unknown:
        raise ValueError(
            f"{path}: sub-folder(s) {_some(unknown)} are not ImageNet-1k wnids; the imagenet layout "
            "needs one folder per class named by its wnid (n01440764 ... see "
            f"spurious.imagenet.wnids()); read arbitrary class folders with folder:{path}"
        )
    skipped = _top_level_files_skipped(top.files, top.other)
    label_of = {d: w2i[d] for d in top.dirs}
    return _class_folders(
        "imagenet",
        path,
        top.dirs,
        label_of,
        imagenet.class_names(),
        skipped,
        transform,
        "ImageNet-1k wnid folders",
    )


def parse_spurious_folder(name: str) -> tuple[int, int] | None:
    """Class and component of a Spurious ImageNet sub-folder name, or ``None`` if it does not parse.

    The name is split on ``_``; token 2 (0-based) is the ImageNet class index (0-999) and the last
    token the component index. At least four tokens are required so the two are distinct.

    Args:
        name: Sub-folder name, e.g. ``"spurious_imagenet_281_tabby_cat_3"``.

    Returns:
        ``(class_index, component)``, e.g. ``(281, 3)``, or ``None``.
    """
    tokens = name.split("_")
    if len(tokens) < 4:
        return None
    cls, comp = tokens[2], tokens[-1]
    if not (re.fullmatch(r"[0-9]+", cls) and re.fullmatch(r"[0-9]+", comp)):
        return None
    if int(cls) >= imagenet.NUM_CLASSES:
        return None
    return int(cls), int(comp)


_SPURIOUS_TOP_FILES = frozenset({"timestamp.txt", "README.md", "manifest.json"})
"""Top-level files of a Spurious ImageNet folder that are not data: the published ``timestamp.txt``
and the dataset card and provenance that ``spurious benchmark build`` writes."""


def spurious_imagenet(
    root: str | os.PathLike[str],
    *,
    transform: Transform | None = None,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """Read the published Spurious ImageNet layout: one sub-folder per (class, component).

    See :func:`parse_spurious_folder` for the folder names. Top-level ``timestamp.txt``,
    ``README.md`` and ``manifest.json`` (written by ``spurious benchmark build``) are ignored. Labels are the class indices of the folder names: ImageNet-1k by default
    (``class_names`` = :func:`spurious.imagenet.class_names`), or positions in ``class_names``
    for a benchmark in another label space (e.g. the planted dataset's ``spurious/`` split).

    Args:
        root: The folder holding the sub-folders (the unzipped ``images`` folder).
        transform: See :class:`ImageDataset`.
        class_names: The label space; a folder's class index must lie in it.

    Returns:
        Dataset of kind ``"spurious-imagenet"``; each record's ``meta`` is
        ``{"component": int, "folder": str}``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: a sub-folder name does not parse, there are no sub-folders, or no images.
    """
    names = imagenet.class_names() if class_names is None else _check_class_names(class_names)
    path = _existing_dir(root, "spurious-imagenet")
    top = top_level(os.fspath(path))
    if not top.dirs:
        raise _empty_error("spurious-imagenet", path, top.other)
    label_of: dict[str, int] = {}
    meta_of: dict[str, JSONDict] = {}
    for folder in top.dirs:
        parsed = parse_spurious_folder(folder)
        if parsed is None:
            raise ValueError(
                f"{path}: sub-folder {folder!r} is not a Spurious ImageNet folder name; expected "
                f"{_SPURIOUS_PATTERN} (split on '_': token 2 is the class index 0-999, the last "
                "token the component index)"
            )
        if parsed[0] >= len(names):
            raise ValueError(
                f"{path}: sub-folder {folder!r} names class {parsed[0]}, outside the label space "
                f"of {len(names)} classes; pass the benchmark's class_names"
            )
        label_of[folder] = parsed[0]
        meta_of[folder] = {"component": parsed[1], "folder": folder}
    skipped = _top_level_files_skipped(top.files, top.other, ignore=_SPURIOUS_TOP_FILES)
    return _class_folders(
        "spurious-imagenet",
        path,
        top.dirs,
        label_of,
        names,
        skipped,
        transform,
        "Spurious ImageNet folder names (token 2 = class index)",
        meta_of,
    )


def image_pool(root: str | os.PathLike[str], *, transform: Transform | None = None) -> ImageDataset:
    """Read an unlabeled pool: every image anywhere below ``root`` (label ``-1``).

    Args:
        root: Folder of images, any depth.
        transform: See :class:`ImageDataset`.

    Returns:
        Dataset of kind ``"pool"``, ``class_names`` ``None``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` is a file or holds no images.
    """
    path = _existing_dir(root, "pool")
    root_s = os.fspath(path)
    listing = scan_tree(root_s)
    if not listing.images:
        raise _empty_error("pool", path, listing.skipped)
    ids = sorted(listing.images)
    ds = ImageDataset(
        kind="pool",
        root=path,
        spec=f"pool:{root_s}",
        ids=ids,
        labels=[-1] * len(ids),
        class_names=None,
        skipped=sorted(listing.skipped),
        transform=transform,
        label_source="unlabeled pool",
    )
    _log.info("%s: %d images, %d skipped entries", ds.spec, len(ds), len(ds.skipped))
    return ds


# ---------------------------------------------------------------------- file lists
def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


_ListRow = tuple[int, object, object]
"""A row of a file list as read: ``(line, path, label)``, the raw CSV or JSON values (checked later)."""


def _name_labels(
    rows: Sequence[_ListRow],
    names: Sequence[str],
    class_map: Mapping[str, int | str] | None,
) -> dict[str, int]:
    """First line of each label of a list that is read as a name: a string that is a class-map
    key, a class name, or not an integer (``"7"`` is the class named ``"7"`` if there is one)."""
    exact = set(names)
    mapped = class_map or {}
    first: dict[str, int] = {}
    for line, _, raw in rows:
        if not isinstance(raw, str):
            continue
        text = raw.strip()
        if text and (text in mapped or text in exact or not _is_int(text)):
            first.setdefault(text, line)
    return first


def _parse_label(
    value: object, label_of: Mapping[str, int] | None, n_classes: int | None, where: str
) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return -1
    if isinstance(value, bool):
        raise ValueError(f"{where}: label {value!r} must be an integer or a class name")
    if isinstance(value, int):
        idx = value
    elif isinstance(value, float) and value.is_integer():
        idx = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if label_of is not None and text in label_of:
            return label_of[text]
        if not _is_int(text):  # with class_names, every such label is in label_of
            raise ValueError(
                f"{where}: label {value!r} is not an integer; pass class_names=[...] to use "
                "class-name labels"
            )
        idx = int(text)
    else:
        raise ValueError(
            f"{where}: label {value!r} must be an integer or a class name, not {type(value).__name__}"
        )
    if idx < -1 or (n_classes is not None and idx >= n_classes):
        upper = f"{n_classes - 1}" if n_classes is not None else "..."
        raise ValueError(f"{where}: label {idx} out of range; valid: -1 (unlabeled) or 0..{upper}")
    return idx


def _list_id(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"{where}: 'path' must be a non-empty string, got {raw!r}")
    rel = posixpath.normpath(raw.strip())
    if rel in (".", "/"):
        raise ValueError(f"{where}: path {raw!r} is not a file")
    return rel


def _read_csv(path: Path) -> list[_ListRow]:
    rows: list[_ListRow] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(
                f"{path} is empty; a CSV list needs a header row with a 'path' column "
                "(and optionally 'label')"
            ) from None
        cols = [c.strip().lower() for c in header]
        if "path" not in cols:
            raise ValueError(
                f"{path} line 1: header {header} has no 'path' column; expected e.g. 'path,label'"
            )
        p_col = cols.index("path")
        l_col = cols.index("label") if "label" in cols else None
        try:
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise ValueError(
                        f"{path} line {line}: expected {len(header)} columns ({','.join(header)}), "
                        f"got {len(row)}"
                    )
                rows.append((line, row[p_col], None if l_col is None else row[l_col]))
        except csv.Error as e:
            raise ValueError(f"{path} line {reader.line_num}: malformed CSV ({e})") from e
    return rows


def _read_jsonl(path: Path) -> list[_ListRow]:
    rows: list[_ListRow] = []
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {line_no}: invalid JSON ({e.msg})") from e
            if not isinstance(obj, dict) or "path" not in obj:
                raise ValueError(
                    f"{path} line {line_no}: expected an object with a \"path\" key "
                    f"(and optional \"label\"), got {line.strip()[:80]!r}"
                )
            rows.append((line_no, obj["path"], obj.get("label")))
    return rows


def file_list(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    transform: Transform | None = None,
    class_names: Sequence[str] | None = None,
    class_map: Mapping[str, int | str] | None = None,
    wnids: Sequence[str] | None = None,
) -> ImageDataset:
    """Read a list of image files from a CSV or JSONL file.

    - CSV (``.csv``): a header row with a ``path`` column and an optional ``label`` column (names
      case-insensitive; other columns are ignored); blank lines are skipped.
    - JSONL (``.jsonl``/``.ndjson``): one object per line with ``"path"`` and optional ``"label"``
      (an integer, a class name, or ``null``).

    A label is an integer (``-1`` or empty = unlabeled) or, when ``class_names`` is given, a class
    name, matched like a class folder by :func:`match_class_names` (class map, exact, ignoring
    case and separators, wnid, ``NN_name``); a name that is also an integer string (``"7"``)
    resolves as the name first, any other integer string is an index. Relative paths are
    resolved against ``root``; the record id is the path as written, normalised
    (``posixpath.normpath``). Listed files are not checked for existence or extension here: a
    missing or undecodable file is reported by ``__getitem__`` like any bad file.

    Args:
        path: The ``.csv`` / ``.jsonl`` file.
        root: Folder for relative paths; default: the list file's folder.
        transform: See :class:`ImageDataset`.
        class_names: Label space; enables class-name labels and range-checks integer labels.
        class_map: Explicit ``label -> class name or index`` entries for name labels (see
            :func:`read_class_map`); needs ``class_names``.
        wnids: One WordNet id per class of ``class_names``, to accept wnid labels.

    Returns:
        Dataset of kind ``"list"``, records sorted by id; ``label_source`` says how labels
        were read.

    Raises:
        FileNotFoundError: the list file (or ``root``) does not exist.
        ValueError: unknown file suffix, missing ``path`` column, a bad row (message has the line
            number), a duplicate path, no rows, a name label that matches no class or several
            (see :func:`match_class_names`; the message gives the first line of each), or
            ``class_map``/``wnids`` without ``class_names``.
        TypeError: ``class_names`` is not a sequence of strings.
    """
    list_path = _resolve(path)
    if not list_path.exists():
        raise FileNotFoundError(f"file list {os.fspath(path)} does not exist (resolved: {list_path})")
    if list_path.is_dir():
        raise ValueError(
            f"{list_path} is a directory; a file list is a .csv or .jsonl file "
            "(for a folder use folder:, imagenet:, spurious-imagenet: or pool:)"
        )
    suffix = list_path.suffix.lower()
    if suffix not in _LIST_SUFFIXES:
        raise ValueError(
            f"{list_path}: unknown file-list format {suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(_LIST_SUFFIXES)}"
        )
    base = list_path.parent if root is None else _resolve(root)
    if not base.is_dir():
        raise FileNotFoundError(f"root folder {os.fspath(root or base)} does not exist")
    names = None if class_names is None else _check_class_names(class_names)
    if names is None and (class_map is not None or wnids is not None):
        given = "class_map" if class_map is not None else "wnids"
        raise ValueError(
            f"{list_path}: {given} needs class_names (the model's class names, in class-index "
            "order): name labels are matched to those names"
        )
    try:
        rows = _read_csv(list_path) if suffix == ".csv" else _read_jsonl(list_path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{list_path} is not UTF-8 text ({e.reason} at byte {e.start})") from e

    ids: list[str] = []
    first_line: dict[str, int] = {}
    for line, raw_path, _ in rows:
        rel = _list_id(raw_path, f"{list_path} line {line}")
        if rel in first_line:
            raise ValueError(
                f"{list_path} line {line}: path {rel!r} is listed twice (first on line "
                f"{first_line[rel]}); ids must be unique"
            )
        first_line[rel] = line
        ids.append(rel)
    if not ids:
        raise ValueError(f"{list_path} lists no images (only a header or blank lines)")
    label_of: dict[str, int] | None = None
    named = ""
    if names is not None:
        name_line = _name_labels(rows, names, class_map)
        match = match_class_names(
            list(name_line),
            names,
            class_map=class_map,
            wnids=wnids,
            what="label",
            where=str(list_path),
            where_of={t: f"line {n}" for t, n in name_line.items()},
        )
        label_of = match.label_of
        named = f"names {match.describe()}" if name_line else ""
    n_classes = None if names is None else len(names)
    entries = [
        (rel, _parse_label(raw, label_of, n_classes, f"{list_path} line {line}"))
        for rel, (line, _, raw) in zip(ids, rows, strict=False)
    ]
    entries.sort(key=lambda e: e[0])
    n_labelled = sum(label >= 0 for _, label in entries)
    n_named = sum(isinstance(raw, str) and raw.strip() in (label_of or {}) for _, _, raw in rows)
    kinds = [k for k in (named, "integers" if n_labelled > n_named else "") if k]
    source = f"labels from the list file ({', '.join(kinds) or 'none: all unlabeled'})"
    ds = ImageDataset(
        kind="list",
        root=base,
        spec=f"list:{list_path}",
        ids=[e[0] for e in entries],
        labels=[e[1] for e in entries],
        class_names=names,
        transform=transform,
        label_source=source,
    )
    _log.info("%s: %d images, %s", ds.spec, len(ds), source)
    return ds


# ---------------------------------------------------------------------- open_dataset
def _split_spec(spec: str | os.PathLike[str]) -> tuple[str | None, str]:
    if not isinstance(spec, str):
        if isinstance(spec, os.PathLike):
            return None, os.fspath(spec)
        raise TypeError(f"dataset spec must be a str or path, got {type(spec).__name__}")
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]+):(.*)", spec, flags=re.S)
    if m is None:
        return None, spec
    prefix, rest = m.group(1).lower(), m.group(2)
    if prefix in DATASET_KINDS:
        if not rest:
            raise ValueError(f"dataset spec {spec!r} has no path after '{prefix}:'")
        return prefix, rest
    if os.path.exists(os.path.expanduser(spec)):
        return None, spec  # a path that happens to contain ':'
    close = difflib.get_close_matches(prefix, DATASET_KINDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown dataset prefix {prefix!r} in {spec!r}{hint}; valid prefixes: "
        f"{', '.join(k + ':' for k in DATASET_KINDS)} or a bare path to auto-detect"
    )


def _detect_kind(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() in _LIST_SUFFIXES:
            return "list"
        raise ValueError(
            f"{path} is a file but not a file list ({', '.join(_LIST_SUFFIXES)}); "
            f"accepted layouts: {_LAYOUTS}"
        )
    top = top_level(os.fspath(path))
    if not top.dirs:
        if any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in top.files):
            return "pool"
        raise _empty_error("auto-detected", path, top.other + [(f, "not an image") for f in top.files])
    w2i = imagenet.wnid_to_index()
    wnid_dirs = [d for d in top.dirs if d in w2i]
    if len(wnid_dirs) == len(top.dirs):
        return "imagenet"
    if all(parse_spurious_folder(d) is not None for d in top.dirs):
        return "spurious-imagenet"
    if wnid_dirs:
        others = [d for d in top.dirs if d not in w2i]
        warnings.warn(
            f"{path}: {len(wnid_dirs)} sub-folders are ImageNet wnids but {_some(others, 3)} are "
            "not, so it is read as a generic class-folder dataset with labels by sorted folder "
            f"name (not ImageNet indices); use imagenet:{path} after removing the extra folders "
            "to get ImageNet-1k labels",
            stacklevel=3,
        )
    return "folder"


def dataset_kind(spec: str | os.PathLike[str]) -> str:
    """The reader :func:`open_dataset` would use for ``spec`` (one of :data:`DATASET_KINDS`), without listing it.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: an unknown prefix, or a path that matches no layout.
    """
    kind, target = _split_spec(spec)
    path = _resolve(target)
    if not path.exists():
        raise FileNotFoundError(f"dataset path {target} does not exist")
    return kind if kind is not None else _detect_kind(path)


def open_dataset(
    spec: str | os.PathLike[str],
    *,
    transform: Transform | None = None,
    class_names: Sequence[str] | None = None,
    class_map: Mapping[str, int | str] | None = None,
    wnids: Sequence[str] | None = None,
) -> ImageDataset:
    """Open a dataset from a spec string.

    Spec forms: ``folder:DIR``, ``imagenet:DIR``, ``list:FILE``, ``pool:DIR``,
    ``spurious-imagenet:DIR``, or a bare path, auto-detected in this order: a ``.csv``/``.jsonl``
    file -> list; a folder whose sub-folders are all ImageNet-1k wnids -> imagenet; whose
    sub-folders all parse as Spurious ImageNet names -> spurious-imagenet; any other folder with
    sub-folders -> folder; a folder with images and no sub-folders -> pool. ``~`` is expanded.
    The dataset's ``spec`` attribute is the canonical ``<kind>:<absolute path>``.

    Args:
        spec: Spec string or path.
        transform: See :class:`ImageDataset`.
        class_names: Label space for ``folder`` and ``list`` datasets (see :func:`image_folder`,
            :func:`file_list`); not accepted for the other kinds, whose label space is fixed.
        class_map: Explicit ``folder or label -> class name or index`` entries for ``folder``
            and ``list`` datasets (see :func:`read_class_map`); needs ``class_names``.
        wnids: One WordNet id per class of ``class_names``, for ``folder`` and ``list``
            datasets, to accept wnid folder names and labels.

    Returns:
        The dataset.

    Raises:
        FileNotFoundError: the path does not exist (the message names it).
        ValueError: unknown prefix (the message lists the valid ones), no images (the message
            lists the accepted layouts), ``class_names`` given for ``imagenet`` or ``pool``,
            ``class_map`` or ``wnids`` given for ``imagenet``, ``spurious-imagenet`` or ``pool``,
            or any error of the chosen reader.
    """
    kind, target = _split_spec(spec)
    path = _resolve(target)
    if not path.exists():
        shown = target if kind is None else f"{target} (from spec {spec!r})"
        raise FileNotFoundError(f"dataset path {shown} does not exist")
    if kind is None:
        kind = _detect_kind(path)
        _log.info("auto-detected %s as %r", path, kind)
    if class_names is not None and kind not in ("folder", "list", "spurious-imagenet"):
        raise ValueError(
            f"class_names cannot be given for a {kind!r} dataset (its label space is "
            f"{'ImageNet-1k' if kind != 'pool' else 'empty: pool images are unlabeled'}); "
            "it applies to folder:, list: and spurious-imagenet: datasets"
        )
    fixed = {
        "imagenet": "labels come from the wnid folder names (ImageNet-1k indices)",
        "spurious-imagenet": "labels are the class index in each folder name",
        "pool": "pool images are unlabeled",
    }
    for given, value in (("class_map", class_map), ("wnids", wnids)):
        if value is not None and kind in fixed:
            raise ValueError(
                f"{given} cannot be given for a {kind!r} dataset: its {fixed[kind]}; it applies "
                "to folder: and list: datasets"
            )
    if kind == "folder":
        return image_folder(
            path, transform=transform, class_names=class_names, class_map=class_map, wnids=wnids
        )
    if kind == "imagenet":
        return imagenet_folder(path, transform=transform)
    if kind == "spurious-imagenet":
        return spurious_imagenet(path, transform=transform, class_names=class_names)
    if kind == "pool":
        return image_pool(path, transform=transform)
    return file_list(
        path, transform=transform, class_names=class_names, class_map=class_map, wnids=wnids
    )
