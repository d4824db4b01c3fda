"""Checkpoints that can be trusted: written whole with a manifest, and every damaged case refused on resume in one
line naming the file, with exit code 2 and nothing in the run directory changed (no Ray needed: the checks run in
the CLI before any cluster starts)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from msfusion_ray.cli import main
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.models.weights import to_weights
from msfusion_ray.records import ParticipantRoundRow, RecordWriter, RoundRow
from msfusion_ray.runtime.checkpoint import (MANIFEST, Checkpoint, check_resume, load_checkpoint,
                                             save_checkpoint)

ROUNDS_DONE = 2


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tests.conftest import SMALL_CONFIG

    data = {**SMALL_CONFIG, "rounds": 4, "output_dir": str(tmp_path_factory.mktemp("unused"))}
    return prepare(config_from_dict(data))


def _checkpoint(prepared, round_idx=ROUNDS_DONE, **changes) -> Checkpoint:
    weights = to_weights(prepared.family.build())
    participants = {p.id: {"clock_s": 1.5 * p.id, "state": {"previous": np.arange(3.0)}}
                    for p in prepared.fleet.participants}
    fields = dict(round=round_idx, weights=weights, strategy_values={}, strategy_arrays={},
                  participants=participants, engine_values={"tasks_issued": 6, "consumed": {}},
                  engine_arrays={"clock": np.zeros(2)})
    fields.update(changes)
    return Checkpoint(**fields)


@pytest.fixture
def run_dir(tmp_path, prepared):
    """A stopped run: its config, the records of rounds 1 and 2, a summary, and the checkpoint of round 2."""
    run_dir = tmp_path / "runs" / "stopped"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(prepared.config.to_yaml())
    writer = RecordWriter(run_dir)
    for round_idx in range(1, ROUNDS_DONE + 1):
        rows = [ParticipantRoundRow("stopped", round_idx, p.id, p.device.name, 0, "ok")
                for p in prepared.fleet.participants]
        writer.write_round(rows, RoundRow.summarise("stopped", round_idx, "fedavg", rows))
    (run_dir / "summary.json").write_text(json.dumps({"status": "running", "history": []}))
    save_checkpoint(run_dir, _checkpoint(prepared))
    return run_dir


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(capsys, run_dir: Path, expect: str, *extra: str) -> str:
    before = _tree(run_dir)
    code = main(["run", "--resume", str(run_dir), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expect in err, err
    assert _tree(run_dir) == before  # nothing in the run directory changed
    return err


def test_a_checkpoint_holds_a_manifest_of_every_file(run_dir, prepared):
    manifest = json.loads((run_dir / "checkpoint" / MANIFEST).read_text())
    assert manifest["round"] == ROUNDS_DONE
    assert set(manifest["files"]) == {"weights.npz", "strategy.npz", "participants.npz", "engine.npz", "state.json"}
    weights = manifest["files"]["weights.npz"]
    assert weights["bytes"] == (run_dir / "checkpoint" / "weights.npz").stat().st_size and len(weights["sha256"]) == 64
    expected = to_weights(prepared.family.build())
    assert {k: tuple(v["shape"]) for k, v in weights["arrays"].items()} == {k: v.shape for k, v in expected.items()}
    assert {v["dtype"] for v in weights["arrays"].values()} == {"<f4"}


def test_an_intact_checkpoint_passes_every_check(run_dir, prepared):
    checkpoint = check_resume(run_dir, prepared)
    assert checkpoint.round == ROUNDS_DONE and set(checkpoint.participants) == {0, 1, 2}
    assert np.array_equal(checkpoint.participants[1]["state"]["previous"], np.arange(3.0))


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_weights_file_is_named(run_dir, capsys):
    _flip_a_byte(run_dir / "checkpoint" / "weights.npz")
    _refused(capsys, run_dir, "checkpoint/weights.npz: damaged")


def test_a_truncated_state_file_is_named(run_dir, capsys):
    state = run_dir / "checkpoint" / "state.json"
    state.write_bytes(state.read_bytes()[:10])
    _refused(capsys, run_dir, "checkpoint/state.json: truncated")


def test_a_hand_edited_state_file_is_named(run_dir, capsys):
    state = run_dir / "checkpoint" / "state.json"
    state.write_text(state.read_text().replace('"round": 2', '"round": 9'))
    _refused(capsys, run_dir, "checkpoint/state.json: damaged")


@pytest.mark.parametrize("name", ["state.json", "participants.npz", "weights.npz", "engine.npz", MANIFEST])
def test_a_missing_file_is_named(run_dir, capsys, name):
    (run_dir / "checkpoint" / name).unlink()
    _refused(capsys, run_dir, f"checkpoint/{name}: ")


def test_non_finite_weights_are_refused(run_dir, prepared, capsys):
    weights = to_weights(prepared.family.build())
    first = next(iter(weights))
    weights[first][0] = np.nan
    save_checkpoint(run_dir, _checkpoint(prepared, weights=weights))  # a consistent manifest: only the values are bad
    _refused(capsys, run_dir, f"weights.npz: '{first}' holds non-finite values")


def test_a_round_the_records_do_not_have_is_refused(run_dir, prepared, capsys):
    save_checkpoint(run_dir, _checkpoint(prepared, round_idx=99))
    _refused(capsys, run_dir, "records/rounds/round-000003.parquet: missing, but the checkpoint is of round 99",
             "--set", "rounds=100")
    _refused(capsys, run_dir, "state.json: is of round 99 but the config asks for 4 rounds")


def test_a_negative_round_is_refused_and_no_record_is_deleted(run_dir, prepared, capsys):
    save_checkpoint(run_dir, _checkpoint(prepared, round_idx=-2))
    _refused(capsys, run_dir, "state.json: names round -2")
    assert len(list((run_dir / "records" / "rounds").glob("*.parquet"))) == ROUNDS_DONE


def test_an_unknown_participant_is_refused(run_dir, prepared, capsys):
    checkpoint = _checkpoint(prepared)
    checkpoint.participants[42] = checkpoint.participants[0]
    save_checkpoint(run_dir, checkpoint)
    _refused(capsys, run_dir, "state.json: unknown participant 42")


def test_participants_whose_memory_held_nothing_have_no_entry(run_dir, prepared):
    checkpoint = _checkpoint(prepared, engine_arrays={"consumed_ids": np.array([0, 2]),
                                                      "consumed_tasks": np.array([4, 5])})
    del checkpoint.participants[1]
    save_checkpoint(run_dir, checkpoint)
    assert set(check_resume(run_dir, prepared).participants) == {0, 2}


def test_engine_tables_naming_participants_outside_the_fleet_are_refused(run_dir, prepared, capsys):
    save_checkpoint(run_dir, _checkpoint(prepared, engine_arrays={"consumed_ids": np.array([0, 3]),
                                                                  "consumed_tasks": np.array([4, 5])}))
    _refused(capsys, run_dir, "engine.npz: 'consumed_ids' names participants outside the fleet's 0 to 2")


def test_weights_of_another_model_are_refused(run_dir, capsys):
    _refused(capsys, run_dir, "weights.npz: does not fit the config's model", "--set", "model.width=0.5")


def test_a_missing_record_is_named(run_dir, capsys):
    (run_dir / "records" / "participants" / "round-000001.parquet").unlink()
    _refused(capsys, run_dir, "records/participants/round-000001.parquet: missing")


def test_a_damaged_record_is_named(run_dir, capsys):
    (run_dir / "records" / "rounds" / "round-000002.parquet").write_bytes(b"PAR1 not parquet")
    _refused(capsys, run_dir, "records/rounds/round-000002.parquet: cannot read the records")


def test_a_deleted_checkpoint_does_not_silently_start_over(run_dir, capsys):
    shutil.rmtree(run_dir / "checkpoint")
    _refused(capsys, run_dir, "checkpoint: missing, but the records reach round 2")


def test_a_run_stopped_before_its_first_checkpoint_may_start_over(run_dir, prepared):
    shutil.rmtree(run_dir / "checkpoint")
    (run_dir / "records" / "rounds" / "round-000002.parquet").unlink()
    (run_dir / "records" / "participants" / "round-000002.parquet").unlink()
    assert check_resume(run_dir, prepared) is None  # round 1 written, its checkpoint not yet


def test_a_malformed_summary_is_named(run_dir, capsys):
    (run_dir / "summary.json").write_text("{")
    _refused(capsys, run_dir, "summary.json:1: malformed JSON")


def test_a_swap_cut_short_by_a_crash_is_finished(run_dir, prepared, tmp_path):
    """A crash between the two renames: the old checkpoint moved to checkpoint.old/, the complete new one still in
    checkpoint.new/."""
    save_checkpoint(run_dir, _checkpoint(prepared, round_idx=1))
    elsewhere = tmp_path / "elsewhere"
    save_checkpoint(elsewhere, _checkpoint(prepared))
    shutil.copytree(elsewhere / "checkpoint", run_dir / "checkpoint.new")
    os.replace(run_dir / "checkpoint", run_dir / "checkpoint.old")
    assert load_checkpoint(run_dir).round == ROUNDS_DONE  # the complete new one, not the older one
    save_checkpoint(run_dir, _checkpoint(prepared))
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert load_checkpoint(run_dir).round == ROUNDS_DONE


def test_a_half_written_new_checkpoint_is_ignored_and_cleaned_up(run_dir, prepared):
    partial = run_dir / "checkpoint.new"
    partial.mkdir()
    (partial / "weights.npz").write_bytes(b"half")  # no manifest: the writer died before finishing
    assert load_checkpoint(run_dir).round == ROUNDS_DONE
    save_checkpoint(run_dir, _checkpoint(prepared))
    assert not partial.exists() and load_checkpoint(run_dir).round == ROUNDS_DONE


def test_damage_is_refused_by_the_loader_itself(run_dir):
    """The driver reads checkpoints through the same loader: damage never reaches an actor."""
    _flip_a_byte(run_dir / "checkpoint" / "participants.npz")
    with pytest.raises(UserInputError, match="participants.npz: damaged"):
        load_checkpoint(run_dir)


def test_the_resumed_config_is_rewritten_only_after_the_checks(run_dir, capsys):
    config_before = yaml.safe_load((run_dir / "config.yaml").read_text())
    _flip_a_byte(run_dir / "checkpoint" / "weights.npz")
    _refused(capsys, run_dir, "damaged", "--set", "rounds=10")
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == config_before
