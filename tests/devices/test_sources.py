"""Fleets from device lists: the shipped phone list through its documented conversion, and the user's own CSV."""

import csv
from pathlib import Path

import numpy as np
import pytest

from msfusion_ray.devices.profile import MIB, default_profiles_dir
from msfusion_ray.devices.sources import listed_fleet, load_source, sampled_fleet
from msfusion_ray.devices.spread import fleet_table, spread_lines
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import fleet_source

SOURCES = default_profiles_dir() / "sources"


def _rows(name: str) -> list[dict]:
    return list(csv.DictReader((SOURCES / name).open()))


def test_sampled_phones_are_listed_phones_through_the_documented_conversion():
    phones, users = _rows("phones.csv"), _rows("network.csv")
    source = load_source("phones")
    assert (source.memory_share, source.anchor_soc_prefix, source.anchor_gflops) == (0.25, "Snapdragon 8", 21.21)
    anchors = [float(p["cpu_f_ai_score"]) for p in phones if p["soc"].startswith("Snapdragon 8")]
    assert len(anchors) == 88 and np.median(anchors) == 2213  # as phones.yaml states
    per_point = 21.21 / 2213
    fleet = sampled_fleet("phones", 300, seed=4, run_seed=9, memory_scale=0.5)
    ups = {round(float(u["up_kib_s"]) * 1024 * 8 / 1e6, 9) for u in users}
    downs = {round(float(u["down_kib_s"]) * 1024 * 8 / 1e6, 9) for u in users}
    for p in fleet.participants:
        listed = phones[int(fleet.values.name_of[p.id])]
        assert fleet.values.name(p.id) == listed["model"]
        assert p.memory_cap_bytes == int(float(listed["ram_gb"]) * 1024 * 0.25 * MIB * 0.5)
        device = fleet.device_of(p.id)
        assert device.train_gflops == pytest.approx(float(listed["cpu_f_ai_score"]) * per_point, rel=1e-12)
        assert round(device.uplink_mbps, 9) in ups and round(device.downlink_mbps, 9) in downs
        assert (device.latency_ms, device.availability, device.compute_power_w) == (45, 0.6, 3.0)
    assert fleet.seed == 9 and len(set(fleet.values.name_of.tolist())) > 150  # drawn with replacement from 333
    again = sampled_fleet("phones", 300, seed=4, run_seed=9, memory_scale=0.5)
    assert np.array_equal(again.values.name_of, fleet.values.name_of)
    assert np.array_equal(again.values.fields["uplink_mbps"], fleet.values.fields["uplink_mbps"])
    assert not np.array_equal(sampled_fleet("phones", 300, seed=5, run_seed=9).values.name_of, fleet.values.name_of)


def test_without_replacement_every_phone_at_most_once_and_no_more_than_the_list():
    fleet = sampled_fleet("phones", 333, seed=1, run_seed=1, replace_draws=False)
    assert sorted(fleet.values.name_of.tolist()) == list(range(333))
    with pytest.raises(UserInputError) as err:
        sampled_fleet("phones", 334, seed=1, run_seed=1, replace_draws=False)
    assert err.value.where == "fleet.sample.size" and "from a list of 333" in err.value.message


def _device_list(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.csv"
    path.write_text(text)
    return path


HEADER = "name,memory_mib,train_gflops,uplink_mbps,downlink_mbps,latency_ms"


def test_a_users_device_list_is_a_fleet_row_for_row(tmp_path):
    path = _device_list(tmp_path, f"{HEADER},compute_power_w\nold phone,500,2,5,20,60,2.5\nnew phone,3000,25,30,100,"
                                  f"30,4\nold phone,500,2.5,5,20,60,2.5\n")
    fleet = listed_fleet(str(path), run_seed=3, memory_scale=0.1)
    assert [fleet.label(i) for i in range(3)] == ["old phone", "new phone", "old phone"]
    assert [p.memory_cap_bytes for p in fleet.participants] == [int(m * MIB * 0.1) for m in (500, 3000, 500)]
    assert [fleet.device_of(i).train_gflops for i in range(3)] == [2, 25, 2.5]
    assert [fleet.device_of(i).compute_power_w for i in range(3)] == [2.5, 4, 2.5]
    assert fleet.participants[0].device.name == "mine" and fleet.participants[0].device.train_gflops == 2.5
    table = fleet_table(fleet)
    assert list(table["name"]) == ["old phone", "new phone", "old phone"] and list(table["latency_ms"]) == [60, 30, 60]
    assert np.isnan(table["idle_power_w"]).all()
    assert "mine" in spread_lines(fleet)[1] and " 3 " in spread_lines(fleet)[1]


@pytest.mark.parametrize("text,where,message", [
    (f"{HEADER.replace(',latency_ms', '')}\na,1,1,1,1\n", "mine.csv", "needs the column(s) latency_ms"),
    (f"{HEADER}\na,1,1,1,1,5\nb,1,fast,1,1,5\n", "mine.csv:3.train_gflops", "must be a number (got 'fast')"),
    (f"{HEADER}\na,1,0,1,1,5\n", "mine.csv:2.train_gflops", "must be > 0"),
    (f"{HEADER}\na,1,1,1,1,-5\n", "mine.csv:2.latency_ms", "must be >= 0"),
    (f"{HEADER},turbo\na,1,1,1,1,5,1\n", "mine.csv", "unknown column(s) turbo"),
    (f"{HEADER}\n,1,1,1,1,5\n", "mine.csv:2.name", "every device needs a name"),
    (f"{HEADER}\n", "mine.csv", "has no devices"),
])
def test_a_bad_device_list_names_the_file_row_and_column(tmp_path, text, where, message):
    path = _device_list(tmp_path, text)
    with pytest.raises(UserInputError) as err:
        listed_fleet(str(path), run_seed=0)
    assert err.value.where == str(tmp_path / where) and message in err.value.message


def test_a_config_names_one_fleet_and_a_sample_draws_from_the_runs_seed_by_default():
    base = {"name": "x", "rounds": 1, "seed": 6}
    config = config_from_dict({**base, "fleet": {"sample": {"source": "phones", "size": 12}, "jitter": 0.1}})
    source = fleet_source(config)
    fleet = source.build(config)
    assert source.size(config) == 12 == len(fleet) and fleet.seed == 6
    assert np.array_equal(fleet.values.name_of, sampled_fleet("phones", 12, 6, 6).values.name_of)
    assert fleet.participants[0].device.jitter == 0.1
    with pytest.raises(UserInputError, match="give one of file, devices, device_list, sample"):
        config_from_dict({**base, "fleet": {"sample": {"source": "phones", "size": 3}, "devices": {"a": 1}}})
    with pytest.raises(UserInputError) as err:
        fleet_source(config_from_dict({**base, "fleet": {"sample": {"source": "toasters", "size": 3}}})).build(config)
    assert err.value.where == "fleet.sample.source" and "neither a shipped source (phones)" in err.value.message
