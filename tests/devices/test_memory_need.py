"""A profile's memory_need (what a task's process needs against the planner's footprint): the line calibrate fits,
the footprint a cap leaves, a profile's block, and which model the planner holds a fleet's caps against."""

from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from msfusion_ray.devices.fleet import FleetSpec, make_fleet
from msfusion_ray.devices.memory_need import MIB, MemoryNeed, fit_need, plannable_bytes, plannable_caps
from msfusion_ray.devices.memory_plan import with_memory_plan
from msfusion_ray.devices.profile import DeviceProfile, load_profile, profile_from_dict
from msfusion_ray.errors import UserInputError

PLAIN = {"name": "plain", "description": "", "memory_mib": 100, "train_gflops": 1, "uplink_mbps": 1,
         "downlink_mbps": 1}
TIMING = {"reference_gflops": 1, "conv_gflops": 1, "matmul_gflops": 1, "attention_gflops": 1, "memory_gbps": 1,
          "op_us": 1, "view_us": 1}


def test_the_fitted_line_lies_above_every_task_and_touches_the_tightest():
    footprints = [1 * MIB, 4 * MIB, 10 * MIB, 40 * MIB]
    needs = [2.0 * MIB, 5.5 * MIB, 14 * MIB, 52 * MIB]
    need = fit_need(footprints, needs)
    margins = [need.need_bytes(int(f)) - n for f, n in zip(footprints, needs)]
    assert min(margins) >= 0 and sorted(margins)[1] < 0.02 * MIB  # above all, on (or a rounding above) two
    assert need == MemoryNeed(scale=1.333, fixed_mib=0.67)  # through (1, 2) and (10, 14): the least relative excess
    assert fit_need([MIB, 2 * MIB], [1.5 * MIB, 3 * MIB]) == MemoryNeed(scale=1.5, fixed_mib=0.0)


def test_each_family_gets_the_smallest_scale_above_its_own_tasks():
    footprints, needs = [10 * MIB, 20 * MIB, 10 * MIB, 30 * MIB], [21 * MIB, 41 * MIB, 12 * MIB, 34 * MIB]
    families = ["cnn", "cnn", "vit", "vit"]
    need = fit_need(footprints, needs, families)
    assert need == MemoryNeed(scale=2.0, fixed_mib=1.0, families={"cnn": 2.0, "vit": 1.1})  # 2F + 1 over all
    for family, f, n in zip(families, footprints, needs):
        assert need.of(family).need_bytes(f) >= n
    assert need.of("mine") == MemoryNeed(scale=2.0, fixed_mib=1.0)  # a family not measured: the line over all
    assert need.of(None) is need
    assert plannable_bytes(21 * MIB, need, "cnn") == 10 * MIB
    assert abs(plannable_bytes(12 * MIB, need, "vit") - 10 * MIB) <= 1


def test_the_plannable_footprint_is_the_largest_whose_need_fits():
    need = MemoryNeed(scale=1.37, fixed_mib=0.75)
    for cap in (MIB, 24 * MIB, 24 * MIB + 1, 10**9 + 7):
        plannable = need.plannable_bytes(cap)
        assert need.need_bytes(plannable) <= cap < need.need_bytes(plannable + 1)
    assert need.plannable_bytes(MIB // 2) == 0
    assert plannable_bytes(12345, None) == 12345  # no model: the cap itself


def test_plannable_caps_per_participant_and_untouched_without_models():
    caps = np.array([24 * MIB, 24 * MIB, 64 * MIB], dtype=np.int64)
    needs = [MemoryNeed(scale=2.0, fixed_mib=1.0), None]
    profile_of = np.array([0, 1, 0], dtype=np.int32)
    assert list(plannable_caps(needs, profile_of, caps)) == [int(11.5 * MIB), 24 * MIB, int(31.5 * MIB)]
    assert plannable_caps([None, None], profile_of, caps) is caps


def test_a_profile_carries_its_block_and_bad_values_name_the_field():
    profile = profile_from_dict({**PLAIN, "memory_need": {"scale": 1.4, "fixed_mib": 0.5}}, "p.yaml")
    assert profile.memory_need == MemoryNeed(scale=1.4, fixed_mib=0.5)
    assert profile_from_dict(PLAIN, "p.yaml").memory_need is None
    with pytest.raises(UserInputError, match="memory_need.scale"):
        profile_from_dict({**PLAIN, "memory_need": {"scale": 0}}, "p.yaml")


def _runtime(**values):
    defaults = {"memory_plan": "calibrated", "enforce": "virtual", "enforce_memory": "process", "node_profile": None}
    return SimpleNamespace(**{**defaults, **values})


@pytest.fixture
def fleet_and_node(tmp_path):
    own = MemoryNeed(scale=1.1, fixed_mib=0.0)
    profiles = {"plain": profile_from_dict(PLAIN, "plain"),
                "own": profile_from_dict({**PLAIN, "name": "own", "memory_need": {"scale": 1.1}}, "own")}
    fleet = make_fleet(FleetSpec("f", {"plain": 2, "own": 1}), profiles)
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump({**PLAIN, "name": "node", "timing": TIMING,
                                    "memory_need": {"scale": 1.5, "fixed_mib": 2.0}}))
    return fleet, str(node), own


def test_which_need_model_the_planner_uses(fleet_and_node):
    fleet, node, own = fleet_and_node
    needs = lambda f: [p.memory_need for p in f.profiles]  # noqa: E731
    assert with_memory_plan(fleet, _runtime()) is fleet  # virtual: each profile's own
    enforced = with_memory_plan(fleet, _runtime(enforce="cgroups", node_profile=node))
    assert needs(enforced) == [MemoryNeed(scale=1.5, fixed_mib=2.0), own]  # the node's where a profile has none
    assert (enforced.memory_caps == fleet.memory_caps).all() and (enforced.profile_of == fleet.profile_of).all()
    for runtime in (_runtime(memory_plan="footprint"), _runtime(enforce="cgroups", node_profile=node,
                                                                memory_plan="footprint"),
                    _runtime(enforce="cgroups", node_profile=node, enforce_memory="tensors")):
        assert needs(with_memory_plan(fleet, runtime)) == [None, None]  # the footprint alone, as before


def test_a_calibrated_node_profile_loads_its_block(fleet_and_node):
    _, node, _ = fleet_and_node
    profile = load_profile(node)
    assert isinstance(profile, DeviceProfile) and profile.memory_need == MemoryNeed(scale=1.5, fixed_mib=2.0)
