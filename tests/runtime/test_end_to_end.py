"""A real run on the shared Ray cluster: records, costs, checkpoint and resume."""

import json

import numpy as np
import pytest

from analysis.plots import plot_runs
from msfusion_ray.app.launching import run_prepared
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import ParticipantRoundRow, RoundRow, read_participant_rows, read_round_rows
from msfusion_ray.runtime.checkpoint import load_checkpoint


@pytest.fixture
def finished_run(ray_session, small_config_dict):
    config = config_from_dict(small_config_dict, ["runtime.eval_every=2"])  # round 1 is not evaluated
    prepared = prepare(config)
    finished = run_prepared(prepared, show_progress=False)
    run_dir, summary = finished.run_dir, finished.summary
    return config, run_dir, summary


def test_two_round_run_writes_complete_records(finished_run):
    config, run_dir, summary = finished_run
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2
    participants = read_participant_rows(run_dir)
    rounds = read_round_rows(run_dir)
    assert set(ParticipantRoundRow.__annotations__) - {"metrics"} <= set(participants.columns)
    assert {f for f in RoundRow.__annotations__ if not f.endswith("_metrics")} <= set(rounds.columns)
    assert len(participants) == 2 * 3 and rounds["round"].tolist() == [1, 2]

    by_device = participants.groupby("device")["status"].agg(set)
    assert by_device["phone-midrange"] <= {"oom", "unavailable"}  # its cap is below the model's footprint
    trained = participants[participants["status"] == "ok"]
    assert len(trained) >= 2
    assert (trained["flops"] > 0).all() and (trained["bytes_down"] > 0).all() and (trained["bytes_up"] > 0).all()
    assert (trained["mem_planned_bytes"] <= trained["mem_cap_bytes"]).all()
    assert (trained["device_time_s"] > 0).all() and (trained["wall_train_s"] > 0).all()
    assert (trained["steps"] == 3).all()
    # every trained participant ran the same shape and batch size: identical FLOPs
    assert trained["flops"].nunique() == 1
    assert np.isnan(rounds["test_accuracy"][0]) and 0 <= rounds["test_accuracy"][1] <= 1
    assert (rounds["flops_total"] == participants.groupby("round")["flops"].sum().to_numpy()).all()

    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint.round == 2 and checkpoint.weights
    assert checkpoint.participants == {}  # FedAvg's participants remember nothing: no entry is kept for them
    assert set(checkpoint.engine_arrays["consumed_ids"]) == set(trained["participant"])  # who was aggregated
    # the virtual timeline: both rounds of every participant start at their round's start, and round 2 starts
    # when round 1's slowest participant ended
    assert (participants.groupby("round")["vt_start"].nunique() == 1).all()
    assert rounds["vt_start"][1] == rounds["vt_end"][0] == participants.query("round == 1")["vt_end"].max()
    ok = participants[participants["status"] == "ok"]
    assert np.allclose(ok["vt_end"] - ok["vt_start"], ok["device_time_s"])
    pngs = plot_runs([run_dir], run_dir / "plots")
    assert all(p.stat().st_size > 10_000 for p in pngs)


def test_resume_continues_from_the_checkpoint(finished_run):
    config, run_dir, _ = finished_run
    before = read_round_rows(run_dir)
    longer = config_from_dict(config.to_dict(), ["rounds=3"])
    summary = run_prepared(prepare(longer), resume=run_dir, show_progress=False).summary
    after = read_round_rows(run_dir)
    assert summary["rounds_completed"] == 3 and after["round"].tolist() == [1, 2, 3]
    assert np.allclose(after["test_accuracy"][:2], before["test_accuracy"], equal_nan=True)  # earlier rounds untouched
    assert summary["final_accuracy"] == after["test_accuracy"][2]  # the restored history's unevaluated round is fine
    rows = read_participant_rows(run_dir)
    assert rows.query("round == 3")["vt_start"].min() == before["vt_end"].iloc[-1]  # the timeline carried over
    busy = rows.groupby("participant")["device_time_s"].sum()
    assert np.allclose(rows.groupby("participant")["device_clock_s"].max(), busy)  # and every device's busy time
    assert read_participant_rows(run_dir)["round"].max() == 3
