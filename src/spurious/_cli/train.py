"""``spurious train demo``: train (or reuse) the embedded demo classifiers."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from spurious._cli._common import common_options, defaults_of, emit, given

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]


def register(sub: SubParsers) -> None:
    """Add the ``train`` sub-command group and ``train-diffusion`` to the argparse sub-parser action ``sub``."""
    from spurious._cli import _train_diffusion

    _register_train(sub)
    _train_diffusion.register(sub)


def _register_train(sub: SubParsers) -> None:
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
    p.add_argument("--cache-dir", default=defaults_of("spurious.demo.train:train_demo_model")("cache_dir"),
                   help="cache folder (default: $SPURIOUS_CACHE, else $XDG_CACHE_HOME/spurious or ~/.cache/spurious)")
    common_options(p)
    p.set_defaults(func=_cmd_train_demo)


def _cmd_train_demo(args: argparse.Namespace) -> int:
    from spurious.demo.train import train_demo_model

    variants = ["standard", "robust"] if args.variant == "both" else [args.variant]
    infos = [train_demo_model(v, tiny=args.tiny, force=args.force, progress=not args.no_progress, use_shipped=False,
                              **given(cache_dir=args.cache_dir)) for v in variants]
    emit(args, {"models": [info.to_dict() for info in infos]},
         [line for info in infos for line in info.summary_lines()])
    return 0
