"""A small CNN: two conv blocks and a hidden linear layer. The quick-start model."""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from msfusion_ray.models.base import ModelFamily, register, scaled
from msfusion_ray.models.layers import Layer
from msfusion_ray.splitting.spec import class_outputs, width_axes


def _conv_block(in_units: int, in_group: str | None, units: int, group: str) -> list[nn.Module]:
    return [
        width_axes(nn.Conv2d(in_units, units, 3, padding=1, bias=False), inp=in_group, out=group),
        width_axes(nn.BatchNorm2d(units), out=group),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


def _hidden_layer(in_units: int, pooled: int, hidden: int) -> list[nn.Module]:
    return [nn.Flatten(), width_axes(nn.Linear(in_units * pooled, hidden), inp=("conv2", pooled), out="fc1"),
            nn.ReLU(inplace=True)]


def _numbered(modules: list[nn.Module], first: int) -> nn.Sequential:
    """Modules named first, first + 1, ...: one layer of `features` built alone, its keys as in the whole model."""
    return nn.Sequential(OrderedDict((str(first + i), module) for i, module in enumerate(modules)))


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, widths: Mapping[str, int]):
        super().__init__()
        c1, c2, hidden = widths["conv1"], widths["conv2"], widths["fc1"]
        pooled = (image_size // 4) ** 2
        self.features = nn.Sequential(
            *_conv_block(in_channels, None, c1, "conv1"),
            *_conv_block(c1, "conv1", c2, "conv2"),
            *_hidden_layer(c2, pooled, hidden),
        )
        self.classifier = class_outputs(width_axes(nn.Linear(hidden, num_classes), inp="fc1"))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate representation, logits)."""
        features = self.features(x)
        return features, self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


@register("cnn")
class CNNFamily(ModelFamily):
    def default_widths(self) -> dict[str, int]:
        return {"conv1": scaled(32, self.width), "conv2": scaled(64, self.width), "fc1": scaled(128, self.width)}

    def layers(self, widths: Mapping[str, int] | None = None) -> list[Layer]:
        """Each conv block (conv, BatchNorm, ReLU, max-pool), the hidden linear layer, the classifier."""
        widths = {**self.full_widths(), **(widths or {})}
        channels, size, _ = self.data.input_shape
        c1, c2, hidden = widths["conv1"], widths["conv2"], widths["fc1"]
        return [
            Layer("block1", "features.", lambda: _numbered(_conv_block(channels, None, c1, "conv1"), 0)),
            Layer("block2", "features.", lambda: _numbered(_conv_block(c1, "conv1", c2, "conv2"), 4)),
            Layer("fc1", "features.", lambda: _numbered(_hidden_layer(c2, (size // 4) ** 2, hidden), 8)),
            Layer("classifier", "classifier.",
                  lambda: width_axes(nn.Linear(hidden, self.data.num_outputs), inp="fc1")),
        ]

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        channels, size, _ = self.data.input_shape
        return SmallCNN(channels, size, self.data.num_outputs, widths)
