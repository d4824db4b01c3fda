"""A host actor whose process dies costs the work it had in flight, not the run: its tasks are recorded `error`
with a one-line reason, a new host takes its participants (their memory restored), and they train again in the
next round. A run whose hosts keep dying ends after runtime.max_host_restarts, in one line."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
import yaml

from msfusion_ray.app.progress import ProgressDisplay
from msfusion_ray.cli import main
from msfusion_ray.records import read_participant_rows

PROJECT = Path(__file__).resolve().parents[2]
# Four seconds of round trip: with runtime.clock real every task lasts that long in wall time too, so a host killed
# just after a round ended dies in the middle of the next one.
SLOW_BOARD = ("name: slow-board\ndescription: a board on a slow link (tests)\nmemory_mib: 3000\ntrain_gflops: 5\n"
              "uplink_mbps: 100\ndownlink_mbps: 100\nlatency_ms: 4000\navailability: 1.0\n")


def alive_host_pids() -> list[int]:
    """The processes of the host actors alive now, from Ray's own state (the GCS actor table)."""
    from ray._private.state import actors

    return sorted(a["Pid"] for a in actors().values() if a["ActorClassName"] == "Host" and a["State"] == "ALIVE")


@pytest.fixture
def slow_config(tmp_path, small_config_dict):
    profiles = tmp_path / "profiles"
    shutil.copytree(PROJECT / "device_profiles", profiles, ignore=shutil.ignore_patterns("fleets"))
    (profiles / "slow-board.yaml").write_text(SLOW_BOARD)
    data = {**small_config_dict, "rounds": 3,
            "fleet": {"devices": {"slow-board": 3}, "memory_scale": 0.01, "profiles_dir": str(profiles)},
            "runtime": {"hosts": 2, "task_timeout_s": 120, "clock": "real"}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _kill_hosts_after_round(monkeypatch, after: int, times: int = 1) -> list[int]:
    """Kill a host's process (SIGKILL) once each time the progress line reaches round `after`, `after` + 1, ..."""
    shown = ProgressDisplay.update
    killed: list[int] = []

    def update(self, done, postfix, force=False):
        shown(self, done, postfix, force)
        if len(killed) < times and done >= after + len(killed):
            pid = alive_host_pids()[-1]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    monkeypatch.setattr(ProgressDisplay, "update", update)
    return killed


def _only_run(tmp_path) -> Path:
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def test_a_host_killed_mid_round_costs_its_tasks_and_the_run_goes_on(ray_session, tmp_path, slow_config,
                                                                     monkeypatch, capsys):
    killed = _kill_hosts_after_round(monkeypatch, after=1)
    assert main(["run", str(slow_config), "--no-plots"]) == 0
    run_dir = _only_run(tmp_path)
    rows = read_participant_rows(run_dir)
    assert len(rows) == 3 * 3 and len(killed) == 1
    lost = rows[rows["status"] == "error"]
    assert len(lost) >= 1 and set(lost["round"]) == {2}  # the round it died in, nothing after
    host = int(lost["host"].iloc[0])
    assert all(m.startswith(f"host {host}'s process (pid {killed[0]}) on node 127.0.0.1 died") and "\n" not in m
               for m in lost["message"])
    members = set(rows[rows["host"] == host]["participant"])
    after = rows[(rows["round"] == 3) & rows["participant"].isin(members)]
    assert (after["status"] == "ok").all() and len(after) == len(members)  # back to training in the next round
    others = rows[(rows["round"] == 2) & ~rows["participant"].isin(members)]
    assert (others["status"] == "ok").all()  # the other host's work was not lost
    log = (run_dir / "run.log").read_text()
    assert f"host {host} replaced" in log and "(raylet) A worker died" in log  # Ray's own text, kept there
    shown = capsys.readouterr()
    assert "A worker died" not in shown.out + shown.err  # and not on the terminal
    assert pd.read_parquet(run_dir / "records" / "rounds" / "round-000002.parquet")["participants_failed"][0] == len(lost)


def test_hosts_that_keep_dying_end_the_run_in_one_line(ray_session, tmp_path, slow_config, monkeypatch, capsys):
    _kill_hosts_after_round(monkeypatch, after=1, times=2)
    code = main(["run", str(slow_config), "--no-plots", "--set", "runtime.max_host_restarts=1"])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("round ")]
    assert code == 1
    assert "HostsKeepDying" in err[0] and "more than runtime.max_host_restarts=1" in err[0]
    assert err[1].startswith("continue with: python -m msfusion_ray run --resume ")
