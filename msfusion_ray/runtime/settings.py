"""A host's participants and how they work: plain data, made by the launcher (whose process holds no torch: see
msfusion_ray.launchable) and sent to each host."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msfusion_ray.config import TrainingConfig
from msfusion_ray.devices.profile import DeviceProfile


@dataclass(frozen=True)
class ParticipantSpec:
    id: int
    device: DeviceProfile
    memory_cap_bytes: int
    indices: np.ndarray  # its samples in the training split


@dataclass(frozen=True)
class WorkerSettings:
    run_id: str
    host: int
    seed: int
    training: TrainingConfig
    clock: str = "virtual"  # or "real": sleep until wall time follows the virtual timeline
    task_timeout_s: float = float("inf")  # wall seconds a task may work, from its own start
    device: str = "cpu"  # the run's device ("cuda": hosts train on the GPU share Ray gives them)
    device_required: bool = False  # runtime.device said cuda (not auto): a host that cannot use its GPU stops
    gpu_share: float = 0.0  # of a GPU, each host's (runtime.gpus_per_host or the even share)
