"""Planning a pipeline run from a config: stage and hop times from FLOPs and profiles, memory from the layer costs,
each owner's batches from its data; the `split` command's output and its one-line errors."""

import math

import pytest
import yaml

from msfusion_ray.cli import main
from msfusion_ray.costs.layers import part_flops, part_memory
from msfusion_ray.devices.clock import compute_seconds, hop_seconds
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.pipeline_planning import planner_for

SMALL = {
    "name": "plan-test", "rounds": 1,
    "data": {"dataset": "fashion_mnist", "pad_to": 32},
    "model": {"name": "vgg", "width": 0.125, "options": {"depth": 11, "hidden": 128}},
    "fleet": {"devices": {"raspberry-pi-4-vpn": 3, "raspberry-pi-3b-plus": 1},
              "compute_nodes": {"vm-8vcpu-16gb": 1, "cloud-gpu-l4": 1}, "aggregator": "vm-8vcpu-16gb"},
    "strategy": {"name": "mpsl", "params": {"front_layers": 2, "back_layers": 1, "batches_per_owner": 3}},
    "training": {"batch_size": 16, "local_epochs": 2},
}


def _config(**changes):
    return config_from_dict(SMALL, [f"{k}={v}" for k, v in changes.items()])


def test_times_come_from_counted_flops_and_each_devices_profile():
    planner = planner_for(_config())
    plan = planner.plan(planner.split("equal"))
    costs, fleet = planner.costs, planner.fleet
    assert [o.batches for o in plan.times.owners] == [6] * 4  # 3 batches x 2 local epochs
    for node, stage, (a, b) in zip(plan.nodes, plan.times.stages, plan.split.ranges):
        forward, backward = part_flops(costs, a, b)
        assert stage.forward_s == pytest.approx(compute_seconds(node.device, forward))
        assert stage.backward_s == pytest.approx(compute_seconds(node.device, backward))
    first, second = plan.nodes
    assert plan.times.hops_forward_s[0] == pytest.approx(
        hop_seconds(first.device, second.device, costs[plan.split.ranges[0][1] - 1].output_bytes))
    slow_owner, pi = plan.times.owners[3], plan.times.owners[0]
    assert slow_owner.front_forward_s == pytest.approx(pi.front_forward_s * 7.3 / 3.2)
    cut = costs[1].output_bytes
    assert pi.to_first_s == pytest.approx(cut / (8e6 / 8) + (20 + 1) / 2000)
    memory = part_memory(costs, 0, 2, 1).total() + part_memory(costs, 16, 17, 1).total()
    assert plan.owners[0].memory_bytes == memory and plan.owners[0].fits
    assert plan.split.memory_bytes[0] == part_memory(costs, *plan.split.ranges[0], 1).total(4, 4)


def test_owner_batches_follow_their_data_when_not_given():
    config = config_from_dict({**SMALL, "data": {**SMALL["data"], "train_samples": 400, "partition": "iid"},
                               "strategy": {"name": "mpsl", "params": {"front_layers": 2}}})
    planner = planner_for(config)
    assert planner.batches == [2 * math.ceil(100 / 16)] * 4


def test_the_optimal_split_is_no_slower_than_the_manual_ones_and_fits():
    planner = planner_for(_config())
    best = planner.plan(planner.split("optimal"))
    assert best.fits
    for rule in ("equal", "balanced"):
        assert best.split.pipe_full_s <= planner.split(rule).pipe_full_s + 1e-12


def test_explicit_cuts_place_nodes_in_fleet_order():
    planner = planner_for(_config(**{"strategy.params.cuts": "[5]"}))
    split = planner.configured_split()
    assert split.ranges == ((2, 5), (5, 16)) and split.order == (0, 1)


def test_split_command_prints_the_cut_memory_and_epoch_times(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    assert main(["split", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("owners hold layers 0-1", "optimal", "equal", "balanced", "closed form", "schedule",
                 "optimal vs equal", "vm-8vcpu-16gb", "cloud-gpu-l4"):
        assert text in out


@pytest.mark.parametrize("change,where", [
    (("strategy.name=fedavg", "strategy.params={}"), "strategy.name"),  # params of its own: not a pipeline scheme
    ("strategy.params.front_layers=15", "strategy.params.front_layers"),
    ("strategy.params.cuts=[1]", "strategy.params.cuts"),
    ("strategy.params.compute_nodes=3", "strategy.params.compute_nodes"),
    ("fleet.compute_nodes={}", "fleet.compute_nodes"),
])
def test_split_command_bad_input_is_one_line(tmp_path, capsys, change, where):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    changes = change if isinstance(change, tuple) else (change,)
    assert main(["split", str(path), *(arg for c in changes for arg in ("--set", c))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and where in err


def _owners(count, **changes):
    data = {**SMALL, "fleet": {**SMALL["fleet"], "devices": {"raspberry-pi-4": count},
                               "compute_nodes": {"vm-8vcpu-16gb": 2}}}
    return config_from_dict(data, [f"{k}={v}" for k, v in changes.items()])


def test_with_equal_batches_and_100_owners_the_schedule_is_the_closed_form_within_3_percent():
    """Issue 25, item 7: the closed form's regime (a full pipeline) is where the schedule meets it."""
    from msfusion_ray.pipeline.time_model import regime

    planner = planner_for(_owners(100))
    plan = planner.plan(planner.split("equal"))
    assert len({o.batches for o in plan.times.owners}) == 1
    assert plan.schedule.epoch_s == pytest.approx(plan.estimate.epoch_s, rel=0.03)
    assert regime(plan.times, plan.schedule.epoch_s).holds


def test_split_says_when_the_schedule_leaves_the_closed_forms_regime_and_why(tmp_path, capsys):
    """Eight owners cannot fill the pipeline, and owners of Dirichlet-split data train unequal batch counts: the
    schedule is several times the closed form, and `split` names both causes."""
    path = tmp_path / "plan.yaml"
    few = {**SMALL, "fleet": {**SMALL["fleet"], "devices": {"raspberry-pi-4": 8}, "compute_nodes": {"vm-8vcpu-16gb": 2}},
           "data": {**SMALL["data"], "train_samples": 800, "partition": "dirichlet", "alpha": 0.5},
           "strategy": {"name": "mpsl", "params": {"front_layers": 2, "split": "equal"}}}
    path.write_text(yaml.safe_dump(few))
    assert main(["split", str(path)]) == 0
    out = capsys.readouterr().out
    assert "regime, equal: schedule +" in out and "outside its regime" in out
    assert "too few owners to fill the pipeline" in out and "unequal batches" in out
    path.write_text(yaml.safe_dump({**SMALL, "fleet": {**SMALL["fleet"], "devices": {"raspberry-pi-4": 100},
                                                       "compute_nodes": {"vm-8vcpu-16gb": 2}}}))
    assert main(["split", str(path)]) == 0
    out = capsys.readouterr().out
    assert "regime, equal: schedule -0.0 % against the closed form: in its regime (within 3 %)" in out
