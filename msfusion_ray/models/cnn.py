"""A small CNN: two conv blocks and a hidden linear layer. The quick-start model; with 5x5 convolutions, no
BatchNorm and 512 hidden units, the CNN of the FedAvg paper (`fedavg_cnn`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from msfusion_ray.models.base import ModelFamily, register, scaled
from msfusion_ray.models.layers import Layer
from msfusion_ray.splitting.spec import class_outputs, width_axes


def _hidden_layer(in_units: int, pooled: int, hidden: int) -> list[nn.Module]:
    return [nn.Flatten(), width_axes(nn.Linear(in_units * pooled, hidden), inp=("conv2", pooled), out="fc1"),
            nn.ReLU(inplace=True)]


def _numbered(modules: list[nn.Module], first: int) -> nn.Sequential:
    """Modules named first, first + 1, ...: one layer of `features` built alone, its keys as in the whole model."""
    return nn.Sequential(OrderedDict((str(first + i), module) for i, module in enumerate(modules)))


def conv_block(in_channels: int, out_channels: int, kernel: int, batchnorm: bool, inp: str | None,
               out: str) -> list[nn.Module]:
    """Convolution ("same" padding; a bias only without BatchNorm), BatchNorm if asked, ReLU, 2x2 max pooling."""
    layers = [width_axes(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not batchnorm),
                         inp=inp, out=out)]
    if batchnorm:
        layers.append(width_axes(nn.BatchNorm2d(out_channels), out=out))
    return layers + [nn.ReLU(inplace=True), nn.MaxPool2d(2)]


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, widths: Mapping[str, int],
                 kernel: int = 3, batchnorm: bool = True):
        super().__init__()
        c1, c2, hidden = widths["conv1"], widths["conv2"], widths["fc1"]
        pooled = (image_size // 4) ** 2
        self.features = nn.Sequential(
            *conv_block(in_channels, c1, kernel, batchnorm, None, "conv1"),
            *conv_block(c1, c2, kernel, batchnorm, "conv1", "conv2"),
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
    units = {"conv1": 32, "conv2": 64, "fc1": 128}  # at width 1
    kernel = 3
    batchnorm = True

    def default_widths(self) -> dict[str, int]:
        return {group: scaled(units, self.width) for group, units in self.units.items()}

    def _layers(self, widths: Mapping[str, int] | None = None) -> list[Layer]:
        """Each conv block (conv, BatchNorm where the family has it, ReLU, max-pool), the hidden linear layer, the
        classifier."""
        widths = {**self.full_widths(), **(widths or {})}
        channels, size, _ = self.data.input_shape
        c1, c2, hidden = widths["conv1"], widths["conv2"], widths["fc1"]
        kernel, batchnorm = self.kernel, self.batchnorm
        per_block = 4 if batchnorm else 3  # modules of one conv block in `features`
        return [
            Layer("block1", "features.",
                  lambda: _numbered(conv_block(channels, c1, kernel, batchnorm, None, "conv1"), 0)),
            Layer("block2", "features.",
                  lambda: _numbered(conv_block(c1, c2, kernel, batchnorm, "conv1", "conv2"), per_block)),
            Layer("fc1", "features.", lambda: _numbered(_hidden_layer(c2, (size // 4) ** 2, hidden), 2 * per_block)),
            Layer("classifier", "classifier.",
                  lambda: class_outputs(width_axes(nn.Linear(hidden, self.data.num_outputs), inp="fc1"))),
        ]

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        channels, size, _ = self.data.input_shape
        return SmallCNN(channels, size, self.data.num_outputs, widths, self.kernel, self.batchnorm)


@register("fedavg_cnn")
class FedAvgCNNFamily(CNNFamily):
    """McMahan et al. (2017), "Communication-Efficient Learning of Deep Networks from Decentralized Data" (the
    FedAvg paper), section 3: two 5x5 convolutions of 32 and 64 channels, each followed by ReLU and 2x2 max
    pooling, a fully connected layer of 512 units with ReLU, and the output layer; 1,663,370 parameters on 28x28
    single-channel images. The common FedAvg workload of other frameworks' examples and benchmarks."""

    units = {"conv1": 32, "conv2": 64, "fc1": 512}
    kernel = 5
    batchnorm = False
