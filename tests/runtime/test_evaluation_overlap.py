"""A round's evaluation on the hosts beside the next round changes nothing that a run writes."""

import copy

import numpy as np

from msfusion_ray.app.launching import run_prepared
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_participant_rows, read_round_rows
from msfusion_ray.runtime.checkpoint import load_checkpoint
from tests.conftest import SMALL_CONFIG


def run(tmp_path, overlap):
    data = copy.deepcopy(SMALL_CONFIG)
    data.update(output_dir=str(tmp_path / f"overlap-{overlap}"), rounds=3, strategy={"name": "msfusion"})
    data["fleet"]["memory_scale"] = 0.0007
    data["runtime"]["eval_overlap"] = overlap
    prepared = prepare(config_from_dict(data))
    finished = run_prepared(prepared, show_progress=False)
    run_dir, summary = finished.run_dir, finished.summary
    return summary, read_round_rows(run_dir), read_participant_rows(run_dir), load_checkpoint(run_dir)


def test_overlapped_evaluation_writes_the_same_records_and_checkpoint(ray_session, tmp_path):
    (summary, rounds, rows, checkpoint), (summary_0, rounds_0, rows_0, checkpoint_0) = (
        run(tmp_path, True), run(tmp_path, False))
    assert rounds["round"].tolist() == [1, 2, 3] and rounds["test_accuracy"].notna().all()
    for column in ("test_accuracy", "test_loss", "flops_total", "vt_end"):
        assert rounds[column].tolist() == rounds_0[column].tolist(), column
    for column in ("status", "flops", "bytes_up", "train_loss", "vt_end"):
        assert rows[column].tolist() == rows_0[column].tolist(), column
    assert [h["accuracy"] for h in summary["history"]] == [h["accuracy"] for h in summary_0["history"]]
    assert len(summary["timing"]["steps"]) == 3 and summary["timing"]["finished"] >= summary["timing"]["steps"][-1]
    assert checkpoint.round == checkpoint_0.round == 3
    assert all(np.array_equal(checkpoint.weights[k], checkpoint_0.weights[k]) for k in checkpoint_0.weights)
    assert checkpoint.engine_values == checkpoint_0.engine_values
    assert (rounds["wall_eval_s"] > 0).all()
