"""The planned training footprint of a model: what must fit in a device's memory to train it.

footprint = parameters + gradients + optimizer state + activations saved for backward + the input batch
            + backward workspace + whatever the local objective keeps (e.g. frozen reference models)

Activations are measured, not estimated: one forward pass on an example batch runs under torch's saved-tensor
hooks and every distinct storage autograd keeps for backward is summed (parameters and the input batch excluded:
counted in their own terms).
Backward needs, on top, the gradient of the tensor it is working through while that tensor is still held: the
largest saved storage stands for that workspace. That sum is an estimate, and on most models a generous one, but
it is not a bound: where backward holds several activation-sized gradients at once it falls short (Co-S2P's mask
phase on the transformer: frozen weights, so nearly no parameter gradients, and each unit gate's backward holds
the incoming gradient, the gradient to its input and the product that becomes the gradient to its mask: the live
peak was 1.35 times the sum). So the same pass also runs backward under the live-tensor tracker, and the footprint
is the larger of the sum and that measured step (plus what stays resident through a later step: the optimizer's
state, the batch, the objective's extra). The result depends only on shapes, so it is cached per (model shape,
batch size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

import torch
from torch import nn

from msfusion_ray.costs.memory import TensorPeakTracker
from msfusion_ray.costs.threads import one_thread

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
    measured_step: int = 0  # live-tensor peak of a forward and backward pass, plus what stays resident around it

    @property
    def estimated(self) -> int:
        """The parts' sum."""
        return (self.parameters + self.gradients + self.optimizer_state + self.activations + self.inputs
                + self.workspace + self.extra)

    @property
    def total(self) -> int:
        """What must fit: the parts' sum, or the measured step where that holds more."""
        return max(self.estimated, self.measured_step)


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def batch_bytes(batch: Any) -> int:
    return tensor_bytes(batch_tensors(batch))


def batch_tensors(batch: Any) -> list[torch.Tensor]:
    """The tensors of a batch (a tensor, or nested tuples of them; None entries hold nothing)."""
    if batch is None:
        return []
    if isinstance(batch, torch.Tensor):
        return [batch]
    return [t for item in batch for t in batch_tensors(item)]


def saved_activations(model: nn.Module, batch: Any, loss_of: Callable[[nn.Module, Any], torch.Tensor], *,
                      count_batch: bool = False) -> dict[int, int]:
    """Size of each distinct storage autograd saves for backward in one forward pass. Parameters are left out, and
    so is the input batch unless `count_batch`: a whole model's footprint counts them once, as parameters and
    inputs (the first layer saves its input for backward, which counted the batch twice); a pipeline part's input
    is an activation it holds for backward, so layer profiles count it."""
    return _forward_saving(model, batch, loss_of, count_batch)[0]


def _forward_saving(model: nn.Module, batch: Any, loss_of: Callable[[nn.Module, Any], torch.Tensor],
                    count_batch: bool) -> tuple[dict[int, int], Any]:
    """`saved_activations`, and what `loss_of` returned."""
    held_elsewhere = [*model.parameters(), *([] if count_batch else batch_tensors(batch))]
    counted = {t.untyped_storage().data_ptr() for t in held_elsewhere}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in counted:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_of(model, batch)
    return saved, loss


def plan_footprint(model: nn.Module, batch: Any, loss_of: Callable[[nn.Module, Any], torch.Tensor],
                   optimizer_state_copies: int, extra_bytes: int = 0) -> Footprint:
    """The parts, from one forward pass's saved tensors, and the measured step, from the same pass's backward
    under the live-tensor tracker with the model's own tensors resident. A step after the first also holds the
    optimizer's state from its start (the first step creates it only at its end), so that is added to the
    measured peak, as are the batch and the objective's extra."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
    grads = tensor_bytes(trainable)
    tracker = TensorPeakTracker()
    tracker.track([*model.parameters(), *model.buffers()])
    with tracker:
        saved, loss = _forward_saving(model, batch, loss_of, count_batch=False)
        loss.backward()
    return Footprint(
        parameters=params,
        gradients=grads,
        optimizer_state=optimizer_state_copies * grads,
        activations=sum(saved.values()),
        inputs=batch_bytes(batch),
        workspace=max(saved.values(), default=0),
        extra=extra_bytes,
        measured_step=tracker.peak_bytes + optimizer_state_copies * grads + batch_bytes(batch) + extra_bytes,
    )


class FootprintPlanner:
    """Cached footprints of models built at given widths (units per width group).

    `build(widths)` makes the model (`build(widths, depth=k)` a depth cut, for families with blocks),
    `example_batch(batch_size)` an input batch of the right shape, `loss_of(model, batch)` the training loss;
    `extra_bytes(model, batch)` what the local objective adds (None: nothing).
    """

    def __init__(self, build: Callable[[Mapping[str, int]], nn.Module], example_batch: Callable[[int], Any],
                 loss_of: Callable[[nn.Module, Any], torch.Tensor], optimizer_state_copies: int,
                 extra_bytes: Callable[[nn.Module, Any], int] | None = None):
        self._build = build
        self._example_batch = example_batch
        self._loss_of = loss_of
        self._copies = optimizer_state_copies
        self._extra_bytes = extra_bytes
        self._cache: dict[tuple, Footprint] = {}

    def variant(self, key: Hashable, **changes: Any) -> "FootprintPlanner":
        """A planner with some of `build`, `example_batch`, `loss_of`, `optimizer_state_copies`, `extra_bytes`
        replaced (another kind of local work on the same models), with a cache of its own; asked again with the
        same `key`, the same planner (and its measured footprints)."""
        variants = self.__dict__.setdefault("_variants", {})
        if key not in variants:
            parts = {"build": self._build, "example_batch": self._example_batch, "loss_of": self._loss_of,
                     "optimizer_state_copies": self._copies, "extra_bytes": self._extra_bytes}
            unknown = set(changes) - set(parts)
            if unknown:
                raise TypeError(f"FootprintPlanner has no part {sorted(unknown)}")
            variants[key] = FootprintPlanner(**{**parts, **changes})
        return variants[key]

    def footprint(self, widths: Mapping[str, int], batch_size: int, depth: int | None = None) -> Footprint:
        key = (tuple(sorted(widths.items())), batch_size) + ((depth,) if depth is not None else ())
        cached = self._cache.get(key)
        if cached is None:
            torch.manual_seed(0)
            model = self._build(widths) if depth is None else self._build(widths, depth=depth)
            batch = self._example_batch(batch_size)
            with one_thread():
                extra = self._extra_bytes(model, batch) if self._extra_bytes is not None else 0
                cached = plan_footprint(model, batch, self._loss_of, self._copies, extra)
            self._cache[key] = cached
        return cached

    def estimate(self, widths: Mapping[str, int], batch_size: int) -> int:
        """The footprint at `batch_size` extrapolated from batches of two and four (every part of it is constant
        or grows linearly with the batch), so that a batch too large to try is judged without allocating it."""
        two, four = self.footprint(widths, 2).total, self.footprint(widths, 4).total
        return two + (batch_size - 2) * (four - two) // 2
