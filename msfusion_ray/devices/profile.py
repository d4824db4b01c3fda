"""Device profiles: what one class of device can give to training (memory, compute, network, availability)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from msfusion_ray.devices.time_model import ComputeTiming
from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import load_yaml
from msfusion_ray.paths import default_profiles_dir as bundled_profiles_dir
from msfusion_ray.validation import build, checked, positive, probability

MIB = 1024**2


def positive_in(unit: float) -> Callable[[float], str | None]:
    """> 0, and still finite once converted to base units (multiplied by `unit`: MiB to bytes, say)."""
    def check(value: float) -> str | None:
        if not value > 0:
            return f"must be > 0 (got {value})"
        return None if math.isfinite(value * unit) else f"is too large (got {value})"
    return check


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
    profile = build(DeviceProfile, load_yaml(path), str(path))
    if (profile.on_mean_s is None) != (profile.off_mean_s is None):
        raise UserInputError(f"{path}.on_mean_s", "give both on_mean_s and off_mean_s, or neither")
    if profile.name != path.stem:
        raise UserInputError(f"{path}.name", f"must match the file name '{path.stem}' (got '{profile.name}')")
    return profile


def load_profiles(directory: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Every profile in a directory (one YAML file per device class), by name."""
    directory = Path(directory) if directory is not None else default_profiles_dir()
    if not directory.is_dir():
        raise UserInputError(str(directory), "device profile directory not found")
    return {p.stem: load_profile(p) for p in sorted(directory.glob("*.yaml"))}
