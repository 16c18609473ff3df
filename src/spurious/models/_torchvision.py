"""The ``torchvision:NAME`` source: every torchvision classification model, with its DEFAULT weights."""

from __future__ import annotations

from torch import nn

from ._checkpoint import Checkpoint, load_state_dict, read_checkpoint
from ._classifier import infer_num_classes
from ._preprocessing import Preprocessing
from ._source import LoadRequest, Network, download_error

__all__ = ["SOURCE", "TorchvisionSource", "weights_preprocessing"]

_DEFAULT_K = 1000


def _classification_models() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def weights_preprocessing(name: str) -> Preprocessing:
    """The eval transform of ``name``'s DEFAULT weights (plain defaults when it has none)."""
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


def _model(request: LoadRequest, checkpoint: Checkpoint | None) -> nn.Module:
    import torchvision

    name, spec, num_classes = request.name, request.spec, request.num_classes
    if checkpoint is not None:
        if num_classes is None:
            num_classes = infer_num_classes(
                torchvision.models.get_model(name, weights=None), checkpoint.state_dict, _DEFAULT_K
            )
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model: nn.Module = torchvision.models.get_model(name, weights=None, **kwargs)
        load_state_dict(model, checkpoint, spec)
        return model
    if not request.pretrained:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return torchvision.models.get_model(name, weights=None, **kwargs)
    if num_classes not in (None, _DEFAULT_K):
        raise ValueError(
            f"the pretrained weights of {spec!r} have {_DEFAULT_K} classes, not num_classes="
            f"{num_classes}; use pretrained=False or a checkpoint with {num_classes} classes"
        )
    try:
        return torchvision.models.get_model(name, weights="DEFAULT")
    except OSError as e:
        raise download_error(spec, e) from e


class TorchvisionSource:
    """``torchvision:NAME`` for ``NAME`` in ``torchvision.models.list_models(module=torchvision.models)``."""

    prefix = "torchvision"

    def names(self) -> list[str]:
        return _classification_models()

    def has(self, name: str) -> bool:
        return name in _classification_models()

    def unknown_reason(self, name: str) -> str | None:
        return None if self.has(name) else " (not a torchvision classification model)"

    def load(self, request: LoadRequest) -> Network:
        checkpoint = read_checkpoint(request.checkpoint) if request.checkpoint is not None else None
        return Network(
            _model(request, checkpoint),
            weights_preprocessing(request.name),
            f"defaults of torchvision:{request.name} (its DEFAULT weights' transform)",
            checkpoint,
        )


SOURCE = TorchvisionSource()
