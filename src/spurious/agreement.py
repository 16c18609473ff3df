"""The sanity check that cannot be missed: does the model agree with the labels it is given?

A user's model and a user's data meet in ``extract``. When the preprocessing is not the one the
model was trained with, or the folder labels are matched to the wrong classes, every later stage
still runs and reports plausible numbers. One figure catches both: the model's top-1 agreement
with the stored labels, compared with the agreement expected by chance.

Chance is the agreement of predictions that ignore the image, with the same label and prediction
frequencies: ``p_e = sum_c p_label(c) p_pred(c)``. The check is Cohen's kappa,

    kappa = (p_o - p_e) / (1 - p_e),     p_o = top-1 agreement,

and a split is *suspect* when ``kappa < KAPPA_MIN = 0.2`` (the top of "slight agreement" on Landis
& Koch's scale). A correct model on its own training classes is far above it (the demo models:
kappa > 0.9; an ImageNet model on ImageNet val: ~0.75); a wrong mean/std or a shuffled label
mapping lands near 0. Spurious-benchmark splits (images that show a class's spurious feature but not
the class) and unlabelled pools are not checked.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from spurious._io import JSONDict

__all__ = ["KAPPA_MIN", "Agreement", "AgreementError", "label_agreement", "not_checked", "report_agreement"]

KAPPA_MIN = 0.2
"""A labelled split whose Cohen's kappa between top-1 predictions and labels is below this is suspect."""


class AgreementError(ValueError):
    """``strict=True`` and the model does not agree with the labels (see :mod:`spurious.agreement`)."""


@dataclass(frozen=True)
class Agreement:
    """Top-1 agreement of a model with the labels of one split.

    Attributes:
        labelled: rows with a label (``>= 0``).
        agreement: fraction of them whose top-1 prediction is the label (``p_o``).
        chance: agreement expected from the label and prediction frequencies alone (``p_e``).
        kappa: Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` (1 when ``p_e = p_o = 1``).
        ok: ``kappa >= KAPPA_MIN``.
        checked: False when the split is not checked (``reason`` says why).
        reason: why it was not checked, or ``""``.
    """

    labelled: int
    agreement: float
    chance: float
    kappa: float
    ok: bool
    checked: bool = True
    reason: str = ""
    threshold: float = KAPPA_MIN

    def to_dict(self) -> JSONDict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: JSONDict) -> Agreement:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def describe(self) -> str:
        """One line for summaries."""
        if not self.checked:
            return f"label agreement not checked: {self.reason}"
        verdict = "ok" if self.ok else f"SUSPECT (kappa below {self.threshold})"
        return (f"top-1 agreement with the labels {self.agreement:.3f} on {self.labelled} images "
                f"(chance {self.chance:.3f}, kappa {self.kappa:.3f}): {verdict}")


def label_agreement(labels: np.ndarray, top1: np.ndarray) -> Agreement:
    """Agreement of ``top1`` predictions with ``labels`` (``-1`` = unlabelled rows are ignored).

    Args:
        labels: ``[N]`` int class indices, ``-1`` for unlabelled.
        top1: ``[N]`` int predicted class indices.

    Returns:
        the :class:`Agreement`; ``checked`` is False when no row is labelled.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    top1 = np.asarray(top1, dtype=np.int64).reshape(-1)
    if labels.shape != top1.shape:
        raise ValueError(f"labels {labels.shape} and top1 {top1.shape} must have the same length")
    keep = labels >= 0
    n = int(keep.sum())
    if n == 0:
        return Agreement(0, float("nan"), float("nan"), float("nan"), True, False, "no labelled images")
    y, p = labels[keep], top1[keep]
    p_o = float((y == p).mean())
    classes = np.union1d(y, p)
    p_label = np.array([(y == c).mean() for c in classes])
    p_pred = np.array([(p == c).mean() for c in classes])
    p_e = float((p_label * p_pred).sum())
    kappa = 1.0 if p_e >= 1.0 and p_o >= 1.0 else (0.0 if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e))
    return Agreement(n, p_o, p_e, float(kappa), bool(kappa >= KAPPA_MIN))


def not_checked(reason: str) -> Agreement:
    """An :class:`Agreement` for a split that is not checked."""
    return Agreement(0, float("nan"), float("nan"), float("nan"), True, False, reason)


def report_agreement(agreement: Agreement, *, what: str, hint: str, strict: bool = False) -> None:
    """Warn (or with ``strict`` raise :class:`AgreementError`) when ``agreement`` is suspect.

    Args:
        agreement: the figure.
        what: the split, e.g. ``"ws/features/train (folder:/data/train)"``.
        hint: the command that shows the model's preprocessing and label space.
        strict: raise instead of warning.
    """
    if agreement.ok or not agreement.checked:
        return
    message = (
        f"the model does not agree with the labels of {what}: top-1 agreement {agreement.agreement:.3f} on "
        f"{agreement.labelled} images, chance {agreement.chance:.3f} (kappa {agreement.kappa:.2f} < "
        f"{agreement.threshold}). Every later figure is meaningless until this is fixed. Likely causes: the "
        f"preprocessing is not the one the model was trained with (input size, resize/crop, mean/std, value "
        f"range), or the labels are matched to the wrong classes (folder names vs the model's class names). "
        f"Inspect with `{hint}`; see docs/usage.md, 'Your own model'"
    )
    if strict:
        raise AgreementError(message + " (--strict)")
    warnings.warn(message, UserWarning, stacklevel=3)
