"""The memory guard refuses work over the cap (the participant records it: tests/runtime/test_participant.py)."""

from msfusion_ray.config import DataConfig, TrainingConfig
from msfusion_ray.data import load_data
from msfusion_ray.devices.capacity import make_planner
from msfusion_ray.devices.memory_guard import MemoryGuard
from msfusion_ray.models import build_family

TRAINING = TrainingConfig(batch_size=16, local_steps=2)


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
