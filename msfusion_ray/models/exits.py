"""Early exits and depth cuts, shared by the models built of a stack of blocks (ViT, GPT-style transformer).

An exit is a classifier head that reads the residual stream after a given number of blocks. Co-S2P's code
(lee355/Co-S2P, `masked_dynamic_ViT_v2.py`) puts them after floor(depth x q) blocks for q in 1/4, 1/2, 3/4, 1;
a shallow stack keeps each distinct positive position once. A *depth cut* at k is the sub-model made of the first
k blocks and the exits at or below k: every key of its state dict is a key of the whole model's, so a cut is
extracted and aggregated like a width slice (keys it lacks are simply absent).
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

EXIT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def exit_depths(n_blocks: int, fractions: tuple[float, ...] = EXIT_FRACTIONS) -> tuple[int, ...]:
    """Block counts after which an exit reads the stream, shallow to deep (always ending at `n_blocks`)."""
    return tuple(sorted({math.floor(n_blocks * q) for q in fractions if math.floor(n_blocks * q) >= 1}
                        | {n_blocks}))


def held_exits(depths: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """The exits a cut at `depth` blocks keeps."""
    return tuple(d for d in depths if d <= depth)


def deepest_exit_at_or_below(depths: tuple[int, ...], blocks: int) -> int | None:
    """The deepest exit position at most `blocks` (None if even the first exit is deeper): a cut should end at
    an exit, since blocks above the last held exit feed no loss and get no gradient."""
    below = held_exits(depths, blocks)
    return below[-1] if below else None


def check_depth(depths: tuple[int, ...], depth: int, n_blocks: int) -> None:
    if not 1 <= depth <= n_blocks:
        raise ValueError(f"depth cut {depth} is outside 1..{n_blocks} blocks")
    if not held_exits(depths, depth):
        raise ValueError(f"a cut at {depth} blocks holds no exit (exits after {list(depths)} blocks)")


class ExitHead(nn.Module):
    """LayerNorm + Linear, as the code's `exist_classifier`."""

    def __init__(self, d_model: int, outputs: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.linear = nn.Linear(d_model, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def stream_through(hidden: torch.Tensor, blocks: Sequence[nn.Module], exit_after: tuple[int, ...],
                   heads: Sequence[ExitHead], read: Callable[[torch.Tensor], torch.Tensor] = lambda h: h,
                   ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Run the residual stream through `blocks`; after the blocks counted in `exit_after`, the matching head reads
    `read(stream)` (the class token for a ViT). Returns the final stream and (normalised features, logits) per
    exit, shallow to deep."""
    outputs = []
    for done, block in enumerate(blocks, start=1):
        hidden = block(hidden)
        if done in exit_after:
            head = heads[exit_after.index(done)]
            normed = head.norm(read(hidden))
            outputs.append((normed, head.linear(normed)))
    return hidden, outputs


def exit_head_keys(model: nn.Module) -> frozenset[str]:
    """State-dict keys of the model's exit heads (found by type)."""
    return frozenset(f"{name}.{key}" for name, module in model.named_modules() if isinstance(module, ExitHead)
                     for key in module.state_dict())


class ExitModel(nn.Module):
    """A network whose `exit_features(x)` gives (features, logits) at every exit, shallow to deep: its output is
    the last exit's. `input_layer` names the module that embeds the input (Co-S2P's mask phase keeps it frozen, as
    the code's mask model does its patch embedding)."""

    input_layer: ClassVar[str] = ""

    def exit_features(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [logits for _, logits in self.exit_features(x)]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of the deepest exit."""
        return self.exit_features(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]
