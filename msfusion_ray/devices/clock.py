"""Device time: how long a participant's work would take on its device.

device seconds = FLOPs / (device FLOP/s) + bytes down / downlink + bytes up / uplink + round-trip latency.

With per-task jitter (a profile's `jitter`: sigma), task k of participant p runs at FLOP/s * c and bandwidths * b,
c = exp(sigma * z1), b = exp(sigma * z2), z1 and z2 standard normal draws seeded by (seed, p, k)
(msfusion_ray.devices.distributions.task_factors); the latency does not vary.
The run's virtual timeline (devices/timeline.py) places that work in virtual time; in `real` mode the host also
sleeps until wall time catches up with where the timeline says the work ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from msfusion_ray.devices.distributions import task_factors
from msfusion_ray.devices.profile import DeviceProfile


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


def device_time(profile: DeviceProfile, flops: float, bytes_down: int, bytes_up: int,
                speed: TaskSpeed = TaskSpeed()) -> DeviceTime:
    return DeviceTime(
        compute_s=flops / (profile.flops_per_s * speed.compute),
        download_s=bytes_down / (profile.downlink_bytes_per_s * speed.network),
        upload_s=bytes_up / (profile.uplink_bytes_per_s * speed.network),
        latency_s=profile.latency_ms / 1000.0,
    )


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
