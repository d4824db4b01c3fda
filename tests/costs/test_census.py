"""The operation census: its FLOPs are torch's count, kinds and bytes are as the operations say, and the step-cost
cache tallies a task's steps."""

import torch
from torch import nn

from msfusion_ray.costs.census import OpCensus, kind_of
from msfusion_ray.costs.flops import StepCostCache, count_flops


def test_census_flops_are_the_counted_flops_and_kinds_are_sorted(one_thread):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    x = torch.randn(2, 1, 8, 8)
    census = OpCensus()
    with census:
        _, flops = count_flops(lambda: model(x).sum().backward())
    result = census.census()
    by_kind = result.by_kind()
    assert result.flops == flops > 0
    assert by_kind["conv"][0] + by_kind["matmul"][0] == flops
    assert by_kind["other"][0] == by_kind["view"][0] == 0
    assert by_kind["view"][1] == 0 and by_kind["view"][2] > 0  # views move nothing but are dispatched
    assert by_kind["other"][1] > 0  # relu, sum, the gradients' elementwise work


def test_a_linear_layer_moves_its_operands(one_thread):
    weight, x = torch.randn(5, 3), torch.randn(4, 3)
    census = OpCensus()
    with census:
        torch.mm(x, weight.t())
    groups = [g for g in census.census().groups if g.kind == "matmul"]
    assert len(groups) == 1
    # (4 x 3) @ (3 x 5): 2 * 4 * 3 * 5 FLOPs; 12 + 15 floats read, 20 written
    assert groups[0].flops == 120 and groups[0].bytes == (12 + 15 + 20) * 4
    assert kind_of(torch.ops.aten.t.default) == "view"


def test_step_cost_cache_tallies_the_steps_of_a_task(one_thread):
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    costs = StepCostCache()
    step = lambda: model(x).sum().backward()  # noqa: E731
    _, first = costs.run("a", step, model.parameters())
    assert first.measured and first.census is not None
    costs.begin_tally()
    for _ in range(3):
        _, again = costs.run("a", step, model.parameters())
        assert not again.measured and again.census is first.census
    assert costs.tally() == [(first.census, 3)]
