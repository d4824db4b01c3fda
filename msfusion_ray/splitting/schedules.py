"""Which units of one width group a participant keeps: the index rules of the width-splitting schemes.

Every rule returns sorted unit indices of a group with `units` units, keeping `n` of them:

- prefix (HeteroFL): the first n units, every round.
- rolling (FedRolex): a window that starts at (units - (round mod units)) mod units and wraps around, the same
  start for every participant, moving one unit per round (torch.roll(arange(K), j)[:n] in FedRolex's code).
- random (Federated Dropout): n units drawn uniformly without replacement, per participant, group and round.
- window: n consecutive units from a start, wrapping around: the building block of MSfusion's double shifting.
"""

from __future__ import annotations

import math

import numpy as np


def window(units: int, start: int, n: int) -> np.ndarray:
    return np.sort((start + np.arange(n)) % units)


def prefix(units: int, n: int) -> np.ndarray:
    return np.arange(n)


def rolling(units: int, n: int, round_idx: int) -> np.ndarray:
    """FedRolex: round_idx counts from 0 (the first round keeps the prefix)."""
    return window(units, (units - round_idx % units) % units, n)


def random_subset(units: int, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(units, size=n, replace=False))


def tiled_offsets(lengths: list[int], units: int) -> list[float]:
    """Where windows of these lengths start when laid side by side around a ring of `units`, spread in
    proportion to their lengths: when the lengths sum to at least `units`, together they cover every unit."""
    total = sum(lengths)
    offsets, position = [], 0
    for length in lengths:
        offsets.append(position * units / total)
        position += length
    return offsets


def double_shift_starts(lengths: list[int], units: int, overlap: float, round_idx: int, step: int) -> list[int]:
    """MSfusion's double shifting for one group.

    Spatial shift: participant i's window starts at (1 - overlap) x its tiled offset, so overlap 0 spreads the
    windows over the whole group (full coverage when their lengths suffice) and overlap 1 stacks them all at one
    start (maximal overlap). Temporal shift: the whole arrangement moves `step` units per round (round_idx counts
    from 0), so each window sweeps the group and every unit meets different participants' data over rounds.
    """
    return [(math.floor((1.0 - overlap) * offset) + round_idx * step) % units
            for offset in tiled_offsets(lengths, units)]
