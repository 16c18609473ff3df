"""The spurious-score metrics of one class, in plain numpy (DESIGN.md "Math", spurious score).

For class ``k`` the *positives* are the validation images of class ``k`` and the *negatives* the
spurious images of class ``k`` (they show the spurious feature but not the object); the score of an
image is the softmax probability of class ``k`` (any strictly increasing function of it, such as the
log-probability, gives the same values: both metrics depend only on the order of the scores).

* :func:`roc_auc`: area under the ROC curve = the Mann-Whitney statistic
  ``P(s_pos > s_neg) + 1/2 P(s_pos = s_neg)``, computed from average ranks (ties share their
  mean rank), equal to ``sklearn.metrics.roc_auc_score``. 1.0: every spurious image scores below
  every real image of the class; 0.5: no separation.
* :func:`average_precision`: ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score
  thresholds in decreasing order (tied scores form one threshold), the step-wise definition of
  ``sklearn.metrics.average_precision_score``, which the reference implementation of the paper
  used, so published tables can be compared.
* :func:`class_extension_rate`: the fraction of the spurious images of class ``k`` that the model
  predicts as ``k`` (the class has been *extended* to images of the spurious feature alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["average_precision", "class_extension_rate", "roc_auc"]


def _scores(values: object, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be a 1-D array of numbers, got {type(values).__name__}") from err
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one score per image), got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{what} contains NaN at index {int(np.flatnonzero(np.isnan(arr))[0])}; "
                         "scores must be numbers (drop the images that could not be scored)")
    return arr


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` in increasing order; tied values get the mean of their ranks."""
    n = x.size
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    bounds = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1], [True])))
    starts, stops = bounds[:-1], bounds[1:]
    mean_rank = (starts + 1 + stops) / 2.0  # positions start+1 .. stop (1-based), averaged
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, stops - starts)
    return ranks


def roc_auc(positives: Sequence[float] | np.ndarray, negatives: Sequence[float] | np.ndarray) -> float:
    """ROC-AUC of separating ``positives`` from ``negatives`` (ties count one half).

    ``AUC = (sum of the average ranks of the positives - n_p (n_p + 1) / 2) / (n_p n_n)``, the
    Mann-Whitney U statistic normalised to ``[0, 1]``; equal to ``sklearn.metrics.roc_auc_score``
    with labels 1 for positives and 0 for negatives. Constant scores give exactly 0.5.

    Args:
        positives: ``[n_p]`` scores of the positives (for the spurious score: the softmax
            probability of class ``k`` on the validation images of class ``k``).
        negatives: ``[n_n]`` scores of the negatives (the spurious images of class ``k``).

    Returns:
        the AUC in ``[0, 1]``.

    Raises:
        ValueError: either side is empty (the AUC is undefined), a score is NaN, or an input is not 1-D.
        TypeError: an input is not numeric.
    """
    pos = _scores(positives, "positives")
    neg = _scores(negatives, "negatives")
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"ROC-AUC needs at least one positive and one negative score, got {pos.size} positives "
                         f"and {neg.size} negatives")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    n_p, n_n = pos.size, neg.size
    u = ranks[:n_p].sum() - n_p * (n_p + 1) / 2.0
    return float(u / (n_p * n_n))


def average_precision(positives: Sequence[float] | np.ndarray, negatives: Sequence[float] | np.ndarray) -> float:
    """Average precision of ranking ``positives`` above ``negatives`` (step-wise, ties grouped).

    Sort all scores in decreasing order; at every distinct score value ``t_n`` let ``P_n`` be the
    precision and ``R_n`` the recall of the images scoring ``>= t_n``. Then
    ``AP = sum_n (R_n - R_{n-1}) P_n`` with ``R_0 = 0``: the definition of
    ``sklearn.metrics.average_precision_score`` (no interpolation), which the reference code
    computed. No negatives gives 1.0.

    Args:
        positives: ``[n_p]`` scores of the positives (validation images of class ``k``).
        negatives: ``[n_n]`` scores of the negatives (spurious images of class ``k``); may be empty.

    Returns:
        AP in ``(0, 1]``.

    Raises:
        ValueError: no positives (recall is undefined), a NaN score, or an input that is not 1-D.
        TypeError: an input is not numeric.
    """
    pos = _scores(positives, "positives")
    neg = _scores(negatives, "negatives")
    if pos.size == 0:
        raise ValueError(f"average precision needs at least one positive score, got 0 positives and "
                         f"{neg.size} negatives")
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last_of_group = np.flatnonzero(np.concatenate((scores[1:] != scores[:-1], [True])))
    true_pos = np.cumsum(is_pos)[last_of_group]
    retrieved = last_of_group + 1.0
    precision = true_pos / retrieved
    recall = true_pos / pos.size
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def class_extension_rate(predictions: Sequence[int] | np.ndarray, class_index: int) -> float:
    """Fraction of the spurious images of class ``k`` that are predicted as ``k``.

    Args:
        predictions: ``[n_n]`` predicted class (argmax) of each spurious image of class ``k``,
            in the same label space as ``class_index``.
        class_index: ``k``.

    Returns:
        the rate in ``[0, 1]``.

    Raises:
        ValueError: ``predictions`` is empty or not 1-D.
        TypeError: ``predictions`` is not integer-valued or ``class_index`` is not an int.
    """
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)):
        raise TypeError(f"class_index must be an int, got {type(class_index).__name__}")
    pred = np.asarray(predictions)
    if pred.ndim != 1:
        raise ValueError(f"predictions must be 1-D (one class per image), got shape {pred.shape}")
    if pred.size == 0:
        raise ValueError("the class extension rate needs at least one spurious image, got 0 predictions")
    if not np.issubdtype(pred.dtype, np.integer):
        raise TypeError(f"predictions must be integer class indices, got dtype {pred.dtype}")
    return float(np.mean(pred == int(class_index)))
