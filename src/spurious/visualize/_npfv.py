"""Feature visualization of linear targets of ``phi`` (NPFVs) and component selection for review.

The NPFV of component ``l`` of class ``k`` (DESIGN.md, "Math")::

    x* = argmax alpha_l^k(x)  over  ||x - x_0||_2 <= eps,  x in [0, 1]^n,  x_0 = gray (0.5)

solved with APGD (L2) for all components at once; ``alpha_l^k(x) = <A_l, phi(x)> - c_l`` is a
linear target of ``phi``, and so is a single neuron ``phi_j`` (:func:`spurious.visualize.neuron_visualization`
uses the same optimisation, :func:`maximize_linear`). Selection ranks the NPFVs of the top
``candidates`` components by the softmax probability of class ``k`` and keeps the first ``keep``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from spurious._tensors import inputs_only
from spurious.apgd import apgd
from spurious.npca import ClassBasis
from spurious.visualize._checks import check_batch_size, positive_int

if TYPE_CHECKING:
    from spurious.models import Classifier

__all__ = ["FeatureVisualization", "Selection", "default_eps", "npfv", "select_components"]

REFERENCE_EPS = 30.0
"""The paper's L2 budget for 3x224x224 inputs."""
REFERENCE_VALUES = 3 * 224 * 224


def default_eps(input_size: Sequence[int]) -> float:
    """L2 budget of the NPFV for an input of ``input_size`` values: ``30 sqrt(n / (3 * 224 * 224))``.

    ``eps = 30`` is the paper's budget at 3x224x224; scaling with ``sqrt(n)`` keeps the per-value
    RMS change ``eps / sqrt(n)`` (~0.039) the same at any input size (3x64x64: 8.57; 3x32x32: 4.29).

    Args:
        input_size: ``(3, H, W)`` (or any shape; only the product counts).
    """
    n = int(np.prod([int(s) for s in input_size]))
    if n < 1:
        raise ValueError(f"input_size must have positive entries, got {tuple(input_size)}")
    return REFERENCE_EPS * math.sqrt(n / REFERENCE_VALUES)


def check_eps(eps: float) -> float:
    """``eps`` as a float when it is a positive finite number."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) or not eps > 0 \
            or not math.isfinite(float(eps)):
        raise ValueError(f"eps must be a positive finite number (L2 radius around the gray image), got {eps!r}")
    return float(eps)


def resolve_eps(eps: float | None, classifier: Classifier) -> float:
    return default_eps(classifier.input_size) if eps is None else check_eps(eps)


def _check_basis(classifier: Classifier, basis: object) -> None:
    if not isinstance(basis, ClassBasis):
        raise TypeError(f"basis must be a spurious.npca.ClassBasis, got {type(basis).__name__}")
    if basis.w.shape[0] != classifier.num_features:
        raise ValueError(f"the basis of class {basis.k} has D={basis.w.shape[0]} but the classifier has "
                         f"D={classifier.num_features}: it was fitted for another model")
    if not 0 <= basis.k < classifier.num_classes:
        raise ValueError(f"basis class {basis.k} is not a class of the classifier (0..{classifier.num_classes - 1})")
    W, _ = classifier.head()
    if not np.allclose(basis.w.astype(np.float64), W[basis.k].double().cpu().numpy(), rtol=1e-4, atol=1e-6):
        raise ValueError(f"the basis of class {basis.k} was fitted for another model: its weight row w_k differs "
                         "from the classifier's head")



# ---------------------------------------------------------------------------- feature visualization


@dataclass
class FeatureVisualization:
    """Inputs maximising linear functions of ``phi`` from the gray image (NPFVs or neuron visualizations).

    Attributes:
        kind: ``"component"`` (target ``alpha_l^k``) or ``"neuron"`` (target ``phi_j``).
        k: the class the components belong to / the neurons were chosen for.
        index: int [M]: component ``l`` (0-based, eigenvalue order) or neuron ``j`` of each image.
        images: float32 [M, 3, H, W] in [0, 1] on the CPU, within ``eps`` (L2) of the gray image.
        value: float64 [M]: the target at the image (``alpha_l^k(x*)`` or ``phi_j(x*)``).
        probabilities: float64 [M, K]: softmax of the logits at each image.
        eps: the L2 budget used; ``steps``: APGD iterations.
    """

    kind: str
    k: int
    index: np.ndarray
    images: torch.Tensor
    value: np.ndarray
    probabilities: np.ndarray
    eps: float
    steps: int

    def class_probability(self, k: int | None = None) -> np.ndarray:
        """Softmax probability [M] of class ``k`` (default: :attr:`k`) at every image."""
        return self.probabilities[:, self.k if k is None else k]


def linear_targets(A: np.ndarray, c: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(np.asarray(A), dtype=torch.float32, device=device),
            torch.as_tensor(np.asarray(c), dtype=torch.float32, device=device))


def chunks(m: int, batch_size: int | None) -> Iterator[slice]:
    step = m if batch_size is None else batch_size
    for start in range(0, m, max(step, 1)):
        yield slice(start, min(start + step, m))


def maximize_linear(classifier: Classifier, A: np.ndarray, c: np.ndarray, *, eps: float, steps: int, seed: int | None,
                     batch_size: int | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """APGD from the gray image on ``t_i(x) = <A_i, phi(x)> - c_i``, one image per row of ``A`` [M, D].

    All rows run as one APGD batch (chunks of ``batch_size`` when given). Returns the images
    (CPU float32 [M, 3, H, W]), the targets at them (float64 [M]) and the softmax there (float64 [M, K]).
    """
    dev = classifier.device
    At, ct = linear_targets(A, c, dev)
    m = At.shape[0]
    images, values, probs = [], [], []
    with inputs_only(classifier):
        for sl in chunks(m, batch_size):
            a, b = At[sl], ct[sl]

            def objective(x: torch.Tensor, a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
                phi = classifier.phi(x)
                return (phi.to(a.dtype) * a).sum(dim=1) - b

            x0 = torch.full((a.shape[0], *classifier.input_size), 0.5, dtype=torch.float32, device=dev)
            result = apgd(objective, x0, eps=eps, norm="l2", steps=steps, seed=seed)
            x = result.x.detach()
            with torch.no_grad():
                phi, logits = classifier.phi_and_logits(x)
                values.append(((phi.to(a.dtype) * a).sum(dim=1) - b).double().cpu())
                probs.append(torch.softmax(logits.double(), dim=1).cpu())
            images.append(x.float().cpu())
    return torch.cat(images), torch.cat(values).numpy(), torch.cat(probs).numpy()


def npfv(classifier: Classifier, basis: ClassBasis, components: Sequence[int] | np.ndarray | None = None, *,
         eps: float | None = None, steps: int = 200, batch_size: int | None = None,
         seed: int | None = 0) -> FeatureVisualization:
    """Neural PCA feature visualizations: ``x*_l = argmax alpha_l^k(x)`` s.t. ``||x - x_0||_2 <= eps``, ``x in [0,1]^n``.

    ``x_0`` is the gray image (all 0.5); the problem is solved with APGD (L2), all components as
    one batch. The objective of image ``i`` is ``alpha_{l_i}^k(x_i) = <A_i, phi(x_i)> - c_i`` with
    ``A, c`` from :meth:`spurious.npca.ClassBasis.projection`. The classifier's training mode and
    ``requires_grad`` flags are restored afterwards.

    Args:
        classifier: a :class:`spurious.models.Classifier` (inputs in [0, 1]); runs on its device.
        basis: the class's :class:`spurious.npca.ClassBasis` (fitted for this classifier).
        components: 0-based component indices (default: all stored).
        eps: L2 budget (default :func:`default_eps` of the classifier's input size).
        steps: APGD iterations (default 200, as in the paper).
        batch_size: images per APGD batch (default: all at once).
        seed: APGD seed.

    Returns:
        A :class:`FeatureVisualization` of kind ``"component"``.
    """
    _check_basis(classifier, basis)
    steps = positive_int("steps", steps)
    batch_size = check_batch_size(batch_size)
    eps = resolve_eps(eps, classifier)
    comps = basis._components(components)
    A, c = basis.projection(comps)
    images, value, probs = maximize_linear(classifier, A, c, eps=eps, steps=steps, seed=seed, batch_size=batch_size)
    return FeatureVisualization("component", basis.k, comps, images, value, probs, eps, steps)


# ---------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """Components of one class ranked by the class probability at their NPFV.

    Attributes:
        k: the class.
        candidates: int [c]: the components whose NPFV was computed (the top ``c`` by eigenvalue).
        probability: float64 [c]: softmax probability of class ``k`` at each candidate's NPFV.
        order: int [c]: positions into ``candidates`` by descending probability (ties: larger eigenvalue first).
        selected: int [keep]: the kept component indices, best first (``candidates[order[:keep]]``).
        visualization: the candidates' NPFVs (same order as ``candidates``).
    """

    k: int
    candidates: np.ndarray
    probability: np.ndarray
    order: np.ndarray
    selected: np.ndarray
    visualization: FeatureVisualization


def select(vis: FeatureVisualization, keep: int) -> Selection:
    prob = vis.class_probability()
    order = np.argsort(-prob, kind="stable")  # candidates come in eigenvalue order: ties keep it
    return Selection(k=vis.k, candidates=vis.index, probability=prob, order=order,
                     selected=vis.index[order[:keep]], visualization=vis)


def select_components(classifier: Classifier, basis: ClassBasis, *, candidates: int = 128, keep: int = 10,
                      eps: float | None = None, steps: int = 200, batch_size: int | None = None,
                      seed: int | None = 0) -> Selection:
    """Component selection for human review (DESIGN.md): NPFVs of the top ``candidates`` components by
    eigenvalue, ranked by the softmax probability of class ``k`` at the NPFV; keep the first ``keep``.

    Args:
        classifier, basis: as in :func:`npfv`.
        candidates: how many top-eigenvalue components get an NPFV (capped at the number stored).
        keep: how many are kept (capped at ``candidates``).
        eps, steps, batch_size, seed: as in :func:`npfv`.
    """
    candidates = positive_int("candidates", candidates)
    keep = positive_int("keep", keep)
    _check_basis(classifier, basis)
    c = min(candidates, basis.num_components)
    vis = npfv(classifier, basis, np.arange(c), eps=eps, steps=steps, batch_size=batch_size, seed=seed)
    return select(vis, min(keep, c))

