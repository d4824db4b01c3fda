"""The split-and-placement integer program finds what brute force finds, on random and real cases; manual splits."""

import numpy as np
import pytest

from msfusion_ray.costs.layers import LayerCost, profile_layers
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.pipeline.depth_split import (SplitProblem, balanced_split, brute_force_split, equal_split,
                                               optimal_split)


def _random_costs(rng, n_layers):
    costs = []
    size = int(rng.integers(1000, 5000))
    for i in range(n_layers):
        out = int(rng.integers(1000, 5000))
        params = int(rng.integers(0, 20000))
        costs.append(LayerCost(
            name=f"l{i}", forward_flops=int(rng.integers(1, 100)) * 10**6, backward_flops=int(rng.integers(1, 200)) * 10**6,
            parameter_bytes=params, gradient_bytes=params, input_bytes=size, output_bytes=out,
            inner_activation_bytes=int(rng.integers(0, 3000)), backward_workspace_bytes=int(rng.integers(0, 6000)),
            saves_input=bool(rng.random() < 0.7), saves_output=bool(rng.random() < 0.5)))
        size = out
    return costs


def _random_problem(seed):
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(5, 9))
    nodes = int(rng.integers(1, 4))
    costs = _random_costs(rng, n_layers + 2)
    speeds = rng.choice([1e-9, 2e-9, 5e-10], size=nodes)
    owners = int(rng.integers(1, 6))
    whole = sum(c.parameter_bytes * 2 + c.inner_activation_bytes + c.output_bytes for c in costs) * owners
    caps = [int(whole * f) for f in rng.uniform(0.25, 1.0, size=nodes)]
    return SplitProblem(costs, (1, n_layers + 1), list(speeds), caps, owners, optimizer_state_copies=1)


@pytest.mark.parametrize("seed", range(40))
def test_integer_program_matches_brute_force(seed):
    problem = _random_problem(seed)
    expected = brute_force_split(problem)
    found = optimal_split(problem)
    if expected is None:
        assert found is None
        return
    assert found is not None and found.fits
    assert found.pipe_full_s == pytest.approx(expected.pipe_full_s, rel=1e-9)
    assert [a for a, _ in found.ranges] == [1, *found.cuts] and found.ranges[-1][1] == problem.middle[1]
    assert sorted(found.order) == list(range(problem.nodes))


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_smallest_largest_node_matches_brute_force(seed):
    problem = _random_problem(seed)
    expected = brute_force_split(problem, "memory")
    found = optimal_split(problem, "memory")
    assert (found is None) == (expected is None)
    if expected is not None:
        assert max(found.memory_bytes) == max(expected.memory_bytes) and found.fits


def test_some_random_cases_are_tight_and_some_do_not_fit():
    outcomes = [brute_force_split(_random_problem(seed)) for seed in range(40)]
    assert any(o is None for o in outcomes) and sum(o is not None for o in outcomes) > 20


def test_real_model_heterogeneous_nodes_match_brute_force():
    family = build_family("vgg", DataShape((3, 32, 32), 10), 0.125, {"depth": 11, "hidden": 128})
    costs = profile_layers(family.layers(), family.example_batch(8)[0])
    memory = sum(c.parameter_bytes for c in costs) * 4 * 3
    problem = SplitProblem(costs, (2, 12), [1 / 50e9, 1 / 200e9, 1 / 100e9], [memory, memory // 2, memory], 4, 1)
    expected, found = brute_force_split(problem), optimal_split(problem)
    assert found.pipe_full_s == pytest.approx(expected.pipe_full_s, rel=1e-9)
    assert found.pipe_full_s <= equal_split(problem).pipe_full_s + 1e-12
    assert found.pipe_full_s <= balanced_split(problem).pipe_full_s + 1e-12


def _uniform_problem(work, nodes):
    costs = [LayerCost(f"l{i}", w, 2 * w, 0, 0, 8, 8, 0, 0, False, False) for i, w in enumerate(work)]
    return SplitProblem(costs, (0, len(work)), [1e-9] * nodes, [10**9] * nodes, 1, 0)


def test_equal_split_counts_layers_and_balanced_split_counts_work():
    problem = _uniform_problem([10, 10, 10, 10, 40, 40, 10], 3)
    assert equal_split(problem).ranges == ((0, 3), (3, 5), (5, 7))
    # target = 130 / 3 = 43.3: 10+10+10+10, then 40, then the rest
    assert balanced_split(problem).ranges == ((0, 4), (4, 5), (5, 7))
    assert optimal_split(problem).pipe_full_s == pytest.approx(3 * 50e-9)  # 40 | 40+10... best max is 50


def test_balanced_split_leaves_a_layer_for_every_node():
    problem = _uniform_problem([1, 1, 1, 100], 3)
    assert balanced_split(problem).ranges == ((0, 2), (2, 3), (3, 4))
