"""The planned training footprint of a model: what must fit in a device's memory to train it.

footprint = parameters + gradients + optimizer state + activations saved for backward + the input batch
            + backward workspace + whatever the local objective keeps (e.g. frozen reference models)

Activations are measured, not estimated: one forward pass on an example batch runs under torch's saved-tensor
hooks and every distinct storage autograd keeps for backward is summed (parameters excluded: already counted).
Backward needs, on top, the gradient of the tensor it is working through while that tensor is still held: the
largest saved storage stands for that workspace. The result depends only on shapes, so it is cached per (model
shape, batch size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

OPTIMIZER_STATE_COPIES = {"sgd": 0, "sgd_momentum": 1, "adam": 2}


@dataclass(frozen=True)
class Footprint:
    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    inputs: int
    workspace: int = 0
    extra: int = 0

    @property
    def total(self) -> int:
        return (self.parameters + self.gradients + self.optimizer_state + self.activations + self.inputs
                + self.workspace + self.extra)


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def batch_bytes(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    return sum(batch_bytes(item) for item in batch)


def saved_activations(model: nn.Module, batch: Any,
                      loss_of: Callable[[nn.Module, Any], torch.Tensor]) -> dict[int, int]:
    """Size of each distinct storage autograd saves for backward in one forward pass (parameters excluded)."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_of(model, batch)
    return saved


def plan_footprint(model: nn.Module, batch: Any, loss_of: Callable[[nn.Module, Any], torch.Tensor],
                   optimizer_state_copies: int, extra_bytes: int = 0) -> Footprint:
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
    grads = tensor_bytes(trainable)
    saved = saved_activations(model, batch, loss_of)
    return Footprint(
        parameters=params,
        gradients=grads,
        optimizer_state=optimizer_state_copies * grads,
        activations=sum(saved.values()),
        inputs=batch_bytes(batch),
        workspace=max(saved.values(), default=0),
        extra=extra_bytes,
    )


class FootprintPlanner:
    """Cached footprints of models built at given widths (units per width group).

    `build(widths)` makes the model, `example_batch(batch_size)` an input batch of the right shape, `loss_of(model,
    batch)` the training loss; `extra_bytes(model, batch)` what the local objective adds (None: nothing).
    """

    def __init__(self, build: Callable[[Mapping[str, int]], nn.Module], example_batch: Callable[[int], Any],
                 loss_of: Callable[[nn.Module, Any], torch.Tensor], optimizer_state_copies: int,
                 extra_bytes: Callable[[nn.Module, Any], int] | None = None):
        self._build = build
        self._example_batch = example_batch
        self._loss_of = loss_of
        self._copies = optimizer_state_copies
        self._extra_bytes = extra_bytes
        self._cache: dict[tuple[tuple, int], Footprint] = {}

    def footprint(self, widths: Mapping[str, int], batch_size: int) -> Footprint:
        key = (tuple(sorted(widths.items())), batch_size)
        cached = self._cache.get(key)
        if cached is None:
            torch.manual_seed(0)
            model = self._build(widths)
            batch = self._example_batch(batch_size)
            extra = self._extra_bytes(model, batch) if self._extra_bytes is not None else 0
            cached = plan_footprint(model, batch, self._loss_of, self._copies, extra)
            self._cache[key] = cached
        return cached

    def estimate(self, widths: Mapping[str, int], batch_size: int) -> int:
        """The footprint at `batch_size` extrapolated from batches of two and four (every part of it is constant
        or grows linearly with the batch), so that a batch too large to try is judged without allocating it."""
        two, four = self.footprint(widths, 2).total, self.footprint(widths, 4).total
        return two + (batch_size - 2) * (four - two) // 2
