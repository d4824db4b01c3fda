"""Device time: how long a participant's work would take on its device.

device seconds = compute / c + bytes down / (downlink * b) + bytes up / (uplink * b) + round-trip latency, the
compute from what the task computed under the run's time model (devices/time_model.py: FLOPs / FLOP/s, or the
roofline of a calibrated profile).

With per-task jitter (a profile's `jitter`: sigma), task k of participant p runs at c = exp(sigma * z1) times its
speed and b = exp(sigma * z2) times its bandwidths, z1 and z2 standard normal draws seeded by (seed, p, k)
(msfusion_ray.devices.distributions.task_factors); the latency does not vary.
The run's virtual timeline (devices/timeline.py) places that work in virtual time; in `real` mode the host also
sleeps until wall time catches up with where the timeline says the work ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from msfusion_ray.devices.distributions import task_factors
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.devices import time_model
from msfusion_ray.devices.time_model import TimeModelName

if TYPE_CHECKING:  # the launcher reads profiles without importing torch
    from msfusion_ray.costs.census import WorkCensus


@dataclass(frozen=True)
class DeviceTime:
    compute_s: float
    download_s: float
    upload_s: float
    latency_s: float

    @property
    def communication_s(self) -> float:
        return self.download_s + self.upload_s + self.latency_s

    @property
    def total_s(self) -> float:
        return self.compute_s + self.communication_s


@dataclass(frozen=True)
class TaskSpeed:
    """One task's factors on its device's FLOP/s and bandwidths (per-task jitter; 1 without)."""

    compute: float = 1.0
    network: float = 1.0


def task_speed(profile: DeviceProfile, seed: int, participant: int, task: int) -> TaskSpeed:
    return TaskSpeed(*task_factors(seed, participant, task, profile.jitter))


def device_time(profile: DeviceProfile, flops: float, bytes_down: int, bytes_up: int, speed: TaskSpeed = TaskSpeed(),
                steps: Iterable[tuple[WorkCensus, int]] = (), model: TimeModelName = "roofline") -> DeviceTime:
    """`steps`: the task's training steps as the operation census saw them ((census, times run)); the roofline
    model reads them where the profile is calibrated."""
    return with_compute(profile, task_compute_s(profile, flops, steps, model, speed), bytes_down, bytes_up, speed)


def task_compute_s(profile: DeviceProfile, flops: float, steps: Iterable[tuple[WorkCensus, int]] = (),
                   model: TimeModelName = "roofline", speed: TaskSpeed = TaskSpeed()) -> float:
    return time_model.compute_seconds(profile.train_gflops, profile.timing, flops, steps, model) / speed.compute


def with_compute(profile: DeviceProfile, compute_s: float, bytes_down: int, bytes_up: int,
                 speed: TaskSpeed = TaskSpeed()) -> DeviceTime:
    return DeviceTime(
        compute_s=compute_s,
        download_s=bytes_down / (profile.downlink_bytes_per_s * speed.network),
        upload_s=bytes_up / (profile.uplink_bytes_per_s * speed.network),
        latency_s=profile.latency_ms / 1000.0,
    )


def earliest_device_time(profile: DeviceProfile, flops: float, bytes_down: int, bytes_up: int,
                         speed: TaskSpeed = TaskSpeed(), model: TimeModelName = "roofline") -> DeviceTime:
    """Device time known before the task runs, from its FLOPs alone: exact under the FLOP/s model, a lower bound
    under the roofline (an engine that orders tasks by their ends may take it as the earliest end)."""
    compute_s = time_model.compute_lower_bound(profile.train_gflops, profile.timing, flops, model) / speed.compute
    return with_compute(profile, compute_s, bytes_down, bytes_up, speed)


def refusal_device_s(profile: DeviceProfile) -> float:
    """Device time of work the device refuses (its memory cannot hold it): it only answers, one round trip."""
    return device_time(profile, 0, 0, 0).latency_s


def compute_seconds(profile: DeviceProfile, flops: float) -> float:
    return flops / profile.flops_per_s


def hop_seconds(sender: DeviceProfile, receiver: DeviceProfile, n_bytes: int) -> float:
    """One message between two devices (pipeline split learning): its bytes over the slower of the sender's uplink
    and the receiver's downlink, plus half of each side's round trip (each profile's latency is a round trip to the
    network it sits on, so each side adds one way of it)."""
    rate = min(sender.uplink_bytes_per_s, receiver.downlink_bytes_per_s)
    return n_bytes / rate + (sender.latency_ms + receiver.latency_ms) / 2000.0


@dataclass(frozen=True)
class Pacing:
    slept_s: float
    behind_s: float  # > 0 when the host was slower than the device it emulates

    def warning(self, device: str) -> str | None:
        if self.behind_s <= 0:
            return None
        return (f"host slower than profile '{device}' by {self.behind_s:.2f} s on this task: "
                "wall time cannot follow the virtual timeline")


def pace_until(due_s: float, now: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep) -> Pacing:
    """Real mode: sleep until wall time `due_s` (where the virtual timeline says the work ends), or say by how
    much the host is behind it."""
    gap = due_s - now()
    if gap > 0:
        sleep(gap)
        return Pacing(slept_s=gap, behind_s=0.0)
    return Pacing(slept_s=0.0, behind_s=-gap)
