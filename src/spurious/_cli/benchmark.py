"""``spurious benchmark build WS --out DIR``: curated candidates -> a Spurious ImageNet-layout benchmark."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from spurious._cli._common import common_options, defaults_of, emit_result, given

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_default = defaults_of("spurious.benchmark:build_benchmark")


def register(sub: SubParsers) -> None:
    """Add the ``benchmark`` sub-command group to the argparse sub-parser action ``sub``."""
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
    p.add_argument("--per-component", type=int, default=_default("per_component"),
                   help="images per (class, component) (default %(default)s)")
    p.add_argument("--accept", default=_default("accept"),
                   help="accepted-images file (JSON lines with class, component, id) instead of the label store")
    p.add_argument("--min-agree", type=int, default=_default("min_agree"),
                   help="labelers who must say 'out' (default %(default)s)")
    p.add_argument("--min-per-component", type=int, default=_default("min_per_component"),
                   help="leave out components with fewer accepted images (default %(default)s)")
    p.add_argument("--prefix", default=_default("prefix"), help="first two folder-name tokens (default %(default)s)")
    p.add_argument("--name", default=_default("name"), help="dataset name for the README")
    p.add_argument("--license", default=_default("license_text"), help="licence paragraph for the README (default: the pool's licences)")
    p.add_argument("--link", action="store_true", help="hard-link instead of copying the images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    common_options(p)
    p.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    from spurious.benchmark import build_benchmark

    r = build_benchmark(args.workspace, args.out, link=args.link, overwrite=args.overwrite,
                        **given(per_component=args.per_component, accept=args.accept, min_agree=args.min_agree,
                                min_per_component=args.min_per_component, prefix=args.prefix, name=args.name,
                                license_text=args.license))
    emit_result(args, r)
    return 0
