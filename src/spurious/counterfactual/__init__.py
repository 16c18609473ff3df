"""Stage ``counterfactual``: add or remove a neural PCA component in real images.

Feature counterfactual of ``(k, l)`` on a start image ``x_0`` (DESIGN.md "Math"), with
``alpha_l^k(x) = <1, v_l> <v_l, w_k ⊙ phi(x) - mu_k>`` from the workspace's neural PCA and ``phi``
of the optimising model::

    x* = argmax_x  J(x)   subject to   ||x - x_0||_p <= eps,   x in [0, 1]^n,   p in {2, inf, 1}

    J(x) = s alpha_l^k(x)                                                     (the plain objective)
         + s lambda_p log softmax(f(x))_k                                     (logprob_weight = lambda_p)
         - lambda_keep ( mean_{l' != l} (alpha_{l'}^k(x) - alpha_{l'}^k(x_0))^2
                         + mean_{j != k} (f_j(x) - f_j(x_0))^2 )             (keep_weight = lambda_keep)

with ``s = +1`` to add the component (maximise ``alpha_l^k``) and ``s = -1`` to remove it; the
``l'`` run over the class's stored components. Both extra terms are off by default. It is solved
per image with the APGD of the NPFV (:func:`spurious.apgd.apgd`, L2 / L-inf) or its L1 variant
(sparse steps, exact projection onto the L1 ball in the box), started at ``x_0``. Default budgets
(:func:`default_budget`): L2 ``30 sqrt(n / (3*224*224))``, L-inf that over ``sqrt(n)``, L1
``eps_2 sqrt(n / 100)``.

Engines: ``engine="image"`` (the default) solves the problem above; ``engine="diffusion"`` runs DVCE
(Augustin et al., NeurIPS 2022; the paper's Appendix H) with an unconditional ``diffusers`` UNet: the start
image is noised part-way and denoised with each step's mean shifted along the normalised gradients of
``log p_k``, ``s alpha_l^k`` and ``-d(x0_hat, x_orig)`` at the denoised estimate (:mod:`._dvce`, docs/dvce.md).

Start images (:mod:`._starts`): files or a dataset given by the user; for ``remove`` by default the
component's max-activating training images; for ``add`` by default validation images of the classes
whose images give ``k`` the highest mean probability (excluding ``k``).

Artifacts (``WS/counterfactual/``)::

    plan.json, manifest.json    the workspace model and npca it belongs to; every run
    index.json                  per "k/l": every pair with its PNGs and numbers (:func:`counterfactual_pairs`)
    index.html                  links to the run sheets
    class_KKKKK/lLLLL/<mode>-<norm>-<settings hash>/
        run.json, index.html                              settings, start images, pairs, means; the sheet
        pair-<hash>.json                                  one pair's numbers (the unit of resumption)
        pair-<hash>_{original,counterfactual,difference,heatmap}.png

The numbers of every pair (``alpha_l^k``, ``p(k)``, ``f_k``, the top-1 class, before and after) are
given for the optimising model and every evaluation model; ``alpha`` uses the workspace's basis on
that model's ``phi`` (``null`` when its feature dimension differs).

:func:`read_counterfactual_index` and :func:`counterfactual_pairs` load no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spurious.counterfactual._index import (
    CounterfactualPair,
    counterfactual_pairs,
    read_counterfactual_index,
    shown_pairs,
)

if TYPE_CHECKING:
    from spurious.counterfactual._dvce import (
        DiffusionModel,
        DomainCheck,
        DvceSettings,
        domain_check,
        dvce_images,
        load_diffusion,
    )
    from spurious.counterfactual._optimize import (
        Counterfactuals,
        ImageScores,
        counterfactual_images,
        default_budget,
        score_images,
    )
    from spurious.counterfactual._stage import CounterfactualResult, counterfactual
    from spurious.counterfactual._starts import StartImages, confused_classes

__all__ = [
    "CounterfactualPair",
    "CounterfactualResult",
    "Counterfactuals",
    "DiffusionModel",
    "DomainCheck",
    "DvceSettings",
    "ImageScores",
    "StartImages",
    "confused_classes",
    "counterfactual",
    "counterfactual_images",
    "counterfactual_pairs",
    "default_budget",
    "domain_check",
    "dvce_images",
    "load_diffusion",
    "read_counterfactual_index",
    "score_images",
    "shown_pairs",
]

_LAZY = {
    "Counterfactuals": "_optimize", "ImageScores": "_optimize", "counterfactual_images": "_optimize",
    "default_budget": "_optimize", "score_images": "_optimize",
    "CounterfactualResult": "_stage", "counterfactual": "_stage",
    "StartImages": "_starts", "confused_classes": "_starts",
    "DiffusionModel": "_dvce", "DvceSettings": "_dvce", "dvce_images": "_dvce", "load_diffusion": "_dvce",
    "DomainCheck": "_dvce", "domain_check": "_dvce",
}


def __getattr__(name: str) -> Any:
    """The stage's functions load torch on first use; reading the index does not."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"spurious.counterfactual.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
