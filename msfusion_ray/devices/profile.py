"""Device profiles: what one class of device can give to training (memory, compute, network, availability)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from msfusion_ray.devices.distributions import Distribution, split_spread
from msfusion_ray.devices.memory_need import MemoryNeed
from msfusion_ray.devices.time_model import ComputeTiming
from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import load_yaml
from msfusion_ray.paths import default_profiles_dir as bundled_profiles_dir
from msfusion_ray.validation import build, checked, non_negative, positive, probability

MIB = 1024**2


def positive_in(unit: float) -> Callable[[float], str | None]:
    """> 0, and still finite once converted to base units (multiplied by `unit`: MiB to bytes, say)."""
    def check(value: float) -> str | None:
        if not value > 0:
            return f"must be > 0 (got {value})"
        return None if math.isfinite(value * unit) else f"is too large (got {value})"
    return check


def hour_of_day(value: float) -> str | None:
    return None if 0 <= value < 24 else f"must be in [0, 24) (got {value})"


def hours(value: float) -> str | None:
    return None if 0 < value <= 24 else f"must be in (0, 24] (got {value})"


@dataclass(frozen=True)
class DiurnalPattern:
    """A daily on-window (fleet.availability: diurnal): on from `start_h` for `hours` each day, in the device's
    local time, each participant's start shifted once by a seeded offset within +- `spread_h`; virtual time 0 is
    midnight. Each day's window happens with the profile's `availability` (seeded per participant and day)."""

    start_h: float = checked(check=hour_of_day)
    hours: float = checked(check=hours)
    spread_h: float = checked(0.0, check=non_negative)


@dataclass(frozen=True)
class DeviceProfile:
    """One device class. Values are for the training job, not the spec sheet: memory the job may use, sustained
    FLOP/s of training (not peak), and the link the device actually gets."""

    name: str
    description: str
    memory_mib: float = checked(check=positive_in(MIB))
    train_gflops: float = checked(check=positive_in(1e9))
    uplink_mbps: float = checked(check=positive_in(1e6 / 8))
    downlink_mbps: float = checked(check=positive_in(1e6 / 8))
    latency_ms: float = checked(0.0, check=lambda v: None if v >= 0 else f"must be >= 0 (got {v})")
    availability: float = checked(1.0, check=probability)  # per-round reachability (fleet.availability: per_round)
    on_mean_s: float | None = checked(None, check=positive)  # mean on and off periods in virtual seconds
    off_mean_s: float | None = checked(None, check=positive)  # (fleet.availability: windows)
    native: bool = False  # on a real cluster: the node is the device (no memory refusal, measured compute time)
    hourly_cost_usd: float | None = checked(None, check=positive)  # renting one (compute nodes), where known
    timing: ComputeTiming | None = None  # per kind of operation, as `calibrate` measured (devices/time_model.py)
    memory_need: MemoryNeed | None = None  # a task's process against its footprint, as `calibrate` measured it
    # task-to-task variation: lognormal sigma of the FLOP/s and of the bandwidths, drawn per participant and task
    jitter: float = checked(0.0, check=non_negative)
    diurnal: DiurnalPattern | None = None  # daily on-window (fleet.availability: diurnal)
    # power (msfusion_ray.devices.energy): compute, radio (per second sending and receiving, per MB), idle waiting
    compute_power_w: float | None = checked(None, check=non_negative)
    compute_j_per_gflop: float | None = checked(None, check=non_negative)
    radio_tx_w: float | None = checked(None, check=non_negative)
    radio_rx_w: float | None = checked(None, check=non_negative)
    tx_j_per_mb: float | None = checked(None, check=non_negative)
    rx_j_per_mb: float | None = checked(None, check=non_negative)
    idle_power_w: float | None = checked(None, check=non_negative)
    # fields given as distributions (msfusion_ray.devices.distributions); set by `load_profile`, not a YAML field
    spread: dict[str, Distribution] = field(default_factory=dict, compare=False, metadata={"internal": True})

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_mib * MIB)

    @property
    def flops_per_s(self) -> float:
        return self.train_gflops * 1e9

    @property
    def uplink_bytes_per_s(self) -> float:
        return self.uplink_mbps * 1e6 / 8

    @property
    def downlink_bytes_per_s(self) -> float:
        return self.downlink_mbps * 1e6 / 8


def default_profiles_dir() -> Path:
    """The device profiles that ship with the package (the project checkout's device_profiles/)."""
    return bundled_profiles_dir()


def load_profile(path: str | Path) -> DeviceProfile:
    path = Path(path)
    return profile_from_dict(load_yaml(path), str(path), path.stem)


def profile_from_dict(data: Any, where: str, stem: str | None = None) -> DeviceProfile:
    """A profile from its mapping (fields given as distributions kept in `spread`); `stem`: the file's name, which
    the profile's must match."""
    if not isinstance(data, dict):
        raise UserInputError(where, f"must be a mapping, not {type(data).__name__}")
    plain, spread = split_spread(data, where)
    profile = replace(build(DeviceProfile, plain, where), spread=spread)
    if (profile.on_mean_s is None) != (profile.off_mean_s is None):
        raise UserInputError(f"{where}.on_mean_s", "give both on_mean_s and off_mean_s, or neither")
    if stem is not None and profile.name != stem:
        raise UserInputError(f"{where}.name", f"must match the file name '{stem}' (got '{profile.name}')")
    return profile


def load_profiles(directory: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Every profile in a directory (one YAML file per device class), by name."""
    directory = Path(directory) if directory is not None else default_profiles_dir()
    if not directory.is_dir():
        raise UserInputError(str(directory), "device profile directory not found")
    return {p.stem: load_profile(p) for p in sorted(directory.glob("*.yaml"))}
