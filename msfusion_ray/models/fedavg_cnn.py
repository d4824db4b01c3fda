"""The CNN of McMahan et al. (2017), "Communication-Efficient Learning of Deep Networks from Decentralized Data"
(the FedAvg paper), section 3: two 5x5 convolutions of 32 and 64 channels, each followed by ReLU and 2x2 max
pooling, a fully connected layer of 512 units with ReLU, and the output layer; 1,663,370 parameters on 28x28
single-channel images. The common FedAvg workload of other frameworks' examples and benchmarks."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from msfusion_ray.models.base import ModelFamily, register, scaled
from msfusion_ray.splitting.spec import width_axes


class FedAvgCNN(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, widths: Mapping[str, int]):
        super().__init__()
        c1, c2, hidden = widths["conv1"], widths["conv2"], widths["fc1"]
        pooled = (image_size // 4) ** 2
        self.features = nn.Sequential(
            width_axes(nn.Conv2d(in_channels, c1, 5, padding=2), out="conv1"),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            width_axes(nn.Conv2d(c1, c2, 5, padding=2), inp="conv1", out="conv2"),
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


@register("fedavg_cnn")
class FedAvgCNNFamily(ModelFamily):
    def default_widths(self) -> dict[str, int]:
        return {"conv1": scaled(32, self.width), "conv2": scaled(64, self.width), "fc1": scaled(512, self.width)}

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        channels, size, _ = self.data.input_shape
        return FedAvgCNN(channels, size, self.data.num_outputs, widths)
