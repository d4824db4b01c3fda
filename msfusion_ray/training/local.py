"""The local training loop every participant runs, whatever the scheme."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

import numpy as np
import torch
from torch import nn

from msfusion_ray.config import TrainingConfig
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.data.arrays import DataBundle
from msfusion_ray.models.weights import model_device
from msfusion_ray.training.losses import ForwardLoss, features_and_logits, task_loss
from msfusion_ray.training.objective import LocalObjective
from msfusion_ray.training.optimizers import SGD, Adam, Optimizer


@dataclass(frozen=True)
class LocalResult:
    samples: int  # samples seen, counting repeats over epochs
    steps: int
    flops: int
    peak_tensor_bytes: int  # live-tensor peak of the largest measured step
    task_loss: float  # mean over steps
    extra_loss: float  # mean over steps of the objective's term (0 without one)
    wall_measuring_s: float = 0.0  # of its wall time, what measuring steps cost beyond training (`measuring_cost`)


def measuring_cost(measured: list[tuple[float, int]], plain: list[tuple[float, int]]) -> float:
    """Wall seconds that measuring steps (FLOP counter, census, tensor tracker: each shape's first step) added to
    training: their wall time less what the same samples took in the task's plain steps (seconds per sample);
    0 where the task had no plain step to compare with."""
    samples = sum(n for _, n in plain)
    if not measured or not samples:
        return 0.0
    per_sample = sum(s for s, _ in plain) / samples
    return max(0.0, sum(s - per_sample * n for s, n in measured))


def make_optimizer(model: nn.Module, training: TrainingConfig, lr: float) -> Optimizer:
    """torch.optim's SGD or Adam, computed without torch.optim (msfusion_ray.training.optimizers: why)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if training.optimizer == "adam":
        return Adam(params, lr=lr, weight_decay=training.weight_decay)
    return SGD(params, lr=lr, momentum=training.momentum, weight_decay=training.weight_decay)


def step_count(n_samples: int, training: TrainingConfig) -> int:
    """Batches a participant with `n_samples` trains on: `local_steps`, or `local_epochs` passes."""
    steps_per_epoch = math.ceil(n_samples / training.batch_size)
    return training.local_steps if training.local_steps is not None else training.local_epochs * steps_per_epoch


def batch_sizes(n_samples: int, training: TrainingConfig) -> list[int]:
    """The size of each batch `batch_indices` yields (known before training: costs depend only on shapes)."""
    sizes, order_left = [], 0
    for _ in range(step_count(n_samples, training)):
        if order_left == 0:
            order_left = n_samples
        size = min(training.batch_size, order_left)
        sizes.append(size)
        order_left -= size
    return sizes


def batch_indices(n_samples: int, training: TrainingConfig, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled mini-batches: `local_epochs` passes, or exactly `local_steps` batches (reshuffling each pass)."""
    total = step_count(n_samples, training)
    done = 0
    while done < total:
        order = rng.permutation(n_samples)
        for start in range(0, n_samples, training.batch_size):
            if done == total:
                return
            yield order[start:start + training.batch_size]
            done += 1


def train_local(model: nn.Module, data: DataBundle, indices: np.ndarray, training: TrainingConfig, lr: float,
                rng: np.random.Generator, costs: StepCostCache, shape_key: Hashable,
                objective: LocalObjective | None = None, on_step: Callable[[], None] | None = None,
                forward_loss: ForwardLoss | None = None) -> LocalResult:
    """Train `model` on the participant's samples. The first step of each (shape, batch size) is measured for
    FLOPs and peak tensor memory; later steps reuse the figure. `on_step` is called before every step (a
    deadline check may raise there). `forward_loss(model, x, y)` replaces the forward pass and task loss:
    (features, logits, task loss, extra term or None), e.g. a loss over every early exit. Batches go to
    the device the model is on."""
    model.train()
    device = model_device(model)
    optimizer = make_optimizer(model, training, lr)
    flops = steps = samples = peak = 0
    task_sum = extra_sum = 0.0
    timed: dict[bool, list[tuple[float, int]]] = {True: [], False: []}  # (seconds, samples) of measured, plain steps
    for batch in batch_indices(len(indices), training, rng):
        if on_step is not None:
            on_step()
        chosen = indices[batch]
        x, y = data.to_batch(data.train.x[chosen], data.train.y[chosen], device)

        def losses() -> tuple[torch.Tensor, torch.Tensor | None]:
            """The task loss and the extra term; the features and logits are let go on return, so backward
            holds only what autograd saved (as the footprint planner measures it)."""
            if objective is not None:
                objective.before_forward(x)
            if forward_loss is None:
                features, logits = features_and_logits(model, x)
                task_logits = objective.task_logits(logits) if objective is not None else logits
                loss, extra = task_loss(data.shape.task, task_logits, y), None
            else:
                features, logits, loss, extra = forward_loss(model, x, y)
            if objective is not None:
                term = objective.loss(x, features, logits)
                extra = term if extra is None else extra + term
            return loss, extra

        def step() -> tuple[float, float]:
            optimizer.zero_grad(set_to_none=True)
            loss, extra = losses()
            (loss + extra if extra is not None else loss).backward()
            optimizer.step()
            return float(loss.detach()), float(extra.detach()) if extra is not None else 0.0

        key = (shape_key, len(chosen), objective.name if objective is not None else None)
        # tensors alive before a measured step (the model's), listed only where the step is measured
        resident = [] if key in costs else list(model.parameters()) + list(model.buffers())
        started = time.perf_counter()
        (task_value, extra_value), cost = costs.run(key, step, resident)
        timed[cost.measured].append((time.perf_counter() - started, len(chosen)))
        flops += cost.flops
        peak = max(peak, cost.peak_tensor_bytes)
        task_sum += task_value
        extra_sum += extra_value
        steps += 1
        samples += len(chosen)
    return LocalResult(samples=samples, steps=steps, flops=flops, peak_tensor_bytes=peak,
                       task_loss=task_sum / max(steps, 1), extra_loss=extra_sum / max(steps, 1),
                       wall_measuring_s=measuring_cost(timed[True], timed[False]))
