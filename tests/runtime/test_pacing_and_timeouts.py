"""Per-task deadlines and `clock: real` pacing on a real host actor: a task queued behind a long one keeps its own
time, and a host carrying several participants of a round follows the virtual timeline (the slowest one's end,
not the sum of their device times)."""

import copy

import yaml

from msfusion_ray.app.launching import run_prepared
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_participant_rows, read_round_rows
from tests.conftest import SMALL_CONFIG

FAST = {"name": "instant", "description": "test", "memory_mib": 10_000, "train_gflops": 1e6,
        "uplink_mbps": 1e6, "downlink_mbps": 1e6, "latency_ms": 0}
# one task of SMALL_CONFIG's CNN (3 steps of 16, 83.2 MFLOP) takes 5.5 s on it
SLOW = {**FAST, "name": "slowpoke", "train_gflops": 0.015}


def run_real_clock(tmp_path, devices, timeout_s):
    for profile in (FAST, SLOW):
        (tmp_path / f"{profile['name']}.yaml").write_text(yaml.safe_dump(profile))
    data = copy.deepcopy(SMALL_CONFIG)
    data.update(rounds=1, output_dir=str(tmp_path / "runs"))
    data["fleet"] = {"devices": devices, "profiles_dir": str(tmp_path)}
    data["runtime"] = {"hosts": 1, "clock": "real", "task_timeout_s": timeout_s, "eval_every": 1}
    prepared = prepare(config_from_dict(data))
    run_dir = run_prepared(prepared, show_progress=False).run_dir
    return read_participant_rows(run_dir), read_round_rows(run_dir)


def test_a_task_queued_behind_a_long_one_keeps_its_own_deadline(ray_session, tmp_path):
    # 4 s of its own for the instant device's task (its own work takes well under a second, more under load), which
    # waits 5.5 s behind the slow one's pacing: it ends ok only if its deadline counts from its own start
    rows, _ = run_real_clock(tmp_path, {"slowpoke": 1, "instant": 1}, timeout_s=4.0)
    assert rows["status"].tolist() == ["ok", "ok"]
    assert rows["device_time_s"][0] > 4.0


def test_a_host_with_several_participants_sleeps_until_the_slowest_ends(ray_session, tmp_path):
    rows, rounds = run_real_clock(tmp_path, {"slowpoke": 2}, timeout_s=60.0)
    device_s = rows["device_time_s"].max()
    assert (rows["status"] == "ok").all() and device_s > 4.0
    assert rounds["wall_round_s"][0] < 2 * device_s  # not the sum of the two participants' device times
