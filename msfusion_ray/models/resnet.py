"""CIFAR-style ResNet-18 with a width multiplier (64, 128, 256, 512 channels at width 1).

Width groups: one per stage for the residual stream (`stage1`..`stage4`: the stem, every block's second conv and
the projection shortcuts write it, so they must share one index set), and one per block for the block's inner
channels (`stage{s}.block{b}`).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import DataShape, register, scaled
from msfusion_ray.splitting.spec import width_axes

STAGE_CHANNELS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    def __init__(self, in_group: str, in_units: int, out_group: str, out_units: int,
                 inner_group: str, inner_units: int, stride: int):
        super().__init__()
        self.conv1 = width_axes(nn.Conv2d(in_units, inner_units, 3, stride, 1, bias=False), inp=in_group,
                                out=inner_group)
        self.bn1 = width_axes(nn.BatchNorm2d(inner_units), out=inner_group)
        self.conv2 = width_axes(nn.Conv2d(inner_units, out_units, 3, 1, 1, bias=False), inp=inner_group,
                                out=out_group)
        self.bn2 = width_axes(nn.BatchNorm2d(out_units), out=out_group)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_group != out_group:
            self.shortcut = nn.Sequential(
                width_axes(nn.Conv2d(in_units, out_units, 1, stride, bias=False), inp=in_group, out=out_group),
                width_axes(nn.BatchNorm2d(out_units), out=out_group),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: Mapping[str, int]):
        super().__init__()
        self.stem = nn.Sequential(
            width_axes(nn.Conv2d(in_channels, widths["stage1"], 3, 1, 1, bias=False), out="stage1"),
            width_axes(nn.BatchNorm2d(widths["stage1"]), out="stage1"),
            nn.ReLU(inplace=True),
        )
        blocks = []
        previous = "stage1"
        for s, blocks_in_stage in enumerate(BLOCKS_PER_STAGE, start=1):
            stage = f"stage{s}"
            for b in range(1, blocks_in_stage + 1):
                inner = f"{stage}.block{b}"
                stride = 2 if (s > 1 and b == 1) else 1
                blocks.append(BasicBlock(previous, widths[previous], stage, widths[stage], inner, widths[inner],
                                         stride))
                previous = stage
        self.blocks = nn.Sequential(*blocks)
        self.classifier = width_axes(nn.Linear(widths["stage4"], num_classes), inp="stage4")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)
        return features, self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


@register("resnet18")
def make_resnet18(shape: DataShape, options: dict, width: float = 1.0,
                  widths: Mapping[str, int] | None = None) -> nn.Module:
    """The full ResNet-18 at width multiplier `width`, or at `widths` units per group (a narrowed global model);
    sub-models are cut from it."""
    if options:
        raise UserInputError(f"model.options.{next(iter(options))}", "unknown option for resnet18 (it takes none)")
    if widths is None:
        widths = {}
        for s, (channels, blocks) in enumerate(zip(STAGE_CHANNELS, BLOCKS_PER_STAGE), start=1):
            widths[f"stage{s}"] = scaled(channels, width)
            for b in range(1, blocks + 1):
                widths[f"stage{s}.block{b}"] = scaled(channels, width)
    return ResNet18(shape.input_shape[0], shape.num_outputs, widths)
