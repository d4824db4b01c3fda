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


def loss_of(task: str):  # noqa: ANN201 (returns a closure)
    """loss(model, batch) for footprints: a forward pass through `forward_features` and the task loss."""

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        _, logits = model.forward_features(x)
        return task_loss(task, logits, y)

    return loss
