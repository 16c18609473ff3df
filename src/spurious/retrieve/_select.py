"""Which components ``retrieve`` ranks the pool for: a component set, the top-N by eigenvalue, the
components labelers agreed on, or those ``visualize`` selected for review."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from spurious.components import ComponentSet, labelled_components, load_components
from spurious.visualize import read_sheet_table, sheet_classes
from spurious.workspace import Workspace

__all__ = ["components_to_retrieve"]


def _visualize_selection(ws: Workspace) -> dict[int, list[int]]:
    """The components that ``visualize`` selected for review, per finished class folder."""
    out: dict[int, list[int]] = {}
    for k in sheet_classes(ws):
        selected = read_sheet_table(ws, k).selected
        if selected:
            out[k] = sorted(set(selected))
    return out


def components_to_retrieve(
    workspace: str | os.PathLike[str] | Workspace,
    *,
    components: Mapping[int | str, Sequence[int]] | str | os.PathLike[str] | ComponentSet | None = None,
    classes: Sequence[int | str] | None = None,
    top_components: int | None = None,
    min_agree: int = 2,
) -> tuple[dict[int, list[int]], str]:
    """Which ``(k, l)`` to retrieve for, and where the choice came from.

    In order of precedence: ``components`` (a mapping, a component-set file or a
    :class:`~spurious.components.ComponentSet`, read, checked against the workspace's model and
    resolved by :mod:`spurious.components`); ``top_components`` (the top-N by eigenvalue of every
    fitted class); the label store's agreed components (``min_agree`` labelers said *spurious*,
    :func:`spurious.components.labelled_components`); the components ``visualize`` selected for
    review (:func:`spurious.visualize.read_sheet_table`). ``classes`` restricts any of these.

    Returns:
        ``({k: [l, ...]}, source)``; components sorted, checked against the fitted neural PCA.

    Raises:
        ValueError: nothing selected, an unknown class, or a component index past the fitted ones.
        IncompatibleArtifactError: ``components`` was made for another model.
    """
    from spurious.npca import load_npca

    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    pca = load_npca(ws.root)
    wanted = None if classes is None else {ws.resolve_class(c) for c in classes}
    if components is not None:
        cs = load_components(components)
        cs.check_model(ws.model_fingerprint, ws.model_spec, used_with=f"workspace {ws.root}")
        sel = {k: sorted(set(ls)) for k, ls in cs.resolve(ws).items()}
        source = f"component set {cs.source}"
    elif top_components is not None:
        if isinstance(top_components, bool) or not isinstance(top_components, (int, np.integer)) or top_components < 1:
            raise ValueError(f"top_components must be a positive integer, got {top_components!r}")
        ks = sorted(wanted) if wanted is not None else pca.classes
        sel = {k: list(range(min(int(top_components), pca[k].num_components))) for k in ks if k in pca}
        source = f"top {top_components} components by eigenvalue"
    else:
        sel = labelled_components(ws, min_agree=min_agree).resolve(ws)
        source = f"label store (>= {min_agree} labelers: spurious)"
        if not sel:
            sel, source = _visualize_selection(ws), "visualize selection"
    if wanted is not None:
        sel = {k: v for k, v in sel.items() if k in wanted}
    if not sel:
        raise ValueError(
            f"no components selected for {ws.root} (source: {source}); pass a component set "
            "(--components FILE), or --top-components N, or run `spurious visualize` / label components first")
    for k, comps in sel.items():
        if not 0 <= k < ws.num_classes:
            raise ValueError(f"component set names class {k}, outside this model's classes 0..{ws.num_classes - 1}")
        if k not in pca:
            raise ValueError(f"class {k} ({ws.class_names[k]}) has no neural PCA components; "
                             f"fitted classes: {len(pca.classes)} (run `spurious npca` for it)")
        n = pca[k].num_components
        bad = [c for c in comps if c >= n]
        if bad:
            raise ValueError(f"class {k}: component(s) {bad} out of range; it has {n} fitted components (0..{n - 1})")
    return dict(sorted(sel.items())), source
