"""``spurious retrieve WS``: rank an unlabeled pool by component value, keep what several models agree on."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from spurious._cli._common import common_options

    p = sub.add_parser(
        "retrieve", help="rank a pool by alpha_l^k per selected component; keep images m of n models predict as k",
        description="Rank the pool's features by alpha_l^k for every selected component (streamed, one matrix "
                    "product per chunk), keep candidates that at least --min-votes of the voters predict as the "
                    "class, and write the top --top per component to WS/retrieve/candidates.jsonl (the curate "
                    "queue of `spurious label`) with an HTML gallery. Resumable; a finished run is reused.")
    p.add_argument("workspace", help="workspace with neural PCA (`spurious npca`)")
    p.add_argument("--pool", default="pool",
                   help="a feature split of WS (default: pool) or another workspace of the same model")
    p.add_argument("--pool-split", default="pool", help="split of --pool when it is a workspace (default: pool)")
    p.add_argument("--components", default=None,
                   help="component-set JSON ({\"<k>\": [l, ...]} or a `spurious label` export); default: the "
                        "label store's agreed components, else the components `visualize` selected")
    p.add_argument("--classes", nargs="+", default=None, help="only these classes (indices or names)")
    p.add_argument("--top-components", type=int, default=None,
                   help="select the top N components by eigenvalue of each class instead")
    p.add_argument("--agree", nargs="+", action="extend", default=[], metavar="WS2",
                   help="voter: a workspace of another model that extracted the same pool (repeatable)")
    p.add_argument("--agree-model", nargs="+", action="extend", default=[], metavar="SPEC",
                   help="voter: a model run on the shortlisted pool images (cached by image id; repeatable)")
    p.add_argument("--no-self-vote", action="store_true", help="the workspace's own model does not vote")
    p.add_argument("--min-votes", type=int, default=2, help="m: voters that must predict the class (default 2)")
    p.add_argument("--top", type=int, default=625, help="N: candidates per component (default 625)")
    p.add_argument("--dependence", choices=("none", "flip"), default="none",
                   help="flip: keep a candidate only when the workspace model predicts the class and removing the "
                        "component's positive part flips that prediction (the feature alone triggers the class); "
                        "none (default): the paper's plain ranking")
    p.add_argument("--dependence-margin", type=float, default=0.0, metavar="LOGITS",
                   help="with --dependence flip: also keep candidates the removal brings within this many logits of "
                        "the runner-up (default 0)")
    p.add_argument("--oversample", type=int, default=4,
                   help="shortlist N x this per component for --agree-model voters (default 4)")
    p.add_argument("--chunk-rows", type=int, default=16384, help="pool rows per matrix product (default 16384)")
    p.add_argument("--device", default="auto", help="device of --agree-model voters: auto | cpu | cuda[:N]")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass for --agree-model")
    p.add_argument("--workers", type=int, default=None, help="decoding processes for --agree-model")
    p.add_argument("--no-gallery", action="store_true", help="skip the HTML gallery")
    p.add_argument("--overwrite", action="store_true", help="replace a retrieval made with another plan")
    common_options(p)
    p.set_defaults(func=_cmd_retrieve)


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from spurious._cli._common import emit
    from spurious.retrieve import retrieve

    r = retrieve(args.workspace, pool=args.pool, pool_split=args.pool_split, components=args.components,
                 classes=args.classes, top_components=args.top_components, agree=args.agree,
                 agree_models=args.agree_model, self_vote=not args.no_self_vote, min_votes=args.min_votes,
                 dependence=args.dependence, dependence_margin=args.dependence_margin,
                 top_n=args.top, oversample=args.oversample, chunk_rows=args.chunk_rows, device=args.device,
                 batch_size=args.batch_size, num_workers=args.workers, gallery=not args.no_gallery,
                 overwrite=args.overwrite, progress=not args.no_progress)
    if not r.complete:  # non-zero torchrun rank: rank 0 reports
        return 0
    emit(args, r.to_dict(), r.summary_lines())
    return 0
