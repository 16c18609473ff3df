"""The ``timm:NAME[.TAG]`` source: every timm architecture, and its pretrained tags."""

from __future__ import annotations

import logging
import math
from typing import cast

from torch import nn

from ._checkpoint import Checkpoint, load_state_dict, read_checkpoint
from ._classifier import infer_num_classes
from ._preprocessing import INTERPOLATIONS, Preprocessing
from ._source import DefaultNames, LoadRequest, Network, download_error, imagenet_names

__all__ = ["SOURCE", "TimmSource", "create_timm_model", "pretrained_cfg_preprocessing"]

logger = logging.getLogger(__name__)


def pretrained_cfg_preprocessing(model: nn.Module) -> Preprocessing:
    """The eval preprocessing of a timm model's ``pretrained_cfg`` (``timm.data.resolve_data_config``)."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    _, height, width = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    interpolation = str(cfg.get("interpolation") or "bicubic")
    if interpolation not in INTERPOLATIONS:  # e.g. "random" (train-time only)
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


def _class_names(model: nn.Module) -> DefaultNames:
    """ImageNet-1k names, or the names of the ImageNet subset (22k, 12k) the model was trained on."""

    def names(k: int) -> tuple[list[str], str] | None:
        default = imagenet_names(k)
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
        return [d.split(",")[0].strip() for d in descriptions], "timm label subset"

    return names


def create_timm_model(name: str, *, pretrained: bool, num_classes: int | None = None) -> nn.Module:
    """``timm.create_model``, with the architecture's own ``K`` when ``num_classes`` is ``None``."""
    import timm

    if num_classes is None:
        return timm.create_model(name, pretrained=pretrained)
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)


def _model(request: LoadRequest, checkpoint: Checkpoint | None) -> nn.Module:
    name, spec, num_classes = request.name, request.spec, request.num_classes
    if checkpoint is not None:
        model = create_timm_model(name, pretrained=False, num_classes=num_classes)
        if num_classes is None:
            inferred = infer_num_classes(model, checkpoint.state_dict, cast(int, model.num_classes))
            if inferred is not None:
                model = create_timm_model(name, pretrained=False, num_classes=inferred)
        load_state_dict(model, checkpoint, spec)
        return model
    if not request.pretrained:
        return create_timm_model(name, pretrained=False, num_classes=num_classes)
    try:
        return create_timm_model(name, pretrained=True, num_classes=num_classes)
    except OSError as e:
        raise download_error(spec, e) from e


class TimmSource:
    """``timm:ARCH`` for every timm architecture, ``timm:ARCH.TAG`` for its pretrained tags."""

    prefix = "timm"

    def names(self) -> list[str]:
        import timm

        return list(dict.fromkeys(timm.list_models() + timm.list_models(pretrained=True)))

    def has(self, name: str) -> bool:
        import timm

        return bool(timm.is_model(name))

    def unknown_reason(self, name: str) -> str | None:
        import timm

        if not self.has(name) or ("." in name and name not in timm.list_models(pretrained=True)):
            return " (not a timm model or pretrained tag)"
        return None

    def load(self, request: LoadRequest) -> Network:
        checkpoint = read_checkpoint(request.checkpoint) if request.checkpoint is not None else None
        model = _model(request, checkpoint)
        return Network(
            model,
            pretrained_cfg_preprocessing(model),
            f"defaults of timm:{request.name} (its pretrained_cfg)",
            checkpoint,
            _class_names(model),
        )


SOURCE = TimmSource()
