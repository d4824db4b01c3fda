"""A GPT-style causal transformer in plain torch, width-splittable by attention heads and MLP units.

Token and learned position embeddings, `n_layers` pre-norm blocks (LayerNorm, multi-head causal self-attention,
LayerNorm, GELU MLP, each with a residual connection), a final LayerNorm and a vocabulary head tied to the token
embedding (`F.linear` with the embedding's weight: one parameter, one state-dict entry).

Width groups, two per block: `block{i}.heads` (one unit is one whole head: its `head_dim` rows of the q, k and v
projections and `head_dim` input columns of the output projection) and `block{i}.mlp` (hidden units of the MLP).
The embeddings, the residual stream (`d_model`), every LayerNorm and the vocabulary head stay whole. The width
multiplier scales heads and MLP units; `head_dim = d_model / n_heads` is fixed, so a sub-model's heads compute
exactly what the same heads compute in the global model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import DataShape, register, scaled
from msfusion_ray.schema import checked, positive
from msfusion_ray.splitting.spec import width_axes


@dataclass(frozen=True)
class TransformerOptions:
    """model.options for the transformer."""

    d_model: int = checked(128, check=positive)  # residual stream width (whole in every sub-model)
    n_heads: int = checked(4, check=positive)  # heads per block at width 1; head_dim = d_model / n_heads
    n_layers: int = checked(2, check=positive)
    mlp_ratio: float = checked(4.0, check=positive)  # MLP hidden units = mlp_ratio * d_model at width 1
    context: int | None = checked(None, check=positive)  # positions the model can see; default: the data's


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, head_dim: int, group: str):
        super().__init__()
        self.head_dim = head_dim
        inner = heads * head_dim
        unit = (group, head_dim)
        self.q = width_axes(nn.Linear(d_model, inner), out=unit)
        self.k = width_axes(nn.Linear(d_model, inner), out=unit)
        self.v = width_axes(nn.Linear(d_model, inner), out=unit)
        self.out = width_axes(nn.Linear(inner, d_model), inp=unit)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, h * head_dim) -> (B, h, T, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, -1, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = F.scaled_dot_product_attention(self._heads(self.q(x)), self._heads(self.k(x)),
                                               self._heads(self.v(x)), is_causal=True)
        return self.out(mixed.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, group: str):
        super().__init__()
        self.fc = width_axes(nn.Linear(d_model, hidden), out=group)
        self.proj = width_axes(nn.Linear(hidden, d_model), inp=group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, head_dim: int, hidden: int, index: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, head_dim, f"block{index}.heads")
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, hidden, f"block{index}.mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, options: TransformerOptions, widths: Mapping[str, int]):
        super().__init__()
        head_dim = options.d_model // options.n_heads
        self.tokens = nn.Embedding(vocab, options.d_model)
        self.positions = nn.Embedding(context, options.d_model)
        self.blocks = nn.ModuleList(
            Block(options.d_model, widths[f"block{i}.heads"], head_dim, widths[f"block{i}.mlp"], i)
            for i in range(options.n_layers))
        self.ln_f = nn.LayerNorm(options.d_model)
        self._init_weights(options.n_layers)

    def _init_weights(self, n_layers: int) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the projections that write the residual
        stream scaled by 1/sqrt(2 * n_layers) so its variance does not grow with depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for layer in (block.attn.out, block.mlp.proj):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * n_layers))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden states B x T x d_model, logits B x T x vocab)."""
        positions = torch.arange(x.shape[1], device=x.device)
        hidden = self.tokens(x) + self.positions(positions)
        for block in self.blocks:
            hidden = block(hidden)
        hidden = self.ln_f(hidden)
        return hidden, F.linear(hidden, self.tokens.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


def check_options(shape: DataShape, options: TransformerOptions) -> None:
    if shape.task != "language_model":
        raise UserInputError("model.name", "the transformer is a language model; use a text data set")
    if options.d_model % options.n_heads:
        raise UserInputError("model.options.n_heads", f"must divide d_model = {options.d_model}")
    if options.context is not None and options.context < shape.input_shape[0]:
        raise UserInputError("model.options.context", f"{options.context} positions are fewer than the "
                                                      f"data's {shape.input_shape[0]}-token windows")


@register("transformer")
def make_transformer(shape: DataShape, options: TransformerOptions, width: float = 1.0,
                     widths: Mapping[str, int] | None = None) -> nn.Module:
    """The full GPT at width multiplier `width` (heads and MLP units scaled), or at `widths` units per group (a
    narrowed global model); sub-models are cut from it."""
    check_options(shape, options)
    if widths is None:
        heads = scaled(options.n_heads, width)
        hidden = scaled(round(options.mlp_ratio * options.d_model), width)
        widths = {}
        for i in range(options.n_layers):
            widths[f"block{i}.heads"] = heads
            widths[f"block{i}.mlp"] = hidden
    return GPT(shape.num_outputs, options.context or shape.input_shape[0], options, widths)
