"""``spurious benchmark build WS --out DIR``: curated candidates -> a Spurious ImageNet-layout benchmark."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from spurious._cli._common import common_options

    p = sub.add_parser("benchmark", help="build a spurious-feature benchmark from curated candidates",
                       description="Benchmarks; see 'spurious benchmark build -h'.")
    bsub = p.add_subparsers(dest="benchmark_command", metavar="ACTION", required=True)
    p = bsub.add_parser(
        "build", help="write the accepted candidates in the published Spurious ImageNet layout",
        description="Copy the images people accepted in the curate task (>= --min-agree labelers said 'out') "
                    "into one folder per (class, component), named like Spurious ImageNet, with a provenance "
                    "manifest, a README dataset card and a timestamp. Deterministic and atomic.")
    p.add_argument("workspace", help="workspace whose retrieval candidates were curated")
    p.add_argument("--out", required=True, help="benchmark folder to create")
    p.add_argument("--per-component", type=int, default=75, help="images per (class, component) (default 75)")
    p.add_argument("--accept", default=None,
                   help="accepted-images file (JSON lines with class, component, id) instead of the label store")
    p.add_argument("--min-agree", type=int, default=2, help="labelers who must say 'out' (default 2)")
    p.add_argument("--min-per-component", type=int, default=1,
                   help="leave out components with fewer accepted images (default 1)")
    p.add_argument("--prefix", default="spurious_imagenet", help="first two folder-name tokens")
    p.add_argument("--name", default=None, help="dataset name for the README")
    p.add_argument("--license", default=None, help="licence paragraph for the README (default: the pool's licences)")
    p.add_argument("--link", action="store_true", help="hard-link instead of copying the images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    common_options(p)
    p.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    from spurious._cli._common import emit
    from spurious.benchmark import build_benchmark

    r = build_benchmark(args.workspace, args.out, per_component=args.per_component, accept=args.accept,
                        min_agree=args.min_agree, min_per_component=args.min_per_component, prefix=args.prefix,
                        name=args.name, license_text=args.license, link=args.link, overwrite=args.overwrite)
    emit(args, r.to_dict(), r.summary_lines())
    return 0
