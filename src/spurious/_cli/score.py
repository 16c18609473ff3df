"""``spurious score``: the spurious score of one or more models (mAUC, mAP, class extension, accuracy)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spurious._cli._common import (
    common_options,
    defaults_of,
    emit_result,
    given,
    is_given,
)
from spurious._cli._model_options import add_model_options, model_options

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_default = defaults_of("spurious.score:score")

_DESCRIPTION = """\
How much does a model rely on known spurious features? For every class k of the spurious benchmark:
positives = validation images of class k, negatives = spurious images of class k (the feature without
the object), score = softmax probability of class k. Reports per class ROC-AUC, average precision (what
the reference code computed) and the class-extension rate (spurious images predicted as k), their means
(mAUC, mAP), and the validation accuracy; one row per model and per SpuFix variant (--fix).

Class folders (and list labels) of --val are matched by name to the class names of the first model
that has them (00_star, Star and star all become the model's class 'star'), so the benchmark's
classes carry the model's names; wnid folders and --val-labels are ImageNet-1k. The sanity figure of
each row: top-1 agreement with the validation labels against chance (Cohen's kappa); a model below
kappa 0.2 gets a warning (--strict: an error), its preprocessing or label matching is wrong. The
preprocessing options below apply to every --model given as a spec (checkpoints that need different
ones state them in a config file beside them).

Writes OUT/scores.csv, scores.json, scores.md, per_class.csv, report.html (+ plots/*.png) and
manifest.json. Predictions are cached per model under OUT/cache: re-running (also with more models)
recomputes nothing that is cached, and an interrupted run resumes.

examples:
  spurious score --model timm:resnet50.a1_in1k --model efficientnet_lite0 \\
      --spurious spurious_imagenet/images --val /data/imagenet/val
  spurious score --model efficientnet_lite0 --spurious spurious_imagenet/images \\
      --val /data/imagenet/val_flat --val-labels LOC_val_solution.csv --protocol reference
  spurious score --model demo:standard --fix ws/fix --spurious planted/spurious --val planted/val
  spurious score --model demo:standard --fix ws/dfr --groups groups.csv --spurious planted/spurious \\
      --val planted/val
  spurious score --zoo paper --checkpoint robust_resnet=robust_resnet50.pt \\
      --spurious spurious_imagenet/images --val /data/imagenet/val --out zoo-out"""


def register(sub: SubParsers) -> None:
    """Add the ``score`` sub-command to the argparse sub-parser action ``sub``."""
    p = sub.add_parser("score", help="spurious score (mAUC / mAP / class extension / accuracy) of models",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", dest="models", action="append", default=None, metavar="SPEC",
                   help="model spec (repeat for several models): torchvision:NAME, timm:NAME, efficientnet_lite0, "
                        "demo:NAME, ARCH@CHECKPOINT (or --zoo)")
    p.add_argument("--zoo", dest="zoo_spec", default=None, metavar="paper|FILE",
                   help="score a whole zoo instead of --model: 'paper' (the paper's 77 models, beside its published "
                        "figures) or a file (one model spec or paper id per line, or a TSV with a model_id column); "
                        "both protocols unless --protocol is given; resumable per model, a failing model is "
                        "reported and skipped (docs/score.md)")
    p.add_argument("--checkpoint", dest="checkpoints", action="append", default=None, metavar="NAME=PATH",
                   help="with --zoo: the checkpoint of a zoo model whose spec needs one (the paper's robust_resnet, "
                        "resnet_salient_imagenet); without it that model is skipped")
    p.add_argument("--spurious", required=True, metavar="DIR",
                   help="spurious benchmark in the published Spurious ImageNet layout (sub-folders "
                        "<a>_<b>_<class>_..._<component>; any subset of classes)")
    p.add_argument("--val", required=True, metavar="DIR",
                   help="validation images: class folders (ImageNet wnid folders or any class folders), a "
                        "list:FILE with labels, or a flat folder with --val-labels")
    p.add_argument("--val-labels", default=_default("val_labels"), metavar="FILE",
                   help="labels of a flat validation folder: ImageNet's LOC_val_solution.csv or lines "
                        "'filename label' (wnid, class index or class name)")
    p.add_argument("--out", default=_default("out"), help="output folder (default: ./%(default)s)")
    p.add_argument("--fix", dest="fixes", action="append", default=[], metavar="PATH",
                   help="SpuFix artifact (file or WS/fix folder; repeatable): adds a row '<spec> + <name>' for the "
                        "model it was made for")
    p.add_argument("--classes", nargs="+", default=_default("classes"), metavar="K",
                   help="classes to score (indices, names or wnids); default: every class with spurious images")
    p.add_argument("--class-names", default=_default("class_names"), metavar="FILE",
                   help="text file, one name per line: the benchmark label space (default: ImageNet-1k for wnid "
                        "folders and flat val, else the class names of the first model that has them, else the "
                        "sorted validation folder names)")
    p.add_argument("--class-map", default=_default("class_map"), metavar="auto|identity|wnid|names|FILE.json",
                   help="benchmark class -> model output: auto (default: identity, or by wnid for ImageNet-21k/12k "
                        "heads), identity, wnid, names, or a JSON file {\"<class>\": <output>}; any but auto keeps "
                        "the validation folders' own (sorted) classes")
    p.add_argument("--protocol", choices=["model", "reference"], default=_default("protocol"),
                   help="model: each model's own preprocessing; reference: spurious images as the "
                        "reference code fed them (shorter side resized to the input size, center crop); default %(default)s")
    p.add_argument("--groups", default=_default("groups"), metavar="FILE",
                   help="groups file of validation images (CSV or JSONL: image, class, and group or attribute "
                        "columns; images by id or absolute path): adds per-group, worst-group, mean and "
                        "group-average accuracy to every row (groups.csv)")
    p.add_argument("--plot-model", dest="plot_models", action="append", default=None, metavar="ROW",
                   help="row drawn in the class-wise AUC bars (repeatable; the first also gets image strips)")
    p.add_argument("--batch-size", type=int, default=_default("batch_size"), help="images per forward pass (default: 64 GPU, 16 CPU)")
    p.add_argument("--workers", type=int, default=_default("num_workers"), help="decoding processes (default: CPUs, max 8)")
    p.add_argument("--chunk-size", type=int, default=_default("chunk_size"),
                   help="images per cached chunk (default %(default)s)")
    p.add_argument("--device", default=_default("device"), help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--random-weights", action="store_true",
                   help="do not download pretrained weights (random init; for offline smoke runs)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots and the HTML report")
    p.add_argument("--strict", action="store_true",
                   help="exit with an error (after writing the results) when a model's top-1 agreement with the "
                        "validation labels is not clearly above chance (Cohen's kappa < 0.2), instead of warning")
    add_model_options(p)
    common_options(p)
    p.set_defaults(func=_cmd_score)


def _class_names(path: str) -> list[str]:
    """``--class-names FILE``: one class name per line."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--class-names file {file} does not exist")
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _checkpoints(values: list[str]) -> dict[str, str]:
    """``--checkpoint NAME=PATH`` (repeatable)."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--checkpoint {value!r}: expected NAME=PATH, e.g. --checkpoint robust_resnet=rn50.pt")
        out[name.strip()] = path.strip()
    return out


def _cmd_zoo(args: argparse.Namespace) -> int:
    from spurious.score import score_zoo

    if args.models:
        raise ValueError("give either --zoo or --model, not both (add your models to a zoo file instead)")
    opts = model_options(args)
    if opts.preprocessing is not None or opts.config is not None or args.strict or args.plot_models:
        raise ValueError("--zoo scores every model with its own preprocessing and takes no preprocessing options, "
                         "--model-config, --strict or --plot-model; score a single model with --model for those")
    options: dict[str, Any] = given(
        class_names=_class_names(args.class_names) if is_given(args.class_names) else args.class_names,
        out=args.out, val_labels=args.val_labels, classes=args.classes, class_map=args.class_map,
        batch_size=args.batch_size, num_workers=args.workers, device=args.device, chunk_size=args.chunk_size)
    if is_given(args.protocol):  # else the zoo's own default: both protocols
        options["protocols"] = [args.protocol]
    r = score_zoo(args.zoo_spec, spurious=args.spurious, val=args.val, fixes=args.fixes,
                  checkpoints=_checkpoints(args.checkpoints or []), pretrained=not args.random_weights,
                  progress=not args.no_progress, plots=not args.no_plots, **options)
    emit_result(args, r)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from spurious.score import score

    if args.zoo_spec is not None:
        return _cmd_zoo(args)
    if not args.models:
        raise ValueError("give the models to score: --model SPEC (repeatable) or --zoo paper|FILE")
    if args.checkpoints:
        raise ValueError("--checkpoint goes with --zoo; with --model write the checkpoint into the spec (ARCH@PATH)")
    opts = model_options(args)
    r = score(args.models, spurious=args.spurious, val=args.val, fixes=args.fixes, plot_models=args.plot_models,
              pretrained=not args.random_weights, progress=not args.no_progress, plots=not args.no_plots,
              strict=args.strict, preprocessing=opts.preprocessing, model_config=opts.config,
              **given(class_names=_class_names(args.class_names) if is_given(args.class_names) else args.class_names,
                      out=args.out, val_labels=args.val_labels, classes=args.classes, class_map=args.class_map,
                      protocol=args.protocol, batch_size=args.batch_size, num_workers=args.workers,
                      device=args.device, chunk_size=args.chunk_size, groups=args.groups))
    if not r.complete:  # non-zero torchrun rank: rank 0 reports
        return 0
    emit_result(args, r)
    return 0
