"""Sub-models built from one full, width-tagged module: the user writes the network once, at full width.

`narrow_module(template, spec, widths)` is a copy of the template in which every tagged layer keeps `widths[group]`
units of each of its width groups: its parameters and buffers cut to the first units of every width axis, and the
attributes its forward pass reads (in_features, out_channels, num_features, num_heads, ...) set to match. What
the layers compute is the layer type's own forward (multi-head attention, whose torch forward cannot run with
fewer heads than embed_dim / head_dim, becomes `NarrowMultiheadAttention`). The weights a sub-model trains are
then loaded into it from the index maps, so the values it starts with only matter for a narrowed global model,
which starts from the first units of the full one.
"""

from __future__ import annotations

import copy
import math
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from msfusion_ray.splitting.spec import Axis, SplitSpec, is_tagged


def _units(axis: Axis | None, widths: Mapping[str, int]) -> int | None:
    return None if axis is None else widths[axis.group] * axis.block


def _kept(axis: Axis, spec: SplitSpec, widths: Mapping[str, int]) -> torch.Tensor | None:
    """Indices along `axis` of a tensor: the first units of the group, in each chunk (None: all of them)."""
    full, kept = spec.groups[axis.group], widths[axis.group]
    if kept == full:
        return None
    one = torch.arange(kept * axis.block)
    return torch.cat([one + chunk * full * axis.block for chunk in range(axis.chunks)])


def _cut(tensor: torch.Tensor, axes: tuple[Axis | None, ...], spec: SplitSpec,
         widths: Mapping[str, int]) -> torch.Tensor | None:
    """The tensor restricted to the kept units of its width axes, or None where it keeps everything."""
    cut = tensor.detach()
    changed = False
    for dim, axis in enumerate(axes):
        index = _kept(axis, spec, widths) if axis is not None else None
        if index is not None:
            cut = cut.index_select(dim, index)
            changed = True
    return cut.clone() if changed else None


def narrow_module(template: nn.Module, spec: SplitSpec, widths: Mapping[str, int]) -> nn.Module:
    """A copy of `template` with `widths` units per width group (groups not named keep all of theirs)."""
    widths = {**spec.groups, **widths}
    memo: dict[int, torch.Tensor] = {}
    for prefix, module in template.named_modules():
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            key = f"{prefix}.{name}" if prefix else name
            if tensor is None or key not in spec.params or id(tensor) in memo:
                continue
            cut = _cut(tensor, spec.params[key], spec, widths)
            if cut is not None:
                memo[id(tensor)] = nn.Parameter(cut, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else cut
    narrow = copy.deepcopy(template, memo)
    for module in narrow.modules():
        if is_tagged(module):
            _set_sizes(module, widths)
    return narrow


def _set_sizes(module: nn.Module, widths: Mapping[str, int]) -> None:
    """Set the size attributes a layer's forward reads to what its cut parameters hold."""
    out, inp = _units(module.width_out, widths), _units(module.width_in, widths)
    if isinstance(module, nn.MultiheadAttention):
        if module.width_out is not None:
            module.__class__ = NarrowMultiheadAttention
            module.num_heads = widths[module.width_out.group]
        return
    if isinstance(module, nn.Linear):
        module.out_features = out or module.out_features
        module.in_features = inp or module.in_features
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        module.out_channels = out or module.out_channels
        module.in_channels = inp or module.in_channels
    elif out is None:
        return
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = out
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (out,)
    elif isinstance(module, nn.GroupNorm):
        per_group = module.num_channels // module.num_groups
        module.num_channels, module.num_groups = out, out // per_group
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = out


class NarrowMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention keeping `num_heads` of its heads: q, k and v project `embed_dim` inputs onto
    `num_heads * head_dim` (fewer than embed_dim), and the output projection maps them back onto embed_dim. The
    same arguments, masks and results as the torch layer (torch's own forward needs num_heads * head_dim ==
    embed_dim)."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        length, batch, _ = query.shape
        source = key.shape[0]
        inner = self.num_heads * self.head_dim
        weights = self.in_proj_weight.split(inner)
        biases = self.in_proj_bias.split(inner) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (F.linear(x, w, b).reshape(x.shape[0], batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3)
                   for x, w, b in zip((query, key, value), weights, biases))
        mask = self._mask(attn_mask, key_padding_mask, batch, length, source, q.dtype, is_causal)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            attention = torch.softmax(scores, dim=-1)
            mixed = F.dropout(attention, dropout, self.training) @ v
        else:
            attention = None
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = F.linear(mixed.permute(2, 0, 1, 3).reshape(length, batch, inner), self.out_proj.weight,
                       self.out_proj.bias)
        if attention is not None and average_attn_weights:
            attention = attention.mean(dim=1)
        if not batched:
            return out.squeeze(1), attention.squeeze(0) if attention is not None else None
        return (out.transpose(0, 1) if self.batch_first else out), attention

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, batch: int,
              length: int, source: int, dtype: torch.dtype, is_causal: bool) -> torch.Tensor | None:
        """One additive float mask broadcastable to (batch, heads, length, source)."""

        def additive(mask: torch.Tensor) -> torch.Tensor:
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))
            return mask.to(dtype)

        mask = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool).triu(1)
        if attn_mask is not None:
            mask = additive(attn_mask)
            mask = mask.view(batch, self.num_heads, length, source) if mask.dim() == 3 else mask
        if key_padding_mask is not None:
            padding = additive(key_padding_mask).view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask
