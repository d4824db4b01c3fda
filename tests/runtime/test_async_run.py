"""The semi-asynchronous engine on real host actors: the FedBuff smoke config, the same with one host or two."""

import numpy as np

from msfusion_ray.app.launching import run_prepared
from msfusion_ray.experiment.config_check import load_config
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_participant_rows, read_round_rows


def run_smoke(tmp_path, hosts):
    config = load_config("configs/smoke/fedbuff.yaml", [f"runtime.hosts={hosts}", "rounds=4",
                                                        f"output_dir={tmp_path / str(hosts)}"])
    prepared = prepare(config)
    finished = run_prepared(prepared, show_progress=False)
    run_dir, summary = finished.run_dir, finished.summary
    return summary, read_participant_rows(run_dir), read_round_rows(run_dir)


def test_fedbuff_smoke_is_the_same_on_one_host_or_two(ray_session, tmp_path):
    summary, rows, rounds = run_smoke(tmp_path, hosts=2)
    assert summary["engine"] == "async" and summary["rounds_completed"] == 4
    assert (rounds["updates_aggregated"] == 3).all() and rounds["vt_end"].is_monotonic_increasing
    assert (rows["status"] == "ok").all()
    # every device time was known before the task ran
    assert np.allclose(rows["predicted_device_s"], rows["device_time_s"], rtol=1e-9, atol=0)
    assert rows["staleness"].max() > 0  # slow devices' updates arrive after faster ones moved the model
    _, one_host, one_host_rounds = run_smoke(tmp_path, hosts=1)
    for column in ("participant", "task", "base_version", "staleness", "vt_start", "vt_end", "flops"):
        assert one_host[column].tolist() == rows[column].tolist(), column
    assert one_host_rounds["test_loss"].tolist() == rounds["test_loss"].tolist()
