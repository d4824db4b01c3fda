"""Devices that differ within a class: distributions drawn once per participant from the run's seed, the same
whatever host holds a participant; per-task jitter on the device time; daily availability windows."""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from msfusion_ray.devices.availability import DAY_S, make_availability
from msfusion_ray.devices.clock import device_time, task_speed
from msfusion_ray.devices.distributions import Choice, LogNormal, Uniform, field_draws
from msfusion_ray.devices.fleet import FleetSpec, make_fleet
from msfusion_ray.devices.profile import DiurnalPattern, load_profile, load_profiles
from msfusion_ray.errors import UserInputError
from msfusion_ray.runtime.settings import ParticipantSpecs
from msfusion_ray.shards import Shards

VARIED = ("name: {name}\ndescription: x\nmemory_mib: 100\n"
          "train_gflops: {{lognormal: {{median: 10, sigma: 0.5}}}}\n"
          "uplink_mbps: {{uniform: {{low: 2, high: 20}}}}\ndownlink_mbps: 50\n"
          "latency_ms: {{choice: [30, 45, 80]}}\njitter: 0.2\n")


def _profiles(tmp_path: Path, **bodies: str) -> dict:
    for name, body in bodies.items():
        (tmp_path / f"{name}.yaml").write_text(body.format(name=name))
    return load_profiles(tmp_path)


def test_a_profile_keeps_its_distributions_and_their_nominal_numbers(tmp_path):
    profile = _profiles(tmp_path, phone=VARIED)["phone"]
    assert profile.spread == {"train_gflops": LogNormal(10, 0.5), "uplink_mbps": Uniform(2, 20),
                              "latency_ms": Choice((30.0, 45.0, 80.0))}
    assert (profile.train_gflops, profile.uplink_mbps, profile.latency_ms, profile.jitter) == (10, 11, 45, 0.2)


def test_each_participant_draws_once_from_the_seed_the_same_on_a_rerun(tmp_path):
    profiles = _profiles(tmp_path, phone=VARIED, board=VARIED.replace("jitter: 0.2", "jitter: 0"))
    spec = FleetSpec(name="f", devices={"phone": 400})
    fleet, again = make_fleet(spec, profiles, seed=7), make_fleet(spec, profiles, seed=7)
    for field, column in fleet.values.fields.items():
        assert np.array_equal(column, again.values.fields[field]), field
    gflops = fleet.values.fields["train_gflops"]
    z, u = field_draws(7, "train_gflops", 400)
    assert np.allclose(gflops, 10 * np.exp(0.5 * z))  # participant i takes the i-th draw of the fleet's vector
    assert np.allclose(fleet.values.fields["uplink_mbps"], 2 + 18 * field_draws(7, "uplink_mbps", 400)[1])
    assert set(fleet.values.fields["latency_ms"]) == {30.0, 45.0, 80.0}
    assert 8 < np.median(gflops) < 12 and gflops.min() < 5 < 20 < gflops.max()
    assert not np.array_equal(gflops, make_fleet(spec, profiles, seed=8).values.fields["train_gflops"])
    # another class after them changes none of their draws
    mixed = make_fleet(FleetSpec(name="g", devices={"phone": 400, "board": 50}), profiles, seed=7)
    assert np.array_equal(mixed.values.fields["train_gflops"][:400], gflops)
    assert fleet.device_of(3).train_gflops == gflops[3] and fleet.device_of(3).jitter == 0.2


def test_a_fleet_without_distributions_carries_no_arrays():
    fleet = make_fleet(FleetSpec(name="f", devices={"raspberry-pi-4": 3}), load_profiles(), seed=1)
    assert fleet.values is None and fleet.device_of(2) is fleet.participants[2].device


@pytest.mark.parametrize("hosts", [1, 2, 3, 5])
def test_every_host_sees_the_participants_drawn_devices_whatever_the_host_count(tmp_path, hosts):
    plain = "name: {name}\ndescription: x\nmemory_mib: 100\ntrain_gflops: 3\nuplink_mbps: 1\ndownlink_mbps: 1\n"
    profiles = _profiles(tmp_path, phone=VARIED, board=plain)
    fleet = make_fleet(FleetSpec(name="f", devices={"board": 2, "phone": 5}), profiles, seed=3)
    assert list(fleet.values.fields["train_gflops"][:2]) == [3.0, 3.0]  # a class without distributions keeps its own
    shards = Shards([np.arange(k, k + 2) for k in range(0, 14, 2)])
    for members in np.array_split(np.arange(7), hosts):
        for spec in ParticipantSpecs(list(members), fleet, shards):
            assert spec.profile() == fleet.device_of(spec.id) and spec.device == fleet.participants[spec.id].device


def test_a_jittered_task_takes_the_time_its_formula_says():
    profile = replace(load_profiles()["phone-midrange"], jitter=0.4)
    speed = task_speed(profile, 5, 11, 23)
    z = np.random.default_rng([5, 11, 23, 0x717]).standard_normal(2)
    assert (speed.compute, speed.network) == (pytest.approx(math.exp(0.4 * z[0])), pytest.approx(math.exp(0.4 * z[1])))
    spent = device_time(profile, 2e9, 1_000_000, 500_000, speed)
    assert spent.compute_s == pytest.approx(2e9 / (10e9 * math.exp(0.4 * z[0])))
    assert spent.download_s == pytest.approx(1_000_000 / (55e6 / 8 * math.exp(0.4 * z[1])))
    assert spent.upload_s == pytest.approx(500_000 / (10e6 / 8 * math.exp(0.4 * z[1])))
    assert spent.latency_s == 0.045  # the round trip does not vary
    assert task_speed(profile, 5, 11, 24) != speed and task_speed(profile, 5, 11, 23) == speed
    assert task_speed(replace(profile, jitter=0.0), 5, 11, 23) == type(speed)()  # no jitter: factors 1


@pytest.mark.parametrize("body,where,message", [
    ("train_gflops: {lognormal: {median: -5, sigma: 0.3}}", "train_gflops.lognormal.median", "must be > 0"),
    ("train_gflops: {lognormal: {median: 5, sigma: -0.3}}", "train_gflops.lognormal.sigma", "must be >= 0"),
    ("train_gflops: {gamma: {shape: 2}}", "train_gflops.gamma", "unknown distribution"),
    ("train_gflops: {uniform: {low: 0, high: 3}}", "train_gflops.uniform.low", "must be > 0"),
    ("train_gflops: {uniform: {low: 4, high: 3}}", "train_gflops.uniform.high", "must be >= low"),
    ("train_gflops: {choice: []}", "train_gflops.choice", "non-empty list"),
    ("train_gflops: {choice: [2, fast]}", "train_gflops.choice[1]", "must be a number"),
    ("train_gflops: {lognormal: {median: 5}}", "train_gflops.lognormal.sigma", "required field is missing"),
    ("memory_mib: {lognormal: {median: 5, sigma: 1}}", "memory_mib", "must be a number"),
])
def test_a_bad_distribution_names_its_field(tmp_path, body, where, message):
    base = "name: p\ndescription: x\nmemory_mib: 100\ntrain_gflops: 1\nuplink_mbps: 1\ndownlink_mbps: 1\n"
    field = body.split(":")[0]
    text = "\n".join(line for line in base.splitlines() if not line.startswith(f"{field}:")) + f"\n{body}\n"
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(UserInputError) as err:
        load_profile(tmp_path / "p.yaml")
    assert err.value.where == f"{tmp_path / 'p.yaml'}.{where}" and message in err.value.message


def test_diurnal_windows_are_daily_seeded_and_shifted_per_participant():
    night = replace(load_profiles()["phone-midrange"], availability=1.0,
                    diurnal=DiurnalPattern(start_h=22, hours=8, spread_h=2))
    fleet = make_fleet(FleetSpec(name="f", devices={"phone": 20}), {"phone": night}, seed=2)
    availability, again = make_availability("diurnal", fleet, 2), make_availability("diurnal", fleet, 2)
    starts = []
    for pid in range(20):
        start = availability.next_on(pid, 12 * 3600.0)  # the first evening
        assert 20 * 3600 <= start <= 24 * 3600
        assert availability.window_end(pid, start) == pytest.approx(start + 8 * 3600)
        assert availability.next_on(pid, start + 9 * 3600) == pytest.approx(start + DAY_S)  # every day, same hour
        assert again.next_on(pid, 12 * 3600.0) == start
        starts.append(start)
    assert len(set(starts)) == 20  # each participant's own offset
    sometimes = make_availability("diurnal", make_fleet(FleetSpec(name="f", devices={"phone": 1}),
                                                        {"phone": replace(night, availability=0.5)}, seed=2), 2)
    days = [sometimes.is_on(0, day * DAY_S + 25 * 3600) for day in range(200)]  # 1 am: inside any day's window
    assert 60 < sum(days) < 140  # each day's window happens with the availability
