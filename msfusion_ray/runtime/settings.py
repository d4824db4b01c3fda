"""A host's participants and how they work: plain data, made by the launcher (whose process holds no torch: see
msfusion_ray.experiment.shipment) and sent to each host."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from msfusion_ray.config import TrainingConfig
from msfusion_ray.devices.enforcement import EnforcementPlan
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.devices.variation import ParticipantValues, resolve

if TYPE_CHECKING:
    from msfusion_ray.devices.fleet import Fleet
    from msfusion_ray.shards import SampledShards, Shards


@dataclass(frozen=True, slots=True)
class ParticipantSpec:
    id: int
    device: DeviceProfile  # its class's profile
    memory_cap_bytes: int
    indices: np.ndarray  # its samples in the training split
    values: ParticipantValues | None = None  # its host's participants' own figures (None: as its class)
    row: int = 0  # its entry in them

    def profile(self) -> DeviceProfile:
        """Its own device: its class's profile with its drawn or listed figures (made per task, not kept)."""
        return resolve(self.device, self.values, self.row)


class ParticipantSpecs(Sequence[ParticipantSpec]):
    """A host's participants as they travel: ids and memory caps as arrays, the fleet's device profiles once, the
    sample indices as one array (or drawn from the ids: `SampledShards`), and each participant's own figures where
    members of a class differ (arrays too). The driver keeps every host's (to start a host again), so a list of one
    object and one index array per participant cost it 11 MB more with 10 000 registered participants than with
    1000."""

    def __init__(self, members: Sequence[int], fleet: "Fleet", partitions: "Shards | SampledShards"):
        self.ids = np.asarray(members, dtype=np.int64)
        self.profiles = fleet.profiles
        self.profile_of = fleet.profile_of[self.ids]
        self.memory_caps = fleet.memory_caps[self.ids]
        self.indices = partitions.subset(self.ids)
        self._order: np.ndarray | None = None  # the ids' sorting order, made where a host first looks one up
        self.values = fleet.values.take(self.ids) if fleet.values is not None else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> ParticipantSpec:  # type: ignore[override]  (no slices)
        return ParticipantSpec(int(self.ids[index]), self.profiles[self.profile_of[index]],
                               int(self.memory_caps[index]), self.indices[index], self.values, index)

    def __iter__(self) -> Iterator[ParticipantSpec]:
        return (self[i] for i in range(len(self)))

    def spec_of(self, participant: int) -> ParticipantSpec | None:
        """The spec of a participant by its id (None: not one of these)."""
        order = np.argsort(self.ids, kind="stable") if self._order is None else self._order
        self._order = order
        place = int(np.searchsorted(self.ids, participant, sorter=order))
        if place < len(order) and self.ids[order[place]] == participant:
            return self[int(order[place])]
        return None


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
    time_model: str = "roofline"  # runtime.time_model
    enforcement: EnforcementPlan | None = None  # runtime.enforce: cgroups (None: virtual devices)
    generation: int = 0  # how many hosts held these participants before this one (enforced hosts: its group)
