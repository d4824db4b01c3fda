"""CIFAR-style ResNet-18 with a width multiplier (64, 128, 256, 512 channels at width 1), and MP-SL's ResNet-101
(at the end of the file).

Width groups: one per stage for the residual stream (`stage1`..`stage4`: the stem, every block's second conv and
the projection shortcuts write it, so they must share one index set), and one per block for the block's inner
channels (`stage{s}.block{b}`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from msfusion_ray.models.base import ModelFamily, register, scaled
from msfusion_ray.models.layers import Layer
from msfusion_ray.splitting.spec import class_outputs, width_axes

STAGE_CHANNELS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


def _shortcut(in_group: str, in_units: int, out_group: str, out_units: int, stride: int) -> nn.Module:
    """Identity, or a 1x1 projection with BatchNorm where the stride or the width group changes."""
    if stride == 1 and in_group == out_group:
        return nn.Sequential()
    return nn.Sequential(
        width_axes(nn.Conv2d(in_units, out_units, 1, stride, bias=False), inp=in_group, out=out_group),
        width_axes(nn.BatchNorm2d(out_units), out=out_group),
    )


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
        self.shortcut = _shortcut(in_group, in_units, out_group, out_units, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stem(in_channels: int, widths: Mapping[str, int]) -> nn.Module:
    return nn.Sequential(
        width_axes(nn.Conv2d(in_channels, widths["stage1"], 3, 1, 1, bias=False), out="stage1"),
        width_axes(nn.BatchNorm2d(widths["stage1"]), out="stage1"),
        nn.ReLU(inplace=True),
    )


def _block_builders(block: type[nn.Module], widths: Mapping[str, int], first: str, blocks_per_stage: tuple[int, ...],
                    inner_units: Callable[[str], Any]) -> list[Callable[[], nn.Module]]:
    """One builder per residual block, in order (each block can be built alone): stage s > 1 starts with a
    stride-2 block; `first` is the width group the first block reads, `inner_units(block group)` its inner units."""
    builders = []
    previous = first
    for s, blocks_in_stage in enumerate(blocks_per_stage, start=1):
        stage = f"stage{s}"
        for b in range(1, blocks_in_stage + 1):
            inner = f"{stage}.block{b}"
            stride = 2 if (s > 1 and b == 1) else 1
            builders.append(partial(block, previous, widths[previous], stage, widths[stage], inner,
                                    inner_units(inner), stride))
            previous = stage
    return builders


def _basic_blocks(widths: Mapping[str, int]) -> list[Callable[[], nn.Module]]:
    return _block_builders(BasicBlock, widths, "stage1", BLOCKS_PER_STAGE, lambda inner: widths[inner])


def _head_layers(widths: Mapping[str, int], classes: int) -> list[Layer]:
    """Global average pool (flattened) and the linear classifier: a ResNet's last two layers when it is cut by
    depth (the pool is a layer of its own, as in MP-SL's cut)."""
    return [
        Layer("avgpool", "avgpool.", lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        Layer("classifier", "classifier.", lambda: width_axes(nn.Linear(widths["stage4"], classes), inp="stage4")),
    ]


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: Mapping[str, int]):
        super().__init__()
        self.stem = _stem(in_channels, widths)
        self.blocks = nn.Sequential(*(build() for build in _basic_blocks(widths)))
        self.classifier = class_outputs(width_axes(nn.Linear(widths["stage4"], num_classes), inp="stage4"))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)
        return features, self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


@register("resnet18")
class ResNet18Family(ModelFamily):
    def default_widths(self) -> dict[str, int]:
        widths = {}
        for s, (channels, blocks) in enumerate(zip(STAGE_CHANNELS, BLOCKS_PER_STAGE), start=1):
            widths[f"stage{s}"] = scaled(channels, self.width)
            for b in range(1, blocks + 1):
                widths[f"stage{s}.block{b}"] = scaled(channels, self.width)
        return widths

    def _layers(self, widths: Mapping[str, int] | None = None) -> list[Layer]:
        """The stem, each residual block, the average pool and the classifier (11 layers)."""
        widths = {**self.full_widths(), **(widths or {})}
        return [
            Layer("stem", "stem.", lambda: _stem(self.data.input_shape[0], widths)),
            *(Layer(f"block{i}", f"blocks.{i}.", build) for i, build in enumerate(_basic_blocks(widths))),
            *_head_layers(widths, self.data.num_outputs),
        ]

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        return ResNet18(self.data.input_shape[0], self.data.num_outputs, widths)


# ResNet-101 as in MP-SL's code (models/resnet/resnet_split.cpp in github.com/jtirana98/MultiHop-Federeated-Split-
# Learning): the ImageNet stem (7x7 stride-2 convolution with bias, then max-pool, BatchNorm and ReLU in that order),
# bottleneck blocks of 3, 4, 23, 3 with 256, 512, 1024, 2048 output channels (inner width a quarter of that), a
# projection shortcut wherever the stride or the channel count changes, global average pool and one linear layer.
# Width groups: `stem`, one per stage for the residual stream, and two per block for its inner convolutions.
BOTTLENECK_CHANNELS = (256, 512, 1024, 2048)
BOTTLENECK_BLOCKS = (3, 4, 23, 3)


class Bottleneck(nn.Module):
    def __init__(self, in_group: str, in_units: int, out_group: str, out_units: int, inner: str,
                 inner_units: tuple[int, int], stride: int):
        super().__init__()
        a, b = f"{inner}.a", f"{inner}.b"
        self.conv1 = width_axes(nn.Conv2d(in_units, inner_units[0], 1, bias=False), inp=in_group, out=a)
        self.bn1 = width_axes(nn.BatchNorm2d(inner_units[0]), out=a)
        self.conv2 = width_axes(nn.Conv2d(inner_units[0], inner_units[1], 3, stride, 1, bias=False), inp=a, out=b)
        self.bn2 = width_axes(nn.BatchNorm2d(inner_units[1]), out=b)
        self.conv3 = width_axes(nn.Conv2d(inner_units[1], out_units, 1, bias=False), inp=b, out=out_group)
        self.bn3 = width_axes(nn.BatchNorm2d(out_units), out=out_group)
        self.shortcut = _shortcut(in_group, in_units, out_group, out_units, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _stem_conv(in_channels: int, widths: Mapping[str, int]) -> nn.Module:
    return width_axes(nn.Conv2d(in_channels, widths["stem"], 7, 2, 3), out="stem")


def _stem_pool(widths: Mapping[str, int]) -> nn.Module:
    """Max-pool, BatchNorm, ReLU: one layer in MP-SL's cut, after the stem convolution."""
    return nn.Sequential(nn.MaxPool2d(3, 2, 1), width_axes(nn.BatchNorm2d(widths["stem"]), out="stem"),
                         nn.ReLU(inplace=True))


def _bottleneck_builders(widths: Mapping[str, int]) -> list[Callable[[], nn.Module]]:
    return _block_builders(Bottleneck, widths, "stem", BOTTLENECK_BLOCKS,
                           lambda inner: (widths[f"{inner}.a"], widths[f"{inner}.b"]))


class ResNet101(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: Mapping[str, int]):
        super().__init__()
        self.conv1 = _stem_conv(in_channels, widths)
        self.stem = _stem_pool(widths)
        self.blocks = nn.Sequential(*(build() for build in _bottleneck_builders(widths)))
        self.classifier = class_outputs(width_axes(nn.Linear(widths["stage4"], num_classes), inp="stage4"))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.adaptive_avg_pool2d(self.blocks(self.stem(self.conv1(x))), 1).flatten(1)
        return features, self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


@register("resnet101")
class ResNet101Family(ModelFamily):
    def default_widths(self) -> dict[str, int]:
        widths = {"stem": scaled(64, self.width)}
        for s, (channels, blocks) in enumerate(zip(BOTTLENECK_CHANNELS, BOTTLENECK_BLOCKS), start=1):
            widths[f"stage{s}"] = scaled(channels, self.width)
            for b in range(1, blocks + 1):
                widths[f"stage{s}.block{b}.a"] = widths[f"stage{s}.block{b}.b"] = scaled(channels // 4, self.width)
        return widths

    def _layers(self, widths: Mapping[str, int] | None = None) -> list[Layer]:
        """The stem convolution, the stem's pool/BatchNorm/ReLU, each bottleneck block, the average pool and the
        classifier (37 layers, as MP-SL cuts it)."""
        widths = {**self.full_widths(), **(widths or {})}
        return [
            Layer("conv1", "conv1.", lambda: _stem_conv(self.data.input_shape[0], widths)),
            Layer("stem", "stem.", lambda: _stem_pool(widths)),
            *(Layer(f"block{i}", f"blocks.{i}.", build) for i, build in enumerate(_bottleneck_builders(widths))),
            *_head_layers(widths, self.data.num_outputs),
        ]

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        return ResNet101(self.data.input_shape[0], self.data.num_outputs, widths)
