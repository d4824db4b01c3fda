"""A small CNN: two conv blocks and a hidden linear layer. The quick-start model (`model.name: cnn`)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import DataShape, register, scaled
from msfusion_ray.splitting.spec import width_axes


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
        self.classifier = width_axes(nn.Linear(hidden, num_classes), inp="fc1")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate representation, logits)."""
        features = self.features(x)
        return features, self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


@register("cnn")
def make_cnn(shape: DataShape, options: dict, width: float = 1.0,
             widths: Mapping[str, int] | None = None) -> nn.Module:
    """The full CNN at width multiplier `width` (32, 64 and 128 units at width 1), or at `widths` units per
    group (a narrowed global model); sub-models are cut from it."""
    if options:
        raise UserInputError(f"model.options.{next(iter(options))}", "unknown option for cnn (it takes none)")
    channels, size, _ = shape.input_shape
    widths = widths or {"conv1": scaled(32, width), "conv2": scaled(64, width), "fc1": scaled(128, width)}
    return SmallCNN(channels, size, shape.num_outputs, widths)
