"""``spurious demo``: the whole method end to end on the embedded planted dataset (or ``--real``), offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from spurious._cli._common import (
    common_options,
    defaults_of,
    emit_result,
    given,
    is_given,
)

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_default = defaults_of("spurious.demo:run_demo")


def register(sub: SubParsers) -> None:
    """Add the ``demo`` sub-command to the argparse sub-parser action ``sub``."""
    p = sub.add_parser("demo", help="run the whole method end to end on the embedded planted dataset, offline",
                       description="Planted dataset + demo classifiers (trained once, cached) -> extract -> npca -> "
                                   "visualize -> component review -> retrieve -> image curation -> benchmark build "
                                   "-> score -> fix -> score again; writes OUT/report/index.html. The human steps "
                                   "are done by two simulated labelers answering from the planted ground truth, or "
                                   "by you in the web UI with --interactive.")
    p.add_argument("--out", default=_default("out"), help="output directory (default: ./%(default)s)")
    p.add_argument("--fast", action="store_true", help="the tiny planted dataset and tiny models (seconds)")
    p.add_argument("--real", action="store_true",
                   help="tour with the real ImageNet EfficientNet-Lite0 on photos shipped with scikit-image")
    p.add_argument("--interactive", action="store_true",
                   help="label components and curate images yourself in the web UI (the demo waits for Enter)")
    p.add_argument("--port", type=int, default=_default("port"),
                   help="port of the labelling UI with --interactive (default %(default)s)")
    p.add_argument("--retrain", action="store_true",
                   help="train the demo classifiers on this machine (a few minutes; cached) instead of using the "
                        "weights shipped in the package, whose figures the documentation reports")
    common_options(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.real:
        from spurious.demo import run_real_tour

        out = {"out": Path(args.out) / "real"} if is_given(args.out) else {}  # else run_real_tour's default
        emit_result(args, run_real_tour(fast=args.fast, progress=not args.no_progress, **out))
        return 0
    from spurious.demo import run_demo

    emit_result(args, run_demo(fast=args.fast, interactive=args.interactive, progress=not args.no_progress,
                               retrain=args.retrain, **given(out=args.out, port=args.port)))
    return 0
