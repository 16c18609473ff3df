"""Inputs of the ``score`` stage: the two datasets, the benchmark label space and per-model class maps.

The label space (the benchmark's class names and indices) is, in this order: the given
``class_names``; ImageNet-1k for wnid folders, a flat folder with a labels file and integer file
lists; for class folders and file lists with names, the class names of the first model that has
real ones (folders matched by name, see :func:`spurious.datasets.match_class_names`), so the
benchmark names its classes as every other stage does (``star``, not the folder ``00_star``);
the sorted folder names when no model has names or an explicit class map states how the folders
meet each model. A spurious folder's class token indexes that label space.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spurious import imagenet
from spurious._io import atomic_path
from spurious.datasets import (
    DATASET_KINDS,
    IMAGE_EXTENSIONS,
    ImageDataset,
    file_list,
    open_dataset,
    spurious_imagenet,
)

if TYPE_CHECKING:
    from spurious.models import Classifier

log = logging.getLogger(__name__)

CLASS_MAP_KEYWORDS: tuple[str, ...] = ("auto", "identity", "wnid", "names")

ClassMapSpec = str | os.PathLike[str] | Mapping[int, int] | Mapping[str, int] | Sequence[int] | None
"""``score``'s ``class_map``: ``None``, a keyword of :data:`CLASS_MAP_KEYWORDS`, a JSON file,
``{benchmark class: model output}`` or one model output per benchmark class (``-1``: none)."""

DatasetSpec = str | os.PathLike[str] | ImageDataset
"""A dataset spec or folder (read by :func:`spurious.datasets.open_dataset`) or an opened dataset."""
_WNID = re.compile(r"n[0-9]{8}")


@dataclass
class Benchmark:
    """The resolved inputs: datasets (without transform), label space and the classes to score."""

    spurious: ImageDataset
    val: ImageDataset
    class_names: list[str]
    is_imagenet: bool
    classes: list[int]
    label_source: str = ""


# ---------------------------------------------------------------------------- label space
def _is_imagenet_space(names: Sequence[str]) -> bool:
    return len(names) == imagenet.NUM_CLASSES and list(names) == imagenet.class_names()


def _class_index(value: object, names: Sequence[str], is_imagenet: bool, what: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        k = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        k = int(value)
    elif isinstance(value, str) and is_imagenet and _WNID.fullmatch(value.strip()):
        w2i = imagenet.wnid_to_index()
        if value.strip() not in w2i:
            raise ValueError(f"{what}: {value!r} is not an ImageNet-1k wnid")
        return w2i[value.strip()]
    elif isinstance(value, str):
        if value in names:
            if list(names).count(value) > 1:
                raise ValueError(f"{what}: the class name {value!r} is ambiguous (several classes have it); "
                                 "give the class index" + (" or wnid" if is_imagenet else ""))
            return list(names).index(value)
        close = difflib.get_close_matches(value, list(names), n=3)
        hint = f" (closest: {', '.join(map(repr, close))})" if close else ""
        raise ValueError(f"{what}: {value!r} is not a class name of the benchmark{hint}; give class indices "
                         f"0-{len(names) - 1} or names such as {list(names)[:3]}")
    else:
        raise TypeError(f"{what}: a class must be an int index or a name, got {type(value).__name__}")
    if not 0 <= k < len(names):
        raise ValueError(f"{what}: class index {k} is outside the benchmark label space 0-{len(names) - 1}")
    return k


def label_model(models: Sequence[Classifier], class_map: ClassMapSpec) -> tuple[Classifier | None, str]:
    """The classifier whose class names name the benchmark, or ``None`` and why there is none.

    The first model with real class names (``Classifier.has_class_names``); none when a class map
    other than ``"auto"`` is given, since such a map is stated in the validation set's own classes.
    """
    if class_map is not None and not (isinstance(class_map, str) and class_map == "auto"):
        return None, "a class map was given, so the validation set keeps its own classes"
    for clf in models:
        if clf.has_class_names:
            return clf, ""
    return None, "no model has class names"


def check_paths(spurious: DatasetSpec, val: DatasetSpec, val_labels: str | os.PathLike[str] | None) -> None:
    """``FileNotFoundError`` for a dataset path that does not exist (before any model is loaded)."""
    for what, value in (("spurious benchmark", spurious), ("validation set", val), ("validation labels file",
                                                                                    val_labels)):
        if not isinstance(value, (str, os.PathLike)):
            continue
        text = os.fspath(value)
        match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]+):(.+)", text, flags=re.S)
        if match and match.group(1).lower() in DATASET_KINDS and not os.path.exists(os.path.expanduser(text)):
            text = match.group(2)
        if not os.path.exists(os.path.expanduser(text)):
            raise FileNotFoundError(f"{what} {os.fspath(value)} does not exist")


# ---------------------------------------------------------------------------- validation set
def _read_labels_file(path: Path, names: Sequence[str], is_imagenet: bool) -> list[tuple[str, int, int]]:
    """``(file token, label, line)`` from a LOC_val_solution.csv-style file or 'filename label' lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"labels file {path} is not UTF-8 text") from err
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    out: list[tuple[str, int, int]] = []
    where = f"labels file {path}"
    if "imageid" in first.lower() and "predictionstring" in first.lower():  # ImageNet LOC_val_solution.csv
        reader = csv.reader(lines)
        header = [c.strip().lower() for c in next(reader)]
        i_col, p_col = header.index("imageid"), header.index("predictionstring")
        for line_no, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            if len(row) <= max(i_col, p_col) or not row[p_col].split():
                raise ValueError(f"{where} line {line_no}: expected 'ImageId,PredictionString' with a wnid first, "
                                 f"got {','.join(row)[:80]!r}")
            label = _class_index(row[p_col].split()[0], names, is_imagenet, f"{where} line {line_no}")
            out.append((row[i_col].strip(), label, line_no))
        return out
    for line_no, line in enumerate(lines, start=1):
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        tokens = [t.strip() for t in (body.split(",") if "," in body else body.split())]
        if len(tokens) != 2 or not all(tokens):
            raise ValueError(f"{where} line {line_no}: expected 'filename label' (or 'filename,label'), got "
                             f"{body[:80]!r}")
        if not out and tokens[1].lower() in ("label", "class", "wnid", "class_index"):
            continue  # header row
        out.append((tokens[0], _class_index(tokens[1], names, is_imagenet, f"{where} line {line_no}"), line_no))
    if not out:
        raise ValueError(f"{where} holds no labels; expected ImageNet's LOC_val_solution.csv or lines "
                         "'ILSVRC2012_val_00000001.JPEG n01751748' (a wnid, a class index or a class name)")
    return out


def _flat_val(folder: Path, labels_path: Path, names: list[str], is_imagenet: bool, inputs_dir: Path) -> ImageDataset:
    if not folder.is_dir():
        raise FileNotFoundError(f"validation folder {folder} does not exist or is not a directory")
    if not labels_path.is_file():
        raise FileNotFoundError(f"validation labels file {labels_path} does not exist")
    entries = _read_labels_file(labels_path, names, is_imagenet)
    files = sorted(e.name for e in os.scandir(folder)
                   if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    by_name = {f: f for f in files}
    by_stem: dict[str, str] = {}
    for f in files:
        by_stem.setdefault(os.path.splitext(f)[0], f)
    rows: dict[str, int] = {}
    missing = []
    for token, label, line_no in entries:
        name = by_name.get(token) or by_stem.get(token) or by_stem.get(os.path.splitext(token)[0])
        if name is None:
            missing.append(token)
            continue
        if name in rows and rows[name] != label:
            raise ValueError(f"labels file {labels_path} line {line_no}: {token!r} has two different labels")
        rows[name] = label
    if not rows:
        raise ValueError(f"none of the {len(entries)} files named in {labels_path} is an image in {folder} "
                         f"(e.g. {entries[0][0]!r}); the folder holds {len(files)} images")
    if missing:
        warnings.warn(f"{len(missing)} of {len(entries)} images named in {labels_path.name} are not in {folder} "
                      f"(e.g. {missing[0]!r}); scoring the {len(rows)} that are", stacklevel=4)
    unlabeled = len(files) - len(rows)
    if unlabeled:
        warnings.warn(f"{unlabeled} images in {folder} have no label in {labels_path.name} and are ignored",
                      stacklevel=4)
    inputs_dir.mkdir(parents=True, exist_ok=True)
    csv_path = inputs_dir / "val_list.csv"
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label"])
            for name in sorted(rows):
                writer.writerow([name, rows[name]])
    # ImageNet's short names are not unique ('crane' twice), so the readers take None for that label space
    return file_list(csv_path, root=folder, class_names=None if is_imagenet else names)


def _dataset_kind(val: str | os.PathLike[str]) -> tuple[str | None, str]:
    """``(kind, spec)``: the reader ``open_dataset`` picks for ``val``, and a spec that names it."""
    from spurious.datasets import dataset_kind

    try:
        kind = dataset_kind(val)
    except FileNotFoundError:
        return None, os.fspath(val)
    text = os.fspath(val)
    path = Path(os.path.expanduser(text.split(":", 1)[1] if text.startswith(f"{kind}:") else text)).resolve()
    return kind, f"{kind}:{path}"


def _in_model_space(spec: str, clf: Classifier) -> ImageDataset:
    """Class folders or list labels matched to the class names of ``clf`` (exact, case, wnid, NN_name, index)."""
    wnids = imagenet.wnids() if clf.class_names_source == "ImageNet-1k" else None
    try:
        return open_dataset(spec, class_names=clf.class_names, wnids=wnids)
    except ValueError as err:
        raise ValueError(f"{err}\n(score reads the validation classes in the label space of {clf.spec}, the first "
                         "model with class names. Rename the folders, or score in the validation set's own classes: "
                         "pass class_names (--class-names FILE), or a class map (--class-map names|FILE.json; in "
                         "score it maps the validation classes to model outputs, not folders to classes))") from err


def _open_val(val: DatasetSpec, val_labels: str | os.PathLike[str] | None, class_names: list[str] | None,
              inputs_dir: Path, namer: Classifier | None,
              note: str) -> tuple[ImageDataset, list[str], str]:
    """The validation set in the benchmark label space: ``(dataset, class names, label source)``."""
    if isinstance(val, ImageDataset):
        if val_labels is not None:
            raise ValueError("val_labels applies to a flat validation folder, not to an ImageDataset")
        names = class_names if class_names is not None else val.class_names
        if names is None:
            raise ValueError(f"the validation dataset {val.spec} has no class names; pass class_names")
        source = val.label_source or "the labels of the given dataset"
        return val, list(names), f"{source}; named by the given class_names" if class_names is not None else source
    if not isinstance(val, (str, os.PathLike)):
        raise TypeError(f"val must be a folder, a dataset spec or an ImageDataset, got {type(val).__name__}")
    if val_labels is not None:
        names = class_names if class_names is not None else imagenet.class_names()
        folder = Path(os.path.expanduser(os.fspath(val))).resolve()
        labels_path = Path(os.path.expanduser(os.fspath(val_labels))).resolve()
        is_in = _is_imagenet_space(names)
        ds = _flat_val(folder, labels_path, names, is_in, inputs_dir)
        return ds, names, f"labels file {labels_path.name} ({'ImageNet-1k' if is_in else 'the given class_names'})"
    kind, spec = _dataset_kind(val)
    if kind == "pool":
        raise ValueError(f"the validation folder {spec.split(':', 1)[1]} holds images but no class sub-folders; pass "
                         "its labels file (val_labels / --val-labels: ImageNet's LOC_val_solution.csv or 'filename "
                         "label' lines), or sort it into class folders (wnid folders for ImageNet)")
    if kind == "spurious-imagenet":
        raise ValueError(f"{spec.split(':', 1)[1]} is in the Spurious ImageNet layout; pass it as spurious=, and the "
                         "validation images (class folders) as val=")
    if class_names is not None or kind not in ("folder", "list"):
        namer = None  # the given names, or labels that are not class names
    ds = _in_model_space(spec, namer) if namer is not None else open_dataset(spec, class_names=class_names)
    if (ds.labels() < 0).any():
        raise ValueError(f"the validation list {ds.spec} has unlabeled images; every validation image needs a label")
    source = ds.label_source
    if namer is not None:
        names, source = list(namer.class_names), f"the class names of {namer.spec}: {source}"
    elif class_names is not None:
        names = class_names
    elif ds.class_names is not None:
        names = list(ds.class_names)
        if note and ds.kind in ("folder", "list"):
            source = f"{source}; {note}"
    else:  # a file list with integer labels: ImageNet-1k unless told otherwise
        names = imagenet.class_names()
        if int(ds.labels().max()) >= len(names):
            raise ValueError(f"{ds.spec}: label {int(ds.labels().max())} is outside ImageNet-1k; pass class_names")
        source = f"{source}, read as ImageNet-1k class indices" + (f"; {note}" if note else "")
    return ds, names, source


def _open_spurious(spurious: DatasetSpec, names: list[str]) -> ImageDataset:
    if isinstance(spurious, ImageDataset):
        labels = spurious.labels()
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"the spurious dataset {spurious.spec} has labels outside the benchmark label space "
                             f"0-{len(names) - 1} (from the validation set)")
        return spurious
    if not isinstance(spurious, (str, os.PathLike)):
        raise TypeError(f"spurious must be a folder in the Spurious ImageNet layout or an ImageDataset, "
                        f"got {type(spurious).__name__}")
    text = os.fspath(spurious)
    if isinstance(spurious, str) and re.match(r"^[A-Za-z][A-Za-z0-9_-]+:", text) and not os.path.exists(text):
        prefix, rest = text.split(":", 1)
        if prefix.lower() != "spurious-imagenet":
            raise ValueError(f"spurious must be in the Spurious ImageNet layout (spurious-imagenet:DIR or a folder), "
                             f"got the spec {text!r}")
        text = rest
    return spurious_imagenet(text, class_names=None if _is_imagenet_space(names) else names)


def resolve_inputs(spurious: DatasetSpec, val: DatasetSpec, *, val_labels: str | os.PathLike[str] | None,
                   class_names: Sequence[str] | None, classes: Sequence[int | str] | None, inputs_dir: Path,
                   namer: Classifier | None = None,
                   note: str = "") -> Benchmark:
    """Open both datasets in one label space and pick the classes to score.

    ``namer`` (see :func:`label_model`) names the classes of class folders and file lists when
    ``class_names`` is not given; ``note`` says why there is none.
    """
    if class_names is not None:
        if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
            raise TypeError(f"class_names must be a sequence of strings, got {type(class_names).__name__}")
        class_names = [str(c) for c in class_names]
    val_ds, names, source = _open_val(val, val_labels, class_names, inputs_dir, namer, note)
    spu_ds = _open_spurious(spurious, names)
    is_in = _is_imagenet_space(names)
    if classes is None:
        chosen = sorted({int(k) for k in spu_ds.labels()})
    else:
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise TypeError(f"classes must be a sequence of class indices or names, got {type(classes).__name__}")
        if not classes:
            raise ValueError("classes is empty; pass None to score every class of the spurious benchmark")
        chosen = sorted({_class_index(c, names, is_in, "classes") for c in classes})
    log.info("benchmark label space: %d classes, %s", len(names), source)
    return Benchmark(spu_ds, val_ds, names, is_in, chosen, source)


# ---------------------------------------------------------------------------- class maps
def model_wnids(classifier: Classifier) -> list[str] | None:
    """WordNet ids of a classifier's outputs: ImageNet-1k for 1000 outputs, else timm's subset (21k/22k/12k)."""
    k = int(classifier.num_classes)
    if k == imagenet.NUM_CLASSES:
        return imagenet.wnids()
    try:
        import timm.data

        subset = timm.data.infer_imagenet_subset({"num_classes": k})  # 21843: in21k (Google), 11821: 12k, ...
        if subset is None:
            return None
        wnids = list(timm.data.ImageNetInfo(subset).label_names())
    except (ImportError, ValueError, KeyError, AttributeError, AssertionError, OSError):
        return None
    return wnids if len(wnids) == k else None


def _explicit_map(spec: object, n: int) -> np.ndarray:
    if isinstance(spec, (str, os.PathLike)):
        path = Path(os.path.expanduser(os.fspath(spec)))
        if not path.is_file():
            raise FileNotFoundError(f"class map file {path} does not exist (or use one of {CLASS_MAP_KEYWORDS})")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"class map file {path} is not valid JSON ({err.msg}); expected "
                             '{"<benchmark class>": <model output>, ...} or a list') from err
    cmap = np.full(n, -1, dtype=np.int64)
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            try:
                k, m = int(key), int(value)
            except (TypeError, ValueError):
                raise ValueError(f"class map entry {key!r}: {value!r} must map an int class to an int output") from None
            if not 0 <= k < n:
                raise ValueError(f"class map key {k} is outside the benchmark label space 0-{n - 1}")
            cmap[k] = m
    elif isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        if len(spec) != n:
            raise ValueError(f"a class map list needs one model output per benchmark class ({n}), got {len(spec)} "
                             "(use -1 for classes the model does not have)")
        cmap[:] = [int(v) for v in spec]
    else:
        raise TypeError(f"class_map must be one of {CLASS_MAP_KEYWORDS}, a dict, a list or a JSON file, "
                        f"got {type(spec).__name__}")
    return cmap


def class_map_for(classifier: Classifier, spec: ClassMapSpec, bench: Benchmark) -> tuple[np.ndarray, str]:
    """Model output index of every benchmark class (``-1``: the model does not have it) and how it was made."""
    n, k = len(bench.class_names), int(classifier.num_classes)
    kind = "auto" if spec is None else spec
    if isinstance(kind, str) and kind in CLASS_MAP_KEYWORDS:
        if kind == "auto":
            if k == n:
                kind = "identity"
            elif bench.is_imagenet and model_wnids(classifier) is not None:
                kind = "wnid"
                log.info("%s has %d outputs: mapping the ImageNet-1k benchmark classes to them by wnid",
                         classifier.spec, k)
            else:
                raise ValueError(f"model {classifier.spec!r} has {k} outputs but the benchmark has {n} classes; pass "
                                 "a class map (class_map= / --class-map: 'wnid', 'names', or a JSON file "
                                 '{"<benchmark class>": <model output>})')
        if kind == "identity":
            if k < n:
                raise ValueError(f"class_map 'identity' needs at least {n} model outputs, {classifier.spec!r} has {k}")
            cmap = np.arange(n, dtype=np.int64)
        elif kind == "wnid":
            if not bench.is_imagenet:
                raise ValueError("class_map 'wnid' needs the ImageNet-1k label space (wnid folders or the default "
                                 "names); this benchmark has its own class names: use 'names' or a JSON map")
            wnids = model_wnids(classifier)
            if wnids is None:
                raise ValueError(f"the outputs of {classifier.spec!r} ({k}) have no known wnids (ImageNet-1k, or a "
                                 "timm ImageNet-21k/22k/12k head); pass a JSON class map")
            index = {w: i for i, w in enumerate(wnids)}
            cmap = np.array([index.get(w, -1) for w in imagenet.wnids()], dtype=np.int64)
        else:  # names
            index = {name: i for i, name in enumerate(classifier.class_names)}
            cmap = np.array([index.get(name, -1) for name in bench.class_names], dtype=np.int64)
        how = kind
    else:
        cmap = _explicit_map(kind, n)
        how = "explicit"
    mapped = cmap[cmap >= 0]
    if mapped.size == 0:
        raise ValueError(f"the class map ({how}) maps no benchmark class to an output of {classifier.spec!r}")
    if mapped.max() >= k or (cmap < -1).any():
        bad = int(cmap[(cmap >= k) | (cmap < -1)][0])
        raise ValueError(f"class map ({how}) uses output {bad}, outside 0-{k - 1} of {classifier.spec!r}")
    if len(np.unique(mapped)) != mapped.size:
        raise ValueError(f"class map ({how}) maps two benchmark classes to the same output of {classifier.spec!r}")
    return cmap, how


def class_map_hash(cmap: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(cmap, dtype=np.int64).tobytes()).hexdigest()[:16]
