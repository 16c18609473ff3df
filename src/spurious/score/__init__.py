"""Stage ``score``: how much does a classifier rely on known spurious features?

The *spurious score* (DESIGN.md "Math") of class ``k``: positives are the validation images of
class ``k``, negatives the spurious images of class ``k`` (the spurious feature without the
object, e.g. the published Spurious ImageNet benchmark, or the planted demo benchmark), and the
score of an image is the softmax probability of class ``k``. Per class: ROC-AUC, average
precision and the class-extension rate; their means over classes (mAUC, mAP); plus the
validation accuracy, so that a fix that trades accuracy for robustness shows.

Example:
    >>> from spurious.score import score                                   # doctest: +SKIP
    >>> r = score(["timm:resnet50.a1_in1k", "efficientnet_lite0"],        # doctest: +SKIP
    ...           spurious="spurious_imagenet/images", val="/data/imagenet/val")
    >>> r.row("efficientnet_lite0").mauc                                   # doctest: +SKIP
"""

from __future__ import annotations

from ._inputs import CLASS_MAP_KEYWORDS, model_wnids
from ._stage import (
    PROTOCOLS,
    ClassScore,
    ReferenceResizeCrop,
    ScoreResult,
    ScoreRow,
    score,
)
from ._zoo import (
    PAPER_ZOO,
    PaperFigures,
    ZooModel,
    ZooResult,
    ZooRow,
    paper_zoo,
    read_zoo,
    score_zoo,
)
from .metrics import average_precision, class_extension_rate, roc_auc

__all__ = [
    "CLASS_MAP_KEYWORDS",
    "PAPER_ZOO",
    "PROTOCOLS",
    "ClassScore",
    "PaperFigures",
    "ReferenceResizeCrop",
    "ScoreResult",
    "ScoreRow",
    "ZooModel",
    "ZooResult",
    "ZooRow",
    "average_precision",
    "class_extension_rate",
    "model_wnids",
    "paper_zoo",
    "read_zoo",
    "roc_auc",
    "score",
    "score_zoo",
]
