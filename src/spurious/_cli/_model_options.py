"""The model options every sub-command with ``--model`` shares: the preprocessing a checkpoint needs.

They state what a checkpoint was trained with; they replace the config file beside the checkpoint
(``STEM.json`` or ``config.json``), which replaces the architecture's defaults. ``spurious model SPEC``
shows what is in force.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["ModelOptions", "add_model_options", "model_options"]

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def _size(text: str) -> list[int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 64 or 64x48), got {text!r}") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sizes, got {text!r}")
    return values * 2 if len(values) == 1 else values


def _floats(count: tuple[int, ...]) -> Callable[[str], list[float]]:
    def parse(text: str) -> list[float]:
        try:
            values = [float(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if len(values) not in count:
            raise argparse.ArgumentTypeError(
                f"expected {' or '.join(map(str, count))} comma-separated numbers, got {text!r}")
        return values * 3 if count == (1, 3) and len(values) == 1 else values

    return parse


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Add ``--input-size`` ... ``--model-config`` to a sub-parser that takes ``--model``."""
    g = p.add_argument_group(
        "model preprocessing",
        "what a checkpoint was trained with; replaces the config file beside it (STEM.json or config.json), "
        "which replaces the architecture's defaults; check with `spurious model SPEC`")
    g.add_argument("--input-size", type=_size, default=None, metavar="N|HxW", help="network input size after the crop")
    g.add_argument("--resize", type=int, default=None, metavar="N",
                   help="shorter side resized to N before the center crop (default: input size / crop-pct)")
    g.add_argument("--crop-pct", type=float, default=None, metavar="F",
                   help="fraction kept by the center crop (1 = no crop)")
    g.add_argument("--interpolation", choices=_INTERPOLATIONS, default=None, help="resize interpolation")
    g.add_argument("--mean", type=_floats((1, 3)), default=None, metavar="R,G,B", help="normalisation mean")
    g.add_argument("--std", type=_floats((1, 3)), default=None, metavar="R,G,B", help="normalisation std")
    g.add_argument("--value-range", type=_floats((2,)), default=None, metavar="LO,HI",
                   help="pixel range before the normalisation: 0,1 (default), 0,255 or -1,1")
    g.add_argument("--model-config", default=None, metavar="FILE",
                   help="model config JSON (timm config.json keys); default: the one beside the checkpoint")


class ModelOptions(NamedTuple):
    """What the options state: ``preprocessing=`` and ``config=`` of :func:`spurious.models.load_model`."""

    preprocessing: dict[str, list[int] | list[float] | int | float | str] | None  # None: nothing stated
    config: str | None  # --model-config


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The preprocessing and config file stated on the command line (``None`` where nothing was)."""
    stated = {
        "input_size": args.input_size,
        "resize_size": args.resize,
        "crop_pct": args.crop_pct,
        "interpolation": args.interpolation,
        "mean": args.mean,
        "std": args.std,
        "value_range": args.value_range,
    }
    stated = {k: v for k, v in stated.items() if v is not None}
    return ModelOptions(stated or None, args.model_config)
