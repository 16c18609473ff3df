"""``spurious model SPEC`` (how a model is loaded and what it is) and ``spurious models [PATTERN]`` (valid specs)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from spurious._cli._common import (
    common_options,
    defaults_of,
    emit,
    given,
    summary_stream,
)
from spurious._cli._model_options import add_model_options, model_options

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]


def register(sub: SubParsers) -> None:
    """Add the ``model`` and ``models`` sub-commands to the argparse sub-parser action ``sub``."""
    p = sub.add_parser("model", help="show a model: preprocessing, feature dimension, head, label space",
                       description="Load a model spec (with the options and the config file beside a checkpoint) "
                                   "and print the resolved preprocessing and where it was stated, the feature "
                                   "dimension D, the head, the label space and the fingerprint.")
    p.add_argument("spec", help="model spec, e.g. torchvision:resnet18@model.pt or timm:convnext_tiny.fb_in1k")
    p.add_argument("--random-weights", action="store_true", help="do not download pretrained weights")
    # the command's own choice: a look at a model needs no accelerator (load_model follows the model's device)
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    add_model_options(p)
    common_options(p)
    p.set_defaults(func=_cmd_model)

    p = sub.add_parser("models", help="list valid model specs", description="List model specs (fnmatch pattern).")
    p.add_argument("pattern", nargs="?", default=defaults_of("spurious.models:list_models")("pattern"),
                   help="e.g. 'timm:convnext*'")
    common_options(p)
    p.set_defaults(func=_cmd_models)


def _cmd_model(args: argparse.Namespace) -> int:
    from spurious.models import load_model

    opts = model_options(args)
    clf = load_model(args.spec, pretrained=not args.random_weights, device=args.device,
                     preprocessing=opts.preprocessing, config=opts.config)
    emit(args, clf.describe(), clf.summary_lines())
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from spurious.models import list_models

    names = list_models(**given(pattern=args.pattern))
    out = summary_stream(args)
    print(json.dumps(names) if args.json else "\n".join(names), file=out)
    return 0
