"""VGG-11/13/16/19 in plain torch, as in MP-SL's code (models/vgg in github.com/jtirana98/MultiHop-Federeated-
Split-Learning): 3x3 convolutions with bias and ReLU, max-pools of stride 2 padded by 1 (`pool_padding`; torchvision
pads by 0), then the ImageNet-style classifier: adaptive average pool to 7x7, 512*7*7 -> 4096 -> 4096 -> classes with
dropout 0.5 before the second and third linear layers. On 32x32 inputs the last feature map is 2x2, which the
average pool spreads over 7x7, so the first linear layer still has 25088 inputs (102.8 M of VGG-19's 139.6 M
parameters at 10 classes).

Layers, as MP-SL cuts the model: each convolution with its ReLU, each max-pool, the average pool, each linear layer
(25 for VGG-19). Width groups: one per convolution (`conv1`..`convN`) and one per hidden linear layer (`fc1`,
`fc2`); the width multiplier scales all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from torch import nn

from msfusion_ray.models.base import ModelFamily, register, scaled
from msfusion_ray.models.layers import Layer
from msfusion_ray.splitting.spec import AxisTag, class_outputs, width_axes
from msfusion_ray.validation import checked, non_negative, positive, probability

POOL = "M"
CONFIGS: dict[int, tuple[int | str, ...]] = {  # channels per convolution, POOL for a max-pool (VGG's A, B, D, E)
    11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    13: (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    16: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    19: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL),
}


@dataclass(frozen=True)
class VGGOptions:
    """model.options for VGG."""

    depth: Literal[11, 13, 16, 19] = 19
    hidden: int = checked(4096, check=positive)  # units of each hidden linear layer at width 1
    pooled: int = checked(7, check=positive)  # side of the average pool before the classifier (ImageNet-style: 7)
    pool_padding: int = checked(1, check=non_negative)  # MP-SL's code pads its max-pools by 1
    dropout: float = checked(0.5, check=probability)
    batch_norm: bool = False  # the MP-SL code's vgg19 has none


class VGG(nn.Module):
    """The whole model, assembled from the family's own layers (so a chain of parts is the same network)."""

    def __init__(self, layers: list[nn.Module], n_features: int):
        super().__init__()
        self.features = nn.Sequential(*layers[:n_features])
        self.avgpool = layers[n_features]
        self.classifier = nn.Sequential(*layers[n_features + 1:])

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the last hidden layer's output, logits)."""
        hidden = self.classifier[:-1](self.avgpool(self.features(x)))
        return hidden, self.classifier[-1](hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


def _conv(in_units: int, in_group: str | None, units: int, group: str, batch_norm: bool) -> nn.Module:
    modules = [width_axes(nn.Conv2d(in_units, units, 3, padding=1), inp=in_group, out=group)]
    if batch_norm:
        modules.append(width_axes(nn.BatchNorm2d(units), out=group))
    return nn.Sequential(*modules, nn.ReLU(inplace=True))


def _linear(in_units: int, in_group: AxisTag, units: int, group: str | None, dropout: float | None) -> nn.Module:
    modules = [nn.Dropout(dropout)] if dropout is not None else []
    linear = width_axes(nn.Linear(in_units, units), inp=in_group, out=group)
    modules.append(linear if group is not None else class_outputs(linear))  # no output group: the class scores
    if group is not None:
        modules.append(nn.ReLU(inplace=True))
    return nn.Sequential(*modules)


@register("vgg")
class VGGFamily(ModelFamily):
    Options = VGGOptions

    def _conv_groups(self) -> list[str]:
        return [f"conv{i}" for i, c in enumerate((c for c in CONFIGS[self.options.depth] if c != POOL), start=1)]

    def default_widths(self) -> dict[str, int]:
        channels = [c for c in CONFIGS[self.options.depth] if c != POOL]
        widths = {group: scaled(c, self.width) for group, c in zip(self._conv_groups(), channels)}
        widths["fc1"] = widths["fc2"] = scaled(self.options.hidden, self.width)
        return widths

    def _layers(self, widths: Mapping[str, int] | None = None) -> list[Layer]:
        widths = {**self.full_widths(), **(widths or {})}
        options = self.options
        layers: list[Layer] = []
        in_units, in_group, conv = self.data.input_shape[0], None, 0
        for item in CONFIGS[options.depth]:
            index = len(layers)
            if item == POOL:
                layers.append(Layer(f"pool{index}", f"features.{index}.",
                                    lambda: nn.MaxPool2d(2, stride=2, padding=options.pool_padding)))
                continue
            conv += 1
            group = f"conv{conv}"
            layers.append(Layer(group, f"features.{index}.",
                                lambda i=in_units, g=in_group, u=widths[group], o=group:
                                _conv(i, g, u, o, options.batch_norm)))
            in_units, in_group = widths[group], group
        area = options.pooled ** 2
        layers.append(Layer("avgpool", "avgpool.",
                            lambda: nn.Sequential(nn.AdaptiveAvgPool2d(options.pooled), nn.Flatten())))
        fc1, fc2 = widths["fc1"], widths["fc2"]
        layers += [
            Layer("fc1", "classifier.0.", lambda: _linear(in_units * area, (in_group, area), fc1, "fc1", None)),
            Layer("fc2", "classifier.1.", lambda: _linear(fc1, "fc1", fc2, "fc2", options.dropout)),
            Layer("fc3", "classifier.2.",
                  lambda: _linear(fc2, "fc2", self.data.num_outputs, None, options.dropout)),
        ]
        return layers

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        layers = self._layers(widths)
        n_features = next(i for i, layer in enumerate(layers) if layer.name == "avgpool")
        return VGG([layer.build() for layer in layers], n_features)
