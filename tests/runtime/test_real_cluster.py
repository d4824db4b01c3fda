"""A run on a cluster of real Ray nodes (cluster/local_cluster.py: a head and three worker nodes, each a `ray start`
of its own on its own loopback address, each offering device classes) that loses one: the lost node's tasks are
recorded `error` naming the node, its participants train on a surviving node of their class, the run completes.
Where no node of the class is left, the run waits `runtime.node_wait_s` for one and ends in one line naming it;
a class no node offers at the start, or an address where no cluster answers, is bad input (one line, exit 2,
nothing written).

Marked `cluster` (`-m "not cluster"` leaves it out): starting four Ray nodes and two runs paced to wall time took
244 s on the project's 2-core machine under load 30 to 35 (2026-12-07), so the module shares one cluster, and
checks that stopping it left none of its processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster.local_cluster import LocalCluster
from msfusion_ray.records import read_participant_rows, read_round_rows

pytestmark = pytest.mark.cluster
PROJECT = Path(__file__).resolve().parents[2]
CLASSES = ("slow-a", "slow-b", "slow-c")  # slow-c: offered by no node


def _profile(name: str) -> str:
    return (f"name: {name}\ndescription: a board on a slow link (tests)\nmemory_mib: 3000\ntrain_gflops: 5\n"
            "uplink_mbps: 100\ndownlink_mbps: 100\nlatency_ms: 3000\navailability: 1.0\n")


@pytest.fixture(scope="module")
def cluster():
    """Worker nodes offering slow-a, slow-a and slow-b, slow-b: every class on two nodes. Stopped by the process
    ids it started, and checked: none of its processes is left."""
    local = LocalCluster.plan([["slow-a"], ["slow-a", "slow-b"], ["slow-b"]], cpus=2)
    local.start(object_store_mib=150)
    yield local
    local.stop()
    assert not local.leftovers()


@pytest.fixture
def runs():
    """The runs a test starts (`python -m msfusion_ray run ... --address`), each killed by its pid at the end if
    it is still going (a failed test)."""
    started: list[subprocess.Popen] = []
    yield started
    for run in started:
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=60)


def _config(tmp_path: Path, small_config_dict: dict, devices: dict[str, int], **runtime) -> Path:
    profiles = tmp_path / "profiles"
    shutil.copytree(PROJECT / "device_profiles", profiles, ignore=shutil.ignore_patterns("fleets"))
    for name in CLASSES:
        (profiles / f"{name}.yaml").write_text(_profile(name))
    data = {**small_config_dict, "rounds": 4,
            "fleet": {"devices": devices, "memory_scale": 0.01, "profiles_dir": str(profiles)},
            "runtime": {"hosts": 2, "task_timeout_s": 120, "clock": "real", "device": "cpu",
                        "device_resources": True, **runtime}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(runs: list[subprocess.Popen], config: Path, address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(PROJECT)}  # the nodes' token authentication
    runs.append(subprocess.Popen([sys.executable, "-m", "msfusion_ray", "run", str(config), "--address", address,
                                  "--no-plots"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return runs[-1]


def _lose_a_host_node_after_round_one(cluster: LocalCluster, runs: Path, run: subprocess.Popen):
    """Once round 1's checkpoint is written (round 2 then trains for 3 s), kill the node of a host actor."""
    deadline = time.monotonic() + 240
    while not list(runs.glob("*/checkpoint/manifest.json")):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.2)
    node = cluster.node_with("ray::Host")
    assert node is not None
    assert cluster.kill_node(node)
    return node


def test_a_node_lost_mid_run_costs_its_tasks_and_its_participants_go_on_elsewhere(cluster, runs, tmp_path,
                                                                                 small_config_dict):
    config = _config(tmp_path, small_config_dict, {"slow-a": 2, "slow-b": 2}, node_wait_s=30)
    run = _run(runs, config, cluster.address)
    lost = _lose_a_host_node_after_round_one(cluster, tmp_path / "runs", run)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = read_participant_rows(run_dir)
    assert len(rows) == 4 * 4 and sorted(set(rows["round"])) == [1, 2, 3, 4]  # complete records
    failed = rows[rows["status"] == "error"]
    assert len(failed) >= 1 and len(set(failed["round"])) == 1
    assert all(f"on node {lost.ip}" in m and "\n" not in m for m in failed["message"])
    moved = set(failed["participant"])
    after = rows[(rows["round"] > failed["round"].max()) & rows["participant"].isin(moved)]
    assert len(after) and (after["status"] == "ok").all()  # they train again, on a surviving node
    assert (rows[rows["status"] != "error"]["status"] == "ok").all()
    log = (run_dir / "run.log").read_text()
    assert "replaced" in log and f"on node {lost.ip}" in log
    assert read_round_rows(run_dir)["round"].tolist() == [1, 2, 3, 4]


def test_a_class_left_without_a_node_waits_then_ends_the_run_naming_it(cluster, runs, tmp_path,
                                                                        small_config_dict):
    """After the first test one node of slow-a is left: losing it leaves the class without any."""
    config = _config(tmp_path, small_config_dict, {"slow-a": 2}, node_wait_s=5)
    run = _run(runs, config, cluster.address)
    _lose_a_host_node_after_round_one(cluster, tmp_path / "runs", run)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 1, err
    lines = [line for line in err.splitlines() if not line.startswith("round ")]
    assert lines[0].startswith("error: run failed: ") and "no node of the cluster offers device:slow-a" in lines[0]
    assert "waited runtime.node_wait_s=5 s" in lines[0] and lines[1].startswith("continue with: ")


def test_a_class_no_node_offers_at_the_start_is_bad_input(cluster, runs, tmp_path, small_config_dict):
    config = _config(tmp_path, small_config_dict, {"slow-b": 1, "slow-c": 2}, node_wait_s=2)
    run = _run(runs, config, cluster.address)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("error: runtime.device_resources: no node of the cluster at ")
    assert "offers device:slow-c (waited runtime.node_wait_s=2 s" in err
    assert not (tmp_path / "runs").exists()  # nothing written
