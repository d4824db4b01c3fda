"""Per-layer costs of a model cut by depth: FLOPs forward and backward, bytes sent across each cut, and memory.

Every layer is built alone and run once on an input of the shape it gets in the chain (the previous layer's output
on the model's example batch), under torch's FLOP counter and saved-tensor hooks, as the rest of the project
counts whole models (costs/flops.py, costs/footprint.py). Forward and backward are counted separately, because a
pipeline stage does them at different times; the backward of every layer but the first includes the gradient of its
input, which the previous stage needs.

Memory of a range of layers is exact, not a sum of per-layer footprints: the activation a layer hands to the next is
one storage, kept for backward by the layer that made it, by the layer that reads it, or by both. Each layer
therefore records its inner saved storages apart from its input and output and whether it keeps those two, and
`part_memory` counts each boundary storage once inside a part, and on each side of a cut where that side keeps it.
Backward needs room on top of what forward kept: each layer's is measured (the live-tensor peak of what its
backward allocates: the incoming gradient, the gradients it produces, its temporaries), and a part reserves the
largest of its layers'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from msfusion_ray.costs.flops import count_flops
from msfusion_ray.costs.footprint import batch_bytes, saved_activations, tensor_bytes
from msfusion_ray.costs.memory import TensorPeakTracker
from msfusion_ray.models.layers import Layer


@dataclass(frozen=True)
class LayerCost:
    """One layer's costs for one batch."""

    name: str
    forward_flops: int
    backward_flops: int  # gradients of its parameters and, except for the first layer, of its input
    parameter_bytes: int  # parameters and buffers
    gradient_bytes: int  # of its trainable parameters
    input_bytes: int  # the activation it receives (what crosses a cut before it, either way)
    output_bytes: int  # the activation it produces (what crosses a cut after it, either way)
    inner_activation_bytes: int  # storages it saves for backward other than its input and output
    backward_workspace_bytes: int  # peak of what its backward allocates (incoming and produced gradients, temporaries)
    saves_input: bool
    saves_output: bool


@dataclass(frozen=True)
class PartMemory:
    """What holding layers [start, end) costs: per copy (parameters and optimizer state), per batch in flight
    (activations kept for backward) and once (gradients, which a step frees, and backward workspace)."""

    parameters: int
    optimizer_state: int
    activations: int
    gradients: int
    workspace: int

    def total(self, copies: int = 1, batches_in_flight: int = 1) -> int:
        return (copies * (self.parameters + self.optimizer_state) + batches_in_flight * self.activations
                + self.gradients + self.workspace)


def profile_layers(layers: Sequence[Layer], example_input: torch.Tensor) -> list[LayerCost]:
    """Build and run each layer alone on the input it gets in the chain; returns its costs for that batch."""
    torch.manual_seed(0)
    costs = []
    x = example_input
    for index, layer in enumerate(layers):
        module = layer.build().train()
        inputs = x.detach().requires_grad_(index > 0 and x.is_floating_point())
        cost, x = _profile_one(layer.name, module, inputs)
        costs.append(cost)
    return costs


def _profile_one(name: str, module: torch.nn.Module, inputs: torch.Tensor) -> tuple[LayerCost, torch.Tensor]:
    produced: list[torch.Tensor] = []

    def forward(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        produced.append(model(batch))
        return produced[-1]

    saved, forward_flops = count_flops(lambda: saved_activations(module, inputs, forward, count_batch=True))
    output = produced[0]
    workspace = TensorPeakTracker()
    with workspace:
        _, backward_flops = count_flops(lambda: output.backward(torch.ones_like(output)))
    input_ptr, output_ptr = inputs.untyped_storage().data_ptr(), output.untyped_storage().data_ptr()
    if input_ptr == output_ptr:
        raise ValueError(f"layer {name} returns a view of its input: merge it with a neighbouring layer")
    trainable = [p for p in module.parameters() if p.requires_grad]
    cost = LayerCost(
        name=name,
        forward_flops=forward_flops,
        backward_flops=backward_flops,
        parameter_bytes=tensor_bytes(module.parameters()) + tensor_bytes(module.buffers()),
        gradient_bytes=tensor_bytes(trainable),
        input_bytes=batch_bytes(inputs),
        output_bytes=batch_bytes(output),
        inner_activation_bytes=sum(size for ptr, size in saved.items() if ptr not in (input_ptr, output_ptr)),
        backward_workspace_bytes=workspace.peak_bytes,
        saves_input=input_ptr in saved,
        saves_output=output_ptr in saved,
    )
    return cost, output.detach()


def part_activation_bytes(costs: Sequence[LayerCost], start: int, end: int) -> int:
    """Activations layers [start, end) keep for backward of one batch, each storage once."""
    part = costs[start:end]
    total = sum(c.inner_activation_bytes for c in part)
    total += part[0].input_bytes if part[0].saves_input else 0
    for left, right in zip(part, part[1:]):
        total += left.output_bytes if (left.saves_output or right.saves_input) else 0
    total += part[-1].output_bytes if part[-1].saves_output else 0
    return total


def part_memory(costs: Sequence[LayerCost], start: int, end: int, optimizer_state_copies: int) -> PartMemory:
    part = costs[start:end]
    gradients = sum(c.gradient_bytes for c in part)
    return PartMemory(
        parameters=sum(c.parameter_bytes for c in part),
        optimizer_state=optimizer_state_copies * gradients,
        activations=part_activation_bytes(costs, start, end),
        gradients=gradients,
        workspace=max(c.backward_workspace_bytes for c in part),
    )


def part_flops(costs: Sequence[LayerCost], start: int, end: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of layers [start, end) for one batch."""
    part = costs[start:end]
    return sum(c.forward_flops for c in part), sum(c.backward_flops for c in part)
