"""A multilayer perceptron: the FedAvg paper's "2NN" (McMahan et al., 2017, section 3: two hidden layers of 200
units with ReLU, 199,210 parameters on 28x28 images), on any input (flattened), with `width` scaling both hidden
layers. Built as one function with width tags, as a user's own model would be (msfusion_ray.models.module)."""

from __future__ import annotations

import math

from torch import nn

from msfusion_ray.models.base import DataShape, register, scaled
from msfusion_ray.splitting.spec import class_outputs, width_axes

HIDDEN = 200


@register("mlp")
def mlp(shape: DataShape, options: dict, width: float = 1.0) -> nn.Module:
    hidden = scaled(HIDDEN, width)
    return nn.Sequential(
        nn.Flatten(),
        width_axes(nn.Linear(math.prod(shape.input_shape), hidden), out="fc1"), nn.ReLU(inplace=True),
        width_axes(nn.Linear(hidden, hidden), inp="fc1", out="fc2"), nn.ReLU(inplace=True),
        class_outputs(width_axes(nn.Linear(hidden, shape.num_outputs), inp="fc2")),
    )
