"""Task losses: what "training loss" means for each kind of data."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def task_loss(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over classes, or over the vocabulary at every position for language models."""
    if task == "language_model":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(logits, targets)


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(penultimate features, logits): the model's `forward_features` where it has one (objectives on the
    features need it), else no features and `forward(x)` as the logits (any module trains with the task loss)."""
    forward_features = getattr(model, "forward_features", None)
    if forward_features is None:
        return None, model(x)
    return forward_features(x)


def loss_of(task: str):  # noqa: ANN201 (returns a closure)
    """loss(model, batch) for footprints: a forward pass (`features_and_logits`) and the task loss."""

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        _, logits = features_and_logits(model, x)
        return task_loss(task, logits, y)

    return loss
