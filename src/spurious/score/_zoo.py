"""A model zoo scored in one run (``spurious score --zoo paper``): the paper's table against our numbers.

The paper ("Spurious Features Everywhere", extended results table) scores 77 models on Spurious
ImageNet: ImageNet accuracy and spurious score of the original model and after SpuFix. The table
ships as ``paper_zoo.tsv`` beside this module: the model id as the reference code named it, the
spec this package loads for it (a timm name with its pretrained tag, decided per model from the
printed name and the reference's id; the two robust ResNet-50s are checkpoints
``torchvision:resnet50@{NAME}`` whose path the run is given), and the published figures.

:func:`score_zoo` runs :func:`spurious.score.score` once per model and protocol, each model in its
own score output ``OUT/models/<id>/`` (its prediction cache included), so

* a finished model is not loaded again: ``OUT/models/<id>/zoo-<protocol>.json`` records its result
  with the settings it was made with (data fingerprints, classes, class map, weights, the keys of
  the fixes that apply to it); a killed run resumes from the cached chunks of the model it was on;
* a model that fails (weights not downloadable, out of memory, a bad checkpoint) is reported with a
  one-line reason and skipped; the run goes on and the next run tries it again;
* the usual tables of every protocol (``OUT/<protocol>/scores.csv``, ``per_class.csv``,
  ``scores.md``, ``scores.json``) hold every finished model, and ``OUT/zoo.csv`` / ``zoo.md`` /
  ``zoo.json`` / ``report.html`` put our figures beside the published ones (accuracy, mAUC and
  mAP against the printed spurious score, after SpuFix, and the differences).

ImageNet-21k/22k heads are scored on the 1k benchmark through the class map ``auto``: the 1k
classes are matched to the head's outputs by WordNet id (:func:`spurious.score.model_wnids`).
"""

from __future__ import annotations

import csv
import difflib
import gc
import hashlib
import io
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from spurious._io import JSONDict, atomic_path, read_json, slug, utc_now, write_json
from spurious.agreement import Agreement

from ._inputs import ClassMapSpec, DatasetSpec, check_paths, resolve_inputs
from ._result import ClassScore, ScoreResult, ScoreRow
from ._stage import (
    ORIGINAL,
    PROTOCOLS,
    _head_key,
    _load_fix_heads,
    check_out_folder,
    score,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from spurious.models import Classifier

    from ._stage import FixArg

__all__ = ["PAPER_ZOO", "PaperFigures", "ZooModel", "ZooResult", "ZooRow", "paper_zoo", "read_zoo", "score_zoo"]

log = logging.getLogger(__name__)

PAPER_ZOO = "paper"
"""``zoo=`` / ``--zoo`` value for the paper's table (``paper_zoo.tsv``)."""

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.-]+)\}")
_FIGURES = ("acc", "spu", "spufix_acc", "spufix_spu")
_MARKER_FORMAT = 1


# ----------------------------------------------------------------------------- the zoo
@dataclass(frozen=True)
class PaperFigures:
    """Published figures of one model: ImageNet top-1 (%) and spurious score, before and after SpuFix.

    ``None`` where the table prints a dash (the ImageNet-21k heads have no ImageNet-1k accuracy).
    """

    acc: float | None = None
    spu: float | None = None
    spufix_acc: float | None = None
    spufix_spu: float | None = None


@dataclass(frozen=True)
class ZooModel:
    """One model of a zoo.

    Attributes:
        id: the name in the zoo (for the paper: the reference code's model id); names its folder.
        spec: what :func:`spurious.models.load_model` loads; ``{NAME}`` in it stands for the path of
            the checkpoint ``NAME`` (``score_zoo(checkpoints={NAME: PATH})``, CLI ``--checkpoint NAME=PATH``).
        display_name / section / note: as printed in the paper's table, and why this spec.
        paper: the published figures (``None``: none to compare with).
    """

    id: str
    spec: str
    display_name: str = ""
    section: str = ""
    note: str = ""
    paper: PaperFigures | None = None

    @property
    def checkpoint(self) -> str | None:
        """The name of the checkpoint the spec needs, or ``None``."""
        m = _PLACEHOLDER.search(self.spec)
        return m.group(1) if m else None


def _figure(value: str | None, where: str) -> float | None:
    text = (value or "").strip()
    if text in ("", "-"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number (or '-')") from None


def _tsv_rows(text: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line, row)`` of a tab-separated table; ``#`` lines and blank lines are skipped."""
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip() and not ln.startswith("#")]
    if not lines:
        return [], []
    reader = csv.reader(io.StringIO("\n".join(ln for _, ln in lines)), delimiter="\t")
    table = list(reader)
    header = [h.strip() for h in table[0]]
    return header, [(lines[j][0], dict(zip(header, (c.strip() for c in row), strict=False)))
                    for j, row in enumerate(table[1:], start=1)]


def _model_of_row(row: dict[str, str], spec: str, where: str) -> ZooModel:
    figures = {f: _figure(row.get(f), f"{where}, column {f}") for f in _FIGURES if f in row}
    return ZooModel(id=row["model_id"], spec=spec, display_name=row.get("display_name", ""),
                    section=row.get("section", ""), note=row.get("note", ""),
                    paper=PaperFigures(**figures) if figures else None)


def paper_zoo() -> list[ZooModel]:
    """The paper's 77 models with their specs and published figures (``paper_zoo.tsv``)."""
    text = (resources.files("spurious.score") / "paper_zoo.tsv").read_text(encoding="utf-8")
    _, rows = _tsv_rows(text)
    return [_model_of_row(row, row["spec"], f"paper_zoo.tsv line {line}") for line, row in rows]


def _known_specs() -> tuple[set[str], list[str]]:
    from spurious.models import list_models

    names = list_models()
    return set(names), names


def _spec_is_known(spec: str, known: set[str] | None = None) -> bool:
    """Whether ``spec`` names a model ``load_model`` knows, without loading anything.

    ``PREFIX:NAME[.TAG]`` must be listed by :func:`spurious.models.list_models` (timm names and
    pretrained tags, torchvision names, registered sources); ``ARCH@PATH`` and ``ARCH@{NAME}`` need a
    known ``ARCH`` (a bare one: torchvision's or timm's); ``@PATH`` names its architecture in a
    config file and is accepted.
    """
    names = known if known is not None else _known_specs()[0]
    arch, at, _ = spec.strip().partition("@")
    arch = arch.strip()
    if not arch:
        return bool(at)
    if arch in names:
        return True
    return bool(at) and ":" not in arch and (f"torchvision:{arch}" in names or f"timm:{arch}" in names)


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"{name!r} (did you mean {', '.join(close)}?)" if close else f"{name!r} (no close name)"


def read_zoo(zoo: str | os.PathLike[str]) -> list[ZooModel]:
    """The models of a zoo: ``"paper"``, or a file.

    A file is either a table like the reference's (tab-separated, a header with ``model_id``; optional
    columns ``spec``, ``display_name``, ``section``, ``note`` and the figures ``acc``, ``spu``,
    ``spufix_acc``, ``spufix_spu``), or one model per line (``#`` comments). A model is an id of the
    paper's table (its spec and figures come along) or a model spec (``timm:NAME[.TAG]``,
    ``torchvision:NAME``, ``ARCH@PATH``, ``ARCH@{NAME}`` for a checkpoint given at run time).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown ids (all of them in one line, with the closest valid names), an id given
            twice, an empty zoo, or a figure that is not a number.
    """
    if isinstance(zoo, str) and zoo == PAPER_ZOO:
        return paper_zoo()
    path = Path(os.path.expanduser(os.fspath(zoo)))
    if not path.is_file():
        raise FileNotFoundError(f"zoo file {path} does not exist (or pass --zoo {PAPER_ZOO} for the paper's table)")
    text = path.read_text(encoding="utf-8-sig")
    paper = {m.id: m for m in paper_zoo()}
    header, rows = _tsv_rows(text)
    entries: list[tuple[str, dict[str, str] | None, int]]
    if "model_id" in header:
        entries = [(row.get("model_id", ""), row, line) for line, row in rows]
    else:
        entries = [(ln.split("\t")[0].strip(), None, i) for i, ln in enumerate(text.splitlines(), start=1)
                   if ln.strip() and not ln.lstrip().startswith("#")]
    if not entries:
        raise ValueError(f"zoo file {path} lists no model; write one model spec or paper id per line, or a "
                         "tab-separated table with a model_id column")
    known, names = _known_specs()
    models: list[ZooModel] = []
    unknown: list[str] = []
    for model_id, row, line in entries:
        where = f"zoo file {path} line {line}"
        given_spec = (row or {}).get("spec", "")
        if not model_id:
            raise ValueError(f"{where}: the model_id is empty")
        spec = given_spec or (paper[model_id].spec if model_id in paper else model_id)
        if not given_spec and model_id not in paper and f"timm:{model_id}" in known:
            spec = f"timm:{model_id}"  # a bare timm name, as the reference code wrote them
        if not _spec_is_known(spec, known):
            unknown.append(spec if given_spec else model_id)
            continue
        if row is None:
            models.append(paper.get(model_id) or ZooModel(id=model_id, spec=spec))
            continue
        model = _model_of_row(row, spec, where)
        if model.paper is None and model_id in paper:
            model = ZooModel(model.id, spec, model.display_name or paper[model_id].display_name,
                             model.section or paper[model_id].section, model.note, paper[model_id].paper)
        models.append(model)
    if unknown:
        candidates = sorted(set(paper) | {n.split(":", 1)[-1] for n in names} | set(names))
        listed = ", ".join(_suggest(u, candidates) for u in unknown)
        raise ValueError(f"zoo file {path}: {len(unknown)} unknown model id{'s' if len(unknown) > 1 else ''}: "
                         f"{listed}; each entry is an id of the paper's table (spurious score --zoo {PAPER_ZOO}) "
                         "or a model spec (timm:NAME[.TAG], torchvision:NAME, ARCH@PATH; spurious models PATTERN "
                         "lists them)")
    ids = [m.id for m in models]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"zoo file {path}: the model id {dup[0]!r} is listed twice; list each model once")
    return models


# ----------------------------------------------------------------------------- results
@dataclass
class ZooRow:
    """One model and protocol: our figures beside the published ones (one row of ``zoo.csv``).

    Accuracies are in percent like the paper's; ``d_*`` are ours minus the paper's. The paper's
    spurious score is compared with both our mAUC (ROC-AUC, what the paper's text says) and our mAP
    (average precision, what the reference code computed): ``d_mauc``, ``d_map``. The SpuFix
    columns are the first fix variant of the model (``fix``), empty without one.
    """

    id: str
    display_name: str
    section: str
    spec: str
    protocol: str
    status: str
    reason: str = ""
    cached: bool = False
    acc: float | None = None
    val_complete: bool | None = None
    val_kappa: float | None = None
    mauc: float | None = None
    map: float | None = None
    fix: str = ""
    spufix_acc: float | None = None
    spufix_mauc: float | None = None
    spufix_map: float | None = None
    paper_acc: float | None = None
    paper_spu: float | None = None
    paper_spufix_acc: float | None = None
    paper_spufix_spu: float | None = None
    d_acc: float | None = None
    d_mauc: float | None = None
    d_map: float | None = None
    d_spufix_acc: float | None = None
    d_spufix_mauc: float | None = None
    d_spufix_map: float | None = None

    def to_dict(self) -> JSONDict:
        return asdict(self)


@dataclass
class ZooResult:
    """What :func:`score_zoo` measured and wrote (``--json`` prints :meth:`to_dict`).

    Attributes:
        out: the output folder.
        protocols: the protocols scored.
        rows: one :class:`ZooRow` per model and protocol, in zoo order (failed and skipped models too).
        failures: ``{"id", "spec", "status", "reason"}`` of every model that failed or was skipped.
        results: the combined :class:`ScoreResult` of every protocol (finished models only).
        paths: written files by kind.
        images_computed: images run through a model in this call (0: everything was cached).
        models_computed / models_cached: models loaded and run in this call / taken from earlier runs.
        seconds: wall time of the call.
    """

    out: str
    protocols: list[str]
    rows: list[ZooRow]
    failures: list[JSONDict]
    results: dict[str, ScoreResult]
    paths: dict[str, str] = field(default_factory=dict)
    images_computed: int = 0
    models_computed: int = 0
    models_cached: int = 0
    seconds: float = 0.0

    def row(self, model_id: str, protocol: str = PROTOCOLS[0]) -> ZooRow:
        """The row of ``model_id`` under ``protocol``."""
        for r in self.rows:
            if r.id == model_id and r.protocol == protocol:
                return r
        raise KeyError(f"no row {model_id!r} / {protocol!r}; ids: {sorted({r.id for r in self.rows})}")

    def to_dict(self) -> JSONDict:
        return {"out": self.out, "protocols": self.protocols, "rows": [r.to_dict() for r in self.rows],
                "failures": self.failures, "paths": self.paths, "images_computed": self.images_computed,
                "models_computed": self.models_computed, "models_cached": self.models_cached,
                "seconds": self.seconds}

    def summary_lines(self) -> list[str]:
        """Human-readable summary (what the CLI prints without ``--json``)."""
        width = max([len(r.id) for r in self.rows] + [5])
        lines = []
        for protocol in self.protocols:
            lines.append(f"protocol {protocol}: ours / paper (difference); acc in %")
            lines.append(f"{'model':<{width}}  {'acc':<21}  {'mAUC':<21}  {'mAP':>7}  {'SpuFix mAUC':<21}")
            for r in (r for r in self.rows if r.protocol == protocol):
                if r.status != STATUS_OK:
                    lines.append(f"{r.id:<{width}}  {r.status}: {r.reason}")
                    continue
                lines.append(f"{r.id:<{width}}  {_trio(r.acc, r.paper_acc, r.d_acc, 1)}  "
                             f"{_trio(r.mauc, r.paper_spu, r.d_mauc, 3)}  {_num(r.map, 3):>7}  "
                             f"{_trio(r.spufix_mauc, r.paper_spufix_spu, r.d_spufix_mauc, 3)}"
                             + ("  [cached]" if r.cached else ""))
        ok = len({r.id for r in self.rows if r.status == STATUS_OK})
        lines.append(f"{ok} of {len({r.id for r in self.rows})} models scored ({self.models_computed} run now, "
                     f"{self.models_cached} from earlier runs), {len(self.failures)} failed or skipped; "
                     f"{self.images_computed} images scored in {self.seconds:.1f} s; results -> {self.out}/ "
                     "(zoo.csv, zoo.md, report.html, <protocol>/scores.csv)")
        return lines


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _trio(ours: float | None, paper: float | None, diff: float | None, digits: int) -> str:
    d = "" if diff is None else f" ({diff:+.{digits}f})"
    return f"{_num(ours, digits)} / {_num(paper, digits)}{d}".ljust(21)


def _none_if_nan(x: float) -> float | None:
    return None if x != x else float(x)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _row_from_dict(d: JSONDict) -> ScoreRow:
    """A :class:`ScoreRow` back from ``ScoreRow.to_dict()`` (``null`` -> ``nan``)."""
    values = {f.name: d[f.name] for f in fields(ScoreRow) if f.name in d and f.name != "agreement"}
    values = {k: (float("nan") if v is None else v) for k, v in values.items()}
    agreement = {k: (float("nan") if v is None else v) for k, v in dict(d["agreement"]).items()}
    return ScoreRow(**values, agreement=Agreement.from_dict(agreement))


def _class_from_dict(d: JSONDict) -> ClassScore:
    """A :class:`ClassScore` back from ``ClassScore.to_dict()`` (``null`` -> ``nan``)."""
    def num(v: object) -> float:
        return float("nan") if v is None else float(v)  # type: ignore[arg-type]

    return ClassScore(str(d["model"]), str(d["variant"]), int(d["class_index"]), str(d["class_name"]),
                      int(d["val_images"]), int(d["spurious_images"]), num(d["auc"]), num(d["ap"]),
                      num(d["extension"]), str(d["status"]))


def _zoo_row(model: ZooModel, protocol: str, result: JSONDict | None, status: str, reason: str,
             cached: bool) -> ZooRow:
    paper = model.paper or PaperFigures()
    row = ZooRow(model.id, model.display_name, model.section, model.spec, protocol, status, reason, cached,
                 paper_acc=paper.acc, paper_spu=paper.spu, paper_spufix_acc=paper.spufix_acc,
                 paper_spufix_spu=paper.spufix_spu)
    if result is None:
        return row
    rows = [_row_from_dict(r) for r in result["rows"]]
    original = next(r for r in rows if r.variant == ORIGINAL)
    fixed = next((r for r in rows if r.variant != ORIGINAL), None)
    row.spec = original.spec
    row.acc = _none_if_nan(100.0 * original.val_accuracy)
    row.val_complete, row.val_kappa = original.val_complete, _none_if_nan(original.agreement.kappa)
    row.mauc, row.map = _none_if_nan(original.mauc), _none_if_nan(original.map)
    if fixed is not None:
        row.fix = fixed.variant
        row.spufix_acc = _none_if_nan(100.0 * fixed.val_accuracy)
        row.spufix_mauc, row.spufix_map = _none_if_nan(fixed.mauc), _none_if_nan(fixed.map)
    row.d_acc, row.d_mauc, row.d_map = _diff(row.acc, paper.acc), _diff(row.mauc, paper.spu), _diff(row.map, paper.spu)
    row.d_spufix_acc = _diff(row.spufix_acc, paper.spufix_acc)
    row.d_spufix_mauc = _diff(row.spufix_mauc, paper.spufix_spu)
    row.d_spufix_map = _diff(row.spufix_map, paper.spufix_spu)
    return row


# ----------------------------------------------------------------------------- the run
def _check_zoo_out(out: Path) -> None:
    check_out_folder(out, "score-zoo", "a zoo output folder (no manifest.json of score --zoo)")


def _checked_checkpoints(checkpoints: Mapping[str, str | os.PathLike[str]] | None,
                         models: Sequence[ZooModel]) -> dict[str, Path]:
    wanted = sorted({m.checkpoint for m in models if m.checkpoint})
    out: dict[str, Path] = {}
    for name, value in (checkpoints or {}).items():
        if name not in wanted:
            raise ValueError(f"checkpoint {name!r} is not used by any model of the zoo; the zoo's checkpoints: "
                             f"{', '.join(wanted) or 'none'}")
        path = Path(os.path.expanduser(os.fspath(value)))
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {name}={path} does not exist")
        out[name] = path.resolve()
    return out


def _key(settings: JSONDict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _marker(folder: Path, protocol: str) -> Path:
    return folder / f"zoo-{protocol}.json"


def _finished(folder: Path, protocol: str, key: str, heads: Sequence[nn.Module]) -> JSONDict | None:
    """The recorded result of a model and protocol, if it was made with these settings and fixes."""
    path = _marker(folder, protocol)
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
    except (ValueError, OSError):
        return None
    if marker.get("format") != _MARKER_FORMAT or marker.get("key") != key:
        return None
    mine = sorted(_head_key(h) for h in heads if getattr(h, "model_fingerprint", None) == marker.get("fingerprint"))
    if marker.get("fixes") != mine:
        return None
    result: JSONDict = marker["result"]
    return result


def _folders(models: Sequence[ZooModel]) -> dict[str, str]:
    """A folder name per model id; ids that make the same name get a hash of the id appended."""
    names = {m.id: slug(m.id, keep="._-") for m in models}
    taken = list(names.values())
    return {i: n if taken.count(n) == 1 else f"{n[:50]}-{hashlib.sha256(i.encode()).hexdigest()[:8]}"
            for i, n in names.items()}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    reason = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def score_zoo(
    zoo: str | os.PathLike[str] | Sequence[ZooModel] = PAPER_ZOO,
    *,
    spurious: DatasetSpec,
    val: DatasetSpec,
    out: str | os.PathLike[str] = "score-out",
    val_labels: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    classes: Sequence[int | str] | None = None,
    class_map: ClassMapSpec = None,
    protocols: Sequence[str] = PROTOCOLS,
    fixes: FixArg | Sequence[FixArg] = (),
    checkpoints: Mapping[str, str | os.PathLike[str]] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = "auto",
    pretrained: bool = True,
    seed: int = 0,
    chunk_size: int = 4096,
    progress: bool = True,
    plots: bool = True,
) -> ZooResult:
    """Score every model of a zoo with each protocol and its SpuFix variants, beside the published figures.

    Per model: load it (:func:`spurious.models.load_model`), run :func:`spurious.score.score` once per
    protocol into ``OUT/models/<id>/`` (one prediction cache: the validation images, preprocessed the
    same way by both protocols, run once), record the result, release the model. A model already
    finished with the same settings is not loaded again; a model that fails is reported (warning, and
    ``ZooResult.failures``) and skipped. Then the usual tables per protocol and the side-by-side.

    Args:
        zoo: ``"paper"`` (the paper's table), a zoo file (:func:`read_zoo`) or :class:`ZooModel` objects.
        spurious, val, val_labels, class_names, classes, class_map, batch_size, num_workers,
            chunk_size, progress: as in :func:`spurious.score.score`, for every model.
        out: output folder (new, empty, or an earlier zoo output: everything finished is reused).
        protocols: the preprocessing protocols to score (default both, ``"model"`` and ``"reference"``).
        fixes: SpuFix artifacts or ``FixHead`` modules; each applies to the model with its fingerprint
            (a fix that matches no model of the zoo is warned about, not an error).
        checkpoints: ``{NAME: PATH}`` for the models whose spec holds ``{NAME}`` (the paper's two robust
            ResNet-50s: ``robust_resnet``, ``resnet_salient_imagenet``); a model whose checkpoint is
            not given is skipped with a message saying so.
        device: where each model runs (``"auto"``: a GPU if any).
        pretrained: hub weights (``False``: random weights drawn from ``seed``, for offline smoke runs).
        seed: the seed of the random weights (``pretrained=False``), so that a rerun finds its cache.
        plots: write ``report.html`` with the ours-vs-paper plots.

    Returns:
        a :class:`ZooResult`; also written to ``OUT/zoo.json``, ``zoo.csv``, ``zoo.md``, ``report.html``,
        ``OUT/<protocol>/scores.{csv,json,md}`` + ``per_class.csv`` and ``manifest.json``.

    Raises:
        ValueError: unknown zoo ids (with the closest names), an unknown protocol or checkpoint name, a
            folder that is not a zoo output, bad inputs (as :func:`spurious.score.score`).
        FileNotFoundError: the zoo file, a dataset, a checkpoint or a fix does not exist.
    """
    t0 = time.perf_counter()
    from spurious._dist import resolve_device

    models = list(zoo) if isinstance(zoo, Sequence) and not isinstance(zoo, str) else read_zoo(zoo)
    if not models or not all(isinstance(m, ZooModel) for m in models):
        raise TypeError("zoo must be 'paper', a zoo file or a non-empty list of ZooModel")
    if isinstance(protocols, str):
        protocols = [protocols]
    protocols = list(dict.fromkeys(protocols))
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ValueError(f"protocols must be some of {PROTOCOLS}, got {list(protocols)!r}")
    ckpts = _checked_checkpoints(checkpoints, models)
    out_dir = Path(os.path.expanduser(os.fspath(out)))
    _check_zoo_out(out_dir)
    check_paths(spurious, val, val_labels)
    heads = _load_fix_heads(fixes)
    dev = resolve_device(device)
    # the data, opened once without a model: its fingerprints say whether a recorded result still holds
    data = resolve_inputs(spurious, val, val_labels=val_labels, class_names=class_names, classes=None,
                          inputs_dir=out_dir / "inputs")
    base: JSONDict = {
        "format": _MARKER_FORMAT, "spurious": data.spurious.fingerprint(), "val": data.val.fingerprint(),
        "class_names": list(class_names) if class_names is not None else None,
        "classes": [str(c) for c in classes] if classes is not None else None,
        "class_map": class_map if isinstance(class_map, (str, type(None))) else repr(class_map),
        "weights": "pretrained" if pretrained else f"random, seed {seed}",
    }
    args: JSONDict = {"zoo": os.fspath(zoo) if isinstance(zoo, (str, os.PathLike)) else "objects",
                      "spurious": data.spurious.spec, "val": data.val.spec, "protocols": protocols,
                      "checkpoints": {k: str(v) for k, v in ckpts.items()}, "pretrained": pretrained, "seed": seed}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "manifest.json", {"stage": "score-zoo", "format": 1, "created": utc_now(),
                                           "status": "running", "args": args})
    score_kw: JSONDict = {"spurious": spurious, "val": val, "val_labels": val_labels, "class_names": class_names,
                          "classes": classes, "class_map": class_map, "batch_size": batch_size,
                          "num_workers": num_workers, "chunk_size": chunk_size, "progress": progress,
                          "plots": False}
    results: dict[tuple[str, str], JSONDict] = {}
    status: dict[str, tuple[str, str, bool]] = {}
    failures: list[JSONDict] = []
    images = computed = cached = 0
    used_heads: set[str] = set()
    folders = _folders(models)
    for i, model in enumerate(models, start=1):
        log.info("zoo %d/%d: %s (%s)", i, len(models), model.id, model.spec)
        folder = out_dir / "models" / folders[model.id]
        spec = model.spec
        if model.checkpoint is not None:
            if model.checkpoint not in ckpts:
                reason = (f"the checkpoint {model.checkpoint!r} was not given (--checkpoint "
                          f"{model.checkpoint}=PATH)")
                status[model.id] = (STATUS_SKIPPED, reason, False)
                failures.append({"id": model.id, "spec": spec, "status": STATUS_SKIPPED, "reason": reason})
                warnings.warn(f"zoo: {model.id} skipped: {reason}", stacklevel=2)
                continue
            spec = _PLACEHOLDER.sub(lambda m: str(ckpts[m.group(1)]), spec)
        keys = {p: _key({**base, "spec": spec, "protocol": p}) for p in protocols}
        done = {p: _finished(folder, p, keys[p], heads) for p in protocols}
        if all(r is not None for r in done.values()):
            for p, r in done.items():
                results[(model.id, p)] = r  # type: ignore[assignment]
            marker = read_json(_marker(folder, protocols[0]))
            used_heads.update(_head_key(h) for h in heads if h.model_fingerprint == marker.get("fingerprint"))
            status[model.id] = (STATUS_OK, "", True)
            cached += 1
            continue
        try:
            n = _run_model(model, spec, folder, [p for p in protocols if done[p] is None], keys, heads, results,
                           used_heads, dev, pretrained, seed, score_kw)
        except Exception as err:  # one failing model never ends the run: report it and go on
            reason = _one_line(err)
            log.debug("zoo: %s failed", model.id, exc_info=True)
            status[model.id] = (STATUS_FAILED, reason, False)
            failures.append({"id": model.id, "spec": spec, "status": STATUS_FAILED, "reason": reason})
            warnings.warn(f"zoo: {model.id} ({spec}) failed and is skipped: {reason}", stacklevel=2)
            _release(dev)
            continue
        for p in protocols:
            if done[p] is not None:
                results[(model.id, p)] = done[p]  # type: ignore[assignment]
        images += n
        computed += 1
        status[model.id] = (STATUS_OK, "", False)
    unused = [h for h in heads if _head_key(h) not in used_heads]
    for h in unused:
        warnings.warn(f"the fix {getattr(h, 'name', '?')!r} (made for {getattr(h, 'model_spec', '?')}, fingerprint "
                      f"{h.model_fingerprint}) matches no scored model of the zoo and is not used", stacklevel=2)

    rows = [_zoo_row(m, p, results.get((m.id, p)), *status[m.id]) for p in protocols for m in models]
    combined = {p: _combined(out_dir / p, p, [results[(m.id, p)] for m in models if (m.id, p) in results])
                for p in protocols}
    result = ZooResult(str(out_dir), protocols, rows, failures, combined, images_computed=images,
                       models_computed=computed, models_cached=cached)
    result.paths = _write_zoo_outputs(result, out_dir, plots=plots)
    result.seconds = round(time.perf_counter() - t0, 3)
    write_json(out_dir / "zoo.json", result.to_dict())
    write_json(out_dir / "manifest.json", {"stage": "score-zoo", "format": 1, "created": utc_now(),
                                           "status": "complete", "args": args, "seconds": result.seconds,
                                           "models": [{"id": m.id, "spec": m.spec, "status": status[m.id][0],
                                                       "reason": status[m.id][1]} for m in models],
                                           "outputs": {k: os.path.relpath(v, out_dir)
                                                       for k, v in result.paths.items()}})
    return result


def _run_model(model: ZooModel, spec: str, folder: Path, todo: Sequence[str], keys: Mapping[str, str],
               heads: Sequence[nn.Module], results: dict[tuple[str, str], JSONDict], used_heads: set[str],
               device: torch.device, pretrained: bool, seed: int, score_kw: JSONDict) -> int:
    """Load one model, score the protocols in ``todo``, record each; returns the images computed."""
    from spurious import models as _models

    clf: Classifier = _models.load_model(spec, pretrained=pretrained, device=device,
                                         seed=None if pretrained else seed)
    try:
        fingerprint = clf.fingerprint()
        mine = [h for h in heads if getattr(h, "model_fingerprint", None) == fingerprint]
        used_heads.update(_head_key(h) for h in mine)
        images = 0
        for protocol in todo:
            r = score(clf, out=folder, protocol=protocol, fixes=mine, **score_kw)  # type: ignore[arg-type]
            images += r.images_computed
            record = r.to_dict()
            write_json(_marker(folder, protocol), {"format": _MARKER_FORMAT, "key": keys[protocol], "id": model.id,
                                                   "spec": spec, "fingerprint": fingerprint,
                                                   "fixes": sorted(_head_key(h) for h in mine), "result": record})
            results[(model.id, protocol)] = record
        return images
    finally:
        del clf
        _release(device)


def _combined(out: Path, protocol: str, records: Sequence[JSONDict]) -> ScoreResult:
    """One :class:`ScoreResult` of the finished models of a protocol (their rows and per-class scores)."""
    rows = [_row_from_dict(r) for rec in records for r in rec["rows"]]
    per_class = [_class_from_dict(c) for rec in records for c in rec["per_class"]]
    classes = sorted({int(k) for rec in records for k in rec["classes"]})
    names = [""] * (max([c.class_index for c in per_class], default=-1) + 1)
    for c in per_class:
        names[c.class_index] = c.class_name
    label_source = str(records[0].get("label_source", "")) if records else ""
    return ScoreResult(str(out), rows, per_class, classes, names, protocol, label_source=label_source)


# ----------------------------------------------------------------------------- outputs
_ZOO_FIELDS = tuple(f.name for f in fields(ZooRow))


def _write_zoo_outputs(result: ZooResult, out: Path, *, plots: bool) -> dict[str, str]:
    from ._report import _write_csv, write_outputs

    paths: dict[str, str] = {}
    for protocol, combined in result.results.items():
        folder = out / protocol
        folder.mkdir(parents=True, exist_ok=True)
        written = write_outputs(combined, folder, None, {}, plots=False)  # type: ignore[arg-type]
        combined.paths = written
        write_json(folder / "scores.json", combined.to_dict())
        paths.update({f"{protocol}_{k}": v for k, v in written.items()})
    records = [{k: ("" if v is None else v) for k, v in r.to_dict().items()} for r in result.rows]
    paths["zoo_csv"] = str(_write_csv(out / "zoo.csv", _ZOO_FIELDS, records))
    with atomic_path(out / "zoo.md") as tmp:
        tmp.write_text(_zoo_markdown(result), encoding="utf-8")
    paths["zoo_md"] = str(out / "zoo.md")
    paths["zoo_json"] = str(out / "zoo.json")
    if plots:
        paths.update(_write_report(result, out))
    return paths


def _md(x: float | None, digits: int, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


_MD_HEADER = ("| model | section | acc (%) ours | paper | diff | mAUC ours | mAP ours | paper Spu. | diff mAUC | "
              "diff mAP | SpuFix acc | paper | SpuFix mAUC | SpuFix mAP | paper | diff mAUC |")


def _md_row(r: ZooRow) -> str:
    name = r.display_name or r.id
    if r.status != STATUS_OK:
        return f"| {name} (`{r.id}`) | {r.section} | {r.status}: {r.reason.replace('|', '/')} |" + " |" * 13
    return (f"| {name} (`{r.id}`) | {r.section} | {_md(r.acc, 1)} | {_md(r.paper_acc, 1)} | {_md(r.d_acc, 1, True)} | "
            f"{_md(r.mauc, 3)} | {_md(r.map, 3)} | {_md(r.paper_spu, 3)} | {_md(r.d_mauc, 3, True)} | "
            f"{_md(r.d_map, 3, True)} | {_md(r.spufix_acc, 1)} | {_md(r.paper_spufix_acc, 1)} | "
            f"{_md(r.spufix_mauc, 3)} | {_md(r.spufix_map, 3)} | {_md(r.paper_spufix_spu, 3)} | "
            f"{_md(r.d_spufix_mauc, 3, True)} |")


def _zoo_markdown(result: ZooResult) -> str:
    lines = ["# The zoo against the paper's table", "",
             "Ours beside the published figures (\"Spurious Features Everywhere\", extended results table). The "
             "paper's spurious score is compared with our mAUC (ROC-AUC, as the paper's text says) and our mAP "
             "(average precision, what the reference code computed); accuracies in %. Our accuracy is on the "
             "validation images given (the paper's: the whole ImageNet val set).", ""]
    for protocol in result.protocols:
        lines += [f"## Protocol `{protocol}`", "", _MD_HEADER, "|" + "---|" * 16]
        lines += [_md_row(r) for r in result.rows if r.protocol == protocol]
        lines.append("")
    return "\n".join(lines)


def _write_report(result: ZooResult, out: Path) -> dict[str, str]:
    from spurious import _html

    from . import plots as _plots

    paths: dict[str, str] = {}
    parts = ['<p class="muted">Ours beside the published figures; the paper\'s spurious score is compared with '
             "our mAUC (ROC-AUC) and mAP (average precision, what the reference code computed). Accuracy in %.</p>"]
    for protocol in result.protocols:
        rows = [r for r in result.rows if r.protocol == protocol]
        parts.append(f"<h2>Protocol {_html.esc(protocol)}</h2>")
        png = _plot_vs_paper(rows, out / "plots" / f"vs_paper_{protocol}.png", protocol)
        if png is not None:
            paths[f"plot_vs_paper_{protocol}"] = str(png)
            parts.append(_html.img(png.relative_to(out).as_posix(), "our mAUC and mAP against the paper's score"))
        combined = result.results[protocol]
        if combined.rows:
            scatter = _plots.plot_scatter(combined.rows, out / "plots" / f"scatter_{protocol}.png")
            paths[f"plot_scatter_{protocol}"] = str(scatter)
            parts.append(_html.img(Path(scatter).relative_to(out).as_posix(), "mAUC vs validation accuracy"))
        parts.append(_html.table(
            ["model", "id", "status", "acc ours", "acc paper", "mAUC ours", "mAP ours", "Spu. paper", "diff mAUC",
             "SpuFix mAUC ours", "SpuFix paper"],
            [[r.display_name or r.id, r.id, r.status if r.status == STATUS_OK else f"{r.status}: {r.reason}",
              _md(r.acc, 1), _md(r.paper_acc, 1), _md(r.mauc, 3), _md(r.map, 3), _md(r.paper_spu, 3),
              _md(r.d_mauc, 3, True), _md(r.spufix_mauc, 3), _md(r.paper_spufix_spu, 3)] for r in rows],
            left_cols=(0, 1, 2)))
        parts.append(f'<p class="muted">{_html.link(f"{protocol}/scores.csv", "scores.csv")}, '
                     f'{_html.link(f"{protocol}/per_class.csv", "per_class.csv")}</p>')
    parts.append(f'<p class="muted">Files: {_html.link("zoo.csv", "zoo.csv")}, {_html.link("zoo.md", "zoo.md")}, '
                 f'{_html.link("zoo.json", "zoo.json")}</p>')
    paths["report_html"] = str(_html.write_page(out / "report.html", "The zoo against the paper", "\n".join(parts),
                                                subtitle=", ".join(result.protocols)))
    return paths


def _plot_vs_paper(rows: Sequence[ZooRow], path: Path, protocol: str) -> Path | None:
    """Our mAUC and mAP (y) against the paper's spurious score (x), with the diagonal."""
    pts = [(r.paper_spu, r.mauc, r.map if r.map is not None else float("nan")) for r in rows
           if r.status == STATUS_OK and r.paper_spu is not None and r.mauc is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    xs, aucs, aps = ([float(p[i]) for p in pts] for i in range(3))
    ax.scatter(xs, aucs, s=18, label="mAUC (ROC)")
    ax.scatter(xs, aps, s=18, marker="x", label="mAP (reference code)")
    lo = min(xs + aucs) - 0.02
    ax.plot([lo, 1.0], [lo, 1.0], color="grey", lw=0.8)
    ax.set_xlabel("paper: spurious score")
    ax.set_ylabel("ours")
    ax.set_title(f"ours vs paper (protocol {protocol})")
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
