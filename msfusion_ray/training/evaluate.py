"""Evaluation of a model on held-out data: accuracy and loss, or perplexity for language models."""

from __future__ import annotations

import math

import numpy as np
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
    """Loss and accuracy (and perplexity) of the model's output. A model with several early exits (models/exits.py)
    outputs its last one; each exit's accuracy and loss are reported too, as `exit{blocks}_accuracy` and
    `exit{blocks}_loss` (blocks: how many blocks it reads after), and a language model's `exit{blocks}_perplexity`."""
    model.eval()
    device = model_device(model)  # batches go where the model is
    exits = getattr(model, "exit_after", ())
    many = len(exits) > 1
    loss_sums, correct = np.zeros(max(len(exits), 1)), np.zeros(max(len(exits), 1))
    count = 0
    for start in range(0, len(split), batch_size):
        x, y = data.to_batch(split.x[start:start + batch_size], split.y[start:start + batch_size], device)
        outputs = model.forward_exits(x) if many else [model(x)]
        weight = y.numel()
        for i, logits in enumerate(outputs):
            loss_sums[i] += float(task_loss(data.shape.task, logits, y)) * weight
            correct[i] += float((logits.argmax(dim=-1) == y).sum())
        count += weight
    losses, accuracies = loss_sums / max(count, 1), correct / max(count, 1)
    metrics = {"loss": float(losses[-1]), "accuracy": float(accuracies[-1])}
    if data.shape.task == "language_model":
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    if many:
        for blocks, loss, accuracy in zip(exits, losses, accuracies):
            metrics[f"exit{blocks}_accuracy"] = float(accuracy)
            metrics[f"exit{blocks}_loss"] = float(loss)
            if "perplexity" in metrics:
                metrics[f"exit{blocks}_perplexity"] = math.exp(min(float(loss), 50.0))
    return metrics
