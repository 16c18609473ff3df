"""What the ``score`` stage returns (rows per model, scores per class) and the predictions it scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from spurious._io import JSONDict
from spurious.agreement import Agreement

__all__ = ["ClassScore", "GroupScore", "Preds", "ScoreResult", "ScoreRow"]


@dataclass
class ScoreRow:
    """Summary of one model, or one SpuFix variant of a model (one row of ``scores.csv``).

    Attributes:
        model: row label: the spec, or ``"<spec> + <fix name>"`` for a SpuFix variant.
        spec: the model spec.
        variant: ``"original"`` or the fix head's name.
        fingerprint: the model's head fingerprint.
        mauc: mean ROC-AUC over the scored classes (``nan`` when no class could be scored).
        map: mean average precision over the same classes.
        mean_extension: mean class-extension rate over the same classes.
        val_accuracy: top-1 accuracy on every validation image whose class the model has (prediction:
            argmax over the model outputs that the class map uses).
        val_complete: every class of the label space has validation images (the accuracy is then
            the usual whole-val-set accuracy, e.g. ImageNet val accuracy).
        classes_scored: classes in the means.
        classes_skipped: requested classes left out (see ``ClassScore.status``).
        spurious_images / val_images: decoded images used.
        failed_images: images that could not be decoded (both inputs).
        class_map: how benchmark classes were mapped to model outputs (identity, wnid, names, explicit).
        cached: no image had to be run through this model in this call.
        agreement: the sanity figure (:mod:`spurious.agreement`): top-1 agreement with the validation
            labels on the same images as ``val_accuracy`` (so ``agreement.agreement == val_accuracy``),
            with the agreement expected by chance and Cohen's kappa. Suspect (``not agreement.ok``)
            when the preprocessing or the label matching is wrong.
        worst_group_accuracy / worst_group / mean_accuracy / group_average_accuracy: the group metrics
            over the validation images of the groups file (``score(groups=...)``; :mod:`spurious.groups`):
            the lowest per-group accuracy and its group, the accuracy over all those images (group
            accuracies weighted by group size) and the unweighted mean of the group accuracies;
            ``nan`` / ``""`` without a groups file.
    """

    model: str
    spec: str
    variant: str
    fingerprint: str
    mauc: float
    map: float
    mean_extension: float
    val_accuracy: float
    val_complete: bool
    classes_scored: int
    classes_skipped: int
    spurious_images: int
    val_images: int
    failed_images: int
    class_map: str
    cached: bool
    agreement: Agreement
    worst_group_accuracy: float = float("nan")
    worst_group: str = ""
    mean_accuracy: float = float("nan")
    group_average_accuracy: float = float("nan")

    def to_dict(self) -> JSONDict:
        d = _nan_to_none(asdict(self))
        d["agreement"] = _nan_to_none(self.agreement.to_dict())
        return d


@dataclass
class ClassScore:
    """Metrics of one class for one model row (one row of ``per_class.csv``).

    ``auc``, ``ap`` and ``extension`` are ``nan`` (``null`` in JSON) when ``status`` is not ``"ok"``.
    """

    model: str
    variant: str
    class_index: int
    class_name: str
    val_images: int
    spurious_images: int
    auc: float
    ap: float
    extension: float
    status: str

    def to_dict(self) -> JSONDict:
        return _nan_to_none(asdict(self))


@dataclass
class GroupScore:
    """Accuracy of one model row on one group of the groups file (one row of ``groups.csv``)."""

    model: str
    variant: str
    group: str
    class_index: int
    images: int
    accuracy: float

    def to_dict(self) -> JSONDict:
        return _nan_to_none(asdict(self))


@dataclass
class ScoreResult:
    """What :func:`score` measured and wrote (``--json`` prints :meth:`to_dict`).

    Attributes:
        out: the output folder.
        rows: one :class:`ScoreRow` per model and SpuFix variant, in the order the models were given.
        per_class: one :class:`ClassScore` per row and requested class.
        classes: the requested benchmark classes.
        class_names: names of the whole benchmark label space.
        protocol: ``"model"`` or ``"reference"``.
        paths: written files by kind (``scores_json``, ``scores_csv``, ``scores_md``, ``per_class_csv``,
            ``report_html``, ``manifest``, and the plots).
        images_computed: images decoded and run through the models that needed them in this call (0 when
            everything was cached; an image counts once however many models ran on it).
        seconds: wall time of the call.
        world_size: processes (torchrun) that shared the work.
        complete: False only on non-zero torchrun ranks, which leave the metrics to rank 0.
        label_source: where the benchmark's class names and the validation labels come from, e.g.
            ``"the class names of demo:standard: folder names matched to the given class names
            (10 as NN_name)"``.
        groups: one :class:`GroupScore` per row and group of the groups file (empty without one).
        groups_file: the groups file (``""`` without one); groups_images: validation images it lists.
    """

    out: str
    rows: list[ScoreRow]
    per_class: list[ClassScore]
    classes: list[int]
    class_names: list[str]
    protocol: str
    paths: dict[str, str] = field(default_factory=dict)
    images_computed: int = 0
    seconds: float = 0.0
    world_size: int = 1
    complete: bool = True
    label_source: str = ""
    groups: list[GroupScore] = field(default_factory=list)
    groups_file: str = ""
    groups_images: int = 0

    def row(self, model: str) -> ScoreRow:
        """The row labelled ``model`` (a spec, or ``"<spec> + <fix name>"``)."""
        for r in self.rows:
            if r.model == model:
                return r
        raise KeyError(f"no row {model!r}; rows: {[r.model for r in self.rows]}")

    def class_scores(self, model: str) -> list[ClassScore]:
        """The per-class metrics of the row labelled ``model``."""
        self.row(model)
        return [c for c in self.per_class if c.model == model]

    def to_dict(self) -> JSONDict:
        return {
            "out": self.out, "protocol": self.protocol, "classes": self.classes,
            "rows": [r.to_dict() for r in self.rows], "per_class": [c.to_dict() for c in self.per_class],
            "paths": self.paths, "images_computed": self.images_computed, "seconds": self.seconds,
            "world_size": self.world_size, "complete": self.complete, "label_source": self.label_source,
            "groups_file": self.groups_file, "groups_images": self.groups_images,
            "groups": [g.to_dict() for g in self.groups],
        }

    def summary_lines(self) -> list[str]:
        """Human-readable summary (what the CLI prints without ``--json``)."""
        width = max([len(r.model) for r in self.rows] + [5])
        lines = [f"{'model':<{width}}  mAUC   mAP    ext.   val acc  kappa  classes"]
        for r in self.rows:
            lines.append(f"{r.model:<{width}}  {_f(r.mauc)}  {_f(r.map)}  {_f(r.mean_extension)}  "
                         f"{_f(r.val_accuracy)}    {_f(r.agreement.kappa)}  {r.classes_scored}"
                         + (f" ({r.classes_skipped} skipped)" if r.classes_skipped else "")
                         + ("  [cached]" if r.cached else ""))
        if self.groups_file:
            lines.append(f"groups ({self.groups_images} validation images of {self.groups_file}):")
            for r in self.rows:
                lines.append(f"{r.model:<{width}}  worst-group acc {_f(r.worst_group_accuracy)} ({r.worst_group}), "
                             f"mean acc {_f(r.mean_accuracy)}, group-average acc {_f(r.group_average_accuracy)}")
        lines.append(f"validation labels: {self.label_source}")
        for r in self.rows:
            if not r.agreement.ok:
                lines.append(f"{r.model}: {r.agreement.describe()}")
        lines.append(f"{self.images_computed} images decoded and scored in {self.seconds:.1f} s; "
                     f"results -> {self.out}/ (scores.csv, per_class.csv, scores.md, report.html)")
        return lines


def _f(x: float) -> str:
    return "  -  " if x != x else f"{x:.3f}"


def _nan_to_none(d: JSONDict) -> JSONDict:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}



@dataclass
class Preds:
    """Per-record predictions of one model variant on one input (``ok`` = decoded)."""

    ok: np.ndarray
    logp: np.ndarray
    pred: np.ndarray
    top_index: np.ndarray
    top_prob: np.ndarray
    failed: list[tuple[int, str]]
