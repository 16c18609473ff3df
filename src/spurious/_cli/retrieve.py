"""``spurious retrieve WS``: rank an unlabeled pool by component value, keep what several models agree on."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from spurious._cli._common import common_options, defaults_of, emit_result, given

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_default = defaults_of("spurious.retrieve:retrieve")


def register(sub: SubParsers) -> None:
    """Add the ``retrieve`` sub-command to the argparse sub-parser action ``sub``."""
    p = sub.add_parser(
        "retrieve", help="rank a pool by alpha_l^k per selected component; keep images m of n models predict as k",
        description="Rank the pool's features by alpha_l^k for every selected component (streamed, one matrix "
                    "product per chunk), keep candidates that at least --min-votes of the voters predict as the "
                    "class, and write the top --top per component to WS/retrieve/candidates.jsonl (the curate "
                    "queue of `spurious label`) with an HTML gallery. Resumable; a finished run is reused.")
    p.add_argument("workspace", help="workspace with neural PCA (`spurious npca`)")
    p.add_argument("--pool", default=_default("pool"),
                   help="a feature split of WS (default: %(default)s) or another workspace of the same model")
    p.add_argument("--pool-split", default=_default("pool_split"),
                   help="split of --pool when it is a workspace (default: %(default)s)")
    p.add_argument("--components", default=_default("components"),
                   help="component-set JSON ({\"<k>\": [l, ...]} or a `spurious label` export); default: the "
                        "label store's agreed components, else the components `visualize` selected")
    p.add_argument("--classes", nargs="+", default=_default("classes"), help="only these classes (indices or names)")
    p.add_argument("--top-components", type=int, default=_default("top_components"),
                   help="select the top N components by eigenvalue of each class instead")
    p.add_argument("--agree", nargs="+", action="extend", default=[], metavar="WS2",
                   help="voter: a workspace of another model that extracted the same pool (repeatable)")
    p.add_argument("--agree-model", nargs="+", action="extend", default=[], metavar="SPEC",
                   help="voter: a model run on the shortlisted pool images (cached by image id; repeatable)")
    p.add_argument("--no-self-vote", action="store_true", help="the workspace's own model does not vote")
    p.add_argument("--min-votes", type=int, default=_default("min_votes"),
                   help="m: voters that must predict the class (default %(default)s)")
    p.add_argument("--top", type=int, default=_default("top_n"),
                   help="N: candidates per component (default %(default)s)")
    p.add_argument("--dependence", choices=("none", "flip"), default=_default("dependence"),
                   help="flip: keep a candidate only when the workspace model predicts the class and removing the "
                        "component's positive part flips that prediction (the feature alone triggers the class); "
                        "none: the paper's plain ranking (default %(default)s)")
    p.add_argument("--dependence-margin", type=float, default=_default("dependence_margin"), metavar="LOGITS",
                   help="with --dependence flip: also keep candidates the removal brings within this many logits of "
                        "the runner-up (default %(default)s)")
    p.add_argument("--oversample", type=int, default=_default("oversample"),
                   help="shortlist N x this per component for --agree-model voters (default %(default)s)")
    p.add_argument("--chunk-rows", type=int, default=_default("chunk_rows"),
                   help="pool rows per matrix product (default %(default)s)")
    p.add_argument("--device", default=_default("device"),
                   help="device of --agree-model voters: auto | cpu | cuda[:N] (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=_default("batch_size"),
                   help="images per forward pass for --agree-model")
    p.add_argument("--workers", type=int, default=_default("num_workers"),
                   help="decoding processes for --agree-model")
    p.add_argument("--no-gallery", action="store_true", help="skip the HTML gallery")
    p.add_argument("--overwrite", action="store_true", help="replace a retrieval made with another plan")
    common_options(p)
    p.set_defaults(func=_cmd_retrieve)


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from spurious.retrieve import retrieve

    r = retrieve(args.workspace, self_vote=not args.no_self_vote, gallery=not args.no_gallery,
                 overwrite=args.overwrite, progress=not args.no_progress,
                 **given(pool=args.pool, pool_split=args.pool_split, components=args.components, classes=args.classes,
                         top_components=args.top_components, agree=args.agree, agree_models=args.agree_model,
                         min_votes=args.min_votes, dependence=args.dependence,
                         dependence_margin=args.dependence_margin, top_n=args.top, oversample=args.oversample,
                         chunk_rows=args.chunk_rows, device=args.device, batch_size=args.batch_size,
                         num_workers=args.workers))
    if not r.complete:  # non-zero torchrun rank: rank 0 reports
        return 0
    emit_result(args, r)
    return 0
