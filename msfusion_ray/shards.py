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
        if not -len(self) <= index < len(self):
            raise IndexError(f"participant {index} of {len(self)}")
        index %= len(self)
        return self.flat[self.offsets[index]:self.offsets[index + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))
