"""Eval-time preprocessing of a classifier, and the options and config files that state it.

:class:`Preprocessing` turns a PIL image into the network input ``[3, H, W]`` in ``[0, 1]``
(resize of the shorter side, center crop); its ``mean`` / ``std`` / ``value_range`` are applied
inside :class:`~spurious.models.Classifier`. A checkpoint's preprocessing is *stated* by options
(``load_model(preprocessing={...})``, the CLI's ``--input-size`` ...) or by a config file beside
it (``STEM.json``, else ``config.json``; timm's ``config.json`` keys or ours): this module reads,
checks and applies those partial preprocessings.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat, SupportsInt, TypedDict, cast

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "CONFIG_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESSING_OPTIONS",
    "ModelConfig",
    "Preprocessing",
    "PreprocessingOptions",
    "apply_preprocessing_options",
    "find_model_config",
    "normalise_preprocessing_options",
    "read_model_config",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


# ----------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------


def float_triple(value: object, what: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in cast("Iterable[float]", value))
    except TypeError as e:
        raise TypeError(f"{what} must be a sequence of 3 floats, got {value!r}") from e
    if len(triple) != 3:
        raise ValueError(
            f"{what} must have 3 values (one per RGB channel), got {value!r}"
        )
    return triple


@dataclass(frozen=True)
class Preprocessing:
    """Eval-time image preprocessing of a classifier (without the normalisation).

    ``__call__`` turns an RGB PIL image into the network input: the shorter side is resized to
    ``resize_size`` with ``interpolation``, then the center ``input_size`` crop is taken, and the
    result is a float32 tensor ``[3, H, W]`` with values in ``[0, 1]``. ``mean`` / ``std`` are
    *not* applied here: :class:`Classifier` normalises internally, so every image tensor in the
    toolkit stays in ``[0, 1]``.

    Attributes:
        input_size: ``(H, W)`` of the network input after the crop.
        resize_size: the shorter image side is resized to this before the center crop
            (``floor(min(H, W) / crop_pct)`` for timm models).
        crop_pct: fraction of the resized image kept by the crop (informational).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (also accepted:
            ``"lanczos"``, ``"box"``, ``"hamming"``).
        mean: per-channel RGB mean used by the classifier's normalisation.
        std: per-channel RGB standard deviation used by the classifier's normalisation.
        value_range: ``(lo, hi)``: the pixel range the network was trained on before the
            normalisation: ``(0, 1)`` (torchvision, timm), ``(0, 255)`` (raw 8-bit pixels) or
            ``(-1, 1)``. The network sees ``(lo + x (hi - lo) - mean) / std`` for ``x`` in ``[0, 1]``.
    """

    input_size: tuple[int, int] = (224, 224)
    resize_size: int = 256
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    value_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.input_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(
                f"input_size must be (H, W) with positive ints, got {self.input_size!r}"
            )
        if int(self.resize_size) <= 0:
            raise ValueError(
                f"resize_size must be a positive int, got {self.resize_size!r}"
            )
        if not float(self.crop_pct) > 0:
            raise ValueError(f"crop_pct must be > 0, got {self.crop_pct!r}")
        interpolation = str(self.interpolation).lower()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        mean = float_triple(self.mean, "mean")
        std = float_triple(self.std, "std")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std!r}")
        try:
            lo, hi = (float(v) for v in self.value_range)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"value_range must be two numbers (lo, hi), e.g. (0, 1) or (0, 255), got {self.value_range!r}"
            ) from e
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {self.value_range!r}")
        object.__setattr__(self, "value_range", (lo, hi))
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "resize_size", int(self.resize_size))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        object.__setattr__(self, "interpolation", interpolation)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def __call__(self, img: Image.Image) -> Tensor:
        """Resize the shorter side, center crop and convert to a tensor.

        Args:
            img: a PIL image; converted to RGB when it has another mode.

        Returns:
            float32 tensor ``[3, H, W]`` with values in ``[0, 1]`` (``(H, W) = input_size``).
        """
        if not isinstance(img, Image.Image):
            raise TypeError(
                f"Preprocessing expects a PIL.Image.Image, got {type(img).__name__}"
            )
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = self._resize(img)
        img = self._center_crop(img)
        array = np.asarray(img, dtype=np.uint8)
        return (
            torch.from_numpy(array.copy())
            .permute(2, 0, 1)
            .to(torch.float32)
            .div_(255.0)
        )

    def _resize(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        new_w, new_h = (
            (new_short, new_long) if width <= height else (new_long, new_short)
        )
        if (new_w, new_h) == (width, height):
            return img
        return img.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])

    def _center_crop(self, img: Image.Image) -> Image.Image:
        crop_h, crop_w = self.input_size
        width, height = img.size
        if (
            crop_w > width or crop_h > height
        ):  # pad with black, as torchvision's center_crop does
            pad_left = (crop_w - width) // 2 if crop_w > width else 0
            pad_top = (crop_h - height) // 2 if crop_h > height else 0
            padded = Image.new("RGB", (max(width, crop_w), max(height, crop_h)))
            padded.paste(img, (pad_left, pad_top))
            img = padded
            width, height = img.size
        top = round((height - crop_h) / 2.0)
        left = round((width - crop_w) / 2.0)
        return img.crop((left, top, left + crop_w, top + crop_h))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists); inverse of :meth:`from_dict`."""
        return {
            "input_size": list(self.input_size),
            "resize_size": self.resize_size,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "value_range": list(self.value_range),
        }

    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """``(mean, std)`` to apply to images in ``[0, 1]``, with :attr:`value_range` folded in.

        ``(lo + x (hi - lo) - mean) / std == (x - (mean - lo) / (hi - lo)) / (std / (hi - lo))``.
        """
        lo, hi = self.value_range
        span = hi - lo
        mean = tuple((m - lo) / span for m in self.mean)
        std = tuple(s / span for s in self.std)
        return mean, std  # type: ignore[return-value]

    def describe(self) -> str:
        """One line: ``224x224 crop of resize 256 (crop_pct 0.875), bilinear, mean (...), std (...), values [0, 1]``."""
        h, w = self.input_size
        lo, hi = self.value_range

        def num(v: float) -> str:
            return f"{v:g}"

        return (
            f"{h}x{w} center crop of the shorter side resized to {self.resize_size} (crop_pct "
            f"{self.crop_pct:.4g}), {self.interpolation}, mean ({', '.join(map(num, self.mean))}), "
            f"std ({', '.join(map(num, self.std))}), pixel values [{num(lo)}, {num(hi)}]"
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Preprocessing:
        """Build from the output of :meth:`to_dict` (unknown keys raise ``ValueError``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(
                f"unknown Preprocessing keys {unknown}; valid keys: {sorted(fields)}"
            )
        kwargs: dict[str, Any] = dict(d)  # each value is checked by __post_init__
        for key in ("input_size", "mean", "std", "value_range"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


# ----------------------------------------------------------------------------
# Stated preprocessing: options and the config file beside a checkpoint
# ----------------------------------------------------------------------------

PREPROCESSING_OPTIONS: tuple[str, ...] = (
    "input_size", "resize_size", "crop_pct", "interpolation", "mean", "std", "value_range",
)
"""Keys of a partial preprocessing (``load_model(preprocessing={...})``, the CLI options, a config file)."""

CONFIG_NAMES = ("{stem}.json", "config.json")
"""Config files looked up beside a checkpoint ``DIR/STEM.EXT``, first found wins."""


class PreprocessingOptions(TypedDict, total=False):
    """A checked partial preprocessing: some fields of :class:`Preprocessing`, in their field types."""

    input_size: tuple[int, int]
    resize_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    value_range: tuple[float, float]


@dataclass(frozen=True)
class ModelConfig:
    """What a config file beside a checkpoint states (timm's ``config.json`` keys, or ours).

    Attributes:
        path: the file.
        preprocessing: partial preprocessing (keys of :data:`PREPROCESSING_OPTIONS`).
        class_names: one name per class, or ``None``.
        num_classes: ``K``, or ``None``.
        architecture: a model spec or timm architecture name, or ``None``.
    """

    path: Path
    preprocessing: PreprocessingOptions
    class_names: list[str] | None = None
    num_classes: int | None = None
    architecture: str | None = None


def find_model_config(checkpoint: str | os.PathLike[str]) -> Path | None:
    """The config file beside ``checkpoint`` (``STEM.json``, else ``config.json``), or ``None``."""
    path = Path(checkpoint)
    for pattern in CONFIG_NAMES:
        candidate = path.with_name(pattern.format(stem=path.stem))
        if candidate != path and candidate.is_file():
            return candidate
    return None


def _input_size_pair(value: object, where: str) -> tuple[int, int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (2, 3):
        try:
            h, w = (int(v) for v in list(value)[-2:])
        except (TypeError, ValueError):
            pass
        else:
            return h, w
    raise ValueError(f"{where}: input_size must be N, [H, W] or [3, H, W], got {value!r}")


def _channel_triple(value: object, what: str) -> tuple[float, float, float]:
    """``mean`` / ``std`` as three floats; one number stands for all three channels."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (float(value),) * 3
    return float_triple(value, what)


def _value_range_pair(value: object, where: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in cast("Iterable[float]", value))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: value_range must be [lo, hi], e.g. [0, 255], got {value!r}") from None
    return lo, hi


def normalise_preprocessing_options(
    options: Mapping[str, object], where: str = "preprocessing"
) -> PreprocessingOptions:
    """Check a partial preprocessing and bring it to :class:`Preprocessing` field types.

    Accepts the keys of :data:`PREPROCESSING_OPTIONS` (and ``resize`` for ``resize_size``);
    ``None`` values are dropped. ``input_size`` may be ``N``, ``[H, W]`` or timm's ``[3, H, W]``.
    The keys keep the order of ``options``.

    Raises:
        ValueError: an unknown key or a bad value; the message names ``where``.
    """
    out: PreprocessingOptions = {}
    for key, value in options.items():
        if value is None:
            continue
        name = "resize_size" if key == "resize" else key
        if name not in PREPROCESSING_OPTIONS:
            close = difflib.get_close_matches(name, PREPROCESSING_OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown preprocessing key {key!r}{hint}; valid: {', '.join(PREPROCESSING_OPTIONS)}")
        if name == "input_size":
            out["input_size"] = _input_size_pair(value, where)
        elif name == "mean":
            out["mean"] = _channel_triple(value, f"{where}: mean")
        elif name == "std":
            out["std"] = _channel_triple(value, f"{where}: std")
        elif name == "value_range":
            out["value_range"] = _value_range_pair(value, where)
        elif name == "resize_size":
            out["resize_size"] = int(cast("str | SupportsInt", value))  # int() refuses what is not a number
        elif name == "crop_pct":
            out["crop_pct"] = float(cast("str | SupportsFloat", value))
        else:
            out["interpolation"] = str(value).lower()
    return out


def read_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Read a model config file (JSON).

    Preprocessing keys are read from the top level and from a ``pretrained_cfg`` object (timm's
    ``config.json``; its other keys such as ``hf_hub_id`` are ignored); ``crop_mode`` other than
    ``center`` is refused. Label names come from ``class_names`` or timm's ``label_names``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, not an object, or a bad value (the message names the file and key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config file {path} does not exist")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"model config {path} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"model config {path} is not UTF-8 text") from e
    if not isinstance(obj, dict):
        raise ValueError(f"model config {path} must hold a JSON object, got {type(obj).__name__}")
    flat: dict[str, object] = {}
    nested = obj.get("pretrained_cfg")
    if nested is not None and not isinstance(nested, dict):
        raise ValueError(f"model config {path}: 'pretrained_cfg' must be an object")
    for source in (nested or {}, obj):
        for key in (*PREPROCESSING_OPTIONS, "resize"):
            if key in source and source[key] is not None:
                flat[key] = source[key]
        mode = source.get("crop_mode")
        if mode not in (None, "center"):
            raise ValueError(f"model config {path}: crop_mode {mode!r} is not supported; only 'center' crops are")
    preprocessing = normalise_preprocessing_options(flat, f"model config {path}")
    names = obj.get("class_names", obj.get("label_names"))
    if names is not None and (
        not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
    ):
        raise ValueError(f"model config {path}: class_names must be a non-empty list of strings")
    k = obj.get("num_classes")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"model config {path}: num_classes must be a positive integer, got {k!r}")
    if names is not None and k is not None and len(names) != k:
        raise ValueError(f"model config {path}: {len(names)} class names but num_classes {k}")
    arch = obj.get("architecture")
    if arch is not None and not isinstance(arch, str):
        raise ValueError(f"model config {path}: architecture must be a string")
    return ModelConfig(path, preprocessing, names, k, arch)


def apply_preprocessing_options(
    base: Preprocessing, options: Mapping[str, object], where: str = "preprocessing"
) -> Preprocessing:
    """``base`` with the stated keys replaced; resize and crop_pct are kept consistent.

    A new ``input_size`` or ``crop_pct`` without ``resize_size`` gives
    ``resize_size = floor(max(H, W) / crop_pct)`` (timm's rule); a ``resize_size`` without
    ``crop_pct`` gives ``crop_pct = max(H, W) / resize_size``. Both given must agree (within 1 px).
    """
    opts = normalise_preprocessing_options(options, where)
    if not opts:
        return base
    merged = {**base.to_dict(), **opts}
    size = max(merged["input_size"])
    if "resize_size" in opts and "crop_pct" in opts:
        if abs(math.floor(size / opts["crop_pct"]) - opts["resize_size"]) > 1:
            raise ValueError(
                f"{where}: resize {opts['resize_size']} and crop_pct {opts['crop_pct']} disagree for input size "
                f"{size} (crop_pct = input size / resize); state only one of them"
            )
    elif "resize_size" in opts:
        merged["crop_pct"] = size / opts["resize_size"]
    elif "input_size" in opts or "crop_pct" in opts:
        merged["resize_size"] = math.floor(size / merged["crop_pct"])
    try:
        return Preprocessing.from_dict(merged)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e


