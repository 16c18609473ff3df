"""Image batches handed to the library (NCHW float in [0, 1], RGB): their checks, and a model frozen while
an input is optimised."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn


@contextlib.contextmanager
def inputs_only(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients while optimising the input; the caller's state is restored."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def check_images(x: object, name: str = "x", *, rgb: bool = True) -> Tensor:
    """``x`` itself when it is a non-empty float batch with values in ``[0, 1]``.

    Args:
        x: the batch to check; images ``[N, 3, H, W]`` (with ``rgb=False`` any ``[N, ...]``).
        name: the argument's name in the messages.
        rgb: require ``[N, 3, H, W]``.

    Raises:
        TypeError: ``x`` is not a float ``torch.Tensor``.
        ValueError: an empty batch, a shape that is not ``[N, 3, H, W]`` (``rgb``) or ``[N, ...]``,
            or a value outside ``[0, 1]`` (a normalised batch).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, 3, H, W] of floats in [0, 1], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got {x.dtype}; a float "
                        f"torch.Tensor is expected (for uint8 images use x.float() / 255)")
    if x.dim() < 2 or x.shape[0] < 1 or x[0].numel() < 1 or (rgb and (x.dim() != 4 or x.shape[1] != 3)):
        wanted = "of RGB images [N, 3, H, W]" if rgb else "[N, ...] (images [N, 3, H, W])"
        raise ValueError(f"{name} must be a non-empty batch {wanted}, got shape {tuple(x.shape)}; add a batch "
                         f"dimension with x[None] for one image")
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"{name} must lie in the box [0, 1] (images as floats with values in [0, 1]), got "
                         f"values in [{lo:.4g}, {hi:.4g}]; undo any mean/std normalisation first (the "
                         f"classifier normalises internally)")
    return x
