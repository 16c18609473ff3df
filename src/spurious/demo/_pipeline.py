"""``spurious demo``: the whole method on the embedded planted data, from features to a fixed model.

Planted dataset (:mod:`spurious.demo.planted`) and the two demo classifiers (:mod:`spurious.demo.train`,
trained once and cached) ->

1. ``extract`` every split (train / val / spurious / pool) with both models, ``npca`` per class;
2. ``visualize`` the planted classes of the robust model (NPFVs, selection, max-activating images);
3. *component review*: two labelers give a verdict on every selected component;
4. ``retrieve`` spurious-only candidates from the planted pool (both models vote);
5. *image curation*: two labelers judge every candidate (in / out / trash);
6. ``benchmark build``: the accepted images in the published Spurious ImageNet layout;
7. ``fix``: SpuFix of the agreed components on the robust model, ``fix transfer`` to the standard one;
   and the retraining baseline DFR (``fix --method dfr``) of both models on group labels of half of the
   val images (``OUT/groups/val-dfr.csv``: class x planted feature present/absent);
8. ``score`` both models, original, SpuFix and DFR, on the built benchmark and on the planted spurious
   split, with the group metrics on the other half of the val images (``OUT/groups/val-eval.csv``);
9. a static report ``OUT/report/index.html``.

The human steps are done either by two *simulated* labelers that answer from the planted ground truth
(default; the report says so) or by people in the web UI (``interactive=True``: the demo serves
``spurious label`` and waits). Simulated review: labeler ``sim-sheet`` looks at the max-activating
images of the inspection sheet and says *spurious* when at least 80 % of them show a feature planted on
the class (*core* when at most 20 % do, else *unsure*); labeler ``sim-top20`` applies the same rule to
the 20 max-activating training images. Simulated curation: *out* when the image shows the component's
feature and no class object, *in* when it shows the class object, *trash* otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spurious.agreement import Agreement

if TYPE_CHECKING:
    from spurious.demo._models import DemoModelInfo
    from spurious.demo.planted import GroundTruthRecord, PlantedDataset
    from spurious.fix import FixHead

__all__ = ["CompareRow", "DemoResult", "ModelSummary", "FoundComponent", "PreparedWorkspaces", "prepare_workspaces", "run_demo"]

_SPLITS = ("train", "val", "spurious", "pool")

FAST_NOTE = ("--fast runs every stage on tiny data with tiny models trained in seconds (val accuracy near 0.3, "
             "barely above chance): it checks the installation and the pipeline, and usually finds none of the "
             "planted features; run the default demo to see the method find them")
_LABELERS = ("sim-sheet", "sim-top20")


@dataclass
class FoundComponent:
    """A component the review agreed is spurious, with what the ground truth says about it."""

    class_index: int
    class_name: str
    component: int
    feature: str | None          # the planted feature most of its top-20 training images show
    precision_top20: float       # fraction of its 20 max-activating training images showing that feature
    npfv_probability: float      # class probability at its NPFV (the selection score)
    retrieved: int = 0           # candidates retrieved for it
    retrieval_precision: float = float("nan")  # fraction of the (top 50) candidates: feature, no object
    accepted: int = 0            # images accepted into the benchmark


@dataclass
class CompareRow:
    """One method on one demo model, as the report's comparison table shows it (nan: not measured)."""

    method: str                  # "original", "SpuFix", "SpuFix (transferred)" or "DFR"
    mauc_planted: float
    mauc_benchmark: float
    worst_group_accuracy: float  # over the val images of OUT/groups/val-eval.csv
    mean_accuracy: float
    val_accuracy: float          # every val image (DFR was fitted on half of them)
    labels: str                  # the labels the method needs
    seconds: float               # fitting the fix (not the review or the group labelling)


@dataclass
class ModelSummary:
    """Scores of one demo model before and after SpuFix."""

    model: str
    val_accuracy: float
    val_accuracy_fixed: float
    mauc_benchmark: float
    mauc_benchmark_fixed: float
    mauc_planted: float
    mauc_planted_fixed: float
    fix_kind: str
    logit_identity_max_abs_error: float
    train_agreement: dict[str, Any] = field(default_factory=dict)  # the sanity figure of extract (train split)
    compare: list[CompareRow] = field(default_factory=list)  # original / SpuFix / DFR side by side


@dataclass
class DemoResult:
    """What ``spurious demo`` did and measured (``--json`` prints :meth:`to_dict`)."""

    out: str
    fast: bool
    labelers: str                   # "simulated" or "interactive"
    planted_root: str
    planted_features: list[str] = field(default_factory=list)    # "class/feature" pairs planted
    found: list[FoundComponent] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)              # planted pairs no agreed component shows
    models: list[ModelSummary] = field(default_factory=list)
    benchmark: str = ""
    benchmark_images: int = 0
    report: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str, allow_nan=True).replace("NaN", "null"))

    def summary_lines(self) -> list[str]:
        lines = [f"planted dataset: {self.planted_root}",
                 f"human steps: {self.labelers} labelers"
                 + (" (answering from the planted ground truth)" if self.labelers == "simulated" else "")]
        for f in self.found:
            feat = f.feature or "no planted feature"
            lines.append(f"  found: class {f.class_name} component {f.component} -> {feat} "
                         f"({100 * f.precision_top20:.0f}% of its top-20 training images; retrieval precision "
                         f"{_pct(f.retrieval_precision)} of {f.retrieved} candidates; {f.accepted} accepted)")
        for miss in self.missed:
            lines.append(f"  not found: {miss}")
        if self.fast:
            lines.append(f"  note: {FAST_NOTE}")
        lines.append(f"benchmark: {self.benchmark_images} images -> {self.benchmark}")
        for m in self.models:
            lines.append(f"  {m.model:<14} mAUC built benchmark {_f(m.mauc_benchmark)} -> {_f(m.mauc_benchmark_fixed)}, "
                         f"planted spurious split {_f(m.mauc_planted)} -> {_f(m.mauc_planted_fixed)}, "
                         f"val acc {_f(m.val_accuracy)} -> {_f(m.val_accuracy_fixed)} ({m.fix_kind} SpuFix)")
            for c in m.compare:
                if c.method != "original":
                    lines.append(f"  {'':<14} {c.method}: worst-group acc {_f(m.compare[0].worst_group_accuracy)} -> "
                                 f"{_f(c.worst_group_accuracy)}, mean acc {_f(m.compare[0].mean_accuracy)} -> "
                                 f"{_f(c.mean_accuracy)}, mAUC planted {_f(c.mauc_planted)}")
            if m.train_agreement:
                lines.append(f"  {'':<14} sanity: {Agreement.from_dict(m.train_agreement).describe()} (train split)")
        lines.append(f"report: {self.report}")
        lines.append(f"done in {self.seconds:.1f} s")
        return lines


def _f(x: float) -> str:
    return "  n/a" if x is None or x != x else f"{x:.3f}"


def _pct(x: float) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.0f}%"


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Settings:
    candidates: int
    keep: int
    steps: int
    top_images: int
    top_n: int
    per_component: int
    counterfactual_images: int
    dvce_steps: int  # the diffusion chain's length for the DVCE pairs (half of it is run: DVCE's t_start)
    tiny_diffusion: bool  # the DVCE pairs use the tiny diffusion recipe (32 px, like the fast demo's data)


_DEFAULT = _Settings(candidates=16, keep=8, steps=50, top_images=5, top_n=100, per_component=40,
                     counterfactual_images=2, dvce_steps=200, tiny_diffusion=False)
_FAST = _Settings(candidates=8, keep=4, steps=10, top_images=5, top_n=30, per_component=10,
                  counterfactual_images=1, dvce_steps=20, tiny_diffusion=True)


# ---------------------------------------------------------------------------- ground truth


class _Truth:
    """Planted ground truth keyed by the ids the feature stores use (relative to each split's root)."""

    def __init__(self, planted: PlantedDataset) -> None:
        self.by_split: dict[str, dict[str, GroundTruthRecord]] = {s: {} for s in _SPLITS}
        for rec in planted.ground_truth():
            split, _, rel = rec["id"].partition("/")
            if split in self.by_split:
                self.by_split[split][rel] = rec
        self.features_of_class: dict[int, list[str]] = {}
        for f in planted.features:
            for k in f.classes:
                self.features_of_class.setdefault(k, []).append(f.name)

    def features(self, split: str, image_id: str) -> set[str]:
        rec = self.by_split[split].get(image_id)
        return {f["name"] for f in rec["features"]} if rec else set()

    def has_object(self, split: str, image_id: str) -> bool:
        rec = self.by_split[split].get(image_id)
        return bool(rec and rec.get("object"))

    def dominant_feature(self, k: int, split: str, ids: list[str]) -> tuple[str | None, float]:
        """The feature planted on class ``k`` that most of ``ids`` show, and the fraction showing it."""
        best, frac = None, 0.0
        for name in self.features_of_class.get(k, []):
            share = float(np.mean([name in self.features(split, i) for i in ids])) if ids else 0.0
            if share > frac:
                best, frac = name, share
        return best, frac


def _verdict(share: float) -> str:
    return "spurious" if share >= 0.8 else ("core" if share <= 0.2 else "unsure")


# ---------------------------------------------------------------------------- the pipeline


def run_demo(out: str | os.PathLike[str] = "demo-out", *, fast: bool = False, interactive: bool = False,
             progress: bool = True, port: int = 8765, retrain: bool = False) -> DemoResult:
    """Run the whole method on the planted data (see the module docstring) and write the report.

    Args:
        out: output folder: one workspace per model (``ws-robust``, ``ws-standard``), the built
            benchmark (``benchmark/``), the scores (``score/``, ``score-planted/``) and the report.
        fast: the tiny planted data, tiny models and short settings (about a minute; the tests use it).
        interactive: people label in the web UI instead of the simulated labelers; the demo serves
            ``spurious label`` on ``127.0.0.1:port`` and waits for Enter after each human step.
        progress: progress bars on stderr.
        port: port of the labelling UI with ``interactive``.
        retrain: train the demo classifiers on this machine (cached) instead of using the weights
            that ship in the package (whose figures the documentation reports).

    Returns:
        A :class:`DemoResult`.

    Raises:
        ValueError: ``interactive`` without a terminal on stdin.
    """
    from spurious.datasets import image_folder, spurious_imagenet
    from spurious.demo.planted import load_planted
    from spurious.npca import load_npca
    from spurious.workspace import Workspace

    if interactive and not sys.stdin.isatty():
        raise ValueError("--interactive needs a terminal to wait for the labelers; run it in a shell "
                         "(or drop --interactive to use the simulated labelers)")
    t0 = time.perf_counter()
    settings = _FAST if fast else _DEFAULT
    out = Path(out)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - since, 2)
        return now

    # 1. models, features, neural PCA --------------------------------------------------------
    t = time.perf_counter()
    prep = prepare_workspaces(out, fast=fast, progress=progress, retrain=retrain)
    t = lap("models + extract + npca", t)
    infos, ws_dirs, identity = prep.infos, prep.workspaces, prep.logit_identity
    planted = load_planted(prep.planted_root)
    link = out / "planted"  # the cached planted data, where the README's tour finds it
    if not link.exists() and not link.is_symlink():
        try:
            link.symlink_to(planted.root, target_is_directory=True)
        except OSError:  # no symlinks on this filesystem: the report still names the folder
            pass
    truth = _Truth(planted)
    names = list(planted.class_names)

    # 2. visualize the planted classes of the robust model ------------------------------------------
    from spurious.visualize import max_activating, read_sheet_table, visualize

    ws_r = ws_dirs["robust"]
    planted_classes = sorted(truth.features_of_class)
    visualize(ws_r, classes=planted_classes, candidates=settings.candidates, keep=settings.keep,
              steps=settings.steps, top_images=settings.top_images, cam_layer="stages.1", progress=progress)
    t = lap("visualize", t)

    # 3. component review ------------------------------------------------------------------------
    from spurious.label.store import LabelStore

    store = LabelStore(ws_r, sync=True)
    if not interactive:  # the simulated labelers are identities of their own kind, not typed names
        for who in _LABELERS:
            store.add_labeler(who, kind="simulated")
    wsr = Workspace.open(ws_r)
    train = wsr.feature_store("train")
    pca = load_npca(ws_r)
    sheets = {k: read_sheet_table(ws_r, k) for k in planted_classes}
    comp_feature: dict[tuple[int, int], tuple[str | None, float, float]] = {}
    for k, sheet in sheets.items():
        for comp in sheet.components:
            l = comp["component"]
            shown = [img["id"] for img in comp["top_images"]]
            top20 = max_activating(train, pca[k], [l], top=20).ids[0]
            feat, share20 = truth.dominant_feature(k, "train", list(top20))
            _, share_sheet = truth.dominant_feature(k, "train", shown)
            comp_feature[(k, l)] = (feat, share20, float(comp["npfv_probability"]))
            if not interactive:
                store.set_component_verdict("sim-sheet", k, l, _verdict(share_sheet),
                                            note="simulated: inspection-sheet images vs planted ground truth")
                store.set_component_verdict("sim-top20", k, l, _verdict(share20),
                                            note="simulated: top-20 training images vs planted ground truth")
    if interactive:
        _wait_for_people(ws_r, port, "review the components (Review tab), then press Enter here")
    agreed = store.agreed_components(2)
    t = lap("component review", t)

    # 4. retrieve from the pool ----------------------------------------------------------------------
    from spurious.retrieve import load_candidates, retrieve

    result = DemoResult(out=str(out), fast=fast, labelers="interactive" if interactive else "simulated",
                        planted_root=str(planted.root),
                        planted_features=[f"{names[k]}/{f.name}" for f in planted.features for k in f.classes])
    found_pairs = set()
    for k, comps in sorted(agreed.items()):
        for l in comps:
            feat, share20, prob = comp_feature.get((k, l), (None, 0.0, float("nan")))
            result.found.append(FoundComponent(k, names[k], l, feat, share20, prob))
            if feat:
                found_pairs.add(f"{names[k]}/{feat}")
    result.missed = [p for p in result.planted_features if p not in found_pairs]
    _counterfactuals(ws_r, result.found, settings, infos["standard"].spec, progress)
    t = lap("counterfactual", t)
    if agreed:
        retrieve(ws_r, pool="pool", components={str(k): v for k, v in agreed.items()}, agree=[ws_dirs["standard"]],
                 min_votes=2, top_n=settings.top_n, progress=progress, overwrite=True)
        cands = load_candidates(ws_r)
    else:
        cands = []
    t = lap("retrieve", t)

    # 5. image curation ---------------------------------------------------------------------------
    store.sync()
    by_comp: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for c in cands:
        by_comp.setdefault((int(c["class"]), int(c["component"])), []).append(c)
    for (k, l), items in by_comp.items():
        feat = comp_feature.get((k, l), (None,))[0]
        good = [feat in truth.features("pool", c["id"]) and not truth.has_object("pool", c["id"]) for c in items]
        for f in result.found:
            if (f.class_index, f.component) == (k, l):
                f.retrieved = len(items)
                f.retrieval_precision = float(np.mean(good[:50])) if items else float("nan")
        if not interactive:
            for c, ok in zip(items, good, strict=False):
                verdict = "out" if ok else ("in" if truth.has_object("pool", c["id"]) else "trash")
                for who in _LABELERS:
                    store.set_image_verdict(who, k, l, c["id"], verdict)
    if interactive and cands:
        _wait_for_people(ws_r, port, "curate the retrieved images (Curate tab), then press Enter here")
    accepted = store.accepted_images(2)
    for f in result.found:
        f.accepted = len(accepted.get((f.class_index, f.component), []))
    t = lap("image curation", t)

    # 6. benchmark build -----------------------------------------------------------------------------
    from spurious.benchmark import build_benchmark

    bench_dir = out / "benchmark"
    if accepted:
        b = build_benchmark(ws_r, bench_dir, per_component=settings.per_component, min_agree=2,
                            name="planted-spurious (demo)", overwrite=True)
        result.benchmark, result.benchmark_images = b.out, b.images
    t = lap("benchmark build", t)

    # 7. fix and transfer ------------------------------------------------------------------------------
    from spurious.fix import fix, load_fix, transfer

    fixes = []
    fix_seconds: dict[str, float] = {}
    if agreed:
        fix_comps = {str(k): v for k, v in agreed.items()}
        fix_seconds["robust"] = fix(ws_r, fix_comps, overwrite=True).seconds
        fix_seconds["standard"] = transfer(ws_r, ws_dirs["standard"], fix_comps, overwrite=True).seconds
        fixes = [load_fix(ws_r), load_fix(ws_dirs["standard"])]
    t = lap("fix", t)
    groups_eval, dfr_heads, dfr_cost = _dfr(planted, ws_dirs, out)
    t = lap("dfr", t)
    reviewed = sum(len(sheet.components) for sheet in sheets.values())

    # 8. score before / after ------------------------------------------------------------------------------
    from spurious.score import score

    specs = [infos["robust"].spec, infos["standard"].spec]
    val_spec = image_folder(planted.val, class_names=list(planted.class_folders))
    scored: dict[str, Any] = {}
    all_fixes = [*fixes, *dfr_heads.values()]
    if result.benchmark_images:
        scored["benchmark"] = score(specs, spurious=bench_dir, val=val_spec, class_names=names,
                                    fixes=all_fixes, out=out / "score", progress=progress, groups=groups_eval)
    scored["planted"] = score(specs, spurious=spurious_imagenet(planted.spurious, class_names=names), val=val_spec,
                              class_names=names, classes=planted_classes, fixes=all_fixes, out=out / "score-planted",
                              progress=progress, groups=groups_eval)
    t = lap("score", t)
    heads: Sequence[FixHead | None] = fixes or [None, None]
    for variant, info, head in zip(("robust", "standard"), (infos["robust"], infos["standard"]), heads, strict=False):
        def get(which: str, fixed: bool, info: DemoModelInfo = info, head: FixHead | None = head) -> tuple[float, float]:
            res = scored.get(which)
            if res is None:
                return float("nan"), float("nan")
            label = f"{info.spec} + {head.name}" if fixed and head is not None else info.spec
            try:
                row = res.row(label)
            except KeyError:
                return float("nan"), float("nan")
            return row.mauc, row.val_accuracy

        mb, acc = get("benchmark", False)
        mbf, _ = get("benchmark", True)
        mp, acc_p = get("planted", False)
        mpf, acc_pf = get("planted", True)
        spufix_labels = (f"verdicts on {reviewed} components (robust model's review)" if variant == "robust"
                         else "none new (the robust model's reviewed components)")
        methods = [("original", None, "none", 0.0),
                   ("SpuFix" if variant == "robust" else "SpuFix (transferred)", head, spufix_labels,
                    fix_seconds.get(variant, float("nan"))),
                   ("DFR", dfr_heads.get(variant), *dfr_cost.get(variant, ("", float("nan"))))]
        result.models.append(ModelSummary(
            model=info.spec, val_accuracy=acc_p, val_accuracy_fixed=acc_pf, mauc_benchmark=mb,
            mauc_benchmark_fixed=mbf, mauc_planted=mp, mauc_planted_fixed=mpf,
            fix_kind="plain" if variant == "robust" else "transferred",
            logit_identity_max_abs_error=identity[variant],
            train_agreement=Workspace.open(ws_dirs[variant]).feature_store("train").agreement.to_dict(),
            compare=[_compare_row(method, info.spec, h, scored, labels, secs)
                     for method, h, labels, secs in methods if method == "original" or h is not None]))

    # 9. report ----------------------------------------------------------------------------------------
    from spurious.demo._report import write_report

    result.timings = timings
    result.seconds = round(time.perf_counter() - t0, 2)
    result.report = str(write_report(out, result, scored))
    return result


def _dfr(planted: PlantedDataset, ws_dirs: dict[str, Path], out: Path
         ) -> tuple[Path, dict[str, FixHead], dict[str, tuple[str, float]]]:
    """Groups files of the val split (DFR half, evaluation half) and a DFR head per model.

    Returns the evaluation groups file, the heads and, per model, (labels needed, seconds). A model
    whose DFR cannot be fitted (e.g. a group with one image in the fast demo) is left out with a warning.
    """
    from spurious.demo.planted import write_planted_groups
    from spurious.dfr import dfr
    from spurious.fix import load_fix

    held_out = write_planted_groups(planted, out / "groups" / "val-dfr.csv", part="dfr")
    evaluate = write_planted_groups(planted, out / "groups" / "val-eval.csv", part="eval")
    heads: dict[str, FixHead] = {}
    cost: dict[str, tuple[str, float]] = {}
    for variant, ws in ws_dirs.items():
        try:
            r = dfr(ws, held_out, split="val", overwrite=True)
        except ValueError as err:
            warnings.warn(f"demo: no DFR head for the {variant} model: {err}", RuntimeWarning, stacklevel=2)
            continue
        heads[variant] = load_fix(r.fix.path)
        cost[variant] = (f"{r.images} val images with class and group", r.seconds)
    return evaluate, heads, cost


def _compare_row(method: str, spec: str, head: FixHead | None, scored: dict[str, Any], labels: str,
                 seconds: float) -> CompareRow:
    label = spec if head is None else f"{spec} + {head.name}"
    nan = float("nan")

    def row(which: str) -> Any:
        res = scored.get(which)
        try:
            return None if res is None else res.row(label)
        except KeyError:
            return None

    planted, bench = row("planted"), row("benchmark")
    return CompareRow(method, planted.mauc if planted else nan, bench.mauc if bench else nan,
                      planted.worst_group_accuracy if planted else nan, planted.mean_accuracy if planted else nan,
                      planted.val_accuracy if planted else nan, labels, round(seconds, 2))


@dataclass
class PreparedWorkspaces:
    """The demo's first step: ``ws-robust`` / ``ws-standard`` with features of every split and npca."""

    planted_root: str
    workspaces: dict[str, Path]        # "robust" / "standard" -> workspace folder
    infos: dict[str, Any]              # the model infos (:class:`spurious.demo.train.DemoModelInfo`)
    logit_identity: dict[str, float]   # worst |f_k - sum_l alpha_l^k - <1, mu_k> - b_k| on held-out images


def prepare_workspaces(out: str | os.PathLike[str] = "demo-out", *, fast: bool = False,
                       progress: bool = True, retrain: bool = False) -> PreparedWorkspaces:
    """Demo models (shipped, or trained once and cached) -> ``extract`` of train/val/spurious/pool -> ``npca``.

    Writes ``out/ws-robust`` and ``out/ws-standard``; finished stages are reused on a re-run. The
    benchmark scripts use this to get realistic workspaces without running the whole demo.
    ``retrain`` trains the models here instead of using the shipped weights.
    """
    from spurious.datasets import ImageDataset, image_folder, spurious_imagenet
    from spurious.demo._models import train_demo_model
    from spurious.demo.planted import generate_planted
    from spurious.extract import extract
    from spurious.models import load_model
    from spurious.npca import npca

    out = Path(out)
    infos = {v: train_demo_model(v, tiny=fast, progress=progress, use_shipped=not retrain)
             for v in ("robust", "standard")}
    planted = generate_planted(infos["robust"].planted_root, infos["robust"].config.planted)  # reused when present
    names = list(planted.class_names)
    ws_dirs = {v: out / f"ws-{v}" for v in infos}
    identity: dict[str, float] = {}
    for variant, info in infos.items():
        clf = load_model(info.spec)
        data: dict[str, str | ImageDataset] = {"train": image_folder(planted.train, class_names=list(planted.class_folders)),
                "val": image_folder(planted.val, class_names=list(planted.class_folders)),
                "spurious": spurious_imagenet(planted.spurious, class_names=names),
                "pool": f"pool:{planted.pool}"}
        for split in _SPLITS:
            extract(ws_dirs[variant], model=clf, data=data[split], split=split, num_workers=0, progress=progress)
        npca(ws_dirs[variant], split="train", n_components="all", precision="float64", progress=progress)
        identity[variant] = _logit_identity(ws_dirs[variant])
    ws_of = {info.spec: ws_dirs[v] for v, info in infos.items()}
    _check_trained_on(infos.values(), planted.content_hash, lambda spec: _val_accuracy_per_class(ws_of[spec]))
    return PreparedWorkspaces(str(planted.root), ws_dirs, infos, identity)


def _counterfactuals(ws: Path, found: Sequence[FoundComponent], settings: _Settings, eval_spec: str,
                     progress: bool) -> None:
    """Per found component, one remove-pair and one add-pair on the robust model with the image-space engine,
    and one add-pair with the diffusion engine (DVCE on the embedded diffusion model, its tiny recipe under
    --fast: the component painted onto a validation image of another class); the demo report and the
    inspection sheets show them, each also scored on the standard model."""
    from spurious.counterfactual import counterfactual
    from spurious.demo.diffusion import DemoDiffusionConfig, train_demo_diffusion

    recipe = DemoDiffusionConfig.tiny() if settings.tiny_diffusion else None  # the shipped one, on the default data
    diffusion = train_demo_diffusion(recipe, progress=progress).path if found else None
    for f in found:
        for mode, engine in (("remove", "image"), ("add", "image"), ("add", "diffusion")):
            extra: dict[str, Any] = ({"engine": "diffusion", "diffusion": diffusion, "diffusion_steps": settings.dvce_steps}
                                     if engine == "diffusion" else {"steps": settings.steps})
            try:
                counterfactual(ws, f.class_index, f.component, mode=mode, n_images=settings.counterfactual_images,
                               eval_models=[eval_spec], progress=progress, **extra)
            except ValueError as err:  # e.g. no start image left: the report then shows no pair, and says why here
                warnings.warn(f"demo: no {mode}-counterfactual ({engine} engine) for class {f.class_name}, "
                              f"component {f.component}: {err}", RuntimeWarning, stacklevel=2)


def _val_accuracy_per_class(ws_dir: Path) -> list[float]:
    """Top-1 accuracy per class on the workspace's val split (from the stored top-k)."""
    from spurious.workspace import Workspace

    store = Workspace.open(ws_dir).feature_store("val")
    top1, labels = store.topk()[0][:, 0], np.asarray(store.labels)
    return [float((top1[labels == k] == k).mean()) if (labels == k).any() else float("nan")
            for k in range(int(labels.max()) + 1)]


def _check_trained_on(infos: Iterable[DemoModelInfo], content_hash: str,
                      measure: Callable[[str], list[float] | None] | None = None) -> None:
    """Warn when the planted data generated here are not the data a demo model was trained on.

    The planted images are drawn with floating-point numpy math whose last bits can differ between CPUs
    (SIMD code paths), so another machine can draw a few pixels differently. ``measure(spec)`` (the model's
    val accuracy per class on the data here; called only for a model whose data differ) says how much
    that matters: within one image per
    class of the accuracy recorded at training, the warning says the figures should match; otherwise it
    says they will not, with both accuracies.
    """
    for info in infos:
        trained_on = info.metadata.get("planted_content_hash")
        if not trained_on or trained_on == content_hash:
            continue
        head = (f"the planted data generated on this machine ({content_hash[:16]}) differ from the data "
                f"{info.spec} was trained on ({trained_on[:16]})")
        evidence = info.evidence or {}
        recorded = evidence.get("val_accuracy_per_class")
        here = measure(info.spec) if measure is not None else None
        if recorded and here and len(recorded) == len(here):
            n_val = int(evidence.get("num_val") or 0)
            slack = 1.0 / max(n_val // len(recorded), 1) + 1e-6  # one image of a class
            worst = max(abs(a - b) for a, b in zip(here, recorded, strict=True))
            acc_here, acc_then = float(np.mean(here)), float(np.mean(recorded))
            if worst <= slack:
                warnings.warn(f"{head}, probably in a few pixels (numpy's floating-point math differs across "
                              f"CPUs); the model's val accuracy here, {acc_here:.4f}, matches the recorded "
                              f"{acc_then:.4f} within one image per class, so the figures should match the "
                              "documented ones up to such single images", stacklevel=3)
                continue
            head += (f", and the model's val accuracy here, {acc_here:.4f}, is not the recorded {acc_then:.4f} "
                     f"(a class differs by {worst:.3f})")
        warnings.warn(f"{head}: the demo's figures will not match the documented ones; report it, or train "
                      "the models on these data with `spurious demo --retrain`", stacklevel=3)


def _logit_identity(ws_dir: Path) -> float:
    """Worst |f_k - (sum_l alpha_l^k + <1, mu_k> + b_k)| over the held-out images, all classes."""
    from spurious.npca import load_npca
    from spurious.workspace import Workspace

    pca = load_npca(ws_dir)
    ws = Workspace.open(ws_dir)
    W, b = ws.head()
    val = ws.feature_store("val")
    worst = 0.0
    for k in pca.classes:
        phi = val.phi(val.rows_of_class(k)).astype(np.float64)
        recon = pca[k].alpha(phi).sum(axis=1) + pca[k].offset()
        worst = max(worst, float(np.abs(recon - (phi @ W[k].astype(np.float64) + float(b[k]))).max()))
    return worst


def _wait_for_people(ws_dir: Path, port: int, what: str) -> None:
    """Serve the labelling UI in a background thread until the user presses Enter."""
    import threading

    import uvicorn

    from spurious.label import create_app

    app = create_app(ws_dir, allowed_hosts=["127.0.0.1", f"127.0.0.1:{port}", "localhost", f"localhost:{port}"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        print(f"labelling UI: http://127.0.0.1:{port}/  -- {what}", file=sys.stderr)
        input()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
