"""Declarative split specs: which axis of which parameter is "width", and which axes must move together.

A model tags the layers whose sizes are width with `width_axes(layer, inp=..., out=...)`, naming a *width group*
for the input and output side. Layers that share a group share one index set: a conv's output channels, its
BatchNorm and the next conv's input channels; every layer that writes a residual stream; the three projections of
an attention layer (whose unit is a whole head). The spec is then read off the model by layer *type* (which axis of
a Conv2d weight is "out"), never by layer name. Untagged layers, and the input of the first layer and the output of
the classifier, stay whole. A tag on a layer whose type has no known width axes is an error naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

# Which axis of each parameter or buffer is the layer's output side and which its input side.
AXIS_ROLES: dict[type[nn.Module], dict[str, tuple[str | None, ...]]] = {
    nn.Conv1d: {"weight": ("out", "in", None), "bias": ("out",)},
    nn.Conv2d: {"weight": ("out", "in", None, None), "bias": ("out",)},
    nn.Linear: {"weight": ("out", "in"), "bias": ("out",)},
    nn.modules.batchnorm._BatchNorm: {
        "weight": ("out",), "bias": ("out",), "running_mean": ("out",), "running_var": ("out",),
    },
    nn.LayerNorm: {"weight": ("out",), "bias": ("out",)},
    nn.GroupNorm: {"weight": ("out",), "bias": ("out",)},
    nn.Embedding: {"weight": (None, "out")},
}
SUPPORTED = "Conv1d, Conv2d, Linear, BatchNorm, LayerNorm, GroupNorm, Embedding, MultiheadAttention"
OUT_ONLY = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.MultiheadAttention)


class UnsupportedTag(ValueError):
    """A width tag the package cannot split: on a layer type it does not know, or on a side or a configuration
    of a known layer that has no width axis (names the layer)."""


@dataclass(frozen=True)
class Axis:
    """One width axis of a parameter: its group, how many consecutive elements make one unit of the group (1 for
    channels; H*W where a conv output is flattened into a linear layer; head_dim for attention heads), and how many
    times the group's layout repeats along the axis (3 for attention's packed q, k, v projection)."""

    group: str
    block: int = 1
    chunks: int = 1


AxisTag = str | tuple[str, int] | None


def _axis(tag: AxisTag) -> Axis | None:
    if tag is None:
        return None
    return Axis(tag) if isinstance(tag, str) else Axis(*tag)


def width_axes(module: nn.Module, *, inp: AxisTag = None, out: AxisTag = None) -> nn.Module:
    """Tag `module`'s input and output sides with width groups; returns the module for inline use."""
    module.width_in = _axis(inp)
    module.width_out = _axis(out)
    return module


def is_tagged(module: nn.Module) -> bool:
    return getattr(module, "width_in", None) is not None or getattr(module, "width_out", None) is not None


# Which dimension of each parameter indexes the outputs of a layer that scores the classes: a Linear classifier's
# rows, or the rows of an Embedding whose weight is tied to the output head (a language model's vocabulary).
CLASS_AXES: dict[type[nn.Module], dict[str, int]] = {
    nn.Linear: {"weight": 0, "bias": 0},
    nn.Embedding: {"weight": 0},
}


def class_outputs(module: nn.Module) -> nn.Module:
    """Mark `module` as the layer whose outputs are the class scores (label-split masking keeps each participant
    to the rows of the classes it holds); returns the module for inline use."""
    module.scores_classes = True
    return module


def _class_roles_for(module: nn.Module) -> dict[str, int]:
    for kind, roles in CLASS_AXES.items():
        if isinstance(module, kind):
            return roles
    raise ValueError(f"{type(module).__name__} cannot be marked as scoring classes")


def _roles_for(module: nn.Module) -> dict[str, tuple[str | None, ...]] | None:
    for kind, roles in AXIS_ROLES.items():
        if isinstance(module, kind):
            return roles
    return None


def layer_axes(name: str, module: nn.Module) -> dict[str, tuple[Axis | None, ...]]:
    """The width axes of a tagged layer's own parameters and buffers (keys relative to the layer), read off its
    type; `UnsupportedTag` naming the layer where it cannot be split."""
    where = f"{name or 'the model'} ({type(module).__name__})"
    sides = {"in": module.width_in, "out": module.width_out}
    if isinstance(module, OUT_ONLY) and sides["in"] is not None:
        raise UnsupportedTag(f"{where}: a {type(module).__name__} has no input width; tag it with out= only")
    if isinstance(module, nn.MultiheadAttention):
        return _attention_axes(where, module)
    roles = _roles_for(module)
    if roles is None:
        raise UnsupportedTag(f"{where}: width tags are supported on {SUPPORTED} layers only")
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1:
        raise UnsupportedTag(f"{where}: a grouped convolution (groups={module.groups}) cannot be split by width")
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
        raise UnsupportedTag(f"{where}: a LayerNorm over {len(module.normalized_shape)} dimensions cannot be split")
    if isinstance(module, nn.GroupNorm) and sides["out"] is not None:
        per_group = module.num_channels // module.num_groups
        if sides["out"].block % per_group:
            raise UnsupportedTag(f"{where}: one width unit must be whole groups of {per_group} channels: tag it "
                                 f"out=('{sides['out'].group}', {per_group}) and the layers that feed it alike")
    return {local: tuple(sides[r] if r is not None else None for r in role) for local, role in roles.items()
            if isinstance(getattr(module, local, None), torch.Tensor)}


def _attention_axes(where: str, module: nn.MultiheadAttention) -> dict[str, tuple[Axis | None, ...]]:
    """Multi-head attention splits by whole heads: `out=` names the group whose unit is one head (head_dim rows
    of each of the packed q, k and v projections, head_dim input columns of the output projection)."""
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        raise UnsupportedTag(f"{where}: only attention with kdim = vdim = embed_dim, no add_bias_kv and no "
                             "add_zero_attn can be split by heads")
    tag = module.width_out
    if tag is None:
        return {}
    if tag.block not in (1, module.head_dim):
        raise UnsupportedTag(f"{where}: a unit of attention is one head of {module.head_dim}; tag it out='{tag.group}'")
    heads = Axis(tag.group, module.head_dim)
    axes = {"in_proj_weight": (Axis(tag.group, module.head_dim, chunks=3), None),
            "out_proj.weight": (None, heads), "out_proj.bias": (None,)}
    if module.in_proj_bias is not None:
        axes["in_proj_bias"] = (Axis(tag.group, module.head_dim, chunks=3),)
    return axes


@dataclass(frozen=True)
class SplitSpec:
    """Width groups (units at full width) and, per state-dict key, its shape and the width axis of each
    dimension; which keys are buffers (BatchNorm's running statistics: state that no gradient trains), and, per key
    of the layer that scores the classes (`class_outputs`), the dimension that indexes the classes."""

    groups: Mapping[str, int]
    params: Mapping[str, tuple[Axis | None, ...]]
    shapes: Mapping[str, tuple[int, ...]]
    buffers: frozenset[str] = frozenset()
    class_axes: Mapping[str, int] = field(default_factory=dict)

    def trainable(self) -> list[str]:
        """The keys a gradient trains (the parameters), in state-dict order."""
        return [key for key in self.params if key not in self.buffers]

    @classmethod
    def of(cls, model: nn.Module) -> "SplitSpec":
        """Read the spec off a full-width model's tags."""
        state = model.state_dict()
        params: dict[str, tuple[Axis | None, ...]] = {
            key: (None,) * value.dim() for key, value in state.items() if value.is_floating_point()
        }
        groups: dict[str, int] = {}
        for prefix, module in model.named_modules():
            if not is_tagged(module):
                continue
            for name, axes in layer_axes(prefix, module).items():
                key = f"{prefix}.{name}" if prefix else name
                if key not in params:
                    continue
                params[key] = axes
                for dim, axis in enumerate(axes):
                    if axis is not None:
                        _register(groups, axis, state[key].shape[dim], key)
        buffers = frozenset(key for key, _ in model.named_buffers() if key in params)
        class_axes = {}
        for prefix, module in model.named_modules():
            if getattr(module, "scores_classes", False):
                for name, dim in _class_roles_for(module).items():
                    key = f"{prefix}.{name}" if prefix else name
                    if key in params:
                        class_axes[key] = dim
        return cls(groups=groups, params=params, shapes={k: tuple(state[k].shape) for k in params},
                   buffers=buffers, class_axes=class_axes)


def _register(groups: dict[str, int], axis: Axis, length: int, key: str) -> None:
    if length % (axis.block * axis.chunks):
        raise ValueError(f"{key}: axis of length {length} is not a whole number of {axis.block}-element units")
    units = length // (axis.block * axis.chunks)
    if groups.setdefault(axis.group, units) != units:
        raise ValueError(f"{key}: width group '{axis.group}' has {units} units here, {groups[axis.group]} elsewhere")
