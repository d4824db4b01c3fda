"""The FedAvg paper's CNN as a user writes it in a file of their own, with no msfusion_ray import: what
`benchmarks/flower.py --model benchmarks/fedavg_net.py:make_net` gives every side by import path (msfusion_ray's
`model.name`, the bare loop, Flower's clients), and the network the bare loop and Flower run by default.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Net(nn.Module):
    """McMahan et al. (2017)'s CNN: 5x5 conv 32, pool, 5x5 conv 64, pool, 512 ReLU units, 10 outputs."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, 512), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_net(shape: Any, options: dict) -> nn.Module:
    """msfusion_ray's form of a model function: the data's shape (input_shape, num_outputs) and model.options."""
    channels, size, _ = shape.input_shape
    return Net(channels, size, shape.num_outputs)
