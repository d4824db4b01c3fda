"""configs/smoke/cos2p.yaml on the shared Ray cluster: masks learnt in each participant's first tasks and reused
after, stale updates from the slow devices, the exits each participant holds, and memory within every cap."""

from pathlib import Path

from msfusion_ray.app.launching import run_prepared
from msfusion_ray.experiment.config_check import load_config
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_participant_rows, read_round_rows

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smoke" / "cos2p.yaml"


def test_cos2p_smoke_config_learns_masks_then_reuses_them_with_stale_updates(ray_session, tmp_path):
    prepared = prepare(load_config(CONFIG, [f"output_dir={tmp_path / 'runs'}"]))
    finished = run_prepared(prepared, show_progress=False)
    run_dir, summary = finished.run_dir, finished.summary
    assert summary["status"] == "complete"

    rows = read_participant_rows(run_dir)
    trained = rows[rows["status"] == "ok"].sort_values("task")
    assert (trained["mem_planned_bytes"] <= trained["mem_cap_bytes"]).all()
    for participant, tasks in trained.groupby("participant"):
        learnt = tasks["metric_mask_learnt"].tolist()
        assert learnt == [1.0] * min(2, len(learnt)) + [0.0] * (len(learnt) - 2), (participant, learnt)
        reused = tasks[tasks["metric_mask_learnt"] == 0.0]
        assert reused["metric_kept_fraction"].nunique() <= 1  # one mask, kept
        assert (reused["flops"] < tasks[tasks["metric_mask_learnt"] == 1.0]["flops"].min()).all()
        assert tasks["metric_exits"].nunique() == 1 and tasks["metric_exits"].iloc[0] == tasks["metric_depth"].iloc[0]
    exits = trained.groupby("device")["metric_exits"].first()
    assert exits["phone-midrange"] < exits["raspberry-pi-4"] < exits["laptop-cpu"] == 4
    stale = trained.groupby("device")["staleness"].max()
    assert stale["laptop-cpu"] > 0 and stale["phone-midrange"] > 0
    assert stale["jetson-xavier-nx"] <= stale["laptop-cpu"]

    rounds = read_round_rows(run_dir)
    assert len(rounds) == prepared.config.rounds
    assert (rounds["strategy_updates"] == 4).all() and rounds["strategy_staleness_max"].max() > 0
    assert rounds["device_utilisation"].between(0, 1).all()
    evaluated = rounds.dropna(subset=["test_accuracy"])
    exit_columns = sorted(c for c in rounds.columns if c.startswith("test_exit") and c.endswith("_accuracy"))
    assert len(exit_columns) == len(prepared.family.exit_depths()) >= 2  # every exit of the global model
    assert (evaluated[f"test_exit{prepared.family.depth}_accuracy"] == evaluated["test_accuracy"]).all()
