"""Weights as plain numpy arrays: the form they travel in (zero-copy through Ray's object store)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from msfusion_ray.splitting.index_map import Weights


def to_weights(model: nn.Module) -> Weights:
    """Every floating-point parameter and buffer, as float32 numpy copies in C order whatever the tensor's memory
    format (integer counters stay behind)."""
    return {k: v.detach().cpu().numpy().astype(np.float32, order="C", copy=True)
            for k, v in model.state_dict().items() if v.is_floating_point()}


def load_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Load numpy weights (possibly read-only views from the object store) into a model of matching shape."""
    state = model.state_dict()
    expected = {k for k, v in state.items() if v.is_floating_point()}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(f"weights do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for key, value in weights.items():
            target = state[key]
            if tuple(target.shape) != value.shape:
                raise ValueError(f"{key}: model has shape {tuple(target.shape)}, weights {value.shape}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def model_device(model: nn.Module) -> torch.device:
    """Where the model's tensors are (the CPU for a model without any)."""
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")

