"""The memory guard refuses work over the cap, and a refused participant is a recorded outcome."""

import numpy as np

from msfusion_ray.config import DataConfig, TrainingConfig
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.data import load_data
from msfusion_ray.devices.capacity import make_planner
from msfusion_ray.devices.memory_guard import MemoryGuard
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.models import build_family
from msfusion_ray.models.weights import to_weights
from msfusion_ray.runtime.participant import ParticipantSpec, ParticipantWorker, WorkerSettings
from msfusion_ray.strategies.base import TrainTask

TRAINING = TrainingConfig(batch_size=16, local_steps=2)
PROFILE = DeviceProfile(name="tiny", description="", memory_mib=1, train_gflops=1, uplink_mbps=1, downlink_mbps=1)


def _family(data):
    return build_family("cnn", data.shape, 0.25)


def test_guard_refuses_a_task_over_its_cap_and_admits_one_under():
    data = load_data(DataConfig(train_samples=100, eval_samples=50), seed=0)
    family = _family(data)
    planner = make_planner(family, TRAINING)
    need = planner.footprint(family.full_widths(), 16).total
    assert not MemoryGuard(need - 1, planner).check(family.full_widths(), 16).fits
    verdict = MemoryGuard(need, planner).check(family.full_widths(), 16)
    assert verdict.fits and verdict.planned_bytes == need


def _worker(data, cap_bytes):
    family = _family(data)
    spec = ParticipantSpec(0, PROFILE, cap_bytes, np.arange(40))
    settings = WorkerSettings(run_id="t", host=0, seed=0, training=TRAINING)
    return family, ParticipantWorker(spec, family, data, settings, StepCostCache())


def test_participant_over_its_cap_records_oom_without_fetching_weights():
    data = load_data(DataConfig(train_samples=100, eval_samples=50), seed=0)
    family, worker = _worker(data, cap_bytes=10_000)
    fetched = []
    row, weights = worker.run(1, TrainTask(0), lambda: fetched.append(1), lr=0.1)
    assert row.status == "oom" and weights is None and not fetched
    assert row.mem_planned_bytes > row.mem_cap_bytes == 10_000
    assert "MiB" in row.message


def test_participant_under_its_cap_trains_and_records_its_costs():
    data = load_data(DataConfig(train_samples=100, eval_samples=50), seed=0)
    family, worker = _worker(data, cap_bytes=10**9)
    start = to_weights(family.build())
    row, weights = worker.run(1, TrainTask(0), lambda: start, lr=0.1)
    assert row.status == "ok", row.message
    assert row.steps == 2 and row.samples == 32 and row.flops > 0
    assert row.bytes_down == row.bytes_up == sum(a.nbytes for a in start.values())
    assert row.device_time_s > row.device_compute_s > 0
    assert row.mem_peak_tensor_bytes > 0 and row.mem_planned_bytes <= row.mem_cap_bytes
    assert any(not np.array_equal(weights[k], start[k]) for k in start)
