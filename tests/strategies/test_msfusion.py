"""MSfusion: double shifting across participants and rounds, adaptive overlap, contrastive loss, peer bytes."""

import numpy as np
import pytest
import torch

from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.index_map import extract, index_map, shared_entries, widths_of
from msfusion_ray.models.weights import load_weights, to_weights
from msfusion_ray.strategies.base import Update
from msfusion_ray.training.objective import ObjectiveContext, make_objective
from tests.strategies.test_width_strategies import _setup


def test_windows_spread_over_participants_and_shift_over_rounds():
    strategy, capacity, infos, _, _ = _setup("msfusion", {"adaptive_overlap": False, "overlap": 0.0})
    first = strategy.plan(1, infos, capacity)
    second = strategy.plan(2, infos, capacity)
    group = "conv2"
    starts_first = [t.selection[group] for t in first]
    assert len({tuple(s) for s in starts_first}) == len(first)  # different participants, different windows
    covered = set().union(*(set(s.tolist()) for s in starts_first))
    assert covered == set(range(strategy.spec.groups[group]))  # spread: the round covers the whole group
    assert all(not np.array_equal(a.selection[group], b.selection[group]) for a, b in zip(first, second))


def test_full_overlap_stacks_the_windows():
    strategy, capacity, infos, _, _ = _setup("msfusion", {"adaptive_overlap": False, "overlap": 1.0})
    tasks = strategy.plan(1, infos, capacity)
    smallest = min(tasks, key=lambda t: len(t.selection["conv2"]))
    for task in tasks:  # every window starts at the same unit: the smaller ones lie inside the larger ones
        assert set(smallest.selection["conv2"].tolist()) <= set(task.selection["conv2"].tolist())


def _round(strategy, tasks, global_weights, updates):
    accumulator = strategy.new_accumulator(global_weights)
    for task in tasks:
        strategy.fold(accumulator, task, Update(task.participant, updates(task), 10), global_weights)
    return strategy.combine(1, global_weights, accumulator)


def test_overlap_rises_when_participants_disagree_and_falls_when_they_agree():
    strategy, capacity, infos, _, family = _setup("msfusion", {"overlap": 0.5, "overlap_smoothing": 1.0})
    weights = to_weights(family.build())
    tasks = strategy.plan(1, infos, capacity)
    rng = np.random.default_rng(0)

    def same_step(task):
        sub = extract(weights, strategy.index_map(task))
        return {k: v + 0.01 for k, v in sub.items()}

    def own_noise(task):
        sub = extract(weights, strategy.index_map(task))
        return {k: v + rng.normal(scale=0.01, size=v.shape).astype(np.float32) for k, v in sub.items()}

    _, agree = _round(strategy, tasks, weights, same_step)
    assert agree["model_shift"] == pytest.approx(0.0, abs=1e-6) and strategy.overlap == pytest.approx(0.0, abs=1e-6)
    _, disagree = _round(strategy, tasks, weights, own_noise)
    assert disagree["model_shift"] > 0.5 and strategy.overlap == pytest.approx(disagree["model_shift"])


def test_fixed_overlap_without_adaptation():
    strategy, capacity, infos, _, family = _setup("msfusion", {"overlap": 0.3, "adaptive_overlap": False})
    weights = to_weights(family.build())
    tasks = strategy.plan(1, infos, capacity)
    _round(strategy, tasks, weights, lambda t: extract(weights, strategy.index_map(t)))
    assert strategy.overlap == 0.3


def test_peer_bytes_count_the_entries_each_peer_also_holds():
    strategy, capacity, infos, _, _ = _setup("msfusion")
    tasks = strategy.plan(1, infos, capacity)
    expected = 4 * sum(shared_entries(strategy.spec, tasks[0].selection, t.selection) for t in tasks[1:])
    assert strategy.peer_bytes(tasks[0], tasks, {}) == expected > 0


def test_contrastive_objective_pulls_towards_the_received_model_and_remembers_its_last_one():
    strategy, capacity, infos, _, family = _setup("msfusion")
    spec = strategy.objective()
    objective = make_objective(spec.name, spec.params)
    weights = to_weights(family.build())
    task = strategy.plan(1, infos, capacity)[1]
    model = family.build(strategy.widths(task))
    received = extract(weights, strategy.index_map(task))
    load_weights(model, received)
    state = {}
    context = ObjectiveContext(1, family, task.selection, received, state)
    objective.begin(model, context)
    x = torch.randn(8, 1, 28, 28)
    features, logits = model.forward_features(x)
    # first round: the negative is the received model too, so the two similarities tie: loss = mu * log 2
    assert float(objective.loss(x, features, logits).detach()) == pytest.approx(np.log(2), abs=1e-4)
    objective.end(model, context)
    assert set(state["previous"]["selection"]) == set(task.selection)
    assert objective.extra_bytes(model) == 2 * sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_target_multiplicity_lowers_rates_until_they_sum_to_the_target():
    from msfusion_ray.strategies.msfusion import water_level

    assert water_level([0.2, 0.5, 0.9], 1.0) == pytest.approx(0.4)  # 0.2 + 0.4 + 0.4
    strategy, capacity, infos, _, _ = _setup("msfusion", {"target_multiplicity": 1.5})
    largest, _, _, _, _ = _setup("msfusion")
    lowered = {t.participant: t.rate for t in strategy.plan(1, infos, capacity)}
    unconstrained = {t.participant: t.rate for t in largest.plan(1, infos, capacity)}
    assert sum(lowered.values()) == pytest.approx(1.5, abs=1e-6)
    assert all(lowered[p] <= unconstrained[p] + 1e-12 for p in lowered)
