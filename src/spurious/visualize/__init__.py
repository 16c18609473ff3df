"""Stage 3, ``visualize``: NPFVs, max-activating images and GradCAM heatmaps of class components.

For every class ``k`` with neural PCA (DESIGN.md, "Math")::

    NPFV of (k, l):  x* = argmax alpha_l^k(x)  over  ||x - x_0||_2 <= eps,  x in [0, 1]^n,  x_0 = gray (0.5)
    selection:       NPFVs of the top ``candidates`` components by eigenvalue, ranked by the softmax
                     probability of class k at the NPFV; the first ``keep`` are kept for review
    max-activating:  the training images *labelled* k with the largest alpha_l^k (from the stored phi)
    heatmap:         GradCAM with alpha_l^k as the target scalar

plus the Salient ImageNet neuron baseline: importance of neuron ``j`` for class ``k`` is
``mean_{x predicted k} phi_j(x) W_kj`` (over the images of the split whose stored top-1 prediction is
``k``); the top-5 neurons get the same treatment (feature visualization of ``phi_j``, max-activating
images by ``phi_j``, GradCAM of ``phi_j``), and :func:`diversity` counts how often the same training
image shows up in the max-activating sets of the top-5 components versus the top-5 neurons.

The default budget ``eps = 30 sqrt(n / (3 * 224 * 224))`` (``n`` = number of input values) is the
paper's ``eps = 30`` at 3x224x224, scaled so that the per-value RMS change stays the same at any
input size (:func:`default_eps`). NPFVs are only meaningful for an adversarially robust model: on a
standard model the same optimisation returns adversarial noise.

Artifacts (``WS/visualize/``)::

    plan.json                 what was computed (model, data, npca, budget, sizes); a different plan is refused
    manifest.json             plan + arguments, package version, model spec, per-class summary, diversity totals
    index.html                links to the class sheets
    class_KKKKK/
        components.json       machine-readable table for the labelling UI (written last: the done marker)
        index.html            the class's inspection sheet
        npfv_lLLLL.png, npfv_lLLLL_cam.png                      NPFV and its GradCAM overlay
        top_lLLLL_R.png, top_lLLLL_R_cam.png                     max-activating image R (0-based) and overlay
        neuron_jJJJJJ.png, neuron_jJJJJJ_cam.png, neuron_jJJJJJ_top_R.png, neuron_jJJJJJ_top_R_cam.png

Resumable per class (a class whose ``components.json`` was written under the same plan is not
recomputed); under ``torchrun`` class ``k`` goes to rank ``k % world_size``.

``components.json`` is read by one reader, :func:`read_sheet_table` (with :func:`sheet_classes`),
which loads no torch; the stage's functions load it on first use.

Modules, one idea each: ``_npfv`` (feature visualization of linear targets of ``phi``, NPFVs,
selection), ``_max_activating`` (max-activating images from the feature store), ``_neurons`` (the
neuron baseline and diversity), ``_stage`` (:func:`visualize`: plan, per-class work, outputs,
resuming), ``_report`` (the HTML sheets), ``_table`` (the one reader of ``components.json``) and
``_checks`` (argument checks).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spurious.visualize._report import ROBUSTNESS_NOTE, refresh_sheets
from spurious.visualize._table import (
    SHEET_TABLE,
    SheetTable,
    read_sheet_table,
    sheet_classes,
    sheet_folder,
)

if TYPE_CHECKING:
    from spurious.visualize._max_activating import (
        MaxActivating,
        max_activating,
        max_activating_neurons,
    )
    from spurious.visualize._neurons import (
        NeuronImportance,
        SetDiversity,
        diversity,
        neuron_importance,
        neuron_visualization,
    )
    from spurious.visualize._npfv import (
        FeatureVisualization,
        Selection,
        default_eps,
        npfv,
        select_components,
    )
    from spurious.visualize._stage import VisualizeResult, visualize

__all__ = [
    "ROBUSTNESS_NOTE",
    "FeatureVisualization",
    "MaxActivating",
    "NeuronImportance",
    "Selection",
    "SHEET_TABLE",
    "SetDiversity",
    "SheetTable",
    "VisualizeResult",
    "default_eps",
    "diversity",
    "max_activating",
    "max_activating_neurons",
    "neuron_importance",
    "neuron_visualization",
    "npfv",
    "read_sheet_table",
    "refresh_sheets",
    "select_components",
    "sheet_classes",
    "sheet_folder",
    "visualize",
]

_LAZY = {  # name -> the module that defines it (each loads torch)
    **dict.fromkeys(["FeatureVisualization", "Selection", "default_eps", "npfv", "select_components"], "_npfv"),
    **dict.fromkeys(["MaxActivating", "max_activating", "max_activating_neurons"], "_max_activating"),
    **dict.fromkeys(["NeuronImportance", "SetDiversity", "diversity", "neuron_importance", "neuron_visualization"],
                    "_neurons"),
    **dict.fromkeys(["VisualizeResult", "visualize"], "_stage"),
}


def __getattr__(name: str) -> Any:
    """The stage's functions load torch on first use, so that reading a sheet table
    (:func:`read_sheet_table`, used by the label store and the reports) does not."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"spurious.visualize.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
