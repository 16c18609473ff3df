"""GradCAM heatmaps for any per-image target scalar of ``(phi, logits)``, on CNNs and ViTs.

DESIGN.md ("Math"): the heatmap of a max-activating image of component ``(k, l)`` is GradCAM
(Selvaraju et al., 2017) with ``alpha_l^k`` as the target scalar, on the last conv block (or token
grid). For activations ``A [C, h, w]`` of the target layer and a target ``y``::

    w_c = mean_{p} dy / dA_c[p]          (gradient averaged over the h*w positions)
    M   = ReLU(sum_c w_c A_c)            ([h, w], then bilinearly upsampled to the image, / max)

The target layer is *discovered*, without a table of layer names (:func:`find_target_layer`): one
forward and backward pass on a dummy image records every module output that is a spatial map (a
``[N, C, h, w]`` or ``[N, h, w, C]`` map, or a ViT token grid ``[N, T, C]`` with
``T = extra + h*w``, the cls/distillation/register tokens first) and keeps the last one that has the
channel count and grid of the model's final spatial output *and* a non-zero gradient (of a random
linear form on ``phi``) at two or more positions. On CNNs that is the last block (torchvision ResNet: ``layer4``); on ViT/DeiT, whose
final token grid only feeds the classifier through the cls token (zero gradient on the patch
tokens), it is the first normalisation of the last block (timm: ``blocks.11.norm1``).

Example:
    >>> cam = GradCAM(classifier)                                       # doctest: +SKIP
    >>> maps = cam.attribute(images, lambda phi, logits: logits[:, 3])  # doctest: +SKIP
    >>> overlay(images[0], maps[0]).save("heatmap.png")                 # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from spurious._tensors import check_images
from spurious.models import Classifier

__all__ = ["GradCAM", "find_target_layer", "overlay"]

_ForwardHook = Callable[[nn.Module, tuple[object, ...], object], Tensor | None]
"""A forward hook: ``(module, inputs, output) -> replacement output or None``."""

# At most this many leading non-patch tokens (cls, distillation, register tokens) in a token grid.
_MAX_EXTRA_TOKENS = 16
# A map's grid must have the image's aspect ratio within this factor to count as spatial.
_ASPECT_TOLERANCE = 1.5


@dataclass(frozen=True)
class _Grid:
    """How to read a layer output as ``[N, C, h, w]``."""

    layout: str  # "nchw", "nhwc" or "tokens"
    h: int
    w: int
    channels: int
    extra: int = 0  # leading non-patch tokens ("tokens" only)

    def to_nchw(self, t: Tensor) -> Tensor:
        if self.layout == "nchw":
            return t
        if self.layout == "nhwc":
            return t.permute(0, 3, 1, 2)
        patches = t[:, self.extra :, :]
        return patches.reshape(t.shape[0], self.h, self.w, self.channels).permute(0, 3, 1, 2)


def _fits_image(h: int, w: int, height: int, width: int) -> bool:
    """A ``h x w`` grid that could tile a ``height x width`` image (same aspect, not finer)."""
    if h < 1 or w < 1 or h * w < 2 or h > height or w > width:
        return False
    ratio = (height / h) / (width / w)
    return 1.0 / _ASPECT_TOLERANCE <= ratio <= _ASPECT_TOLERANCE


def _grid_of(shape: torch.Size | tuple[int, ...], height: int, width: int) -> _Grid | None:
    """The spatial reading of a layer output shape, or ``None`` when it is not a spatial map."""
    if len(shape) == 4:
        _, a, b, c = (int(s) for s in shape)
        if _fits_image(b, c, height, width):
            return _Grid("nchw", b, c, a)
        if _fits_image(a, b, height, width):
            return _Grid("nhwc", a, b, c)
        return None
    if len(shape) == 3:
        _, tokens, channels = (int(s) for s in shape)
        for extra in range(min(_MAX_EXTRA_TOKENS, tokens - 2) + 1):
            n = tokens - extra
            h = max(1, round(math.sqrt(n * height / width)))
            for hh in (h - 1, h, h + 1):  # rounding of the square root
                if hh >= 1 and n % hh == 0 and _fits_image(hh, n // hh, height, width):
                    return _Grid("tokens", hh, n // hh, channels, extra)
    return None


def _check_classifier(classifier: object) -> Classifier:
    if not isinstance(classifier, Classifier):
        raise TypeError(
            f"classifier must be a spurious.models.Classifier (see load_model / "
            f"Classifier.from_module), got {type(classifier).__name__}"
        )
    return classifier


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every submodule's own ``training`` flag is restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.train(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _get_layer(classifier: Classifier, layer: str) -> nn.Module:
    if not isinstance(layer, str) or not layer:
        raise ValueError(
            f"layer must be a module name of classifier.model such as 'layer4', got {layer!r}; "
            f"use find_target_layer(classifier) to pick one"
        )
    names = [name for name, _ in classifier.model.named_modules() if name]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
        hint = f"did you mean: {', '.join(close)}?" if close else f"valid names include {names[-5:]}"
        raise ValueError(f"no layer {layer!r} in {classifier.spec!r}; {hint}")
    return classifier.model.get_submodule(layer)


@dataclass
class _Seen:
    name: str
    order: int
    grid: _Grid
    out: Tensor


def find_target_layer(classifier: Classifier) -> str:
    """Name (in ``classifier.model``) of the layer GradCAM uses by default: the last spatial block.

    One forward and backward pass of a random ``[1, 3, H, W]`` image (``H, W`` from
    ``classifier.input_size``) with forward hooks on every module records the outputs that are
    spatial maps: ``[N, C, h, w]`` (or channels-last ``[N, h, w, C]``) with ``h * w > 1`` and the
    image's aspect ratio, or token grids ``[N, T, C]`` with ``T = extra + h * w`` (``extra <= 16``
    leading cls/distillation/register tokens). Among the modules called once, it returns the last
    one whose output has the channel count and grid of the final spatial output and a gradient
    (of a random linear form on ``phi``) that is non-zero at two or more positions; failing that
    the last such map of any shape, failing that the final spatial output. Modes and hooks are
    restored; parameters get no ``.grad``.

    Args:
        classifier: the model adapter.

    Returns:
        a module name usable as ``classifier.model.get_submodule(name)`` and as
        ``GradCAM(classifier, layer=name)``, e.g. ``"layer4"`` (ResNet) or ``"blocks.11.norm1"``
        (timm ViT/DeiT).

    Raises:
        TypeError: ``classifier`` is not a :class:`~spurious.models.Classifier`.
        ValueError: no module produces a spatial map (e.g. an MLP on flattened pixels).
    """
    clf = _check_classifier(classifier)
    _, height, width = clf.input_size
    gen = torch.Generator().manual_seed(0)
    dummy = torch.rand((1, 3, height, width), generator=gen).to(clf.device)
    dtype = next((p.dtype for p in clf.parameters() if p.is_floating_point()), torch.float32)
    dummy = dummy.to(dtype).requires_grad_(True)  # graph even when the parameters are frozen

    seen: list[_Seen] = []
    calls: dict[str, int] = {}
    handles = []

    def make_hook(name: str) -> _ForwardHook:
        def hook(module: nn.Module, args: tuple[object, ...], out: object) -> Tensor | None:
            calls[name] = calls.get(name, 0) + 1
            if not isinstance(out, Tensor) or not out.is_floating_point() or not out.requires_grad:
                return None
            grid = _grid_of(out.shape, height, width)
            if grid is None:
                return None
            seen.append(_Seen(name, len(seen), grid, out))
            return None

        return hook

    try:
        for name, module in clf.model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with _eval_mode(clf), torch.enable_grad():
            phi = clf.phi(dummy)
            weights = torch.randn(phi.shape[1], generator=gen).to(phi)
            score = (phi * weights).sum()
            singles = [s for s in seen if calls.get(s.name) == 1]
            grads = (
                torch.autograd.grad(score, [s.out for s in singles], allow_unused=True)
                if singles
                else ()
            )
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError(
            f"no layer of {clf.spec!r} outputs a spatial map ([N, C, h, w] with h*w > 1, or a "
            f"ViT token grid [N, extra + h*w, C]) for a {height}x{width} input; GradCAM needs one"
        )

    def spread(s: _Seen, g: Tensor | None) -> bool:
        if g is None:
            return False
        energy = s.grid.to_nchw(g.detach()).abs().sum(dim=(0, 1))
        return int((energy > 0).sum()) >= 2

    final = seen[-1].grid
    shape = (final.h, final.w, final.channels)
    pairs = list(zip(singles, grads, strict=False))[::-1]  # last executed first; spread is checked lazily
    for s, g in pairs:
        if (s.grid.h, s.grid.w, s.grid.channels) == shape and spread(s, g):
            return s.name
    for s, g in pairs:
        if spread(s, g):
            return s.name
    return seen[-1].name


class GradCAM:
    """GradCAM of a per-image target scalar ``target(phi, logits)`` at one layer of a classifier.

    Attributes:
        classifier: the model adapter.
        layer: module name inside ``classifier.model`` (default: :func:`find_target_layer`).
    """

    def __init__(self, classifier: Classifier, layer: str | None = None) -> None:
        """Check the classifier and the layer (discovering it when ``layer`` is ``None``).

        Raises:
            TypeError: ``classifier`` is not a :class:`~spurious.models.Classifier`.
            ValueError: ``layer`` is not a module name of ``classifier.model`` (the message lists
                close names), or no spatial layer can be found.
        """
        self.classifier = _check_classifier(classifier)
        self.layer = find_target_layer(self.classifier) if layer is None else layer
        self._module = _get_layer(self.classifier, self.layer)

    def attribute(self, x: Tensor, target: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Heatmaps of ``target`` for a batch of images (one forward + one backward pass).

        ``M_i = ReLU(sum_c w_ic A_ic)`` with ``w_ic = mean_p d target_i / d A_ic[p]`` (module
        docstring), bilinearly upsampled (``align_corners=False``) to ``[H, W]`` and divided by
        its maximum; an all-zero map stays zero. The model runs in eval mode; every module's mode
        is restored and the hook removed afterwards, also when ``target`` raises. Parameters get no
        ``.grad`` and ``x`` is not modified. When the layer runs several times in one forward
        pass, its last call is used.

        Args:
            x: images ``[N, 3, H, W]``, float in ``[0, 1]`` (moved to the classifier's device).
            target: ``target(phi [N, D], logits [N, K]) -> [N]``, one scalar per image (image
                ``i``'s value may depend on image ``i`` only), e.g. ``alpha_l^k`` with its own
                ``(k, l)`` per image, or ``lambda phi, logits: logits[:, k]``.

        Returns:
            ``[N, H, W]`` float32 heatmaps in ``[0, 1]``, on ``x``'s device.

        Raises:
            ValueError: ``x`` is not ``[N, 3, H, W]`` in ``[0, 1]``, ``target`` does not return a
                float ``[N]`` tensor, or the layer's output is not a spatial map.
            TypeError: ``x`` is not a float tensor, or ``target`` is not callable.
        """
        check_images(x)
        if not callable(target):
            raise TypeError(f"target must be callable (phi, logits) -> [N], got {type(target).__name__}")
        clf = self.classifier
        n, _, height, width = x.shape
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: tuple[object, ...], out: object) -> Tensor | None:
            if isinstance(out, Tensor):
                captured.append(out)
                return out.clone()  # later in-place ops must not alter the captured tensor
            return None

        handle = self._module.register_forward_hook(hook)
        try:
            with _eval_mode(clf), torch.enable_grad():
                dtype = next((p.dtype for p in clf.parameters() if p.is_floating_point()), x.dtype)
                inp = x.detach().to(device=clf.device, dtype=dtype).requires_grad_(True)
                phi, logits = clf.phi_and_logits(inp)
                values = target(phi, logits)
                if not isinstance(values, Tensor) or values.shape != (n,) or not values.is_floating_point():
                    got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
                    raise ValueError(
                        f"target(phi, logits) must return one float per image, shape [{n}], got {got}"
                    )
                if not captured:
                    raise ValueError(f"layer {self.layer!r} did not produce a tensor in the forward pass")
                act = captured[-1]
                grid = _grid_of(act.shape, height, width)
                if grid is None:
                    raise ValueError(
                        f"layer {self.layer!r} outputs {tuple(act.shape)}, not a spatial map for a "
                        f"{height}x{width} input ([N, C, h, w], [N, h, w, C] or a token grid "
                        f"[N, extra + h*w, C]); pick another layer or use find_target_layer"
                    )
                (grad,) = torch.autograd.grad(values.sum(), act, allow_unused=True)
        finally:
            handle.remove()

        a = grid.to_nchw(act.detach()).to(torch.float32)
        g = torch.zeros_like(a) if grad is None else grid.to_nchw(grad).to(torch.float32)
        weights = g.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
        cam = F.relu((weights * a).sum(dim=1, keepdim=True))  # [N, 1, h, w]
        if cam.shape[2:] != (height, width):
            cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
        cam = cam[:, 0].clamp_min(0.0)
        peak = cam.flatten(1).amax(dim=1).view(n, 1, 1)
        cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
        return cam.to(x.device)


def overlay(image: Tensor, heatmap: Tensor, *, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Blend a heatmap, coloured with a matplotlib colormap, over an image.

    ``out = (1 - alpha) * image + alpha * colormap(heatmap)`` per pixel, rounded to 8 bits.

    Args:
        image: ``[3, H, W]`` RGB, float in ``[0, 1]``.
        heatmap: ``[H, W]`` in ``[0, 1]`` (e.g. one map of :meth:`GradCAM.attribute`).
        alpha: weight of the heatmap colour, in ``[0, 1]`` (0 = the image, 1 = the heatmap).
        colormap: a matplotlib colormap name.

    Returns:
        an RGB PIL image of size ``(W, H)``.

    Raises:
        ValueError: wrong shapes, values outside ``[0, 1]``, ``alpha`` outside ``[0, 1]`` or an
            unknown colormap.
    """
    import matplotlib

    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"image must be a tensor [3, H, W], got "
            f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}"
        )
    if not isinstance(heatmap, Tensor) or tuple(heatmap.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"heatmap must be a tensor [H, W] = {tuple(image.shape[1:])} matching the image, got "
            f"{tuple(heatmap.shape) if isinstance(heatmap, Tensor) else type(heatmap).__name__}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    img = image.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
    heat = heatmap.detach().to("cpu", torch.float64).numpy()
    for what, arr in (("image", img), ("heatmap", heat)):
        if not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
            raise ValueError(f"{what} values must lie in [0, 1], got [{arr.min():.4g}, {arr.max():.4g}]")
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError as e:
        raise ValueError(f"unknown matplotlib colormap {colormap!r}, e.g. 'jet', 'viridis', 'inferno'") from e
    colours = np.asarray(cmap(heat))[..., :3]
    blended = (1.0 - alpha) * img + alpha * colours
    return Image.fromarray(np.round(blended * 255.0).clip(0, 255).astype(np.uint8))
