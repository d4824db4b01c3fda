from pathlib import Path

import pytest

from msfusion_ray.devices.fleet import FleetSpec, load_fleet_spec, make_fleet, scale_counts
from msfusion_ray.devices.profile import default_profiles_dir, load_profile, load_profiles
from msfusion_ray.errors import UserInputError

REQUIRED = {"raspberry-pi-4", "jetson-nano", "jetson-xavier-nx", "phone-midrange", "laptop-cpu", "edge-server-t4"}


def test_every_required_device_class_ships_with_a_sourced_profile():
    profiles = load_profiles()
    assert REQUIRED <= set(profiles)
    for name in profiles:
        text = (default_profiles_dir() / f"{name}.yaml").read_text()
        comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
        assert any("http" in line or "arXiv" in line or "papers.md" in line for line in comments), name
        assert len(comments) >= 5, f"{name}: each value needs its source"


def test_shipped_fleets_name_known_profiles():
    """Every fleet file names profiles that ship, and builds into exactly the devices it lists, each with its
    profile's memory scaled by the fleet's factor."""
    profiles = load_profiles()
    fleets = sorted((default_profiles_dir() / "fleets").glob("*.yaml"))
    assert len(fleets) >= 5
    for path in fleets:
        spec = load_fleet_spec(path)
        named = set(spec.devices) | set(spec.compute_nodes) | ({spec.aggregator} if spec.aggregator else set())
        assert named <= set(profiles), (path.name, named - set(profiles))
        fleet = make_fleet(spec, profiles)
        built: dict[str, int] = {}
        for p in fleet.participants:
            built[p.device.name] = built.get(p.device.name, 0) + 1
            assert p.device == profiles[p.device.name]
            assert p.memory_cap_bytes == pytest.approx(profiles[p.device.name].memory_mib * 2**20 * spec.memory_scale,
                                                       rel=1e-6, abs=1)
        assert built == {name: count for name, count in spec.devices.items() if count}, path.name


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return path


GOOD = "name: {name}\ndescription: x\nmemory_mib: {mem}\ntrain_gflops: 1\nuplink_mbps: 1\ndownlink_mbps: 1\n"


@pytest.mark.parametrize("mem,field", [(0, "memory_mib"), (-5, "memory_mib")])
def test_non_positive_memory_names_the_field(tmp_path, mem, field):
    path = _write(tmp_path, "bad", GOOD.format(name="bad", mem=mem))
    with pytest.raises(UserInputError) as err:
        load_profile(path)
    assert err.value.where.endswith(f"bad.yaml.{field}") and "> 0" in err.value.message


def test_non_positive_flops_and_unknown_fields_are_rejected(tmp_path):
    path = _write(tmp_path, "p", GOOD.format(name="p", mem=1).replace("train_gflops: 1", "train_gflops: 0"))
    with pytest.raises(UserInputError, match="train_gflops"):
        load_profile(path)
    path = _write(tmp_path, "q", GOOD.format(name="q", mem=1) + "turbo: true\n")
    with pytest.raises(UserInputError, match="turbo"):
        load_profile(path)


def test_unknown_profile_in_a_fleet_names_it():
    with pytest.raises(UserInputError) as err:
        make_fleet(FleetSpec(name="f", devices={"toaster": 2}), load_profiles())
    assert err.value.where == "fleet.devices.toaster"


def test_fleet_rescaling_keeps_the_mix():
    assert scale_counts({"a": 2, "b": 2}, 8) == {"a": 4, "b": 4}
    assert sum(scale_counts({"a": 3, "b": 1, "c": 1}, 32).values()) == 32


def test_availability_is_seeded_per_round():
    fleet = make_fleet(FleetSpec(name="f", devices={"phone-midrange": 50}), load_profiles(), seed=4)
    first, again = fleet.available(3), fleet.available(3)
    assert (first == again).all() and 0.3 < first.mean() < 0.9  # availability 0.6
    assert not (fleet.available(4) == first).all()
