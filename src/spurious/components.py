"""The spurious component set: which components of which class are spurious (the sets ``S_k``).

A component set maps a class ``k`` to 0-based component indices ``l`` of that class's neural PCA
(ranked by eigenvalue, DESIGN.md "Math"): ``S_k = {l, ...}``. SpuFix removes ``max(alpha_l^k, 0)``
for ``l in S_k`` (:mod:`spurious.fix`); retrieval ranks a pool by ``alpha_l^k`` for the same pairs
(:mod:`spurious.retrieve`). Component indices only mean something for the neural PCA of the model
they were chosen on, so a set records that model's fingerprint and :meth:`ComponentSet.check_model`
refuses any other model.

Sources, in pipeline order:

* the label store (``WS/labels.sqlite``, ``spurious label``): the components at least ``min_agree``
  labelers called *spurious* (:func:`components_from_labels`);
* a component-set JSON file (what the label UI exports, :func:`load_components`)::

      {"format": "spurious-components", "version": 1, "model_fingerprint": "..." | null,
       "classes": {"<k>": [l, ...]}, "source": "..."}

  or a plain ``{"<k>": [l, ...]}`` mapping; class keys are indices, or class names resolved
  against a workspace (:meth:`ComponentSet.resolve`);
* the published ``spurious_components.npy`` (a pickled dict ``class index -> [l, ...]``, 233
  classes, 322 components), read only by the explicit :func:`import_components`, the one place
  that unpickles anything.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spurious._io import JSONDict, write_json
from spurious.label.store import DB_NAME, LabelStore
from spurious.workspace import IncompatibleArtifactError, Workspace

__all__ = [
    "COMPONENTS_FORMAT",
    "ComponentSet",
    "ComponentSource",
    "agreed_component_set",
    "components_from_labels",
    "import_components",
    "labelled_components",
    "load_components",
]

COMPONENTS_FORMAT = "spurious-components"
"""``format`` field of a component-set file."""

_VERSION = 1

ComponentMapping = Mapping[int, Sequence[int]] | Mapping[str, Sequence[int]] | Mapping[int | str, Sequence[int]]
"""``{class index or name: [component l, ...]}`` as a caller gives it (checked by :func:`load_components`)."""


@dataclass
class ComponentSet:
    """Spurious components per class: ``classes[k]`` = 0-based component indices (ranked by eigenvalue).

    Attributes:
        classes: class (index, or a class name to resolve against a workspace) -> component indices.
        model_fingerprint: fingerprint of the model whose neural PCA the indices refer to (``None``:
            unknown, not checked; e.g. imported reference artifacts).
        source: free text provenance (a labeler session, a file, "spurious_components.npy").
        path: the file (or label store) it was read from, for messages; not written to the file.
    """

    classes: dict[int | str, list[int]]
    model_fingerprint: str | None = None
    source: str = ""
    path: str | None = field(default=None, compare=False)

    @property
    def num_components(self) -> int:
        """Number of ``(k, l)`` pairs over all classes."""
        return sum(len(v) for v in self.classes.values())

    def summary_lines(self, path: str | os.PathLike[str] | None = None, *, kind: str = "components") -> list[str]:
        """One line: ``N <kind> in M classes (source)`` and ``-> path`` when given."""
        where = f" -> {path}" if path is not None else ""
        return [f"{self.num_components} {kind} in {len(self.classes)} classes ({self.source}){where}"]

    def to_dict(self) -> JSONDict:
        """The component-set file document: ``format``, ``version``, ``model_fingerprint``, ``classes``, ``source``."""
        return {"format": COMPONENTS_FORMAT, "version": _VERSION, "model_fingerprint": self.model_fingerprint,
                "classes": {str(k): [int(x) for x in v] for k, v in self.classes.items()}, "source": self.source}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the component-set JSON file (atomically); returns its path."""
        path = Path(path)
        write_json(path, self.to_dict())
        return path

    def check_model(self, fingerprint: str, spec: str, *, used_with: str) -> None:
        """Refuse to use the set with another model than the one whose neural PCA its indices refer to.

        A set that names no model (``model_fingerprint`` None, e.g. imported reference artifacts)
        is not checked.

        Args:
            fingerprint: fingerprint of the model the set is about to be used with.
            spec: that model's spec.
            used_with: where that model comes from, for the message (e.g. ``"workspace ws"``).

        Raises:
            IncompatibleArtifactError: the set names another model's fingerprint.
        """
        if self.model_fingerprint is None or self.model_fingerprint == fingerprint:
            return
        where = self.path or self.source or "given in code"
        if self.path and self.source and self.source != self.path:
            where = f"{self.path} ({self.source})"
        raise IncompatibleArtifactError(
            f"component set {where} was made for the model with fingerprint {self.model_fingerprint} (component "
            f"sets record no spec), but {used_with} has model {spec!r} (fingerprint {fingerprint}); component "
            "indices only mean something for the neural PCA of the model they were chosen on: use the workspace "
            "the set was made in, or label this model's components (`spurious label WS`) and use those")

    def resolve(self, ws: Workspace) -> dict[int, list[int]]:
        """The set with class indices of ``ws``: ``{k: [l, ...]}``, sorted by ``k``.

        Class names are resolved with :meth:`Workspace.resolve_class`; classes without a component
        are left out; each class keeps its components in the set's order. The model is not checked
        here (:meth:`check_model`).

        Raises:
            ValueError: an unknown class (the message names the closest class names), or a class
                given twice (e.g. once by index and once by name).
        """
        out: dict[int, list[int]] = {}
        for key, ls in self.classes.items():
            if not ls:
                continue
            k = ws.resolve_class(key)
            if k in out:
                raise ValueError(f"class {key!r} is listed twice in the component set (as class {k})")
            out[k] = list(ls)
        return dict(sorted(out.items()))



ComponentSource = str | os.PathLike[str] | ComponentMapping | ComponentSet
"""What :func:`load_components` reads: a JSON file, a mapping ``{class: [l, ...]}`` or a :class:`ComponentSet`."""

# ---------------------------------------------------------------------------- parsing


def _parse_key(key: object, where: str) -> int | str:
    if isinstance(key, (bool, np.bool_)):
        raise ValueError(f"{where}: class key {key!r} is not a class index or name")
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, str) and key.strip():
        s = key.strip()
        return int(s) if s.lstrip("-").isdigit() else s
    raise ValueError(f"{where}: class key {key!r} is not a class index or name")


def _parse_list(value: object, key: object, where: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(f"{where}: components of class {key!r} must be a list of 0-based component indices, "
                         f"got {value!r}")
    out: list[int] = []
    for x in list(value):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or int(x) < 0:
            raise ValueError(f"{where}: component {x!r} of class {key!r} is not a 0-based component index "
                             "(a non-negative integer)")
        out.append(int(x))
    if len(set(out)) != len(out):
        warnings.warn(f"{where}: class {key!r} lists a component twice ({out}); each is removed once",
                      stacklevel=4)
        out = sorted(set(out))
    return out


def _parse_mapping(mapping: ComponentMapping | Mapping[str, object], where: str) -> dict[int | str, list[int]]:
    out: dict[int | str, list[int]] = {}
    for key, value in mapping.items():
        k = _parse_key(key, where)
        if k in out:
            raise ValueError(f"{where}: class {k!r} appears twice")
        out[k] = _parse_list(value, key, where)
    if not any(out.values()):
        raise ValueError(f"{where}: the component set is empty (no class lists a component); "
                         'expected {"<class>": [component, ...], ...}')
    return out


# ---------------------------------------------------------------------------- sources


def load_components(source: ComponentSource) -> ComponentSet:
    """Read a component set: a :class:`ComponentSet`, a mapping ``{class: [l, ...]}``, or a JSON file.

    The file is either the documented format ``{"format": "spurious-components", "version": 1,
    "model_fingerprint": "..." | null, "classes": {"<k>": [l, ...]}, "source": "..."}`` or a plain
    ``{"<k>": [l, ...]}`` mapping. Class keys are indices (or class names, resolved later against
    the workspace); components are 0-based indices into the class's neural PCA (by eigenvalue).

    Raises:
        FileNotFoundError: the file does not exist.
        TypeError: ``source`` is none of the accepted kinds.
        ValueError: not JSON, a wrong ``format``/``version``, a key that is not a class, a value
            that is not a list of non-negative integers, or no component at all.
    """
    if isinstance(source, ComponentSet):
        return ComponentSet(_parse_mapping(source.classes, "component set"), source.model_fingerprint, source.source,
                            source.path)
    if isinstance(source, Mapping):
        return ComponentSet(_parse_mapping(source, "component mapping"), None, "python mapping")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"components must be a file path, a mapping or a ComponentSet, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"component file {path} does not exist")
    if path.suffix.lower() == ".npy":
        raise ValueError(f"{path} is a .npy file; the published spurious_components.npy is a pickle and is read "
                         "only by the explicit import: `spurious fix import-components FILE.npy --out comps.json`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"component file {path} is not valid JSON ({err}); expected "
                         f'{{"format": "{COMPONENTS_FORMAT}", "version": 1, "classes": {{"<k>": [l, ...]}}}} '
                         'or a plain {"<k>": [l, ...]} mapping') from None
    if not isinstance(data, dict):
        raise ValueError(f"component file {path} must hold a JSON object, got {type(data).__name__}")
    if "format" in data:
        if data["format"] != COMPONENTS_FORMAT:
            raise ValueError(f"component file {path} has format {data['format']!r}; expected {COMPONENTS_FORMAT!r}")
        if data.get("version") != _VERSION:
            raise ValueError(f"component file {path} has version {data.get('version')!r}; this package reads "
                             f"version {_VERSION}")
        if not isinstance(data.get("classes"), dict):
            raise ValueError(f'component file {path} needs a "classes" object {{"<k>": [l, ...]}}')
        fp = data.get("model_fingerprint")
        if fp is not None and not isinstance(fp, str):
            raise ValueError(f"component file {path}: model_fingerprint must be a string or null, got {fp!r}")
        return ComponentSet(_parse_mapping(data["classes"], str(path)), fp, str(data.get("source") or path), str(path))
    return ComponentSet(_parse_mapping(data, str(path)), None, str(path), str(path))


def import_components(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                      overwrite: bool = False) -> ComponentSet:
    """Import the published ``spurious_components.npy`` (a pickled dict ``class -> [component, ...]``).

    **Security:** the file is a Python pickle (``np.load(allow_pickle=True)``), which can execute
    arbitrary code when loaded. Only import files from a source you trust. This is the only place
    the package unpickles anything.

    Args:
        path: the ``.npy`` file (reference: 233 classes, 322 components, 0-based indices).
        out: where to write the component-set JSON (optional).
        overwrite: replace an existing ``out``.

    Returns:
        The component set (``model_fingerprint`` None: the reference model is not this package's),
        classes sorted by index.

    Raises:
        FileNotFoundError: no such file.
        FileExistsError: ``out`` exists and ``overwrite`` is false (checked before anything is read).
        ValueError: the file does not hold a dict of class -> list of component indices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    try:
        obj = np.load(path, allow_pickle=True)
    except Exception as err:  # noqa: BLE001 (the unpickler raises anything on bytes that are not a pickle)
        detail = " ".join(str(err).split())[:200]
        raise ValueError(f"{path} is not a readable .npy file or pickle ({type(err).__name__}: {detail}); expected "
                         "the published spurious_components.npy, a pickled dict class index -> list of 0-based "
                         "component indices") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} must hold a pickled dict class -> list of component indices, got "
                         f"{type(obj).__name__}")
    parsed = _parse_mapping(obj, str(path))
    bad = [k for k in parsed if not isinstance(k, int)]
    if bad:
        raise ValueError(f"{path}: keys must be class indices, got {bad[:5]}")
    comps = ComponentSet(dict(sorted(parsed.items())), None, f"imported from {path.name}", str(path))
    if out is not None:
        comps.save(out)
    return comps


def agreed_component_set(store: LabelStore, *, min_agree: int = 2) -> ComponentSet:
    """The components at least ``min_agree`` labelers of ``store`` called "spurious", as a component set.

    The one writer of the label store's component-set file: ``spurious label components --out``, the
    label UI's ``/export/components.json`` and :func:`labelled_components` all go through it. Its
    ``source`` is ``"labels: <n> labelers, min_agree=<m>"``, its model the workspace's.

    Raises:
        ValueError: ``min_agree`` is not an integer >= 1.
    """
    agreed = store.agreed_components(min_agree)
    classes: dict[int | str, list[int]] = {int(k): [int(x) for x in ls] for k, ls in agreed.items() if ls}
    return ComponentSet(classes, store.workspace.model_fingerprint,
                        f"labels: {store.labeler_count('review')} labelers, min_agree={min_agree}", str(store.path))


def labelled_components(workspace: str | os.PathLike[str] | Workspace, *, min_agree: int = 2) -> ComponentSet:
    """What the workspace's label store has agreed so far; an empty set when there is none.

    The components at least ``min_agree`` labelers gave the verdict "spurious"
    (:func:`agreed_component_set`, the set the label UI exports as a component-set file). Unlike
    :func:`components_from_labels`, a workspace without a label store or without agreed components
    gives a set with no class instead of an error (the fallback order of ``retrieve``).

    Raises:
        FileNotFoundError: no workspace.
        ValueError: ``min_agree`` is not an integer >= 1 (only checked when there is a label store).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    db = ws.root / DB_NAME
    if not db.is_file():
        return ComponentSet({}, ws.model_fingerprint, f"labels of {ws.root} (no label store)", str(db))
    return agreed_component_set(LabelStore(ws), min_agree=min_agree)


def components_from_labels(workspace: str | os.PathLike[str] | Workspace, *, min_agree: int = 2) -> ComponentSet:
    """The agreed spurious components of the workspace's label store (``WS/labels.sqlite``, ``spurious label``).

    A component counts when at least ``min_agree`` labelers gave it the verdict "spurious"
    (:func:`agreed_component_set`, the same set the label UI exports as a component-set file).

    Raises:
        FileNotFoundError: no workspace, or no label store in it.
        ValueError: no component has ``min_agree`` agreeing "spurious" verdicts yet.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    if not (ws.root / DB_NAME).is_file():
        raise FileNotFoundError(f"no label store in {ws.root} ({DB_NAME}); review the components with "
                                f"`spurious label {ws.root}` first, or pass a component file")
    comps = labelled_components(ws, min_agree=min_agree)
    if not comps.classes:
        raise ValueError(f"no component of {ws.root} has {min_agree} agreeing 'spurious' verdicts yet; label more "
                         "(spurious label WS) or lower min_agree")
    return comps
