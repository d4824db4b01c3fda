"""Fleets: which device classes take part, how many of each, and who is reachable in a given round."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.errors import UserInputError
from msfusion_ray.schema import build, checked, load_yaml, positive


@dataclass(frozen=True)
class FleetSpec:
    """A scenario: device classes and counts. `memory_scale` shrinks every memory cap by the same factor, for
    miniature scenarios where the model is scaled down from the one the devices would really train."""

    name: str
    devices: dict[str, int]
    description: str = ""
    memory_scale: float = checked(1.0, check=positive)


@dataclass(frozen=True)
class Participant:
    """One member of the fleet: its id, device class and memory cap after scaling."""

    id: int
    device: DeviceProfile
    memory_cap_bytes: int


@dataclass(frozen=True)
class Fleet:
    participants: tuple[Participant, ...]
    name: str = "inline"
    seed: int = 0

    def __len__(self) -> int:
        return len(self.participants)

    def available(self, round_idx: int) -> np.ndarray:
        """Boolean mask of who is reachable this round: each participant independently with its device's
        availability, seeded by (seed, round) so that resumed runs see the same fleet."""
        rng = np.random.default_rng([self.seed, round_idx, 0xA5A1])
        draws = rng.random(len(self.participants))
        return draws < np.array([p.device.availability for p in self.participants])


def load_fleet_spec(path: str | Path) -> FleetSpec:
    return build(FleetSpec, load_yaml(path), str(path))


def scale_counts(devices: dict[str, int], size: int) -> dict[str, int]:
    """The same device mix at `size` participants (largest-remainder rounding, every class kept if it fits)."""
    total = sum(devices.values())
    quotas = {name: size * count / total for name, count in devices.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda n: quotas[n] - counts[n], reverse=True)
    for name in by_remainder[: size - sum(counts.values())]:
        counts[name] += 1
    return {name: c for name, c in counts.items() if c > 0}


def device_counts(spec: FleetSpec, profiles: dict[str, DeviceProfile], size: int | None = None,
                  where: str = "fleet") -> dict[str, int]:
    """How many participants of each device class the fleet has, checked against the known profiles (cheap: it
    builds nothing, so a fleet too large for its data is refused before it is built)."""
    for name, count in spec.devices.items():
        if name not in profiles:
            raise UserInputError(f"{where}.devices.{name}",
                                 f"unknown device profile (known: {', '.join(sorted(profiles))})")
        if count < 0:
            raise UserInputError(f"{where}.devices.{name}", f"count must be >= 0 (got {count})")
    devices = scale_counts(spec.devices, size) if size is not None and sum(spec.devices.values()) else spec.devices
    if sum(devices.values()) == 0:
        raise UserInputError(f"{where}.devices", "the fleet has no participants")
    return devices


def make_fleet(spec: FleetSpec, profiles: dict[str, DeviceProfile], *, size: int | None = None,
               memory_scale: float | None = None, seed: int = 0, where: str = "fleet") -> Fleet:
    """Expand a fleet spec into participants, checking every device class against the known profiles."""
    devices = device_counts(spec, profiles, size, where)
    scale = spec.memory_scale if memory_scale is None else memory_scale
    largest = max(profiles[name].memory_bytes for name in devices)
    if not math.isfinite(largest * scale):
        raise UserInputError("fleet.memory_scale" if memory_scale is not None else f"{where}.memory_scale",
                             f"is too large (got {scale}: memory caps become infinite)")
    participants = []
    for name, count in devices.items():
        for _ in range(count):
            profile = profiles[name]
            participants.append(Participant(len(participants), profile, int(profile.memory_bytes * scale)))
    return Fleet(tuple(participants), name=spec.name, seed=seed)
