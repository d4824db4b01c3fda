"""A fleet of sampled phones with per-task jitter on real host actors (FedBuff: the engine must predict each
jittered task's device time before it runs): the same run on one host or two, its participants table written once,
and every task's energy the formula on what its record says it did."""

import copy
import math

import numpy as np
import pandas as pd

from msfusion_ray.app.launching import run_prepared
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_fleet, read_participant_rows, read_round_rows
from tests.conftest import SMALL_CONFIG


def run(tmp_path, hosts):
    data = copy.deepcopy(SMALL_CONFIG)
    data.update(rounds=3, output_dir=str(tmp_path / str(hosts)), strategy={"name": "fedbuff",
                                                                          "params": {"buffer_size": 3}})
    data["fleet"] = {"sample": {"source": "phones", "size": 8, "seed": 2}, "jitter": 0.3, "memory_scale": 0.01}
    data["runtime"]["hosts"] = hosts
    finished = run_prepared(prepare(config_from_dict(data)), show_progress=False)
    run_dir = finished.run_dir
    return finished.summary, read_participant_rows(run_dir), read_round_rows(run_dir), read_fleet(run_dir)


def expected_energy(row: pd.Series, device: pd.Series) -> float:
    latency = row.device_comm_s - row.device_download_s - row.device_upload_s
    return (device.compute_power_w * row.device_compute_s
            + device.radio_tx_w * row.device_upload_s + device.radio_rx_w * (row.device_download_s + latency)
            + device.tx_j_per_mb * row.bytes_up / 1e6 + device.rx_j_per_mb * row.bytes_down / 1e6
            + device.idle_power_w * row.device_wait_s)


def test_a_jittered_sampled_fleet_runs_the_same_on_one_host_or_two_and_records_its_energy(ray_session, tmp_path):
    """Two real runs (the comparison needs both), about 20 s each on 2 idle cores."""
    summary, rows, rounds, fleet = run(tmp_path, hosts=2)
    assert summary["rounds_completed"] == 3 and len(fleet) == 8 and fleet["name"].str.len().min() > 0
    assert (rows["status"] == "ok").all()
    assert fleet["train_gflops"].nunique() > 1  # phones of different speeds
    assert np.allclose(rows["predicted_device_s"], rows["device_time_s"], rtol=1e-9, atol=0)  # jitter foreseen
    nominal = fleet.set_index("participant").loc[rows["participant"], "train_gflops"].to_numpy() * 1e9
    speed = rows["flops"] / rows["device_compute_s"] / nominal
    assert speed.std() > 0.05 and speed.nunique() == len(rows)  # every task its own draw
    devices = fleet.set_index("participant")
    for row in rows.itertuples():
        assert row.energy_j == np.float64(row.energy_compute_j + row.energy_comm_j + row.energy_idle_j)
        assert math.isclose(row.energy_j, expected_energy(row, devices.loc[row.participant]), rel_tol=1e-9)
    assert np.allclose(rounds["energy_j_total"], rows.groupby("round")["energy_j"].sum().to_numpy(), rtol=1e-12)
    assert math.isclose(summary["energy_j"], rounds["energy_j_total"].sum(), rel_tol=1e-12)
    _, one_host, one_host_rounds, one_host_fleet = run(tmp_path, hosts=1)
    pd.testing.assert_frame_equal(one_host_fleet, fleet)
    for column in ("participant", "task", "vt_start", "vt_end", "device_compute_s", "device_upload_s", "energy_j"):
        assert one_host[column].tolist() == rows[column].tolist(), column
    assert one_host_rounds["test_loss"].tolist() == rounds["test_loss"].tolist()
