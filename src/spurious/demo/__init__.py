"""``spurious demo``: the whole method, offline, on the embedded planted data (and a real-model tour).

See :mod:`spurious.demo._pipeline` for the steps and :mod:`spurious.demo._tour` for ``--real``.
"""

from __future__ import annotations

from spurious.demo._pipeline import (
    DemoResult,
    FoundComponent,
    ModelSummary,
    PreparedWorkspaces,
    prepare_workspaces,
    run_demo,
)
from spurious.demo._tour import (
    RealTourResult,
    draw_photo_dataset,
    draw_shapes_dataset,
    run_real_tour,
)

__all__ = ["DemoResult", "FoundComponent", "ModelSummary", "PreparedWorkspaces", "RealTourResult", "draw_photo_dataset",
           "draw_shapes_dataset", "prepare_workspaces", "run_demo", "run_real_tour"]
