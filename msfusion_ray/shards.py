"""Each participant's sample indices into the training split, as partitioning made them (`msfusion_ray.data`).

Kept apart from `msfusion_ray.data`, which imports torch: the command line holds a run's partitions and never
imports torch.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np


class Shards(Sequence[np.ndarray]):
    """Each participant's sample indices, held as one flat array and the offsets between them: pickled (to the
    driver and the hosts) as two buffers, not one per participant: of the 60 MB the driver grew by from 1000 to
    10 000 registered participants (scalability benchmark), about 16 MB. `shards[i]` is a view."""

    def __init__(self, parts: Iterable[np.ndarray]):
        parts = [np.asarray(part, dtype=np.int64) for part in parts]
        self.offsets = np.cumsum([0, *map(len, parts)], dtype=np.int64)
        self.flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]  (no slices)
        index = _checked(index, len(self))
        return self.flat[self.offsets[index]:self.offsets[index + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def size_of(self, index: int) -> int:
        """One participant's sample count."""
        index = _checked(index, len(self))
        return int(self.offsets[index + 1] - self.offsets[index])

    def subset(self, members: Sequence[int]) -> "Shards":
        """The shards of `members`, in that order (what one host needs)."""
        return Shards(self[pid] for pid in members)


class SampledShards(Sequence[np.ndarray]):
    """`parts` participants, each holding `size` distinct samples of the `n_samples` drawn at random (shares may
    overlap: a fleet larger than its data set, as in FedScale's and Flower's simulated populations). Nothing is
    stored per participant: its indices are drawn again, from the seed and its id, whenever they are asked for,
    so a million participants cost four integers (a host's subset: its members' ids)."""

    def __init__(self, n_samples: int, parts: int, size: int, seed: int, ids: np.ndarray | None = None):
        self.n_samples, self.parts, self.size, self.seed = n_samples, parts, size, seed
        self.ids = ids  # a subset's participants, by position (None: all, participant i at i)

    def __len__(self) -> int:
        return self.parts if self.ids is None else len(self.ids)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]  (no slices)
        index = _checked(index, len(self))
        participant = index if self.ids is None else int(self.ids[index])
        rng = np.random.default_rng([self.seed, 0x5A3, participant])
        return np.sort(rng.choice(self.n_samples, self.size, replace=False))

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def size_of(self, index: int) -> int:
        _checked(index, len(self))
        return self.size

    def subset(self, members: Sequence[int]) -> "SampledShards":
        return SampledShards(self.n_samples, self.parts, self.size, self.seed, np.asarray(members, dtype=np.int64))


def _checked(index: int, length: int) -> int:
    if not -length <= index < length:
        raise IndexError(f"participant {index} of {length}")
    return int(index) % length
