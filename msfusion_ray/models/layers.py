"""Models cut by depth: a family lists its layers in order, and a part is a real module holding a range of them.

Pipeline split learning (MP-SL, one-hop parallel split learning) gives each actor consecutive layers of one model:
a data owner the first and last part, each compute node one part in between. A family says how its model is cut
by returning its `Layer`s in forward order; each layer has its own builder, so a compute node that serves layers
5 to 11 builds those and nothing else. A layer's parameters keep the names they have in the whole model (the
layer's `prefix` is where its module sits in the whole model's state dict), so weights move between parts and the
global model by name, and a chain of parts loaded with the whole model's weights computes what the whole model
computes. A parameter used by two layers (a transformer's token embedding and its tied output head) has one name
in both; `tie_shared` makes the parts one process holds share it, as the whole model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from msfusion_ray.errors import UserInputError
from msfusion_ray.models.weights import Weights


@dataclass(frozen=True)
class Layer:
    """One layer of a model cut by depth: a name for people, where its parameters sit in the whole model, and how
    to build it alone. Its module maps the previous layer's output to its own."""

    name: str
    prefix: str  # prepended to the module's state-dict keys to give the whole model's keys ("" = the root)
    build: Callable[[], nn.Module]


class Part(nn.Module):
    """Layers [start, end) of a model, built alone and applied in order."""

    def __init__(self, layers: Sequence[Layer], start: int, end: int):
        super().__init__()
        if not 0 <= start < end <= len(layers):
            raise ValueError(f"layer range [{start}, {end}) is not within the model's {len(layers)} layers")
        self.start, self.end = start, end
        self.layers = nn.ModuleList(layer.build() for layer in layers[start:end])
        self._prefixes = tuple(layer.prefix for layer in layers[start:end])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def global_names(self) -> dict[str, str]:
        """This part's state-dict keys -> the whole model's keys."""
        names = {}
        for i, (layer, prefix) in enumerate(zip(self.layers, self._prefixes)):
            for key in layer.state_dict(keep_vars=True):
                names[f"layers.{i}.{key}"] = prefix + key
        return names


def build_part(layers: Sequence[Layer], start: int, end: int) -> Part:
    return Part(layers, start, end)


def part_weights(part: Part) -> Weights:
    """The part's floating-point parameters and buffers as float32 numpy copies, named as in the whole model."""
    state = part.state_dict()
    return {name: state[local].detach().cpu().numpy().astype(np.float32, copy=True)
            for local, name in part.global_names().items() if state[local].is_floating_point()}


def load_part_weights(part: Part, weights: Mapping[str, np.ndarray]) -> None:
    """Load the part's entries from weights named as in the whole model (the global model, or any superset)."""
    state = part.state_dict()
    with torch.no_grad():
        for local, name in part.global_names().items():
            target = state[local]
            if not target.is_floating_point():
                continue
            if name not in weights:
                raise ValueError(f"weights have no entry '{name}' for layers [{part.start}, {part.end})")
            value = weights[name]
            if tuple(target.shape) != value.shape:
                raise ValueError(f"{name}: part has shape {tuple(target.shape)}, weights {value.shape}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def tie_shared(parts: Iterable[Part]) -> None:
    """Make parameters that have one name in the whole model one tensor across these parts (which one process
    holds), so that gradients from every use add up in it as they do in the whole model."""
    first: dict[str, nn.Parameter] = {}
    for part in parts:
        for local, name in part.global_names().items():
            path, _, attr = local.rpartition(".")
            module = part.get_submodule(path)
            param = module._parameters.get(attr)
            if param is None:
                continue
            if name in first:
                if first[name] is not param:
                    setattr(module, attr, first[name])
            else:
                first[name] = param


def parameters_of(parts: Iterable[Part]) -> list[nn.Parameter]:
    """Distinct parameters of several parts (a tied parameter once)."""
    seen: dict[int, nn.Parameter] = {}
    for part in parts:
        for param in part.parameters():
            seen.setdefault(id(param), param)
    return list(seen.values())


def run_chain(parts: Sequence[Part], x: torch.Tensor) -> torch.Tensor:
    for part in parts:
        x = part(x)
    return x


def check_cuts(cuts: Sequence[int], n_layers: int, where: str) -> list[tuple[int, int]]:
    """Cut points (layer indices where a new part begins) -> the parts' layer ranges; at least one layer each."""
    bounds = [0, *cuts, n_layers]
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise UserInputError(where, f"cut points {list(cuts)} must increase strictly within 1..{n_layers - 1} "
                                    f"(the model has {n_layers} layers)")
    return list(zip(bounds, bounds[1:]))
