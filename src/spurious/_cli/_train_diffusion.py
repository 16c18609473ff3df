"""``spurious train-diffusion``: train (or reuse) the embedded diffusion model of the planted images.

Registered by :mod:`spurious._cli.train` (a plugin module registers the commands that start with its name).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from spurious._cli._common import common_options, defaults_of, emit, given

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_CONFIG = "spurious.demo.diffusion:DemoDiffusionConfig"
_TRAIN = "spurious.demo.diffusion:train_demo_diffusion"
_CHECK = "spurious.demo.diffusion:quality_check"


def register(sub: SubParsers) -> None:
    """Add the ``train-diffusion`` sub-command to the argparse sub-parser action ``sub``."""
    p = sub.add_parser(
        "train-diffusion", help="train (or reuse) the diffusion model of the planted images (DVCE's default)",
        description="Train the small unconditional diffusion model (diffusers UNet2DModel + DDPMScheduler) on the "
                    "planted images on the CPU, or report the shipped/cached one (a DDPMPipeline folder). With "
                    "--samples N, also sample it with DDIM and report how many samples the demo classifier "
                    "recognises (and write a sample grid to --out).")
    p.add_argument("--retrain", action="store_true", help="train again even when a shipped or cached model exists")
    p.add_argument("--tiny", action="store_true", help="the tiny test recipe (32 px, a few steps; its samples are noise)")
    p.add_argument("--steps", type=int, default=defaults_of(_CONFIG)("steps"),
                   help="optimiser steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults_of(_CONFIG)("batch_size"),
                   help="images per step (default %(default)s)")
    p.add_argument("--image-size", type=int, default=defaults_of(_CONFIG)("image_size"),
                   help="side of the generated images (default %(default)s)")
    p.add_argument("--block-out-channels", type=_widths, metavar="W,W,...",
                   default=defaults_of(_CONFIG)("block_out_channels"),
                   help="UNet widths, one per resolution level (default %(default)s)")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"),
                   default=defaults_of(_CONFIG)("prediction_type"),
                   help="what the UNet predicts: the noise or v (Salimans & Ho 2022) (default %(default)s)")
    p.add_argument("--min-snr-gamma", type=float, default=defaults_of(_CONFIG)("min_snr_gamma"),
                   help="0: the plain loss (every time step alike); > 0: Min-SNR-gamma loss weights (Hang et al. 2023 "
                        "use 5) (default %(default)s)")
    p.add_argument("--cache-dir", default=defaults_of(_TRAIN)("cache_dir"),
                   help="cache folder (default: $SPURIOUS_CACHE, else $XDG_CACHE_HOME/spurious or ~/.cache/spurious)")
    p.add_argument("--samples", type=int, metavar="N",
                   help="quality check: draw N samples (256 for the documented figure) and classify them")
    p.add_argument("--sample-steps", type=int, default=defaults_of(_CHECK)("sample_steps"),
                   help="DDIM steps per sample of the quality check (default %(default)s)")
    p.add_argument("--seed", type=int, default=defaults_of(_CHECK)("seed"),
                   help="seed of the quality check's samples (default %(default)s)")
    p.add_argument("--classifier", default=defaults_of(_CHECK)("classifier"),
                   help="model spec that judges the samples (default %(default)s)")
    p.add_argument("--out", help="folder for the quality check's sample grid (diffusion-samples.png)")
    common_options(p)
    p.set_defaults(func=_cmd_train_diffusion)


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 16,32,64,64; got {text!r}") from None
    return widths


def _cmd_train_diffusion(args: argparse.Namespace) -> int:
    from spurious.demo.diffusion import (
        DemoDiffusionConfig,
        quality_check,
        train_demo_diffusion,
    )

    overrides = given(steps=args.steps, batch_size=args.batch_size, image_size=args.image_size,
                      block_out_channels=args.block_out_channels, min_snr_gamma=args.min_snr_gamma,
                      prediction_type=args.prediction_type)
    if args.tiny:
        import dataclasses

        config = dataclasses.replace(DemoDiffusionConfig.tiny(), **overrides)
    else:
        config = DemoDiffusionConfig(**overrides)
    if args.samples is not None and args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.out is not None and args.samples is None:
        raise ValueError("--out holds the quality check's sample grid: give --samples N too")
    info = train_demo_diffusion(config, retrain=args.retrain, progress=not args.no_progress,
                                **given(cache_dir=args.cache_dir))
    summary: dict[str, object] = {"model": info.to_dict()}
    lines = info.summary_lines()
    if args.samples is not None:
        grid = Path(args.out) / "diffusion-samples.png" if args.out is not None else None
        quality = quality_check(info.path, n=args.samples, grid=grid, progress=not args.no_progress,
                                **given(sample_steps=args.sample_steps, seed=args.seed, classifier=args.classifier))
        summary["quality"] = quality.to_dict()
        lines += quality.summary_lines()
    emit(args, summary, lines)
    return 0
