"""One lifecycle for every way in: the same config run from the command line (its own process, prepared apart, its
own cluster), through `msfusion_ray.run` and as the cell of a sweep leaves the same records, bit for bit, and the
same final weights; only wall times, measured resident memory and the run's id differ."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import msfusion_ray
from msfusion_ray.records import read_participant_rows, read_round_rows
from msfusion_ray.runtime.checkpoint import load_checkpoint

PROJECT = Path(__file__).resolve().parents[1]
MEASURED = ("run_id", "mem_peak_rss_bytes", "mem_peak_gpu_bytes", "message")  # and wall_*, gpu_*: measured


def deterministic(frame: pd.DataFrame) -> pd.DataFrame:
    """The records without what is measured on the clock or the machine (which differs between any two runs)."""
    kept = [c for c in frame.columns if c not in MEASURED and not c.startswith(("wall_", "gpu_"))]
    return frame[kept].reset_index(drop=True)


def records(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    return (deterministic(read_round_rows(run_dir)), deterministic(read_participant_rows(run_dir)),
            load_checkpoint(run_dir).weights)


def same(a: tuple, b: tuple) -> None:
    pd.testing.assert_frame_equal(a[0], b[0], check_exact=True)
    pd.testing.assert_frame_equal(a[1], b[1], check_exact=True)
    assert a[2].keys() == b[2].keys() and all(np.array_equal(a[2][k], b[2][k]) for k in a[2])


def test_the_command_line_the_api_and_a_sweep_leave_the_same_records(ray_session, tmp_path, small_config_dict):
    config = {**copy.deepcopy(small_config_dict), "strategy": {"name": "heterofl"}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**config, "output_dir": str(tmp_path / "cli")}, sort_keys=False))  # fleet order
    done = subprocess.run([sys.executable, "-m", "msfusion_ray", "run", str(path), "--no-plots"], cwd=PROJECT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not done.stderr.strip() or all(line.startswith("round ") for line in done.stderr.splitlines())
    (cli_dir,) = (tmp_path / "cli").iterdir()

    api = msfusion_ray.run({**config, "output_dir": str(tmp_path / "api")}, progress=False)
    sweep = msfusion_ray.sweep({"name": "one", "base": config, "grid": {"seed": [config["seed"]]},
                                "output_dir": str(tmp_path / "sweeps")}, progress=False)
    (sweep_run,) = sweep.runs.values()

    expected = records(cli_dir)
    assert len(expected[1]) == 2 * 3 and (expected[1]["status"] == "ok").any()
    same(records(api.run_dir), expected)
    same(records(sweep_run.run_dir), expected)
    summaries = [yaml.safe_load((d / "summary.json").read_text()) for d in (cli_dir, api.run_dir,
                                                                           sweep_run.run_dir)]
    assert [s["history"] for s in summaries[1:]] == [summaries[0]["history"]] * 2
    assert all(s["status"] == "complete" and s["environment"]["packages"]["torch"] for s in summaries)
