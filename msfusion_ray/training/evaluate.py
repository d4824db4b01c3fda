"""Evaluation of a model on held-out data: accuracy and loss, or perplexity for language models."""

from __future__ import annotations

import math

import torch
from torch import nn

from msfusion_ray.data.arrays import ArrayDataset, DataBundle
from msfusion_ray.models.weights import model_device
from msfusion_ray.training.losses import task_loss


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: DataBundle, split: ArrayDataset, batch_size: int) -> bool:
    """Recompute every BatchNorm layer's running statistics as plain averages over `split` (HeteroFL's static BN
    protocol). A global model assembled from sub-models has statistics gathered inside narrower networks, which
    do not describe its own activations. Returns whether the model had BatchNorm layers."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(split) == 0:
        return False
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    device = model_device(model)
    for start in range(0, len(split), batch_size):
        x, _ = data.to_batch(split.x[start:start + batch_size], split.y[start:start + batch_size], device)
        model(x)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()
    return True


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, split: ArrayDataset, batch_size: int) -> dict[str, float]:
    model.eval()
    device = model_device(model)  # batches go where the model is
    loss_sum = correct = count = 0.0
    for start in range(0, len(split), batch_size):
        x, y = data.to_batch(split.x[start:start + batch_size], split.y[start:start + batch_size], device)
        logits = model(x)
        weight = y.numel()
        loss_sum += float(task_loss(data.shape.task, logits, y)) * weight
        correct += float((logits.argmax(dim=-1) == y).sum())
        count += weight
    loss = loss_sum / max(count, 1)
    metrics = {"loss": loss, "accuracy": correct / max(count, 1)}
    if data.shape.task == "language_model":
        metrics["perplexity"] = math.exp(min(loss, 50.0))
    return metrics
