"""The width-splitting strategies plan what their definitions say, within every device's memory."""

import math

import numpy as np
import pytest

from msfusion_ray.config import TrainingConfig
from msfusion_ray.devices.capacity import CapacityOracle, make_planner
from msfusion_ray.devices.fleet import FleetSpec, make_fleet
from msfusion_ray.devices.profile import load_profiles
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.strategies import make_strategy, strategy_class
from msfusion_ray.config import StrategyConfig
from msfusion_ray.strategies.base import ParticipantInfo
from msfusion_ray.training.objective import make_objective
from msfusion_ray.validation import build

TRAINING = TrainingConfig(batch_size=16)


def _setup(name, params=None, memory_scale=0.004):
    family = build_family("cnn", DataShape((1, 28, 28), 10), 1.0)
    strategy = make_strategy(StrategyConfig(name, params or {}), family, seed=0)
    spec = strategy.objective()
    objective = make_objective(spec.name, spec.params) if spec is not None else None
    fleet = make_fleet(FleetSpec("f", {"raspberry-pi-4": 1, "jetson-nano": 1, "phone-midrange": 2}, memory_scale=memory_scale),
                       load_profiles())
    capacity = CapacityOracle(fleet, family, make_planner(family, TRAINING, objective), TRAINING.batch_size)
    infos = [ParticipantInfo(p.id, p.device.name, 100) for p in fleet.participants]
    strategy.configure(capacity, infos)
    return strategy, capacity, infos, fleet, family


@pytest.mark.parametrize("name", ["heterofl", "fedrolex", "fed_dropout", "msfusion", "small_fedavg", "fedavg"])
def test_planned_sub_models_fit_every_device_that_can_hold_any(name):
    strategy, capacity, infos, fleet, family = _setup(name, memory_scale=0.005)  # the Pi 4 alone holds the model
    whole_fits = {p.id: capacity.footprint_bytes(family.full_widths()) <= p.memory_cap_bytes
                  for p in fleet.participants}
    if name == "fedavg":  # the fleet has devices of both kinds
        assert True in whole_fits.values() and False in whole_fits.values()
    for round_idx in (1, 2, 5):
        tasks = strategy.plan(round_idx, infos, capacity)
        assert sorted(t.participant for t in tasks) == [p.id for p in fleet.participants]
        for task in tasks:
            widths = strategy.widths(task)
            fits = capacity.footprint_bytes(widths) <= fleet.participants[task.participant].memory_cap_bytes
            if name == "fedavg":  # the whole model for everyone: those it does not fit refuse it (recorded oom)
                assert widths == family.full_widths() and fits == whole_fits[task.participant]
            elif capacity.max_rate(task.participant) is not None:
                assert fits


def test_rates_are_the_largest_that_fit_and_smaller_devices_get_smaller_slices():
    strategy, capacity, infos, fleet, _ = _setup("heterofl")
    rates = {t.participant: t.rate for t in strategy.plan(1, infos, capacity)}
    assert rates[0] >= rates[1] >= rates[2] == rates[3]  # Pi 4 > Jetson Nano > phones in memory
    for pid, rate in rates.items():
        bigger = min(1.0, rate + 1 / 64)
        if bigger > rate:
            assert capacity.footprint_bytes(capacity.rate_widths(bigger)) > fleet.participants[pid].memory_cap_bytes


def test_rate_levels_snap_down_like_the_heterofl_paper():
    strategy, capacity, infos, _, _ = _setup("heterofl", {"rate_levels": [1.0, 0.5, 0.25, 0.125, 0.0625]})
    for task in strategy.plan(1, infos, capacity):
        assert task.rate in (1.0, 0.5, 0.25, 0.125, 0.0625) and task.rate <= capacity.max_rate(task.participant)


def test_heterofl_prefix_fedrolex_rolls_dropout_is_random():
    heterofl, capacity, infos, _, _ = _setup("heterofl")
    fedrolex, *_ = _setup("fedrolex")
    dropout, *_ = _setup("fed_dropout")
    for round_idx in (1, 2, 3):
        for task in heterofl.plan(round_idx, infos, capacity):
            for group, units in task.selection.items():
                assert units.tolist() == list(range(len(units)))
        rolled = fedrolex.plan(round_idx, infos, capacity)
        for task in rolled:
            for group, units in task.selection.items():
                size = fedrolex.spec.groups[group]
                start = (size - (round_idx - 1) % size) % size
                assert units.tolist() == sorted((start + np.arange(len(units))) % size)
    a = dropout.plan(1, infos, capacity)
    b = dropout.plan(2, infos, capacity)
    assert a[2].rate < 1  # a phone: a real subset to draw
    assert any(not np.array_equal(a[2].selection[g], b[2].selection[g]) for g in a[2].selection)
    assert any(not np.array_equal(a[2].selection[g], a[3].selection[g]) for g in a[2].selection)  # per participant


def test_small_fedavg_narrows_the_global_model_to_the_weakest_device():
    strategy, capacity, infos, fleet, family = _setup("small_fedavg")
    weakest = min(capacity.max_rate(p.id) for p in fleet.participants)
    assert strategy.rate == weakest < 1
    assert strategy.family.full_widths()["conv1"] == math.ceil(weakest * family.full_widths()["conv1"] - 1e-9)
    assert all(t.selection is None for t in strategy.plan(1, infos, capacity))


def test_width_params_are_validated():
    from msfusion_ray.errors import UserInputError

    with pytest.raises(UserInputError, match="rate_levels"):
        build(strategy_class("heterofl").Params, {"rate_levels": [0.5, 2.0]}, "strategy.params")
    with pytest.raises(UserInputError, match="strategy.params.overlap"):
        build(strategy_class("msfusion").Params, {"overlap": 1.5}, "strategy.params")
