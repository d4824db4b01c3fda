"""Data-distribution-aware structured pruning (Co-S2P, Li et al., arXiv 2410.08457; code lee355/Co-S2P).

A participant learns which attention heads and MLP units of the blocks it holds matter for its own data:

- one learnable score s per unit (a whole head, or one MLP hidden unit), initialised as the code does
  (kaiming-normal over the group: N(0, 2 / units));
- every step draws a mask m ~ Bernoulli(sigmoid(s)) per unit; the gradient reaches p = sigmoid(s) as p * g
  (`Bernoulli`, the code's `bern.py`), a straight-through estimator scaled by p;
- the network runs with its pruned layers frozen (below) and every unit's output multiplied by its mask (the input
  of each layer that reads the unit: the attention output projection for a head, the MLP's second layer for a
  hidden unit);
- the loss is the task loss plus lambda1 * |mean(m) - r| over all scored units (`SparsityPenalty`), which pulls
  the kept fraction toward the participant's rate r.

Besides the scores, the mask phase trains what the code's mask model trains (`trains: code`, the default): the
class token, the position embedding, every LayerNorm and the exit head; the input embedding and every layer that
reads or writes a scored unit stay frozen. `trains: scores` freezes everything but the scores (this project's
rule before issue 25).

After `mask_epochs` of this, one binary mask is drawn (a group that would keep nothing is drawn again) and read
as a width selection: the units kept per group, from which the real, smaller network is built by the split spec's
index maps. A masked unit contributes exactly zero, so the pruned network computes what the masked one does.

Departure from the code, on purpose: the code also masks the rows of the projections that write the residual
stream (the MLP's second layer and the attention output), i.e. it prunes the stream itself per block and
scatters the outputs back; here the residual stream stays whole (as in every width-splitting scheme of this
project) and only heads and MLP units are scored. The penalty reuses the forward pass's draw instead of a second
independent one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from msfusion_ray.splitting.index_map import Selection
from msfusion_ray.training.objective import LocalObjective, ObjectiveContext
from msfusion_ray.validation import checked, positive, probability

# A group whose every draw is empty this many times keeps its highest-scoring unit (scores far below zero).
MAX_REDRAWS = 100


class Bernoulli(torch.autograd.Function):
    """m ~ Bernoulli(p) in the forward pass; p * grad in the backward pass (the code's `Bern`)."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(p)
        return torch.bernoulli(p)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (p,) = ctx.saved_tensors
        return p * grad


class UnitGate(torch.autograd.Function):
    """x * m, each unit's mask entry spread over its `block` consecutive features of the last axis. Autograd's own
    product holds three activation-sized tensors at once in backward (the incoming gradient, the input's gradient
    and the product that reduces to the mask's); this one reduces the mask's gradient first and lets its product go
    before it makes the input's, so backward peaks at two. The mask phase's memory peak is there (frozen weights:
    almost nothing else in backward), and the sums are autograd's, in its order."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, block: int) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x, mask)
        ctx.block = block
        return x * mask.repeat_interleave(block)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:  # noqa: D102
        x, mask = ctx.saved_tensors
        grad_mask = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_mask = (grad * x).sum_to_size(x.shape[-1]).reshape(mask.numel(), ctx.block).sum(-1)
        if ctx.needs_input_grad[0]:
            grad_x = grad * mask.repeat_interleave(ctx.block)
        return grad_x, grad_mask, None


def score_key(group: str) -> str:
    """A width group's name as a parameter name (no dots)."""
    return group.replace(".", "__")


def initial_scores(groups: Mapping[str, int], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """N(0, 2 / units) per group: what kaiming_normal_ gives the code's (1 x units) score rows."""
    return {g: torch.randn(n, generator=generator) * math.sqrt(2.0 / n) for g, n in groups.items()}


def frozen_parameters(model: nn.Module, groups: Mapping[str, int]) -> list[nn.Parameter]:
    """What the code's mask model freezes: the input embedding (`input_layer` of an exit model: the ViT's patch
    embedding) and every layer that reads or writes a scored group (its masked linears, biases included)."""
    layers = [module for module in model.modules()
              if any(getattr(getattr(module, side, None), "group", None) in groups
                     for side in ("width_in", "width_out"))]
    name = getattr(model, "input_layer", "")
    if name:
        layers.append(getattr(model, name))
    return [parameter for layer in layers for parameter in layer.parameters()]


def unit_consumers(model: nn.Module, groups: Sequence[str]) -> dict[str, list[tuple[nn.Linear, int]]]:
    """Per scored group, the linear layers whose input side is that group, with the elements per unit."""
    found: dict[str, list[tuple[nn.Linear, int]]] = {g: [] for g in groups}
    for module in model.modules():
        axis = getattr(module, "width_in", None)
        if axis is not None and axis.group in found:
            if not isinstance(module, nn.Linear):
                raise ValueError(f"cannot gate units of '{axis.group}' read by a {type(module).__name__}")
            found[axis.group].append((module, axis.block))
    missing = [g for g, layers in found.items() if not layers]
    if missing:
        raise ValueError(f"no layer reads width groups {missing}")
    return found


MaskTrains = Literal["code", "scores"]


class MaskedNetwork(nn.Module):
    """A network with a learnable score per unit of the scored groups; each forward pass draws fresh masks (kept in
    `masks` for the penalty) and silences the masked units. What else trains (`trains`): as the code's mask model,
    every parameter but the input embedding and the layers that read or write a scored unit (the class token,
    positions, every LayerNorm, the exit heads: `code`), or nothing but the scores (`scores`)."""

    def __init__(self, network: nn.Module, groups: Mapping[str, int], generator: torch.Generator | None = None,
                 trains: MaskTrains = "code"):
        super().__init__()
        self.network = network
        for parameter in frozen_parameters(network, groups) if trains == "code" else network.parameters():
            parameter.requires_grad_(False)
        self.groups = dict(groups)
        self.scores = nn.ParameterDict({score_key(g): nn.Parameter(s)
                                        for g, s in initial_scores(self.groups, generator).items()})
        self.masks: dict[str, torch.Tensor] = {}
        self._hooks = [layer.register_forward_pre_hook(self._gate(group, block))
                       for group, layers in unit_consumers(network, list(self.groups)).items()
                       for layer, block in layers]

    def _gate(self, group: str, block: int) -> Callable[[nn.Module, tuple], tuple]:  # a forward pre-hook
        def hook(_module: nn.Module, args: tuple) -> tuple:
            return (UnitGate.apply(args[0], self.masks[group], block),) + args[1:]
        return hook

    def probabilities(self) -> dict[str, torch.Tensor]:
        return {g: torch.sigmoid(self.scores[score_key(g)]) for g in self.groups}

    def draw(self) -> dict[str, torch.Tensor]:
        self.masks = {g: Bernoulli.apply(p) for g, p in self.probabilities().items()}
        return self.masks

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The deepest exit's (features, logits) under a fresh draw: the code's mask model trains that exit only."""
        self.draw()
        return self.network.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]

    def score_arrays(self) -> dict[str, np.ndarray]:
        return {g: self.scores[score_key(g)].detach().cpu().numpy().copy() for g in self.groups}

    def load_scores(self, scores: Mapping[str, np.ndarray]) -> None:
        with torch.no_grad():
            for group, values in scores.items():
                self.scores[score_key(group)].copy_(torch.as_tensor(np.asarray(values)))


def kept_fraction(masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean of every scored unit's mask, all groups pooled (the code sums masks over every scored layer)."""
    return torch.cat([m.reshape(-1) for m in masks.values()]).mean()


def sparsity_penalty(masks: Mapping[str, torch.Tensor], rate: float, weight: float) -> torch.Tensor:
    """lambda1 * |mean(m) - r|."""
    return weight * torch.abs(kept_fraction(masks) - rate)


@dataclass(frozen=True)
class SparsityParams:
    rate: float = checked(0.5, check=probability)  # r: the kept fraction the penalty pulls toward
    weight: float = checked(1.0, check=positive)  # lambda1 (code: 1.0)


class SparsityPenalty(LocalObjective):
    """The mask phase's extra term, as a local objective of the training loop: it reads the masks the masked
    network drew for this step's forward pass."""

    name = "cos2p_sparsity"
    Params = SparsityParams

    def begin(self, model: nn.Module, context: ObjectiveContext | None = None) -> None:
        if not isinstance(model, MaskedNetwork):
            raise TypeError("the sparsity penalty trains a MaskedNetwork")
        self._model = model

    def loss(self, x: torch.Tensor, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return sparsity_penalty(self._model.masks, self.params.rate, self.params.weight)


def draw_selection(scores: Mapping[str, np.ndarray], generator: torch.Generator | None = None) -> Selection:
    """One binary mask from the learnt scores, as a width selection (sorted kept units per group); a group whose
    draw keeps nothing is drawn again."""
    selection = {}
    for group, values in scores.items():
        p = torch.sigmoid(torch.as_tensor(np.asarray(values), dtype=torch.float32))
        for _ in range(MAX_REDRAWS):
            kept = torch.bernoulli(p, generator=generator).nonzero().flatten()
            if len(kept):
                break
        else:
            kept = p.argmax().reshape(1)
        selection[group] = kept.numpy().astype(np.int64)
    return selection


def selection_kept_fraction(spec_groups: Mapping[str, int], selection: Selection) -> float:
    """Kept units over scored units, all groups pooled: the realised counterpart of `kept_fraction`."""
    return sum(len(selection[g]) for g in selection) / sum(spec_groups[g] for g in selection)
