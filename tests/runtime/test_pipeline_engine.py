"""The pipeline engine on the shared Ray cluster: 1, 2 and 3 compute nodes end an epoch with the weights FedAvg of
the whole model reaches on the same batches; records per owner, compute node and aggregator; a compute node that
cannot hold its copies ends the run with a one-line reason."""

import copy

import numpy as np
import pytest
import yaml

from msfusion_ray.app.launching import run_prepared
from msfusion_ray.cli import main
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_participant_rows, read_round_rows
from msfusion_ray.runtime.checkpoint import load_checkpoint

BASE = {
    "name": "pipeline-test", "rounds": 1, "seed": 1,
    "data": {"dataset": "fashion_mnist", "pad_to": 32, "partition": "iid", "train_samples": 120, "eval_samples": 60},
    "model": {"name": "resnet18", "width": 0.125},
    "fleet": {"devices": {"raspberry-pi-4": 3}, "compute_nodes": {"vm-8vcpu-16gb": 3},
              "aggregator": "vm-8vcpu-16gb", "memory_scale": 0.01},
    "strategy": {"name": "mpsl", "params": {"front_layers": 1, "back_layers": 2}},
    "training": {"batch_size": 16, "local_epochs": 1, "lr": 0.05, "momentum": 0.9},
    "runtime": {"hosts": 1, "bn_calibration_samples": 60, "task_timeout_s": 120},
}


def _run(tmp_path, name, **changes):
    data = copy.deepcopy(BASE)
    data["output_dir"] = str(tmp_path / name)
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    prepared = prepare(config_from_dict(data))
    finished = run_prepared(prepared, show_progress=False)
    run_dir, summary = finished.run_dir, finished.summary
    return summary, run_dir


@pytest.fixture(scope="module")
def fedavg(ray_session, tmp_path_factory):
    """FedAvg of the whole model on owners that can hold it (the same devices, unconstrained memory)."""
    summary, run_dir = _run(tmp_path_factory.mktemp("fedavg"), "fedavg", **{
        "strategy": {"name": "fedavg"}, "fleet.memory_scale": 1.0})
    return load_checkpoint(run_dir).weights, read_participant_rows(run_dir)


@pytest.mark.parametrize("nodes", [1, 2, 3])
def test_an_epoch_ends_with_fedavgs_weights(ray_session, tmp_path, fedavg, nodes):
    summary, run_dir = _run(tmp_path, f"mpsl{nodes}", **{"strategy.params.compute_nodes": nodes})
    assert summary["status"] == "complete"
    weights = load_checkpoint(run_dir).weights
    expected, fedavg_rows = fedavg
    assert set(weights) == set(expected)
    for key in expected:
        np.testing.assert_allclose(weights[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key)
    rows = read_participant_rows(run_dir)
    owners = rows[rows["role"] == "participant"].sort_values("participant")
    assert owners["samples"].tolist() == fedavg_rows.sort_values("participant")["samples"].tolist()
    assert (rows["role"] == "compute").sum() == nodes and (rows["role"] == "aggregator").sum() == 1


def test_records_per_owner_node_and_hop_and_the_closed_form_beside(ray_session, tmp_path):
    summary, run_dir = _run(tmp_path, "records", rounds=2, **{"strategy.params.compute_nodes": 2})
    rows, rounds = read_participant_rows(run_dir), read_round_rows(run_dir)
    nodes = rows[rows["role"] == "compute"]
    owners = rows[(rows["role"] == "participant") & (rows["status"] == "ok")]
    assert len(nodes) == 4 and (nodes["status"] == "ok").all()
    assert (nodes["flops"] > 0).all() and (nodes["bytes_down"] > 0).all() and (nodes["bytes_up"] > 0).all()
    assert (nodes["mem_planned_bytes"] <= nodes["mem_cap_bytes"]).all()
    assert (nodes["mem_peak_tensor_bytes"] > 0).all()
    assert (nodes["mem_peak_tensor_bytes"] <= nodes["mem_planned_bytes"]).all()
    assert np.allclose(nodes["metric_idle_s"] + nodes["device_compute_s"], nodes["vt_end"] - nodes["vt_start"])
    # every message a node received, it answered: a forward and a backward per owner batch
    assert (nodes["steps"] == 2 * owners.groupby("round")["steps"].sum().repeat(2).to_numpy()).all()
    assert (owners["mem_peak_tensor_bytes"] <= owners["mem_planned_bytes"]).all()
    assert (owners["vt_end"] > owners["vt_start"]).all()
    assert rounds["vt_start"][1] == rounds["vt_end"][0]
    for column in ("strategy_epoch_schedule_s", "strategy_epoch_closed_form_s", "strategy_hop0_bytes",
                   "strategy_hop1_bytes", "strategy_hop2_bytes"):
        assert (rounds[column] > 0).all(), column
    assert rounds["flops_total"][0] == rows.query("round == 1")["flops"].sum()
    assert summary["final_accuracy"] is not None


def test_a_node_that_cannot_hold_its_copies_ends_the_run_in_one_line(ray_session, tmp_path, capsys):
    data = copy.deepcopy(BASE)
    data["output_dir"] = str(tmp_path / "runs")
    data["fleet"]["compute_nodes"] = {"raspberry-pi-4": 1, "vm-8vcpu-16gb": 1}
    data["fleet"]["memory_scale"] = 0.002  # the owners (and the VM) still hold their parts; the Pi node cannot
    data["strategy"]["params"]["cuts"] = [2]
    data["strategy"]["params"]["compute_nodes"] = 2
    path = tmp_path / "oom.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", str(path), "--no-plots"]) == 1
    err = capsys.readouterr().err
    first = next(line for line in err.splitlines() if line.startswith("error:"))
    assert first.startswith("error: run failed: the driver actor raised PipelineStopped: compute node 0 (raspberry-pi-4) cannot hold 3 copies "
                            "of layer 1: needs")
    run_dir = next((tmp_path / "runs").iterdir())
    rows = read_participant_rows(run_dir)
    refused = rows[(rows["role"] == "compute") & (rows["status"] == "oom")]
    assert refused["participant"].tolist() == [0] and (refused["mem_planned_bytes"] > refused["mem_cap_bytes"]).all()
