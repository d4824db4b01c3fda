"""Per-layer costs add up to what the parts and the whole model measure: FLOPs, activations, bytes at each cut."""

import pytest
import torch

from msfusion_ray.costs.flops import count_flops
from msfusion_ray.costs.footprint import saved_activations
from msfusion_ray.costs.layers import part_activation_bytes, part_flops, part_memory, profile_layers
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.models.layers import build_part, run_chain
from msfusion_ray.training.losses import task_loss

CASES = [
    ("vgg", DataShape((3, 32, 32), 10), 0.125, {"hidden": 256}),
    ("resnet18", DataShape((1, 32, 32), 10), 0.125, {}),
    ("resnet101", DataShape((3, 32, 32), 10), 0.0625, {}),
    ("cnn", DataShape((1, 28, 28), 10), 0.5, {}),
    ("transformer", DataShape((12,), 40, "language_model"), 1.0, {"d_model": 32, "n_heads": 4, "n_layers": 3}),
]
BATCH = 4


def _setup(case):
    family = build_family(*case)
    layers = family.layers()
    x, y = family.example_batch(BATCH)
    if family.data.task == "language_model":
        x = torch.randint(0, family.data.num_outputs, x.shape)
    return family, layers, x, y, profile_layers(layers, x)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_layer_flops_add_up_to_the_whole_training_step(case):
    family, layers, x, y, costs = _setup(case)
    model = family.build().train()
    _, whole = count_flops(lambda: task_loss(family.data.task, model(x), y).backward())
    assert sum(c.forward_flops + c.backward_flops for c in costs) == whole
    assert costs[0].input_bytes == x.numel() * x.element_size()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_part_activations_and_flops_match_the_built_part(case):
    family, layers, x, _, costs = _setup(case)
    n = len(layers)
    for start, end in [(0, n), (1, n - 1), (n // 3, 2 * n // 3 + 1), (n - 2, n)]:
        with torch.no_grad():
            inputs = run_chain([build_part(layers, 0, start)], x) if start > 0 else x
        inputs = inputs.detach().requires_grad_(start > 0)
        part = build_part(layers, start, end).train()
        outputs = []
        saved = saved_activations(part, inputs, lambda m, b: outputs.append(m(b)) or outputs[-1], count_batch=True)
        assert part_activation_bytes(costs, start, end) == sum(saved.values()), (start, end)
        with torch.no_grad():
            out = part(inputs)
        assert costs[end - 1].output_bytes == out.numel() * out.element_size()
        forward_flops, backward_flops = part_flops(costs, start, end)
        counted_out, counted_forward = count_flops(lambda: part(inputs))
        _, counted_backward = count_flops(lambda: counted_out.backward(torch.ones_like(counted_out)))
        assert (forward_flops, backward_flops) == (counted_forward, counted_backward)


def test_part_memory_counts_copies_and_batches_in_flight():
    family, layers, x, _, costs = _setup(CASES[0])
    memory = part_memory(costs, 2, 10, optimizer_state_copies=1)
    part = build_part(layers, 2, 10)
    params = sum(p.numel() * 4 for p in part.parameters())
    assert memory.parameters == params and memory.gradients == params and memory.optimizer_state == params
    one = memory.total()
    assert memory.total(copies=10, batches_in_flight=10) - one == 9 * (2 * params + memory.activations)
