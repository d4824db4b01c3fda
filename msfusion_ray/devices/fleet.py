"""Fleets: which device classes take part, how many of each, and who is reachable in a given round."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.devices.variation import ParticipantValues, draw_values, resolve
from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import load_yaml
from msfusion_ray.validation import build, checked, positive


@dataclass(frozen=True)
class FleetSpec:
    """A scenario: device classes and counts. `memory_scale` shrinks every memory cap by the same factor, for
    miniature scenarios where the model is scaled down from the one the devices would really train.

    `devices` are the data owners (the participants). Pipeline split learning also names compute nodes (device
    classes and counts: they hold model parts for the owners and have no data) and the aggregator that averages the
    owners' parts; other schemes ignore both."""

    name: str
    devices: dict[str, int]
    description: str = ""
    memory_scale: float = checked(1.0, check=positive)
    compute_nodes: dict[str, int] = checked({})
    aggregator: str | None = None


@dataclass(frozen=True, slots=True)
class Participant:
    """One member of the fleet, as a record: its id, device class and memory cap after scaling (the fleet holds
    them as arrays and builds these when asked)."""

    id: int
    device: DeviceProfile
    memory_cap_bytes: int


@dataclass(frozen=True)
class ComputeNode:
    """A compute node of pipeline split learning: its id among the compute nodes, device class and memory cap
    after scaling. It holds model parts for the data owners and no data."""

    id: int
    device: DeviceProfile
    memory_cap_bytes: int


class Fleet:
    """The participants as arrays: each one's device class (an index into `profiles`, each distinct profile once),
    memory cap and, where members of a class differ, its own figures (`values`); its id its position. A million
    participants are 12 MB here, where a tuple of `Participant` records was over 100 MB and pickled slowly to every
    actor; `participants[i]` builds one on demand. Built from `Participant` records too (tests, small fleets)."""

    def __init__(self, participants: Sequence[Participant] = (), name: str = "inline", seed: int = 0,
                 compute_nodes: tuple[ComputeNode, ...] = (), aggregator: ComputeNode | None = None,
                 values: ParticipantValues | None = None):
        if any(p.id != i for i, p in enumerate(participants)):
            raise ValueError("participants must be numbered 0, 1, ... in order")
        by_name = {p.device.name: p.device for p in participants}
        names = list(by_name)
        self._set(tuple(by_name.values()), np.asarray([names.index(p.device.name) for p in participants], np.int32),
                  np.asarray([p.memory_cap_bytes for p in participants], np.int64), name, seed, compute_nodes,
                  aggregator, values)

    @classmethod
    def of_arrays(cls, profiles: tuple[DeviceProfile, ...], profile_of: np.ndarray, memory_caps: np.ndarray,
                  name: str = "inline", seed: int = 0, compute_nodes: tuple[ComputeNode, ...] = (),
                  aggregator: ComputeNode | None = None, values: ParticipantValues | None = None) -> "Fleet":
        fleet = cls.__new__(cls)
        fleet._set(profiles, np.asarray(profile_of, np.int32), np.asarray(memory_caps, np.int64), name, seed,
                   compute_nodes, aggregator, values)
        return fleet

    def _set(self, profiles: tuple[DeviceProfile, ...], profile_of: np.ndarray, memory_caps: np.ndarray, name: str,
             seed: int, compute_nodes: tuple[ComputeNode, ...], aggregator: ComputeNode | None,
             values: ParticipantValues | None) -> None:
        self.profiles = profiles  # each device class once
        self.profile_of = profile_of  # per participant: its class, an index into `profiles`
        self.memory_caps = memory_caps  # per participant: bytes
        self.values = values  # each participant's own figures, where members of a class differ
        self.name, self.seed, self.compute_nodes, self.aggregator = name, seed, compute_nodes, aggregator
        self.participants = FleetMembers(self)

    def with_nodes(self, compute_nodes: tuple[ComputeNode, ...], aggregator: ComputeNode | None) -> "Fleet":
        """The same participants with a pipeline's compute nodes and aggregator."""
        return Fleet.of_arrays(self.profiles, self.profile_of, self.memory_caps, self.name, self.seed, compute_nodes,
                               aggregator, self.values)

    def __len__(self) -> int:
        return len(self.profile_of)

    def profile(self, participant: int) -> DeviceProfile:
        """The participant's class's profile (`device_of` lays its own figures over it)."""
        return self.profiles[self.profile_of[participant]]

    def class_names(self) -> list[str]:
        """The device classes that have participants, in the order of their first."""
        present, first = np.unique(self.profile_of, return_index=True)
        return [self.profiles[k].name for k in present[np.argsort(first)]]

    def device_of(self, participant: int) -> DeviceProfile:
        """The participant's own device: its class's profile with its drawn or listed figures."""
        return resolve(self.profile(participant), self.values, participant)

    def label(self, participant: int) -> str:
        """Its device's name: a listed or sampled device's own, else its class's."""
        name = self.values.name(participant) if self.values is not None else ""
        return name or self.profile(participant).name

    def device_for(self, role: str, index: int) -> DeviceProfile:
        """The device behind a record row: a participant's own, or a pipeline's compute node or aggregator."""
        if role == "compute":
            return self.compute_nodes[index].device
        if role == "aggregator" and self.aggregator is not None:
            return self.aggregator.device
        return self.device_of(index)

    def available(self, round_idx: int, among: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask of who is reachable this round: each participant independently with its device's
        availability, seeded by (seed, round) so that resumed runs see the same fleet; of the participants
        `among` only, where given (the same draws, compared for those alone)."""
        rng = np.random.default_rng([self.seed, round_idx, 0xA5A1])
        draws = rng.random(len(self))
        ids = np.arange(len(self)) if among is None else np.asarray(among, dtype=np.int64)
        own = self.values.fields.get("availability") if self.values is not None else None
        if own is None:
            own = np.array([p.availability for p in self.profiles])[self.profile_of]
        return draws[ids] < own[ids]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "participants"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.participants = FleetMembers(self)


class FleetMembers(Sequence[Participant]):
    """A fleet's participants as records, each built when it is asked for."""

    def __init__(self, fleet: Fleet):
        self._fleet = fleet

    def __len__(self) -> int:
        return len(self._fleet)

    def __getitem__(self, index: int | slice) -> Participant | list[Participant]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        fleet = self._fleet
        if not -len(fleet) <= index < len(fleet):
            raise IndexError(f"participant {index} of {len(fleet)}")
        index = int(index) % len(fleet)
        return Participant(index, fleet.profile(index), int(fleet.memory_caps[index]))

    def __iter__(self) -> Iterator[Participant]:
        return (self[i] for i in range(len(self)))


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


def _check_classes(classes: dict[str, int], profiles: dict[str, DeviceProfile], where: str) -> None:
    for name, count in classes.items():
        if name not in profiles:
            raise UserInputError(f"{where}.{name}", f"unknown device profile (known: {', '.join(sorted(profiles))})")
        if count < 0:
            raise UserInputError(f"{where}.{name}", f"count must be >= 0 (got {count})")


def compute_nodes_of(spec: FleetSpec, profiles: dict[str, DeviceProfile], scale: float,
                     where: str) -> tuple[tuple[ComputeNode, ...], ComputeNode | None]:
    _check_classes(spec.compute_nodes, profiles, f"{where}.compute_nodes")
    nodes: list[ComputeNode] = []
    for name, count in spec.compute_nodes.items():
        for _ in range(count):
            nodes.append(ComputeNode(len(nodes), profiles[name], int(profiles[name].memory_bytes * scale)))
    if spec.aggregator is None:
        return tuple(nodes), None
    if spec.aggregator not in profiles:
        raise UserInputError(f"{where}.aggregator", f"unknown device profile (known: {', '.join(sorted(profiles))})")
    aggregator = profiles[spec.aggregator]
    return tuple(nodes), ComputeNode(0, aggregator, int(aggregator.memory_bytes * scale))


def device_counts(spec: FleetSpec, profiles: dict[str, DeviceProfile], size: int | None = None,
                  where: str = "fleet") -> dict[str, int]:
    """How many participants of each device class the fleet has, checked against the known profiles (cheap: it
    builds nothing, so a fleet too large for its data is refused before it is built)."""
    _check_classes(spec.devices, profiles, f"{where}.devices")
    devices = scale_counts(spec.devices, size) if size is not None and sum(spec.devices.values()) else spec.devices
    if sum(devices.values()) == 0:
        raise UserInputError(f"{where}.devices", "the fleet has no participants")
    return devices


def with_jitter(profiles: dict[str, DeviceProfile], jitter: float | None) -> dict[str, DeviceProfile]:
    """Every profile with its per-task jitter replaced (fleet.jitter), or as they are (None)."""
    return profiles if jitter is None else {name: replace(p, jitter=jitter) for name, p in profiles.items()}


def make_fleet(spec: FleetSpec, profiles: dict[str, DeviceProfile], *, size: int | None = None,
               memory_scale: float | None = None, seed: int = 0, where: str = "fleet",
               jitter: float | None = None) -> Fleet:
    """Expand a fleet spec into participants (and compute nodes and aggregator, where named), checking every
    device class against the known profiles; each participant draws the figures its class gives as distributions
    (seeded by `seed`)."""
    profiles = with_jitter(profiles, jitter)
    devices = device_counts(spec, profiles, size, where)
    scale = spec.memory_scale if memory_scale is None else memory_scale
    largest = max(profiles[name].memory_bytes for name in devices)
    if not math.isfinite(largest * scale):
        raise UserInputError("fleet.memory_scale" if memory_scale is not None else f"{where}.memory_scale",
                             f"is too large (got {scale}: memory caps become infinite)")
    classes = tuple(profiles[name] for name in devices)
    profile_of = np.repeat(np.arange(len(classes), dtype=np.int32), list(devices.values()))
    caps = np.array([int(profile.memory_bytes * scale) for profile in classes], dtype=np.int64)[profile_of]
    nodes, aggregator = compute_nodes_of(spec, profiles, scale, where)
    return Fleet.of_arrays(classes, profile_of, caps, name=spec.name, seed=seed, compute_nodes=nodes,
                           aggregator=aggregator, values=draw_values(classes, profile_of, seed))
