"""A GPT-style causal transformer in plain torch, width-splittable by attention heads and MLP units.

Token and learned position embeddings, `n_layers` pre-norm blocks (LayerNorm, multi-head causal self-attention,
LayerNorm, GELU MLP, each with a residual connection), a final LayerNorm and a vocabulary head tied to the token
embedding (`F.linear` with the embedding's weight: one parameter, one state-dict entry).

Width groups, two per block: `block{i}.heads` (one unit is one whole head: its `head_dim` rows of the q, k and v
projections and `head_dim` input columns of the output projection) and `block{i}.mlp` (hidden units of the MLP).
The embeddings, the residual stream (`d_model`), every LayerNorm and the vocabulary head stay whole. The width
multiplier scales heads and MLP units; `head_dim = d_model / n_heads` is fixed, so a sub-model's heads compute
exactly what the same heads compute in the global model.

With `early_exits`, LayerNorm + Linear heads also read the stream after 1/4, 1/2 and 3/4 of the blocks (per-token
logits), and the family builds depth cuts: the first k blocks and the exits at or below k (models/exits.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import DataShape, ModelFamily, register, scaled
from msfusion_ray.models.exits import ExitHead, ExitModel, check_depth, exit_depths, held_exits, stream_through
from msfusion_ray.models.layers import Layer
from msfusion_ray.splitting.spec import class_outputs, width_axes
from msfusion_ray.validation import checked, positive


@dataclass(frozen=True)
class TransformerOptions:
    """model.options for the transformer."""

    d_model: int = checked(128, check=positive)  # residual stream width (whole in every sub-model)
    n_heads: int = checked(4, check=positive)  # heads per block at width 1; head_dim = d_model / n_heads
    n_layers: int = checked(2, check=positive)
    mlp_ratio: float = checked(4.0, check=positive)  # MLP hidden units = mlp_ratio * d_model at width 1
    context: int | None = checked(None, check=positive)  # positions the model can see; default: the data's
    # Exit heads (LayerNorm + Linear to the vocabulary) after 1/4, 1/2 and 3/4 of the blocks, besides the final
    # one (models/exits.py); they also allow depth cuts at those positions (Co-S2P).
    early_exits: bool = False


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, head_dim: int, group: str, causal: bool = True):
        super().__init__()
        self.head_dim = head_dim
        self.causal = causal  # False: every position sees every other (the ViT's encoder blocks)
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
                                               self._heads(self.v(x)), is_causal=self.causal)
        return self.out(mixed.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, group: str):
        super().__init__()
        self.fc = width_axes(nn.Linear(d_model, hidden), out=group)
        self.proj = width_axes(nn.Linear(hidden, d_model), inp=group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, head_dim: int, hidden: int, index: int, causal: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, head_dim, f"block{index}.heads", causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, hidden, f"block{index}.mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(ExitModel):
    """With `depth` < n_layers: the first `depth` blocks and the early exits at or below them (no final
    LayerNorm: it belongs to the last exit)."""

    input_layer = "tokens"  # tied to the vocabulary head of the last exit

    def __init__(self, vocab: int, context: int, options: TransformerOptions, widths: Mapping[str, int],
                 depth: int | None = None):
        super().__init__()
        depth = options.n_layers if depth is None else depth
        head_dim = options.d_model // options.n_heads
        self.tokens = class_outputs(nn.Embedding(vocab, options.d_model))  # tied: its rows score the next token
        self.positions = nn.Embedding(context, options.d_model)
        self.blocks = nn.ModuleList(
            Block(options.d_model, widths[f"block{i}.heads"], head_dim, widths[f"block{i}.mlp"], i)
            for i in range(depth))
        self.early_exit_after = held_exits(gpt_exit_depths(options)[:-1], depth)  # blocks before each early exit
        self.exits = nn.ModuleList(ExitHead(options.d_model, vocab) for _ in self.early_exit_after)
        self.exit_after = self.early_exit_after  # every exit this model has, the final one included
        if depth == options.n_layers:
            self.ln_f = nn.LayerNorm(options.d_model)
            self.exit_after += (depth,)
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

    def exit_features(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(normalised hidden states B x T x d_model, logits B x T x vocab) at every exit, shallow to deep; the
        deepest of the whole model is the final LayerNorm and the tied vocabulary head."""
        positions = torch.arange(x.shape[1], device=x.device)
        hidden, outputs = stream_through(self.tokens(x) + self.positions(positions), self.blocks,
                                         self.early_exit_after, self.exits)
        if hasattr(self, "ln_f"):
            hidden = self.ln_f(hidden)
            outputs.append((hidden, F.linear(hidden, self.tokens.weight)))
        return outputs


class BlockShape(Protocol):
    """What the blocks of a transformer are made of (TransformerOptions, ViTOptions)."""

    n_layers: int
    n_heads: int
    d_model: int
    mlp_ratio: float


def block_widths(options: BlockShape, width: float) -> dict[str, int]:
    """Heads and MLP units of every block at the width multiplier (head_dim fixed)."""
    heads = scaled(options.n_heads, width)
    hidden = scaled(round(options.mlp_ratio * options.d_model), width)
    widths = {}
    for i in range(options.n_layers):
        widths[f"block{i}.heads"] = heads
        widths[f"block{i}.mlp"] = hidden
    return widths


def gpt_exit_depths(options: TransformerOptions) -> tuple[int, ...]:
    return exit_depths(options.n_layers) if options.early_exits else (options.n_layers,)


@register("transformer")
class TransformerFamily(ModelFamily):
    Options = TransformerOptions

    def __init__(self, data: DataShape, width: float = 1.0, options: TransformerOptions | None = None):
        super().__init__(data, width, options)
        self._check()

    def _check(self) -> None:
        options = self.options
        if self.data.task != "language_model":
            raise UserInputError("model.name", "the transformer is a language model; use a text data set")
        if options.d_model % options.n_heads:
            raise UserInputError("model.options.n_heads", f"must divide d_model = {options.d_model}")
        if options.context is not None and options.context < self.data.input_shape[0]:
            raise UserInputError("model.options.context", f"{options.context} positions are fewer than the "
                                                          f"data's {self.data.input_shape[0]}-token windows")

    @property
    def context(self) -> int:
        return self.options.context or self.data.input_shape[0]

    def default_widths(self) -> dict[str, int]:
        return block_widths(self.options, self.width)

    def _layers(self, widths: Mapping[str, int] | None = None) -> list[Layer]:
        """The embeddings, each block, and the final LayerNorm with the tied vocabulary head (n_layers + 2).
        The first and last layers both hold `tokens.weight`: `models.layers.tie_shared` makes them one tensor
        where one process holds both (a data owner in U-shaped split learning)."""
        widths = {**self.full_widths(), **(widths or {})}
        options, vocab = self.options, self.data.num_outputs
        head_dim = options.d_model // options.n_heads
        return [
            Layer("embeddings", "", lambda: Embeddings(vocab, self.context, options.d_model)),
            *(Layer(f"block{i}", f"blocks.{i}.",
                    lambda i=i: Block(options.d_model, widths[f"block{i}.heads"], head_dim, widths[f"block{i}.mlp"],
                                      i))
              for i in range(options.n_layers)),
            Layer("head", "", lambda: TiedHead(vocab, options.d_model)),
        ]

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        return GPT(self.data.num_outputs, self.context, self.options, widths)

    @property
    def n_blocks(self) -> int:
        return self.options.n_layers

    def exit_depths(self) -> tuple[int, ...]:
        return gpt_exit_depths(self.options)

    def _build_cut(self, widths: Mapping[str, int], depth: int) -> nn.Module:
        check_depth(self.exit_depths(), depth, self.n_blocks)
        return GPT(self.data.num_outputs, self.context, self.options, widths, depth)

class Embeddings(nn.Module):
    """Token plus learned position embeddings: the transformer's first layer when it is cut by depth (parameters
    named as in GPT: `tokens.weight`, `positions.weight`)."""

    def __init__(self, vocab: int, context: int, d_model: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(context, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x) + self.positions(torch.arange(x.shape[1], device=x.device))


class TiedHead(nn.Module):
    """Final LayerNorm and the vocabulary head tied to the token embedding: the transformer's last layer when it is
    cut by depth (`ln_f.*`, and `tokens.weight`, which it shares with the first layer)."""

    def __init__(self, vocab: int, d_model: int):
        super().__init__()
        self.ln_f = nn.LayerNorm(d_model)
        self.tokens = nn.Embedding(vocab, d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ln_f(hidden), self.tokens.weight)
