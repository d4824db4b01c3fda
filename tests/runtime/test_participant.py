"""A participant held to its device, without Ray: refused work, costs, its memory kept per task, its own deadline."""

import itertools
from dataclasses import replace

import numpy as np
import torch

from msfusion_ray.config import DataConfig, TrainingConfig
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.data import load_data
from msfusion_ray.devices.memory_need import MemoryNeed
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.models import build_family
from msfusion_ray.models.pool import ModulePool
from msfusion_ray.models.weights import to_weights
from msfusion_ray.runtime.participant import ParticipantSpec, ParticipantWorker, WorkerSettings
from msfusion_ray.splitting.index_map import widths_of
from msfusion_ray.strategies.base import ObjectiveSpec, WorkOrder

TRAINING = TrainingConfig(batch_size=16, local_steps=2)
PROFILE = DeviceProfile(name="tiny", description="", memory_mib=1, train_gflops=1, uplink_mbps=1, downlink_mbps=1,
                        latency_ms=30)


def _worker(cap_bytes, timeout_s=float("inf"), clock=None, modules=None, profile=PROFILE):
    data = load_data(DataConfig(train_samples=100, eval_samples=50), seed=0)
    family = build_family("cnn", data.shape, 0.25)
    spec = ParticipantSpec(0, profile, cap_bytes, np.arange(40))
    settings = WorkerSettings(run_id="t", host=0, seed=0, training=TRAINING, task_timeout_s=timeout_s)
    extra = {"clock": clock} if clock is not None else {}
    return family, ParticipantWorker(spec, family, data, settings, StepCostCache(), modules=modules, **extra)


def test_participant_over_its_cap_records_oom_without_fetching_weights():
    family, worker = _worker(cap_bytes=10_000)
    fetched = []
    row, weights, _ = worker.run(WorkOrder(0, vt_start=5.0), lambda: fetched.append(1), lr=0.1)
    assert row.status == "oom" and weights is None and not fetched
    assert row.mem_planned_bytes > row.mem_cap_bytes == 10_000
    assert "training needs" in row.message and "MiB" in row.message
    assert row.vt_end == 5.0 + 0.03 and row.device_time_s == 0.03  # it only answered


def test_a_device_with_a_need_model_refuses_work_whose_process_would_not_fit():
    """The footprint fits the cap, the process its device's model makes of it does not: refused, saying both."""
    _, plain = _worker(cap_bytes=10**9)
    footprint = plain.planners.planner(None).footprint(widths_of(plain.family.spec, None), TRAINING.batch_size).total
    need = MemoryNeed(scale=1.5, fixed_mib=0.0)
    _, worker = _worker(cap_bytes=int(footprint * 1.2), profile=replace(PROFILE, memory_need=need))
    row, weights, _ = worker.run(WorkOrder(0), lambda: None, lr=0.1)
    assert row.status == "oom" and row.oom_source == "planner" and weights is None
    assert row.mem_planned_bytes == footprint < row.mem_cap_bytes
    assert f"1.5 x its footprint of {footprint / 2**20:.1f} MiB" in row.message


def test_participant_under_its_cap_trains_and_records_its_costs():
    family, worker = _worker(cap_bytes=10**9)
    start = to_weights(family.build())
    row, weights, _ = worker.run(WorkOrder(0, task=0, vt_start=10.0, seed_key=(1,)), lambda: start, lr=0.1)
    assert row.status == "ok", row.message
    assert row.steps == 2 and row.samples == 32 and row.flops > 0 and row.task == 0
    assert row.bytes_down == row.bytes_up == sum(a.nbytes for a in start.values())
    assert row.device_time_s > row.device_compute_s > 0
    assert row.device_comm_s == row.device_download_s + row.device_upload_s + 0.03
    assert row.vt_end == 10.0 + row.device_time_s
    assert row.mem_peak_tensor_bytes > 0 and row.mem_planned_bytes <= row.mem_cap_bytes
    assert any(not np.array_equal(weights[k], start[k]) for k in start)


def test_tasks_in_a_reused_module_train_as_in_fresh_ones():
    """The host's module pool: the same losses and weights, task after task, with and without objective."""
    family, fresh = _worker(cap_bytes=10**9)
    _, pooled = _worker(cap_bytes=10**9, modules=ModulePool())
    start = to_weights(family.build())
    contrastive = ObjectiveSpec("msfusion_contrastive", {})
    for task, objective in enumerate([None, None, contrastive, None]):
        order = WorkOrder(0, objective=objective, task=task, seed_key=(task,), state_from=task - 1)
        (row, weights, _), (pooled_row, pooled_weights, _) = (w.run(order, lambda: start, 0.1) for w in (fresh, pooled))
        assert row.status == pooled_row.status == "ok"
        figures = [(r.train_loss, r.extra_loss, r.flops, r.mem_peak_tensor_bytes) for r in (row, pooled_row)]
        assert np.array_equal(*figures, equal_nan=True)
        assert all(np.array_equal(weights[k], pooled_weights[k]) for k in weights)


def test_a_task_starts_from_the_state_its_order_names():
    """MSfusion's contrastive loss remembers the previous local model: a task the driver did not aggregate
    leaves no trace for the next one."""
    family, worker = _worker(cap_bytes=10**9)
    start = to_weights(family.build())
    contrastive = ObjectiveSpec("msfusion_contrastive", {})
    first = worker.run(WorkOrder(0, objective=contrastive, task=0, seed_key=(1,)), lambda: start, 0.1)
    assert first[0].status == "ok" and "previous" in worker.states[0] and worker.states[-1] == {}
    lost = worker.run(WorkOrder(0, objective=contrastive, task=1, state_from=0, seed_key=(2,)), lambda: start, 0.1)
    again = worker.run(WorkOrder(0, objective=contrastive, task=2, state_from=0, seed_key=(2,)), lambda: start, 0.1)
    assert again[0].train_loss == lost[0].train_loss and again[0].extra_loss == lost[0].extra_loss
    assert all(np.array_equal(again[1][k], lost[1][k]) for k in start)
    assert -1 not in worker.states  # older than any state a later task can start from


def test_a_task_that_overruns_its_own_deadline_is_a_timeout_and_keeps_no_state():
    ticks = itertools.count()
    family, worker = _worker(cap_bytes=10**9, timeout_s=1.5, clock=lambda: float(next(ticks)))
    start = to_weights(family.build())
    row, weights, _ = worker.run(WorkOrder(0, task=0, seed_key=(1,)), lambda: start, lr=0.1)
    assert row.status == "timeout" and weights is None and "task_timeout_s=1.5" in row.message
    assert set(worker.states) == {-1}


FEDAVG_NET = """
from torch import nn


def make_net(shape, options):
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                       nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                       nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(inplace=True)),
                         nn.Linear(512, 10))
"""


def test_the_users_copy_of_a_built_in_network_trains_as_the_built_in_does(tmp_path):
    """The FedAvg CNN written in a file of the user's and given by import path is built in the built-in's layout,
    from the same seed the same weights, and a task trains it to the same weights bit for bit (issue 29)."""
    (tmp_path / "nets.py").write_text(FEDAVG_NET)
    data = load_data(DataConfig(train_samples=100, eval_samples=50, normalize=False), seed=0)
    settings = WorkerSettings(run_id="t", host=0, seed=0, training=TrainingConfig(batch_size=16, local_steps=2))
    trained = []
    for name in ("fedavg_cnn", f"{tmp_path}/nets.py:make_net"):
        family = build_family(name, data.shape)
        torch.manual_seed(0)
        start = to_weights(family.build())
        worker = ParticipantWorker(ParticipantSpec(0, PROFILE, 10**9, np.arange(40)), family, data, settings,
                                   StepCostCache(), modules=ModulePool())
        row, weights, _ = worker.run(WorkOrder(0, task=0, seed_key=(1,)), lambda: start, lr=0.05)
        trained.append((family.channels_last, start, weights, row.train_loss))
    (layout, start, weights, loss), (user_layout, user_start, user_weights, user_loss) = trained
    assert layout and user_layout
    assert [k.split(".")[-1] for k in start] == [k.split(".")[-1] for k in user_start]
    assert all(np.array_equal(a, b) for a, b in zip(start.values(), user_start.values()))
    assert all(np.array_equal(a, b) for a, b in zip(weights.values(), user_weights.values())) and loss == user_loss
