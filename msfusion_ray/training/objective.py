"""Local objectives: extra loss terms a strategy asks its participants to add to the task loss.

A strategy names an objective in its tasks (`ObjectiveSpec`); the participant builds it from this registry, calls
`begin` before training (with the weights it received and its own persistent state; it may also set how the model
trains, e.g. BatchNorm's mode), `before_forward(x)` before every step's forward pass, computes the task loss on
`task_logits(logits)` (a mask over classes, say), adds `loss(...)` to it (None: no extra term), and calls `end` after
training so the objective can keep what it needs for the next round.
Objectives are plain torch: they run inside whatever process hosts the participant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.weights import Weights
from msfusion_ray.registry import Registry
from msfusion_ray.validation import build


@dataclass
class ObjectiveContext:
    round_idx: int
    family: ModelFamily  # the global model's family
    selection: Mapping[str, np.ndarray] | None  # the units this participant trains
    received: Weights  # the (sub-)model weights it was sent
    state: dict[str, Any] = field(default_factory=dict)  # persists in the participant across rounds


class LocalObjective(ABC):
    name: ClassVar[str] = ""
    Params: ClassVar[type]

    def __init__(self, params: Any):
        self.params = params

    def extra_bytes(self, model: nn.Module, batch: Any) -> int:
        """Memory the objective holds beyond the trained model while a training step on `batch` runs (frozen
        reference copies, their forward passes): it counts in the participant's planned footprint."""
        return 0

    def begin(self, model: nn.Module, context: ObjectiveContext) -> None:
        pass

    def before_forward(self, x: torch.Tensor) -> None:
        """Called with each batch before the trained model's forward pass: work done here (e.g. frozen reference
        passes) does not overlap with the activations that pass keeps for backward."""

    def task_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the task loss is computed on (by default the model's own)."""
        return logits

    @abstractmethod
    def loss(self, x: torch.Tensor, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """The extra term for one batch, given the trained model's penultimate features and logits (None: none)."""

    def end(self, model: nn.Module, context: ObjectiveContext) -> None:
        pass


# Objectives are declared beside the strategies that use them, or in the training package.
OBJECTIVES: Registry[type[LocalObjective]] = Registry("local objective", "objective",
                                                      ("msfusion_ray.training", "msfusion_ray.strategies"))
register_objective = OBJECTIVES.register


def make_objective(name: str, params: Mapping[str, Any]) -> LocalObjective:
    cls = OBJECTIVES.get(name)
    return cls(build(cls.Params, dict(params), f"objective {name}"))
