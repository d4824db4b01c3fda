"""Real runs of the new options on the shared Ray cluster: a baseline with its reference recipe, and MSfusion with
in-batch negatives. Every trained participant stays within its memory cap (planned and measured)."""

import pytest

from msfusion_ray.app.launching import run_prepared
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_participant_rows, read_round_rows


@pytest.mark.parametrize("strategy", [
    {"name": "heterofl", "params": {"static_bn": True, "scaler": True, "label_mask": True}},
    {"name": "msfusion", "params": {"contrastive_negatives": "batch"}},
])
def test_a_run_with_the_option_trains_within_every_cap(ray_session, small_config_dict, strategy):
    small_config_dict["strategy"] = strategy
    small_config_dict["data"]["validation_samples"] = 100
    small_config_dict["fleet"]["memory_scale"] = 0.002  # every device holds some slice
    prepared = prepare(config_from_dict(small_config_dict))
    finished = run_prepared(prepared, show_progress=False)
    run_dir = finished.run_dir
    assert finished.summary["status"] == "complete"
    participants = read_participant_rows(run_dir)
    trained = participants[participants["status"] == "ok"]
    assert len(trained) >= 2 and set(participants["status"]) <= {"ok", "unavailable"}
    assert (trained["mem_planned_bytes"] <= trained["mem_cap_bytes"]).all()
    assert (trained["mem_peak_tensor_bytes"] <= trained["mem_planned_bytes"]).all()
    rounds = read_round_rows(run_dir)
    assert 0 <= rounds["val_accuracy"].iloc[-1] <= 1  # the held-out validation split is evaluated
