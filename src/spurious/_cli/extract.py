"""``spurious extract WS --data DATA``: phi(x) and top-k predictions of every image -> WS/features/SPLIT."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from spurious._cli._common import common_options, defaults_of, emit_result, given
from spurious._cli._model_options import add_model_options, model_options

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_default = defaults_of("spurious.extract:extract")


def register(sub: SubParsers) -> None:
    """Add the ``extract`` sub-command to the argparse sub-parser action ``sub``."""
    p = sub.add_parser("extract", help="stream penultimate features phi(x) + top-k predictions to WS/features/SPLIT",
                       description="Extract phi(x) and top-k predictions of every image into the workspace "
                                   "feature store. Resumable; run under torchrun to shard over processes.")
    p.add_argument("workspace", help="workspace directory (created on first use)")
    p.add_argument("--data", required=True,
                   help="dataset: folder:DIR, imagenet:DIR, list:FILE.csv|jsonl, pool:DIR, spurious-imagenet:DIR "
                        "or a path (layout auto-detected)")
    p.add_argument("--model", default=_default("model"),
                   help="model spec (torchvision:NAME, timm:NAME, efficientnet_lite0, ARCH@CHECKPOINT); "
                        "default: the workspace's model")
    p.add_argument("--split", default=_default("split"), help="feature split name (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=_default("batch_size"),
                   help="images per forward pass (default: 64 on GPU, 16 on CPU)")
    p.add_argument("--workers", type=int, default=_default("num_workers"),
                   help="decoding processes (default: CPUs, max 8)")
    p.add_argument("--dtype", choices=["float16", "float32"], default=_default("dtype"),
                   help="storage dtype of phi (default %(default)s)")
    p.add_argument("--topk", type=int, default=_default("topk"),
                   help="top predictions stored per image (default %(default)s)")
    p.add_argument("--shard-size", type=int, default=_default("shard_size"),
                   help="images per shard (unit of resumption; default %(default)s)")
    p.add_argument("--device", default=_default("device"), help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--random-weights", action="store_true",
                   help="do not download pretrained weights: random weights drawn with a fixed seed, recorded in the workspace so that every later stage recreates them (for smoke runs and scale tests)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the forward pass (GPU only)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing split made with other settings")
    p.add_argument("--class-map", default=_default("class_map"), metavar="FILE",
                   help="JSON {\"folder or label\": \"class name\" | index} or CSV (folder,class): maps folders "
                        "that do not carry the model's class names (exact, case-insensitive, wnid and NN_name "
                        "forms match by themselves)")
    p.add_argument("--strict", action="store_true",
                   help="exit with an error (after writing the split) when the model's top-1 agreement with the "
                        "labels is not clearly above chance (Cohen's kappa < 0.2), instead of warning")
    add_model_options(p)
    common_options(p)
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args: argparse.Namespace) -> int:
    from spurious.extract import extract

    opts = model_options(args)
    r = extract(args.workspace, data=args.data, pretrained=not args.random_weights, overwrite=args.overwrite,
                progress=not args.no_progress, amp=args.amp, strict=args.strict, preprocessing=opts.preprocessing,
                model_config=opts.config,
                **given(model=args.model, split=args.split, batch_size=args.batch_size, num_workers=args.workers,
                        dtype=args.dtype, topk=args.topk, shard_size=args.shard_size, device=args.device,
                        class_map=args.class_map))
    if not r.complete:  # non-zero torchrun rank: rank 0 reports
        return 0
    emit_result(args, r)
    return 0
