"""The one reader of ``WS/counterfactual/index.json`` (loads no torch): the pairs per (class, component).

``index.json`` is rebuilt from the runs' ``run.json`` files at the end of every run of the stage::

    {"format": "spurious-counterfactual-index", "version": 1, "model_fingerprint": "...",
     "components": {"<k>/<l>": [PAIR, ...]}}

    PAIR = {"mode": "add" | "remove", "run": "class_00003/l0002/remove-l2-1a2b3c4d", "id": "...",
            "source": "max-activating", "label": 3 | null, "norm": "l2", "eps": 8.57, "steps": 100,
            "files": {"original": ..., "counterfactual": ..., "difference": ..., "heatmap": ...},
            "distance": {"l2": ..., "linf": ..., "l1": ...},
            "models": [{"spec", "fingerprint", "role": "optimised" | "eval",
                        "before": {"alpha", "probability", "logit", "top1", "top1_name"}, "after": {...}}]}

File paths are relative to ``WS/counterfactual/``; :func:`counterfactual_pairs` makes them absolute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spurious._io import read_json

__all__ = ["INDEX_FORMAT", "CounterfactualPair", "counterfactual_pairs", "read_counterfactual_index", "shown_pairs"]

INDEX_FORMAT = "spurious-counterfactual-index"
FOLDER = "counterfactual"


@dataclass(frozen=True)
class CounterfactualPair:
    """One start image and its counterfactual, as listed in ``index.json``.

    Attributes:
        k, component, mode: the class, the component (0-based) and ``"add"`` / ``"remove"``.
        image_id: the start image (path or dataset id); ``source``: how it was chosen.
        original, counterfactual, difference, heatmap: absolute paths of the four PNGs.
        models: the before/after numbers per model (the ``models`` entries of ``index.json``);
            the first is the optimising model.
        record: the whole ``index.json`` entry.
    """

    k: int
    component: int
    mode: str
    image_id: str
    source: str
    original: Path
    counterfactual: Path
    difference: Path
    heatmap: Path
    models: list[dict[str, Any]]
    record: dict[str, Any]

    @property
    def engine(self) -> str:
        """``"image"`` (APGD in a norm ball) or ``"diffusion"`` (DVCE)."""
        return engine_of(self.record)

    @property
    def optimised(self) -> dict[str, Any]:
        """The numbers of the optimising model: ``{"before": {...}, "after": {...}, ...}``."""
        return self.models[0]


def read_counterfactual_index(workspace: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``WS/counterfactual/index.json`` (an empty index when the stage never ran).

    Raises:
        ValueError: the file is not a counterfactual index.
    """
    path = Path(workspace) / FOLDER / "index.json"
    if not path.is_file():
        return {"format": INDEX_FORMAT, "version": 1, "components": {}}
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path} is not a counterfactual index (format {INDEX_FORMAT!r})")
    return data


def counterfactual_pairs(workspace: str | os.PathLike[str], k: int, component: int,
                         mode: str | None = None) -> list[CounterfactualPair]:
    """The pairs of component ``component`` of class ``k`` (``mode`` ``"add"``/``"remove"``, or both), in run order.

    For the inspection sheets and the label UI: ``[p for p in pairs if p.mode == "remove"][:1]``
    is one remove-pair to show beside the NPFV.
    """
    entries = read_counterfactual_index(workspace)["components"].get(f"{int(k)}/{int(component)}", [])
    return [_pair(Path(workspace) / FOLDER, int(k), int(component), e) for e in entries
            if mode is None or e["mode"] == mode]


def engine_of(entry: dict[str, Any]) -> str:
    """The engine that made an ``index.json`` entry: ``"image"`` (APGD; also entries written before the
    diffusion engine existed) or ``"diffusion"`` (DVCE)."""
    return str(entry.get("engine", "image"))


def _pair(root: Path, k: int, component: int, e: dict[str, Any]) -> CounterfactualPair:
    files = e["files"]
    return CounterfactualPair(
        k=k, component=component, mode=e["mode"], image_id=e["id"], source=e["source"],
        original=root / files["original"], counterfactual=root / files["counterfactual"],
        difference=root / files["difference"], heatmap=root / files["heatmap"], models=e["models"], record=e)


def shown_pairs(workspace: str | os.PathLike[str]) -> dict[tuple[int, int], list[CounterfactualPair]]:
    """The pairs to show where components are reviewed: per ``(k, l)``, the image-space engine's first
    remove-pair and first add-pair, then the diffusion engine's (DVCE) first pair, in that order, each
    when it exists. One read of ``index.json``; ``{}`` when the stage never ran. Used by the inspection
    sheets, the label UI and the demo report."""
    root = Path(workspace) / FOLDER
    out: dict[tuple[int, int], list[CounterfactualPair]] = {}
    for key, entries in read_counterfactual_index(workspace)["components"].items():
        k, _, l = str(key).partition("/")
        image = [e for e in entries if engine_of(e) == "image"]
        chosen = [next((e for e in image if e["mode"] == m), None) for m in ("remove", "add")]
        chosen.append(next((e for e in entries if engine_of(e) == "diffusion"), None))
        pairs = [_pair(root, int(k), int(l), e) for e in chosen if e is not None]
        if pairs:
            out[(int(k), int(l))] = pairs
    return out
