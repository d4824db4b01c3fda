"""Each participant's own device figures where members of a class differ: drawn from a profile's distributions
(msfusion_ray.devices.distributions), or read from a device list (msfusion_ray.devices.device_list).

They are kept as arrays over the fleet, one per field, not as an object per participant: a sampled fleet of a
million participants costs a few arrays in the driver and in each host's share. Where a participant needs a whole
profile (its device time, its energy), `resolve` lays its figures over its class's profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from msfusion_ray.devices.distributions import field_draws
from msfusion_ray.devices.profile import DeviceProfile


@dataclass(frozen=True)
class ParticipantValues:
    """Per participant, the profile fields that differ within its class (float64, one entry per participant), and
    for listed or sampled devices their names (`names[name_of[i]]`)."""

    fields: dict[str, np.ndarray]
    names: tuple[str, ...] = ()
    name_of: np.ndarray | None = None  # int32 index into `names`

    def of(self, participant: int) -> dict[str, float]:
        return {name: float(column[participant]) for name, column in self.fields.items()}

    def name(self, participant: int) -> str:
        return self.names[int(self.name_of[participant])] if self.name_of is not None else ""

    def take(self, members: Sequence[int] | np.ndarray) -> "ParticipantValues":
        """The entries of `members`, in that order (a host's share)."""
        index = np.asarray(members, dtype=np.int64)
        return ParticipantValues({k: v[index] for k, v in self.fields.items()}, self.names,
                                 self.name_of[index] if self.name_of is not None else None)


def resolve(profile: DeviceProfile, values: ParticipantValues | None, participant: int) -> DeviceProfile:
    """The participant's device: its class's profile with its own figures laid over it. Made as a copy of the
    profile's attributes with those fields set (a few microseconds; `dataclasses.replace`, which runs every field
    through __init__, took 80), since every task of a sampled fleet makes one."""
    if values is None or not values.fields:
        return profile
    own = object.__new__(type(profile))
    own.__dict__.update(profile.__dict__)
    own.__dict__.update(values.of(participant))  # a frozen dataclass's fields live in its __dict__
    return own


def draw_values(profiles: Sequence[DeviceProfile], profile_of: np.ndarray, seed: int) -> ParticipantValues | None:
    """Per participant (participant i's profile: `profiles[profile_of[i]]`), a value of every field some class
    gives as a distribution; participants of a class without one keep its number. None when no class varies."""
    varying = sorted({field for profile in profiles for field in profile.spread})
    if not varying:
        return None
    size = len(profile_of)
    fields = {}
    for field in varying:
        z, u = field_draws(seed, field, size)
        column = np.empty(size, dtype=np.float64)
        for k, profile in enumerate(profiles):
            index = np.flatnonzero(profile_of == k)
            distribution = profile.spread.get(field)
            column[index] = distribution.values(z[index], u[index]) if distribution else getattr(profile, field)
        fields[field] = column
    return ParticipantValues(fields)
