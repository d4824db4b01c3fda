"""Task losses: what "training loss" means for each kind of data."""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

# loss(model, batch): one forward pass and its loss, what footprints and FLOPs are measured on
FootprintLoss = Callable[[nn.Module, Any], torch.Tensor]
# A `forward_loss` for train_local's step: (features, logits, task loss, extra loss or None) of a batch
ForwardLossResult = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]
ForwardLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], ForwardLossResult]


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


def loss_of(task: str) -> FootprintLoss:
    """loss(model, batch) for footprints: a forward pass (`features_and_logits`) and the task loss."""

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        _, logits = features_and_logits(model, x)
        return task_loss(task, logits, y)

    return loss


KLReduction = Literal["mean", "batchmean"]


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                    reduction: KLReduction = "mean") -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)): averaged over every element, i.e. over samples (tokens
    for a language model) and classes (`mean`, Co-S2P's `nn.KLDivLoss()` with its default reduction), or over
    samples only (`batchmean`, the formula's KL: `mean` times the number of classes). The teacher is not detached:
    as in Co-S2P's code, the deepest exit also moves toward the others."""
    classes = student.shape[-1]
    per_sample = F.kl_div(F.log_softmax(student.reshape(-1, classes) / temperature, dim=-1),
                          F.log_softmax(teacher.reshape(-1, classes) / temperature, dim=-1),
                          log_target=True, reduction="batchmean")
    return per_sample / classes if reduction == "mean" else per_sample  # torch's "mean" warns of a change


def exit_distillation_loss(task: str, exit_logits: Sequence[torch.Tensor], targets: torch.Tensor, gamma: float,
                           temperature: float, distill: bool, reduction: KLReduction = "mean") -> torch.Tensor:
    """Co-S2P's cross-block knowledge transfer (`new_weights_perform_local_epochs` in lee355/Co-S2P): every exit
    learns the task, and with `distill` each shallower exit i also learns from the deepest one,
    CE(z_last, y) + sum_{i < last} [CE(z_i, y) + gamma T^2 KL(softmax(z_last / T) || softmax(z_i / T))]."""
    *shallow, last = exit_logits
    loss = task_loss(task, last, targets)
    for logits in shallow:
        loss = loss + task_loss(task, logits, targets)
        if distill:
            loss = loss + gamma * temperature**2 * distillation_kl(logits, last, temperature, reduction)
    return loss


def exit_distillation_forward(task: str, gamma: float, temperature: float, distill: bool,
                              reduction: KLReduction = "mean") -> ForwardLoss:
    """A `forward_loss` for train_local: every exit of the model, the deepest exit's cross-entropy as the task
    loss and the rest of `exit_distillation_loss` as the extra term."""

    def forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ForwardLossResult:
        exits = model.exit_features(x)
        features, last = exits[-1]
        total = exit_distillation_loss(task, [logits for _, logits in exits], y, gamma, temperature, distill,
                                       reduction)
        deepest = task_loss(task, last, y)
        return features, last, deepest, (total - deepest) if len(exits) > 1 else None

    return forward


def exit_distillation_loss_of(task: str, gamma: float, temperature: float, distill: bool) -> FootprintLoss:
    """loss(model, batch) for footprints of training with every exit."""
    forward = exit_distillation_forward(task, gamma, temperature, distill)

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        _, _, deepest, extra = forward(model, *batch)
        return deepest + extra if extra is not None else deepest

    return loss
