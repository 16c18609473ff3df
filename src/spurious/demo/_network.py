"""The demo classifiers' network: :class:`DemoNet`, a small ResNet for 32-128 px images.

Architecture (``antialias=True``): 6x6 stride-2 stem conv + 4x4 stride-2 average pool (64 -> 16
px), three stages of one basic residual block (32, 64, 128 channels; 16, 8, 4 px; the
down-sampling convs are 4x4 at stride 2 and their shortcuts average before the 1x1 projection),
global average pooling, one ``nn.Linear`` head, so ``D = 128``. Every down-sampling step covers
the input evenly: the earlier layout (3x3 stride-2 stem + 3x3 max-pool, 1x1 stride-2 shortcuts)
routed input gradients to a grid of single pixels with a 4-pixel period, so the feature
visualizations (NPFVs) of its robust model were dot grids whatever the component. A training
step costs the same as before (~85 ms for 64 images on 2 idle cores; a PGD step ~50 ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DemoNet", "DemoNetArch"]


class _RequiredArch(TypedDict):
    num_classes: int


class DemoNetArch(_RequiredArch, total=False):
    """Constructor arguments of a :class:`DemoNet` (:meth:`DemoNet.arch`, stored in checkpoints).

    Only ``num_classes`` is required by :meth:`DemoNet.from_arch`; a missing ``antialias`` means
    the earlier layout (checkpoints written before the flag existed).
    """

    widths: Sequence[int]
    blocks: Sequence[int]
    stem_pool: bool
    antialias: bool


class _BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, antialias: bool = False) -> None:
        super().__init__()
        if antialias and stride == 2:
            # 4x4 kernel at stride 2: every input pixel is covered by exactly two taps per axis
            self.conv1 = nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if antialias and stride == 2:
            # average, then project (ResNet-D): no input position is skipped
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(2, 2), nn.Conv2d(in_ch, out_ch, 1, 1, bias=False), nn.BatchNorm2d(out_ch)
            )
        elif stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DemoNet(nn.Module):
    """A small ResNet for 32-128 px images with one final ``nn.Linear`` head.

    Layout: stem (conv stride 2, BN, ReLU, optional pooling stride 2), then one stage per entry
    of ``widths`` (``blocks[i]`` basic residual blocks; every stage after the first halves the
    resolution), global average pooling, and ``fc``. The penultimate features ``phi(x)`` are the
    pooled output of the last stage, ``D = widths[-1]``.

    ``antialias=True`` (the default) avoids down-sampling that sees only part of the input
    grid, which makes input gradients (and feature visualizations) fall on a regular grid of
    isolated pixels: the stem is a 6x6 conv at stride 2 followed by a 4x4 *average* pool at
    stride 2, the down-sampling convs of the blocks are 4x4 at stride 2, and their shortcuts
    average 2x2 before the 1x1 projection (every input pixel is covered evenly by each
    down-sampling step). ``antialias=False`` is the earlier layout (3x3 stride-2 convs, a 3x3
    max-pool, 1x1 stride-2 shortcuts), kept to load its checkpoints.

    The network expects *normalised* images (``(x - mean) / std``); :class:`~spurious.models.Classifier`
    does that, so through the adapter the input is ``[N, 3, H, W]`` in ``[0, 1]``.

    Args:
        num_classes: ``K`` (outputs of ``fc``).
        widths: channels of each stage (default ``(32, 64, 128)``, so ``D = 128``).
        blocks: residual blocks per stage (same length as ``widths``; default one each).
        stem_pool: pool after the stem conv (total stride 4 before the first stage).
        antialias: the even-coverage layout above (else the earlier one).
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] | None = None,
        *,
        stem_pool: bool = True,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        blocks = tuple(int(b) for b in (blocks if blocks is not None else (1,) * len(widths)))
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        if len(blocks) != len(widths) or min(blocks) < 1:
            raise ValueError(
                f"blocks must give a positive block count per stage ({len(widths)} stages), "
                f"got {blocks!r}"
            )
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.widths, self.blocks, self.stem_pool = widths, blocks, bool(stem_pool)
        self.antialias = bool(antialias)
        stem: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 6, 2, 2, bias=False) if self.antialias
            else nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.AvgPool2d(4, 2, 1) if self.antialias else nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks, strict=False)):
            layers = [_BasicBlock(in_ch if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1,
                                  self.antialias)
                      for j in range(n)]
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, int(num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_features(self) -> int:
        """``D``, the dimension of ``phi`` (= ``widths[-1]``)."""
        return self.fc.in_features

    @property
    def num_classes(self) -> int:
        """``K``."""
        return self.fc.out_features

    def arch(self) -> DemoNetArch:
        """Constructor arguments as a JSON-able dict (inverse: :meth:`from_arch`)."""
        return {
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "blocks": list(self.blocks),
            "stem_pool": self.stem_pool,
            "antialias": self.antialias,
        }

    @classmethod
    def from_arch(cls, arch: DemoNetArch) -> DemoNet:
        """Build from the output of :meth:`arch` (weights are random; a missing ``antialias``
        means the earlier layout, ``False``)."""
        known = {"num_classes", "widths", "blocks", "stem_pool", "antialias"}
        unknown = sorted(set(arch) - known)
        if unknown or "num_classes" not in arch:
            raise ValueError(
                f"bad DemoNet arch {dict(arch)!r}: needs 'num_classes' and only keys {sorted(known)}"
            )
        return cls(
            int(arch["num_classes"]),
            arch.get("widths", (32, 64, 128)),
            arch.get("blocks"),
            stem_pool=bool(arch.get("stem_pool", True)),
            antialias=bool(arch.get("antialias", False)),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """Last-stage feature map ``[N, D, h, w]`` of normalised images ``[N, 3, H, W]``."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool a feature map to ``phi [N, D]``; then ``fc`` unless ``pre_logits``."""
        phi = self.pool(x)
        return phi if pre_logits else self.fc(phi)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, K]`` of normalised images ``[N, 3, H, W]``."""
        return self.forward_head(self.forward_features(x))
