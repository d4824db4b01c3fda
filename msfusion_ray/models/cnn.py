"""A small CNN: two conv blocks and a hidden linear layer. The quick-start model."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from msfusion_ray.models.base import ModelFamily, register, scaled
from msfusion_ray.splitting.spec import class_outputs, width_axes


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, widths: Mapping[str, int]):
        super().__init__()
        c1, c2, hidden = widths["conv1"], widths["conv2"], widths["fc1"]
        pooled = (image_size // 4) ** 2
        self.features = nn.Sequential(
            width_axes(nn.Conv2d(in_channels, c1, 3, padding=1, bias=False), out="conv1"),
            width_axes(nn.BatchNorm2d(c1), out="conv1"),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            width_axes(nn.Conv2d(c1, c2, 3, padding=1, bias=False), inp="conv1", out="conv2"),
            width_axes(nn.BatchNorm2d(c2), out="conv2"),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            width_axes(nn.Linear(c2 * pooled, hidden), inp=("conv2", pooled), out="fc1"),
            nn.ReLU(inplace=True),
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

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        channels, size, _ = self.data.input_shape
        return SmallCNN(channels, size, self.data.num_outputs, widths)
