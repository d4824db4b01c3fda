"""A disk that fills up stops the run in one line naming the file it could not write; the last complete
checkpoint stays whole, and `--resume` once there is space again finishes with the same weights as a run that
never stopped. The run directory lives on a small tmpfs the test mounts (as root: CI runs as root), filled while
round 2 trains: completely (the round's records cannot be written), or all but 512 KB (its records fit, its
checkpoint, 1.7 MB of weights, does not).

Rounds are paced to wall time (`clock: real`, 3 s of latency a task) so that the disk fills while round 2 trains,
never before round 1 is written: three runs of three rounds and two resumes, 215 s in all on the project's
2-core machine under load about 30 (2026-12-07)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from msfusion_ray.cli import main
from msfusion_ray.errors import WriteFailed
from msfusion_ray.app.progress import ProgressDisplay
from msfusion_ray.records import ParticipantRoundRow, RecordWriter, RoundRow
from msfusion_ray.runtime.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

PROJECT = Path(__file__).resolve().parents[2]
SLOW_BOARD = ("name: slow-board\ndescription: a board on a slow link (tests)\nmemory_mib: 3000\ntrain_gflops: 5\n"
              "uplink_mbps: 100\ndownlink_mbps: 100\nlatency_ms: 3000\navailability: 1.0\n")
DISK_MIB = 32


def _config(tmp_path: Path, small_config_dict: dict, output_dir: Path) -> Path:
    profiles = tmp_path / "profiles"
    if not profiles.exists():
        shutil.copytree(PROJECT / "device_profiles", profiles, ignore=shutil.ignore_patterns("fleets"))
        (profiles / "slow-board.yaml").write_text(SLOW_BOARD)
    data = {**small_config_dict, "rounds": 3, "output_dir": str(output_dir),
            "model": {"name": "cnn", "width": 1.0},  # 1.7 MB of weights: a checkpoint much larger than a round's rows
            "fleet": {"devices": {"slow-board": 3}, "memory_scale": 0.01, "profiles_dir": str(profiles)},
            "runtime": {"hosts": 2, "task_timeout_s": 120, "clock": "real", "device": "cpu"}}
    path = tmp_path / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of DISK_MIB MiB, unmounted (and its filler with it) at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave_bytes: int) -> Path:
    """A file taking all of the disk's free space but `leave_bytes`."""
    stats = os.statvfs(mount)
    filler = mount / "filler"
    with open(filler, "wb") as stream:
        stream.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave_bytes))
    return filler


def _fill_after_round(monkeypatch, mount: Path, leave_bytes: int, after: int = 1) -> list[Path]:
    """Fill the disk once the progress line shows round `after` done (the next round then trains for 3 s)."""
    shown = ProgressDisplay.update
    filled: list[Path] = []

    def update(self, done, postfix, force=False):
        shown(self, done, postfix, force)
        if not filled and done >= after:
            filled.append(_fill(mount, leave_bytes))

    monkeypatch.setattr(ProgressDisplay, "update", update)
    return filled


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory, ray_session):
    """The weights of the same run that never stopped."""
    from tests.conftest import SMALL_CONFIG

    tmp_path = tmp_path_factory.mktemp("reference")
    config = _config(tmp_path, {**SMALL_CONFIG}, tmp_path / "runs")
    assert main(["run", str(config), "--no-plots"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    return load_checkpoint(run_dir).weights


def _stopped_then_resumed(tmp_path, small_config_dict, small_disk, monkeypatch, capsys, leave_bytes: int,
                          unwritten: str, reference: dict) -> None:
    config = _config(tmp_path, small_config_dict, small_disk / "runs")
    filled = _fill_after_round(monkeypatch, small_disk, leave_bytes)
    assert main(["run", str(config), "--no-plots"]) == 1
    (run_dir,) = (small_disk / "runs").iterdir()
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("round ")]
    assert filled and len(err) == 2, err
    assert err[0].startswith(f"error: run failed: cannot write {run_dir / unwritten}: No space left on device"), err
    assert err[1] == f"continue with: python -m msfusion_ray run --resume {run_dir}"
    assert load_checkpoint(run_dir).round == 1  # the last complete checkpoint, whole (its manifest checks out)
    assert not (run_dir / "checkpoint.new").exists() and not list(run_dir.rglob("*.tmp"))  # nothing half-written

    filled[0].unlink()  # space again
    monkeypatch.undo()
    assert main(["run", "--resume", str(run_dir), "--no-plots"]) == 0
    weights = load_checkpoint(run_dir).weights
    assert weights.keys() == reference.keys()
    assert all(np.array_equal(weights[name], reference[name]) for name in reference)


def test_a_read_only_disk_fails_each_write_naming_its_file_and_leaves_nothing_half_written(small_disk):
    run_dir = small_disk / "run"
    rows = [ParticipantRoundRow("ro", 1, 0, "pi", 0, "ok")]
    writer = RecordWriter(run_dir)
    writer.write_round(rows, RoundRow.summarise("ro", 1, "fedavg", rows))
    checkpoint = Checkpoint(1, {"w": np.ones(3)}, {}, {}, {}, {"tasks_issued": 1}, {})
    save_checkpoint(run_dir, checkpoint)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(WriteFailed, match=f"cannot write {run_dir}/records/participants/round-000002.parquet: "
                                          "Read-only file system"):
        writer.write_round([ParticipantRoundRow("ro", 2, 0, "pi", 0, "ok")], RoundRow("ro", 2, "fedavg"))
    with pytest.raises(WriteFailed, match=f"cannot write {run_dir}/checkpoint.new: Read-only file system"):
        save_checkpoint(run_dir, Checkpoint(**{**checkpoint.__dict__, "round": 2}))
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert load_checkpoint(run_dir).round == 1


def test_a_round_whose_records_cannot_be_written_stops_the_run(tmp_path, small_config_dict, small_disk,
                                                               reference_weights, monkeypatch, capsys):
    _stopped_then_resumed(tmp_path, small_config_dict, small_disk, monkeypatch, capsys, leave_bytes=0,
                          unwritten="records/participants/round-000002.parquet", reference=reference_weights)


def test_a_checkpoint_that_cannot_be_written_stops_the_run(tmp_path, small_config_dict, small_disk,
                                                           reference_weights, monkeypatch, capsys):
    _stopped_then_resumed(tmp_path, small_config_dict, small_disk, monkeypatch, capsys, leave_bytes=512 * 1024,
                          unwritten="checkpoint.new/weights.npz", reference=reference_weights)
