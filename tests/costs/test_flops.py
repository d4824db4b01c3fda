"""FLOP counts against hand-computed values (2 FLOPs per multiply-add; backward = 2x forward for these layers)."""

import torch
from torch import nn

from msfusion_ray.costs.flops import StepCostCache, count_flops


def test_linear_forward_and_backward_flops():
    layer = nn.Linear(20, 30)
    x = torch.randn(8, 20, requires_grad=False)
    _, forward = count_flops(lambda: layer(x))
    assert forward == 2 * 8 * 20 * 30
    _, training = count_flops(lambda: layer(x).sum().backward())
    # forward, grad of weight (input not requiring grad: no grad of input)
    assert training == 2 * (2 * 8 * 20 * 30)


def test_conv_forward_flops_match_hand_count():
    conv = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
    x = torch.randn(4, 3, 10, 10)
    _, flops = count_flops(lambda: conv(x))
    outputs = 4 * 16 * 10 * 10
    assert flops == 2 * outputs * 3 * 3 * 3


def test_conv_training_counts_input_and_weight_gradients():
    conv = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
    x = torch.randn(4, 3, 10, 10, requires_grad=True)
    _, flops = count_flops(lambda: conv(x).sum().backward())
    forward = 2 * (4 * 16 * 10 * 10) * 3 * 3 * 3
    assert flops == 3 * forward  # forward + grad of input + grad of weight


def test_step_cost_cache_measures_each_key_once():
    layer = nn.Linear(5, 5)
    x = torch.randn(2, 5)
    cache = StepCostCache()
    calls = []

    def step():
        calls.append(1)
        return layer(x).sum()

    _, first = cache.run("k", step, layer.parameters())
    _, again = cache.run("k", step, layer.parameters())
    assert first.flops == again.flops == 2 * 2 * 5 * 5 and len(calls) == 2
    assert first.peak_tensor_bytes >= sum(p.numel() * 4 for p in layer.parameters())
