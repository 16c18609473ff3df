"""``spurious data planted --out DIR``: generate the dataset with planted spurious features."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from spurious._cli._common import common_options, defaults_of, emit_result, given

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]


def register(sub: SubParsers) -> None:
    """Add the ``data`` sub-command group to the argparse sub-parser action ``sub``."""
    p = sub.add_parser("data", help="generate datasets (the planted demo data)",
                       description="Generate datasets; see 'spurious data planted -h'.")
    data_sub = p.add_subparsers(dest="data_command", metavar="KIND", required=True)
    p = data_sub.add_parser("planted", help="generate the dataset with planted spurious features",
                            description="Generate the planted dataset (train/val/spurious/pool folders, "
                                        "index.jsonl ground truth) into --out; an --out holding the same "
                                        "config is reused.")
    p.add_argument("--out", required=True, help="output folder (missing, empty, or a planted dataset)")
    p.add_argument("--tiny", action="store_true", help="the tiny test config (6 classes, 32 px, ~270 images)")
    p.add_argument("--seed", type=int, default=defaults_of("spurious.demo.planted:PlantedConfig")("seed"),
                   help="dataset seed (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a planted dataset of another config")
    common_options(p)
    p.set_defaults(func=_cmd_data_planted)


def _cmd_data_planted(args: argparse.Namespace) -> int:
    from spurious.demo.planted import PlantedConfig, generate_planted

    seed = given(seed=args.seed)
    config = PlantedConfig.tiny(**seed) if args.tiny else PlantedConfig(**seed)
    ds = generate_planted(args.out, config, overwrite=args.overwrite)
    emit_result(args, ds)
    return 0
