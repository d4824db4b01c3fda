"""Roles in a fleet: data owners, compute nodes and the aggregator, each from a profile, each cap scaled alike."""

import pytest

from msfusion_ray.devices.fleet import FleetSpec, load_fleet_spec, make_fleet
from msfusion_ray.devices.profile import default_profiles_dir, load_profiles
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import resolve_fleet

COMPUTE_CLASSES = {"vm-8vcpu-16gb", "vm-8vcpu-64gb", "vm-16vcpu-128gb", "edge-server-t4", "cloud-gpu-l4"}


def test_compute_node_classes_are_priced():
    profiles = load_profiles()
    for name in COMPUTE_CLASSES:
        assert profiles[name].hourly_cost_usd > 0, name
    assert profiles["raspberry-pi-4"].hourly_cost_usd is None


def test_the_paper_fleet_has_pi_owners_vm_compute_nodes_and_an_aggregator():
    fleet = make_fleet(load_fleet_spec(default_profiles_dir() / "fleets" / "mpsl_paper.yaml"), load_profiles())
    assert len(fleet) == 100 and {p.device.name for p in fleet.participants} == {"raspberry-pi-4-vpn"}
    assert [n.id for n in fleet.compute_nodes] == [0, 1, 2]
    assert all(n.device.name == "vm-8vcpu-16gb" for n in fleet.compute_nodes)
    assert fleet.aggregator.device.name == "vm-8vcpu-16gb"


def test_compute_nodes_are_scaled_like_owners_and_count_from_zero():
    profiles = load_profiles()
    spec = FleetSpec(name="f", devices={"raspberry-pi-4": 3}, compute_nodes={"vm-8vcpu-16gb": 1, "cloud-gpu-l4": 2},
                     memory_scale=0.5)
    fleet = make_fleet(spec, profiles, size=6)
    assert len(fleet) == 6 and len(fleet.compute_nodes) == 3  # fleet.size rescales the owners only
    assert [n.device.name for n in fleet.compute_nodes] == ["vm-8vcpu-16gb", "cloud-gpu-l4", "cloud-gpu-l4"]
    assert fleet.compute_nodes[0].memory_cap_bytes == int(profiles["vm-8vcpu-16gb"].memory_bytes * 0.5)
    assert fleet.aggregator is None


def test_a_fleet_without_compute_nodes_is_as_before():
    fleet = make_fleet(FleetSpec(name="f", devices={"raspberry-pi-4": 2}), load_profiles())
    assert fleet.compute_nodes == () and fleet.aggregator is None


@pytest.mark.parametrize("spec,where", [
    (FleetSpec(name="f", devices={"raspberry-pi-4": 1}, compute_nodes={"mainframe": 1}),
     "fleet.compute_nodes.mainframe"),
    (FleetSpec(name="f", devices={"raspberry-pi-4": 1}, compute_nodes={"vm-8vcpu-16gb": -1}),
     "fleet.compute_nodes.vm-8vcpu-16gb"),
    (FleetSpec(name="f", devices={"raspberry-pi-4": 1}, aggregator="abacus"), "fleet.aggregator"),
])
def test_unknown_or_negative_compute_nodes_name_the_field(spec, where):
    with pytest.raises(UserInputError) as err:
        make_fleet(spec, load_profiles())
    assert err.value.where == where


def test_config_overrides_the_fleet_files_compute_nodes():
    config = config_from_dict({"name": "x", "rounds": 1, "fleet": {"file": "device_profiles/fleets/mpsl_paper.yaml"}},
                              ["fleet.size=10", "fleet.compute_nodes={cloud-gpu-l4: 2}",
                               "fleet.aggregator=edge-server-t4"])
    fleet = resolve_fleet(config)
    assert len(fleet) == 10
    assert [n.device.name for n in fleet.compute_nodes] == ["cloud-gpu-l4", "cloud-gpu-l4"]
    assert fleet.aggregator.device.name == "edge-server-t4"
