"""A Vision Transformer for small images in plain torch, with early exits, width-splittable and depth-cuttable.

Patch embedding (a convolution with kernel = stride = patch size), a learned class token, learned positions,
`n_layers` pre-norm encoder blocks (LayerNorm, multi-head self-attention over all positions, LayerNorm, GELU MLP,
each with a residual connection), and exit heads (LayerNorm + Linear on the class token) after 1/4, 1/2, 3/4 and
all of the blocks, as in Co-S2P's code (lee355/Co-S2P, `masked_dynamic_ViT_v2.py`). The model's output is its
last exit; `forward_exits` gives every exit's logits, shallow to deep.

Width groups, two per block, as in the GPT-style transformer (whose block it reuses, without the causal mask):
`block{i}.heads` (one unit is one whole head) and `block{i}.mlp` (MLP hidden units). The patch embedding, class
token, positions, the residual stream, every LayerNorm and the exit heads stay whole. A depth cut at k keeps the
first k blocks and the exits at or below k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import DataShape, ModelFamily, register
from msfusion_ray.models.exits import ExitHead, ExitModel, check_depth, exit_depths, held_exits, stream_through
from msfusion_ray.models.transformer import Block, block_widths
from msfusion_ray.validation import checked, positive


@dataclass(frozen=True)
class ViTOptions:
    """model.options for the ViT."""

    d_model: int = checked(64, check=positive)  # residual stream width (whole in every sub-model)
    n_heads: int = checked(4, check=positive)  # heads per block at width 1; head_dim = d_model / n_heads
    n_layers: int = checked(8, check=positive)  # encoder blocks
    mlp_ratio: float = checked(2.0, check=positive)  # MLP hidden units = mlp_ratio * d_model at width 1
    patch: int = checked(4, check=positive)  # patch side in pixels; 32x32 images give 64 patches + class token


class ViT(ExitModel):
    input_layer = "patches"

    def __init__(self, channels: int, image_size: int, classes: int, options: ViTOptions,
                 widths: Mapping[str, int], depth: int):
        super().__init__()
        d_model, head_dim = options.d_model, options.d_model // options.n_heads
        patches = (image_size // options.patch) ** 2
        self.patches = nn.Conv2d(channels, d_model, options.patch, stride=options.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embedding = nn.Parameter(torch.zeros(1, patches + 1, d_model))
        self.blocks = nn.ModuleList(
            Block(d_model, widths[f"block{i}.heads"], head_dim, widths[f"block{i}.mlp"], i, causal=False)
            for i in range(depth))
        self.exit_after = held_exits(exit_depths(options.n_layers), depth)
        self.exits = nn.ModuleList(ExitHead(d_model, classes) for _ in self.exit_after)
        self._init_weights(options.n_layers)

    def _init_weights(self, n_layers: int) -> None:
        """N(0, 0.02) weights and positions, zero biases; the projections that write the residual stream scaled by
        1/sqrt(2 * n_layers) (as the GPT-style transformer)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embedding, std=0.02)
        for block in self.blocks:
            for layer in (block.attn.out, block.mlp.proj):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * n_layers))

    def exit_features(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(normalised class token B x d_model, logits B x classes) at every exit, shallow to deep."""
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        hidden = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embedding
        _, outputs = stream_through(hidden, self.blocks, self.exit_after, self.exits, read=lambda h: h[:, 0])
        return outputs


@register("vit")
class ViTFamily(ModelFamily):
    Options = ViTOptions

    def __init__(self, data: DataShape, width: float = 1.0, options: ViTOptions | None = None):
        super().__init__(data, width, options)
        self._check()

    def _check(self) -> None:
        options = self.options
        if self.data.task != "classification" or len(self.data.input_shape) != 3:
            raise UserInputError("model.name", "the ViT classifies images; use an image data set")
        _, height, width = self.data.input_shape
        if height != width or height % options.patch:
            raise UserInputError("model.options.patch", f"must divide the {height}x{width} images' side "
                                                        "(square images; pad them with data.pad_to)")
        if options.d_model % options.n_heads:
            raise UserInputError("model.options.n_heads", f"must divide d_model = {options.d_model}")

    def default_widths(self) -> dict[str, int]:
        return block_widths(self.options, self.width)

    @property
    def n_blocks(self) -> int:
        return self.options.n_layers

    def exit_depths(self) -> tuple[int, ...]:
        return exit_depths(self.options.n_layers)

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        return self._build_cut(widths, self.options.n_layers)

    def _build_cut(self, widths: Mapping[str, int], depth: int) -> nn.Module:
        check_depth(self.exit_depths(), depth, self.n_blocks)
        channels, size, _ = self.data.input_shape
        return ViT(channels, size, self.data.num_outputs, self.options, widths, depth)
