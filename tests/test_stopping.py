"""How a run ends when it does not complete: SIGTERM and Ctrl-C stop it cleanly (no stack dump, nothing left
running, summary.json `interrupted` and why), a dead driver is one line with its cause (the full text in
run.log, summary.json `failed` and why), and a stopped run continues with `run --resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from msfusion_ray.app.progress import ProgressDisplay
from msfusion_ray.cli import main
from msfusion_ray.runtime.failure_texts import describe_failure, likely_cause

PROJECT = Path(__file__).resolve().parents[1]
STARTUP_LIMIT_S = 300  # a safety bound on waiting for the subprocess's first round, not a speed requirement


def _config_file(tmp_path, small_config_dict, rounds):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**small_config_dict, "rounds": rounds}))
    return path


def _only_run(tmp_path) -> Path:
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _wait_for_a_round(tmp_path, process) -> Path:
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while time.monotonic() < deadline and process.poll() is None:
        summaries = list((tmp_path / "runs").glob("*/summary.json"))
        if summaries:
            try:
                if json.loads(summaries[0].read_text()).get("rounds_completed", 0) >= 1:
                    return summaries[0].parent
            except ValueError:
                pass  # being replaced right now
        time.sleep(0.5)
    raise AssertionError(f"no round finished (exit {process.poll()}): {process.stderr.read()[-2000:]}")


def test_sigterm_stops_a_run_cleanly_and_it_resumes(tmp_path, small_config_dict, ray_session, capsys):
    config = _config_file(tmp_path, small_config_dict, rounds=1000)
    process = subprocess.Popen([sys.executable, "-m", "msfusion_ray", "run", str(config), "--no-plots"],
                               cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = _wait_for_a_round(tmp_path, process)
    children = psutil.Process(process.pid).children(recursive=True)  # the embedded cluster and its workers
    assert children
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 128 + signal.SIGTERM
    lines = [line for line in err.splitlines() if not line.startswith("round ")]  # the progress lines
    assert not out.strip(), out  # nothing of Ray on stdout either
    assert lines == [f"run stopped by SIGTERM; records so far: {run_dir} (continue with: python -m msfusion_ray "
                     f"run --resume {run_dir})"], err
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.cmdline()[:2] for p in alive]  # nothing left running
    summary = _summary(run_dir)
    assert summary["status"] == "interrupted" and summary["reason"] == "stopped by SIGTERM"
    assert "run interrupted: stopped by SIGTERM" in (run_dir / "run.log").read_text()

    reached = json.loads((run_dir / "checkpoint" / "manifest.json").read_text())["round"]
    assert main(["run", "--resume", str(run_dir), "--set", f"rounds={reached + 1}", "--no-plots"]) == 0
    summary = _summary(run_dir)
    assert summary["status"] == "complete" and summary["rounds_completed"] == reached + 1 and "reason" not in summary
    assert "round" in capsys.readouterr().err  # the progress line showed the last round


def test_ctrl_c_stops_the_driver_and_says_interrupted(tmp_path, small_config_dict, ray_session, capsys,
                                                      monkeypatch):
    shown = ProgressDisplay.update

    def ctrl_c_after_a_round(self, done, postfix, force=False):
        shown(self, done, postfix, force)
        if done >= 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ProgressDisplay, "update", ctrl_c_after_a_round)
    code = main(["run", str(_config_file(tmp_path, small_config_dict, rounds=50)), "--no-plots"])
    err = capsys.readouterr().err
    run_dir = _only_run(tmp_path)
    assert code == 130
    assert err.splitlines()[-1].startswith("run stopped by Ctrl-C (SIGINT); records so far: ")
    summary = _summary(run_dir)
    assert summary["status"] == "interrupted" and summary["reason"] == "stopped by Ctrl-C (SIGINT)"
    time.sleep(1)  # a driver still running would write its next round's summary by now
    assert _summary(run_dir)["status"] == "interrupted"


def _driver_pid() -> int:
    """The driver actor's process, from Ray's own state (the GCS actor table)."""
    from ray._private.state import actors

    alive = [a for a in actors().values() if a["ActorClassName"] == "Driver" and a["State"] == "ALIVE"]
    assert len(alive) == 1
    return alive[0]["Pid"]


def _kill_the_driver_after_round(monkeypatch, after: int, before: int) -> list[int]:
    """Kill the driver once progress shows `after` rounds done, if it shows fewer than `before` (a run whose
    driver finished already would not notice: its summary is stored)."""
    shown = ProgressDisplay.update
    killed: list[int] = []

    def update(self, done, postfix, force=False):
        shown(self, done, postfix, force)
        if after <= done < before and not killed:
            killed.append(_driver_pid())
            os.kill(killed[0], signal.SIGKILL)

    monkeypatch.setattr(ProgressDisplay, "update", update)
    return killed


def test_a_killed_driver_is_started_again_and_the_run_ends_as_if_it_had_not_died(tmp_path, small_config_dict,
                                                                                  ray_session, monkeypatch):
    import msfusion_ray
    from msfusion_ray.runtime.checkpoint import load_checkpoint

    config = {**small_config_dict, "rounds": 20}  # rounds take a fraction of a second: the kill lands mid-run
    whole = msfusion_ray.run({**config, "output_dir": str(tmp_path / "whole")}, progress=False)
    killed = _kill_the_driver_after_round(monkeypatch, after=1, before=15)
    restarted = msfusion_ray.run(config, progress=False)
    assert len(killed) == 1
    assert restarted.summary["status"] == "complete" and restarted.summary["rounds_completed"] == 20
    run_dir = restarted.run_dir
    expected, got = load_checkpoint(whole.run_dir).weights, load_checkpoint(run_dir).weights
    assert expected.keys() == got.keys() and all(np.array_equal(expected[k], got[k]) for k in expected)
    assert restarted.rounds["round"].tolist() == list(range(1, 21)) and len(restarted.participants) == 60
    assert restarted.rounds["test_accuracy"].tolist() == whole.rounds["test_accuracy"].tolist()
    log = (run_dir / "run.log").read_text()
    assert f"the driver actor's process (pid {killed[0]}) died" in log and "starting it again from" in log


def test_a_driver_that_keeps_dying_is_one_line_and_the_summary_says_why(tmp_path, small_config_dict, ray_session,
                                                                        capsys, monkeypatch):
    killed = _kill_the_driver_after_round(monkeypatch, after=1, before=40)
    config = _config_file(tmp_path, small_config_dict, rounds=50)
    code = main(["run", str(config), "--no-plots", "--set", "runtime.max_driver_restarts=0"])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("round ")]
    run_dir = _only_run(tmp_path)
    assert code == 1
    assert err[0].startswith(f"error: run failed: the driver actor's process (pid {killed[0]}) died")
    assert "restarted 0 times (runtime.max_driver_restarts=0)" in err[0]
    assert err[1] == f"continue with: python -m msfusion_ray run --resume {run_dir}" and len(err) == 2
    summary = _summary(run_dir)
    assert summary["status"] == "failed" and summary["reason"].startswith("the driver actor's process")
    assert "The actor died unexpectedly" in (run_dir / "run.log").read_text()  # Ray's full text, kept


def test_ray_failure_texts_become_one_line_with_the_likely_cause():
    from ray.exceptions import ActorDiedError, OutOfMemoryError

    text = ("The actor died unexpectedly before finishing this task.\n\tclass_name: Host\n\tactor_id: ab12\n"
            "\tpid: 4242\n\tip: 127.0.0.1\nThe actor is dead because its worker process has died. Worker exit type: "
            "SYSTEM_ERROR Worker exit detail: Task was killed due to the node running low on memory.\nMemory on the "
            "node was 23.10GB / 23.50GB (0.98)")
    err = ActorDiedError()
    err.error_msg = text
    assert describe_failure(err, "host 1") == ("host 1's process (pid 4242) died (killed by Ray's memory monitor: "
                                               "the node ran low on memory)")
    assert "\n" not in describe_failure(OutOfMemoryError("a\nb"), "the driver actor")
    assert likely_cause("Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of "
                        "file.") == "it ended without a word: killed (SIGKILL, the kernel's OOM killer) or crashed"
    assert likely_cause("Worker exit type: SYSTEM_ERROR Worker exit detail: The leased worker has unrecoverable "
                        "failure. x") == "Ray says: The leased worker has unrecoverable failure"


@pytest.mark.parametrize("exit_code", [0, 1])
def test_other_exits_are_not_taken_for_a_stop(exit_code):
    from msfusion_ray.app.stops import interruption

    assert interruption(SystemExit(exit_code)) is None
    assert interruption(SystemExit(signal.SIGTERM)).exit_code == 128 + signal.SIGTERM
