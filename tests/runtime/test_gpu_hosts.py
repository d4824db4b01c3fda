"""GPU hosts: the memory guard against a host's share of its GPU, a real out-of-memory error as an outcome, host
actors on a fake-GPU Ray cluster (`ray.init(num_gpus=2)`) asking for the right fractions, and, where a CUDA GPU
is present, whole runs trained on it (those skip cleanly without one)."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from msfusion_ray.config import DataConfig, TrainingConfig
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.data import load_data
from msfusion_ray.devices.gpu import GpuSample, GpuSampler, HostGpu
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.models import build_family
from msfusion_ray.models.weights import to_weights
from msfusion_ray.procedures.base import StandardProcedure
from msfusion_ray.runtime.participant import ParticipantSpec, ParticipantWorker, WorkerSettings
from msfusion_ray.strategies.base import WorkOrder

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROFILE = DeviceProfile(name="tiny", description="", memory_mib=1, train_gflops=1, uplink_mbps=1, downlink_mbps=1,
                        latency_ms=30)


def _worker(host_gpu):
    data = load_data(DataConfig(train_samples=100, eval_samples=50), seed=0)
    family = build_family("cnn", data.shape, 0.25)
    settings = WorkerSettings(run_id="t", host=0, seed=0, training=TrainingConfig(batch_size=16, local_steps=2))
    worker = ParticipantWorker(ParticipantSpec(0, PROFILE, 10**9, np.arange(40)), family, data, settings,
                               StepCostCache(), gpu=host_gpu)
    return family, worker


def test_work_over_the_hosts_share_of_its_gpu_is_refused_though_the_device_could_hold_it():
    share = HostGpu(torch.device("cpu"), share=0.25, total_bytes=4 * 10**5, budget_bytes=10**5)
    family, worker = _worker(share)
    fetched = []
    row, weights, _ = worker.run(WorkOrder(0, task=0, vt_start=2.0), lambda: fetched.append(1), lr=0.1)
    assert row.status == "oom" and weights is None and not fetched
    assert row.mem_planned_bytes > 10**5 and row.mem_planned_bytes <= row.mem_cap_bytes
    assert "share of the GPU 0.1 MiB" in row.message and row.vt_end == 2.0 + 0.03


def test_a_host_with_room_trains_and_records_what_its_gpu_telemetry_saw():
    sampler = GpuSampler(lambda: GpuSample(3 * 2**30, 16 * 2**30, 40.0))  # a stand-in NVML, sampled at the edges
    share = HostGpu(torch.device("cpu"), share=0.5, total_bytes=16 * 2**30, budget_bytes=2**33, sampler=sampler)
    family, worker = _worker(share)
    start = to_weights(family.build())
    row, weights, _ = worker.run(WorkOrder(0, task=0, seed_key=(1,)), lambda: start, lr=0.1)
    assert row.status == "ok", row.message
    assert row.gpu_samples == 2 and row.gpu_used_bytes == 3 * 2**30 and row.gpu_total_bytes == 16 * 2**30
    assert row.gpu_util_pct == 40.0 == row.gpu_util_max_pct
    assert row.mem_peak_gpu_bytes == 0  # a CPU device: no CUDA allocator to measure
    _, plain = _worker(None)
    again, plain_weights, _ = plain.run(WorkOrder(0, task=0, seed_key=(1,)), lambda: start, lr=0.1)
    assert again.train_loss == row.train_loss and all(np.array_equal(weights[k], plain_weights[k]) for k in start)
    assert again.gpu_samples == 0 and np.isnan(again.gpu_util_pct)


def test_running_out_of_real_memory_while_training_is_an_oom_outcome_and_keeps_no_state(monkeypatch):
    def out_of_memory(self, context):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(StandardProcedure, "run", out_of_memory)
    family, worker = _worker(None)
    row, weights, _ = worker.run(WorkOrder(0, task=0, vt_start=1.0), lambda: {}, lr=0.1)
    assert row.status == "oom" and weights is None
    assert row.message == "out of memory on cpu: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert row.mem_planned_bytes > 0 and row.vt_end == 1.0 + 0.03 and set(worker.states) == {-1}


FAKE_GPU_CLUSTER = """
import copy, json, sys
import ray
from msfusion_ray.app.launching import run_prepared
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import read_host_rows, read_participant_rows
from msfusion_ray.experiment.shipment import Shipment
from msfusion_ray.runtime.cluster import start_local_ray
from msfusion_ray.runtime.host_pool import HostPool

base = json.loads(sys.argv[1])
start_local_ray(num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
out = {"cluster_gpus": ray.cluster_resources().get("GPU")}
prepared = prepare(config_from_dict(base))
finished = run_prepared(prepared, show_progress=False)
run_dir = finished.run_dir
out["summary"] = finished.summary["final_accuracy"]
out["hosts"] = read_host_rows(run_dir).to_dict("records")
out["statuses"] = read_participant_rows(run_dir)["status"].tolist()

quarter = copy.deepcopy(base)
quarter["runtime"]["gpus_per_host"] = 0.25
prepared = prepare(config_from_dict(quarter))
pool = HostPool(Shipment.of(prepared), ray.put(prepared.data), "quarter")
pool.wait_ready()
out["quarter"] = pool.descriptions
pool.shutdown()

strict = copy.deepcopy(base)
strict["runtime"]["device"] = "cuda"
prepared = prepare(config_from_dict(strict))
try:
    pool = HostPool(Shipment.of(prepared), ray.put(prepared.data), "strict")
    pool.wait_ready()
    pool.shutdown()
    out["strict"] = "started"
except Exception as err:
    out["strict"] = str(err)
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a real GPU, the GPU runs below test this for real")
def test_host_actors_on_a_fake_gpu_cluster_ask_for_even_gpu_fractions(small_config_dict):
    """Ray's own GPU accounting with two pretend GPUs: four hosts ask for half a GPU each and land two to a GPU;
    torch here cannot use them, so (device auto) they train on CPU and their records say so; a set
    gpus_per_host is what they ask for; and device cuda stops at the start in one line."""
    config = copy.deepcopy(small_config_dict)
    config["rounds"] = 1
    config["fleet"]["devices"] = {"raspberry-pi-4": 2, "phone-midrange": 2}
    config["runtime"].update(hosts=4, device="auto", eval_every=1)
    done = subprocess.run([sys.executable, "-c", FAKE_GPU_CLUSTER, json.dumps(config)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert out["cluster_gpus"] == 2.0
    hosts = out["hosts"]
    assert sorted(h["host"] for h in hosts) == [0, 1, 2, 3]
    assert all(h["gpu_fraction"] == 0.5 and h["device"] == "cpu" and h["hosts_on_gpu"] == 2 for h in hosts)
    assert len({h["gpu"] for h in hosts}) == 2
    assert sum(h["tasks"] for h in hosts) == sum(status != "unavailable" for status in out["statuses"]) > 0
    assert set(out["statuses"]) <= {"ok", "oom", "unavailable"}
    assert [h["gpu_fraction"] for h in out["quarter"]] == [0.25] * 4
    assert "runtime.device: cuda, but host" in out["strict"] and "CPU-only build" in out["strict"]


def _gpu_run(config_dict, tmp_path, name, **runtime):
    from msfusion_ray.app.launching import run_prepared
    from msfusion_ray.experiment.prepare import prepare
    from msfusion_ray.records import read_host_rows, read_participant_rows, read_round_rows

    data = copy.deepcopy(config_dict)
    data["output_dir"] = str(tmp_path / name)
    data["runtime"].update(runtime)
    prepared = prepare(config_from_dict(data))
    run_dir = run_prepared(prepared, show_progress=False).run_dir
    return read_round_rows(run_dir), read_participant_rows(run_dir), read_host_rows(run_dir)


@needs_cuda
def test_a_run_trains_on_the_gpu_measures_it_and_repeats_itself(ray_session, small_config_dict, tmp_path):
    rounds, participants, hosts = _gpu_run(small_config_dict, tmp_path, "a", device="cuda", hosts=2)
    trained = participants[participants["status"] == "ok"]
    assert len(trained) > 0 and (trained["mem_peak_gpu_bytes"] > 0).all()
    assert set(hosts["device"]) == {"cuda"} and (hosts["gpu_budget_bytes"] > 0).all()
    assert (hosts["mem_peak_gpu_bytes"] <= hosts["gpu_budget_bytes"]).all()
    assert (hosts["gpu_fraction"] * hosts["hosts_on_gpu"] <= 1.0 + 1e-9).all()
    if (hosts["gpu_samples"] > 0).any():  # NVML present
        sampled = hosts[hosts["gpu_samples"] > 0]
        assert (sampled["gpu_total_bytes"] > 0).all() and (sampled["gpu_used_max_bytes"] > 0).all()
    again, _, _ = _gpu_run(small_config_dict, tmp_path, "b", device="cuda", hosts=2)
    assert np.allclose(rounds["test_loss"], again["test_loss"], rtol=1e-5, atol=0)  # same seed, same run


@needs_cuda
def test_a_real_cuda_out_of_memory_is_recorded_oom():
    from msfusion_ray.devices.gpu import open_host_gpu

    host_gpu = open_host_gpu(1.0, 0)
    try:
        torch.cuda.set_per_process_memory_fraction(1e-7, host_gpu.device)  # the allocator can give almost nothing
        family, worker = _worker(host_gpu)
        row, weights, _ = worker.run(WorkOrder(0, task=0, seed_key=(1,)), lambda: to_weights(family.build()), 0.1)
        assert row.status == "oom" and weights is None and "out of memory on cuda" in row.message
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, host_gpu.device)
        torch.use_deterministic_algorithms(False)
        if host_gpu.sampler is not None:
            host_gpu.sampler.stop()


@needs_cuda
def test_the_gpu_evaluates_as_the_cpu_does():
    from msfusion_ray.training.evaluate import evaluate

    data = load_data(DataConfig(train_samples=100, eval_samples=200), seed=0)
    model = build_family("cnn", data.shape, 0.25).build()
    on_cpu = evaluate(model, data, data.test, 64)
    on_gpu = evaluate(model.to("cuda"), data, data.test, 64)
    assert on_gpu["accuracy"] == pytest.approx(on_cpu["accuracy"], abs=0.01)
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-3)
