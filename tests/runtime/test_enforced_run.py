"""Enforced devices in a real run (CI runs as root): each host in a control group with the device's CPU quota and
memory limit, a participant past its limit killed by the kernel and recorded `oom` / `kernel` while the run goes
on, measured and predicted compute in every record, and no control group left once the run ended."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from msfusion_ray.cli import main
from msfusion_ray.devices import cgroups
from msfusion_ray.records import read_participant_rows

NODE = {"name": "node", "description": "test node", "memory_mib": 8000, "train_gflops": 20, "uplink_mbps": 1000,
        "downlink_mbps": 1000, "timing": {"reference_gflops": 20, "conv_gflops": 30, "matmul_gflops": 40,
                                          "attention_gflops": 20, "memory_gbps": 10, "op_us": 5, "view_us": 1}}
DEVICE = {"description": "test", "train_gflops": 5, "uplink_mbps": 100, "downlink_mbps": 100, "latency_ms": 1}


def _groups_of_this_process(base):
    return [g for g in cgroups.ours(base) if g.dirs[0].name.startswith(f"msfusion_ray.{os.getpid()}.")]


@pytest.fixture
def enforced_config(tmp_path, small_config_dict):
    if os.geteuid() != 0:
        pytest.skip("control groups need root")
    try:
        base = cgroups.base_group(cgroups.detect())
        cgroups.check_writable(base)
    except cgroups.CgroupError as err:
        pytest.skip(f"no writable cgroup hierarchy here: {err}")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "roomy.yaml").write_text(yaml.safe_dump({"name": "roomy", "memory_mib": 2000, **DEVICE}))
    (profiles / "cramped.yaml").write_text(yaml.safe_dump({"name": "cramped", "memory_mib": 0.5, **DEVICE}))
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(NODE))
    data = {**small_config_dict, "rounds": 2,
            "fleet": {"devices": {"roomy": 1, "cramped": 1}, "profiles_dir": str(profiles)},
            "training": {"local_steps": 2, "batch_size": 16, "lr": 0.05},
            "runtime": {"hosts": 2, "task_timeout_s": 120, "device": "cpu", "enforce": "cgroups",
                        "node_profile": str(tmp_path / "node.yaml"), "memory_guard": "kernel"}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, base


def test_an_enforced_run_measures_its_devices_and_survives_the_kernel(ray_session, tmp_path, enforced_config):
    path, base = enforced_config
    assert main(["run", str(path), "--no-plots"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = read_participant_rows(run_dir)
    assert len(rows) == 4
    roomy, cramped = rows[rows["device"] == "roomy"], rows[rows["device"] == "cramped"]
    assert list(roomy["status"]) == ["ok", "ok"]
    assert (roomy["cpu_quota"] == 0.25).all()  # 5 of the node's 20 GFLOP/s, as the kernel's files said
    page = 4096  # a v1 limit is kept in pages
    assert ((roomy["mem_limit_bytes"] - roomy["mem_baseline_bytes"] - 2000 * 2**20).abs() < page).all()
    assert (roomy["mem_baseline_bytes"] > 0).all()
    assert (roomy["mem_peak_group_bytes"] > 0).all()  # the group's peak over its start: the process's need
    assert (roomy["device_compute_s"] > 0).all() and (roomy["compute_s_predicted"] > 0).all()
    assert list(cramped["status"]) == ["oom", "oom"] and list(cramped["oom_source"]) == ["kernel", "kernel"]
    # what the host had set and planned for the task it died in
    assert (cramped["mem_cap_bytes"] == roomy["mem_cap_bytes"].iloc[0] // 4000).all()
    assert (cramped["cpu_quota"] == 0.25).all()
    assert ((cramped["mem_limit_bytes"] - cramped["mem_baseline_bytes"] - cramped["mem_cap_bytes"]).abs() < page).all()
    assert (cramped["mem_baseline_bytes"] > 0).all() and (cramped["mem_planned_bytes"] > cramped["mem_cap_bytes"]).all()
    report = json.loads((run_dir / "enforcement.json").read_text())
    assert report["slowdown"] == 1.0 and report["hosts"].startswith("2 hosts at once")
    assert not _groups_of_this_process(base)


def test_an_impossible_device_is_refused_before_anything_starts(tmp_path, enforced_config, capsys):
    path, _ = enforced_config
    fast = tmp_path / "profiles" / "fast.yaml"
    fast.write_text(yaml.safe_dump({"name": "fast", "memory_mib": 2000, **{**DEVICE, "train_gflops": 50}}))
    code = main(["run", str(path), "--set", "runtime.enforce_slowdown=1", "--set", "fleet.devices.fast=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "profile fast" in err and "enforce_slowdown" in err
    assert not (tmp_path / "runs").exists()


def test_cgroups_that_cannot_be_written_are_named(tmp_path, enforced_config, capsys, monkeypatch):
    path, _ = enforced_config
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup /proc/sys/cpu cgroup rw,cpu 0 0\ncgroup /proc/sys/memory cgroup rw,memory 0 0\n")
    monkeypatch.setattr(cgroups, "MOUNTS", mounts)
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "/proc/sys/" in err
    assert not (tmp_path / "runs").exists()
