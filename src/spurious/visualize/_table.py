"""The one reader of an inspection sheet's table, ``WS/visualize/class_KKKKK/components.json``.

``visualize`` writes one table per class (written last: it marks the class as done): the
components it selected for human review, in rank order, each with its NPFV, max-activating images
and heatmaps (docs/visualize.md). It is a different thing from a component *set* (the components
people agreed are spurious, :mod:`spurious.components`). Two layouts are read:

* the current one, a JSON object ``{"format": "spurious-visualize-class", "version": 1, "plan": ...,
  "class": k, "name": ..., "input_size": [...], "components": [record, ...], "neurons": ..., ...}``
  whose records name their component as ``"component"``;
* the earlier one, a bare JSON list of records, whose records may name their component ``"l"``.

Every record keeps its fields and gains ``class``, ``component`` and ``rank`` as ints (``rank``:
the record's own, else its 0-based position). This module imports no torch, so the label store
and the reports can read tables without loading the model stack.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spurious.workspace import Workspace

__all__ = ["SHEET_TABLE", "SheetTable", "read_sheet_table", "sheet_classes", "sheet_folder"]

SHEET_TABLE = "components.json"
"""File name of a class's table inside its visualize folder."""

_CLASS_DIR_RE = re.compile(r"^class_(\d{5,})$")
_HINT = "re-run `spurious visualize`"


@dataclass(frozen=True)
class SheetTable:
    """The table of one class's inspection sheet.

    Attributes:
        k: the class (from the folder name ``class_KKKKK``).
        path: the ``components.json`` file.
        components: the selected components in rank order; each record as written plus
            ``class``, ``component`` and ``rank`` as ints.
        document: the whole JSON object (``plan``, ``name``, ``input_size``, ``neurons``, ...);
            ``{}`` for the earlier bare-list layout.
    """

    k: int
    path: Path
    components: list[dict[str, Any]]
    document: dict[str, Any]

    @property
    def folder(self) -> Path:
        """The class folder; the file names in the records are relative to it."""
        return self.path.parent

    @property
    def selected(self) -> list[int]:
        """Component indices in rank order."""
        return [rec["component"] for rec in self.components]

    @property
    def plan(self) -> str | None:
        """Hash of the ``visualize`` plan the table was written under (``None`` if not recorded)."""
        plan = self.document.get("plan")
        return plan if isinstance(plan, str) else None

    def component(self, l: int) -> dict[str, Any] | None:
        """The record of component ``l``, or ``None`` when it was not selected for this class."""
        return next((rec for rec in self.components if rec["component"] == l), None)


def _root(workspace: str | os.PathLike[str] | Workspace) -> Path:
    return workspace.root if isinstance(workspace, Workspace) else Path(workspace)


def sheet_folder(workspace: str | os.PathLike[str] | Workspace, k: int) -> Path:
    """``WS/visualize/class_KKKKK``: the folder of class ``k``'s inspection sheet (it may not exist)."""
    return _root(workspace) / "visualize" / f"class_{int(k):05d}"


def sheet_classes(workspace: str | os.PathLike[str] | Workspace) -> list[int]:
    """The classes (sorted) whose visualize folder holds a table; ``[]`` when nothing was visualized."""
    root = _root(workspace) / "visualize"
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        m = _CLASS_DIR_RE.match(folder.name)
        if m and folder.name == f"class_{int(m.group(1)):05d}" and (folder / SHEET_TABLE).is_file():
            out.append(int(m.group(1)))
    return sorted(out)


def _record(rec: Any, i: int, k: int, path: Path) -> dict[str, Any]:
    comp = None
    if isinstance(rec, dict):
        comp = rec["component"] if "component" in rec else rec.get("l")
    if comp is None:
        raise ValueError(f"{path}: component record {i} has no component index; {_HINT}")
    try:
        l = int(comp) if not isinstance(comp, bool) else -1
        rank = int(rec.get("rank", i))
    except (TypeError, ValueError):
        l, rank = -1, 0
    if l < 0:
        raise ValueError(f"{path}: component record {i} has component {comp!r} and rank {rec.get('rank', i)!r}; "
                         f"expected a 0-based component index and an integer rank; {_HINT}")
    return {**rec, "class": int(k), "component": l, "rank": rank}


def read_sheet_table(workspace: str | os.PathLike[str] | Workspace, k: int) -> SheetTable:
    """Read class ``k``'s table ``WS/visualize/class_KKKKK/components.json`` (either layout).

    Args:
        workspace: the workspace (or its folder; it is not opened, so any folder holding a
            ``visualize/`` of that layout will do).
        k: class index.

    Raises:
        FileNotFoundError: the class has no table (``visualize`` has not finished it).
        ValueError: not JSON, no list of components, a record without a component index, or a
            ``class`` field that contradicts the folder; the message names the file.
    """
    path = sheet_folder(workspace, k) / SHEET_TABLE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (visualize has not run for class {k})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err}); {_HINT}") from None
    items = data.get("components") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of components (or {{'components': [...]}}); {_HINT}")
    document = data if isinstance(data, dict) else {}
    if "class" in document and str(document["class"]) != str(k):
        raise ValueError(f"{path}: the table says class {document['class']!r} but lies in the folder of class {k}; "
                         f"{_HINT}")
    records = [_record(rec, i, k, path) for i, rec in enumerate(items)]
    return SheetTable(int(k), path, records, document)
