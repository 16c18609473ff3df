"""Command line: ``spurious <stage> ...`` (also ``python -m spurious``).

Every subcommand calls one public function; ``--json`` prints its summary on stdout, logs and
progress bars go to stderr. Bad input exits with status 2 and one line (``-v`` for a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spurious import __version__
from spurious._cli._common import common_options, emit, summary_stream
from spurious._cli._model_options import add_model_options, model_options

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spurious",
        description="Find, validate, measure and remove harmful spurious features in image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"spurious {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("extract", help="stream penultimate features phi(x) + top-k predictions to WS/features/SPLIT",
                       description="Extract phi(x) and top-k predictions of every image into the workspace "
                                   "feature store. Resumable; run under torchrun to shard over processes.")
    p.add_argument("workspace", help="workspace directory (created on first use)")
    p.add_argument("--data", required=True,
                   help="dataset: folder:DIR, imagenet:DIR, list:FILE.csv|jsonl, pool:DIR, spurious-imagenet:DIR "
                        "or a path (layout auto-detected)")
    p.add_argument("--model", help="model spec (torchvision:NAME, timm:NAME, efficientnet_lite0, ARCH@CHECKPOINT); "
                                   "default: the workspace's model")
    p.add_argument("--split", default="train", help="feature split name (default: train)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 64 on GPU, 16 on CPU)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPUs, max 8)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage dtype of phi")
    p.add_argument("--topk", type=int, default=5, help="top predictions stored per image (default 5)")
    p.add_argument("--shard-size", type=int, default=4096, help="images per shard (unit of resumption)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--random-weights", action="store_true",
                   help="do not download pretrained weights (random init; for tests and offline smoke runs)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the forward pass (GPU only)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing split made with other settings")
    p.add_argument("--class-map", default=None, metavar="FILE",
                   help="JSON {\"folder or label\": \"class name\" | index} or CSV (folder,class): maps folders "
                        "that do not carry the model's class names (exact, case-insensitive, wnid and NN_name "
                        "forms match by themselves)")
    p.add_argument("--strict", action="store_true",
                   help="exit with an error (after writing the split) when the model's top-1 agreement with the "
                        "labels is not clearly above chance (Cohen's kappa < 0.2), instead of warning")
    add_model_options(p)
    common_options(p)
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("npca", help="class-wise neural PCA of the training features -> WS/npca",
                       description="Fit mu_k and the top-L eigenpairs of cov(w_k * phi) per class.")
    p.add_argument("workspace")
    p.add_argument("--split", default="train", help="labelled feature split (default: train)")
    p.add_argument("--components", default="128", help="L per class (default 128) or 'all'")
    p.add_argument("--classes", nargs="+", default=None, help="class indices or names (default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["float32", "float64"], default="float32")
    p.add_argument("--overwrite", action="store_true")
    common_options(p)
    p.set_defaults(func=_cmd_npca)

    p = sub.add_parser("model", help="show a model: preprocessing, feature dimension, head, label space",
                       description="Load a model spec (with the options and the config file beside a checkpoint) "
                                   "and print the resolved preprocessing and where it was stated, the feature "
                                   "dimension D, the head, the label space and the fingerprint.")
    p.add_argument("spec", help="model spec, e.g. torchvision:resnet18@model.pt or timm:convnext_tiny.fb_in1k")
    p.add_argument("--random-weights", action="store_true", help="do not download pretrained weights")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    add_model_options(p)
    common_options(p)
    p.set_defaults(func=_cmd_model)

    p = sub.add_parser("models", help="list valid model specs", description="List model specs (fnmatch pattern).")
    p.add_argument("pattern", nargs="?", default=None, help="e.g. 'timm:convnext*'")
    common_options(p)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("demo", help="run the whole method end to end on the embedded planted dataset, offline",
                       description="Planted dataset + demo classifiers (trained once, cached) -> extract -> npca -> "
                                   "visualize -> component review -> retrieve -> image curation -> benchmark build "
                                   "-> score -> fix -> score again; writes OUT/report/index.html. The human steps "
                                   "are done by two simulated labelers answering from the planted ground truth, or "
                                   "by you in the web UI with --interactive.")
    p.add_argument("--out", default="demo-out", help="output directory (default: ./demo-out)")
    p.add_argument("--fast", action="store_true", help="the tiny planted dataset and tiny models (seconds)")
    p.add_argument("--real", action="store_true",
                   help="tour with the real ImageNet EfficientNet-Lite0 on photos shipped with scikit-image")
    p.add_argument("--interactive", action="store_true",
                   help="label components and curate images yourself in the web UI (the demo waits for Enter)")
    p.add_argument("--port", type=int, default=8765, help="port of the labelling UI with --interactive")
    p.add_argument("--retrain", action="store_true",
                   help="train the demo classifiers on this machine (a few minutes; cached) instead of using the "
                        "weights shipped in the package, whose figures the documentation reports")
    common_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("data", help="generate datasets (the planted demo data)",
                       description="Generate datasets; see 'spurious data planted -h'.")
    data_sub = p.add_subparsers(dest="data_command", metavar="KIND", required=True)
    p = data_sub.add_parser("planted", help="generate the dataset with planted spurious features",
                            description="Generate the planted dataset (train/val/spurious/pool folders, "
                                        "index.jsonl ground truth) into --out; an --out holding the same "
                                        "config is reused.")
    p.add_argument("--out", required=True, help="output folder (missing, empty, or a planted dataset)")
    p.add_argument("--tiny", action="store_true", help="the tiny test config (6 classes, 32 px, ~270 images)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a planted dataset of another config")
    common_options(p)
    p.set_defaults(func=_cmd_data_planted)

    p = sub.add_parser("train", help="train the embedded demo classifiers",
                       description="Train models; see 'spurious train demo -h'.")
    train_sub = p.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    p = train_sub.add_parser("demo", help="train (or reuse) the demo:standard / demo:robust classifiers",
                             description="Train the demo classifiers on the planted data on the CPU (cached; a "
                                         "second run reuses the checkpoints) and print the evidence that they "
                                         "learned the planted features.")
    p.add_argument("--variant", choices=["standard", "robust", "both"], default="both",
                   help="which model (default: both)")
    p.add_argument("--tiny", action="store_true", help="the tiny planted data and a few epochs (seconds)")
    p.add_argument("--force", action="store_true", help="retrain even when a checkpoint is cached")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder (default: $SPURIOUS_CACHE, else $XDG_CACHE_HOME/spurious or ~/.cache/spurious)")
    common_options(p)
    p.set_defaults(func=_cmd_train_demo)

    from spurious._cli import register_all

    register_all(sub)  # later stages (visualize, score, fix, ...) live in spurious/_cli/<stage>.py
    return parser


def _cmd_extract(args: argparse.Namespace) -> int:
    from spurious.extract import extract

    opts = model_options(args)
    r = extract(args.workspace, data=args.data, model=args.model, split=args.split, batch_size=args.batch_size,
                num_workers=args.workers, dtype=args.dtype, topk=args.topk, shard_size=args.shard_size,
                device=args.device, pretrained=not args.random_weights, overwrite=args.overwrite,
                progress=not args.no_progress, amp=args.amp, preprocessing=opts["preprocessing"],
                model_config=opts["config"], class_map=args.class_map, strict=args.strict)
    if not r.complete:  # non-zero torchrun rank: rank 0 reports
        return 0
    emit(args, r.to_dict(), r.summary_lines())
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from spurious.models import load_model

    clf = load_model(args.spec, pretrained=not args.random_weights, device=args.device, **model_options(args))
    d = clf.describe()
    names = d["class_names"]
    shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    head = " + ".join(f"{h['coef']:g} x {h['kind']} '{h['layer']}'" if h["coef"] != 1 else f"{h['kind']} "
                      f"'{h['layer']}'" for h in d["head"])
    emit(args, d, [
        f"model          {d['spec']}",
        f"fingerprint    {d['fingerprint']}",
        f"preprocessing  {d['preprocessing_text']}",
        f"  stated by    {d['preprocessing_source']}",
        f"config file    {d['config_file'] or 'none'}",
        f"features       D = {d['num_features']} (input of the head)",
        f"head           {head}: W [{d['num_classes']}, {d['num_features']}], b [{d['num_classes']}]",
        f"label space    K = {d['num_classes']}, names: "
        + ("none (class_<k> placeholders: folders are read in sorted order)" if d["class_names_source"] == "none"
           else f"{d['class_names_source']}: {shown}"),
    ])
    return 0


def _cmd_npca(args: argparse.Namespace) -> int:
    from spurious.npca import npca

    comps: Any = args.components
    if comps != "all":
        try:
            comps = int(comps)
        except ValueError:
            raise ValueError(f"--components must be a positive integer or 'all', got {args.components!r}") from None
    r = npca(args.workspace, split=args.split, n_components=comps, classes=args.classes, device=args.device,
             precision=args.precision, overwrite=args.overwrite, progress=not args.no_progress)
    emit(args, r.to_dict(), r.summary_lines())
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from spurious.models import list_models

    names = list_models(args.pattern)
    if args.json:
        print(json.dumps(names), file=summary_stream(args))
    else:
        print("\n".join(names), file=summary_stream(args))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from spurious.demo import run_demo

    if args.real:
        from spurious.demo import run_real_tour

        tour = run_real_tour(Path(args.out) / "real", fast=args.fast, progress=not args.no_progress)
        emit(args, tour.to_dict(), tour.summary_lines())
    else:
        r = run_demo(args.out, fast=args.fast, interactive=args.interactive, progress=not args.no_progress,
                     port=args.port, retrain=args.retrain)
        emit(args, r.to_dict(), r.summary_lines())
    return 0


def _cmd_data_planted(args: argparse.Namespace) -> int:
    from spurious.demo.planted import PlantedConfig, generate_planted

    config = PlantedConfig.tiny(seed=args.seed) if args.tiny else PlantedConfig(seed=args.seed)
    ds = generate_planted(args.out, config, overwrite=args.overwrite)
    summary = {
        "root": str(ds.root), "config": dict(vars(ds.config)), "config_hash": ds.config_hash,
        "content_hash": ds.content_hash, "counts": ds.counts, "class_names": ds.class_names,
        "features": [f.name for f in ds.features],
        "spurious_folders": sorted(ds.spurious_folders.values()),
    }
    emit(args, summary, [
        f"planted dataset -> {ds.root}",
        f"{len(ds.class_names)} classes, {ds.config.image_size} px; "
        + ", ".join(f"{k} {v}" for k, v in ds.counts.items()),
    ])
    return 0


def _cmd_train_demo(args: argparse.Namespace) -> int:
    from spurious.demo.train import train_demo_model

    variants = ["standard", "robust"] if args.variant == "both" else [args.variant]
    infos = [train_demo_model(v, tiny=args.tiny, cache_dir=args.cache_dir, force=args.force,
                              progress=not args.no_progress, use_shipped=False) for v in variants]
    emit(args, {"models": [info.to_dict() for info in infos]},
          [line for info in infos for line in info.summary_lines()])
    return 0


_USER_ERRORS = (ValueError, TypeError, KeyError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spurious`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("PIL").setLevel(logging.INFO)
    with warnings.catch_warnings():  # the CLI's warning style must not leak into a caller's process
        if not args.verbose:
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
        return _run(args)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _run(args: argparse.Namespace) -> int:
    # stdout carries the summary only (`--json` must parse): whatever a library prints meanwhile, such as
    # torch.hub's 'Downloading: ...' line, goes to stderr with the logs and progress bars
    args.summary_stream = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return int(args.func(args))
    except KeyboardInterrupt:
        print("spurious: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except _USER_ERRORS as err:
        if args.verbose:
            traceback.print_exc()
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"spurious {args.command}: error: {_one_line(msg)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # a bug or an environment failure: still one line unless -v
        if args.verbose:
            traceback.print_exc()
        print(f"spurious {args.command}: {type(err).__name__}: {_one_line(err)} (run with -v for the traceback)",
              file=sys.stderr)
        return 1


def _one_line(msg: object) -> str:
    """The message on one line (a library's multi-line text joined with spaces)."""
    return " ".join(line.strip() for line in str(msg).splitlines() if line.strip())
