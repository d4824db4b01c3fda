"""Index maps: per parameter, the kept indices of each axis, computed from a selection of units per group.

A *selection* names, for each width group, the sorted unit indices a sub-model keeps; groups it omits are kept
whole. The index map expands units into element indices per parameter axis (a unit of an attention group is a
whole head of `head_dim` elements). `None` on an axis means "the whole axis".
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from msfusion_ray.models.weights import Weights
from msfusion_ray.splitting.spec import SplitSpec

Selection = Mapping[str, np.ndarray]
IndexMap = dict[str, tuple[np.ndarray | None, ...]]


def units_at_rate(units: int, rate: float) -> int:
    """Units a group keeps at splitting rate `rate` (HeteroFL's ceil(rate * size), at least one)."""
    return max(1, min(units, math.ceil(rate * units - 1e-9)))


def prefix_selection(spec: SplitSpec, rate: float) -> dict[str, np.ndarray]:
    """The first ceil(rate * size) units of every group: a uniformly narrowed model."""
    return {g: np.arange(units_at_rate(n, rate)) for g, n in spec.groups.items()}


def widths_of(spec: SplitSpec, selection: Selection | None) -> dict[str, int]:
    """Units per group of the sub-model a selection describes (what a model builder needs)."""
    selection = selection or {}
    return {g: len(selection[g]) if g in selection else n for g, n in spec.groups.items()}


def is_full(spec: SplitSpec, selection: Selection | None) -> bool:
    return selection is None or all(len(selection.get(g, range(n))) == n for g, n in spec.groups.items())


def index_map(spec: SplitSpec, selection: Selection | None) -> IndexMap:
    selection = selection or {}
    imap: IndexMap = {}
    for key, axes in spec.params.items():
        kept = []
        for axis in axes:
            units = selection.get(axis.group) if axis is not None else None
            if units is None or len(units) == spec.groups[axis.group]:
                kept.append(None)
            else:
                units = np.asarray(units, dtype=np.int64)
                kept.append((units[:, None] * axis.block + np.arange(axis.block)).ravel())
        imap[key] = tuple(kept)
    return imap


def outer_index(index: tuple[np.ndarray | None, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    return np.ix_(*[np.arange(n) if idx is None else idx for idx, n in zip(index, shape)])


def extract(weights: Mapping[str, np.ndarray], imap: IndexMap | None) -> Weights:
    """The sub-model's weights: each global array restricted to its kept indices (a copy)."""
    if imap is None:
        return {k: np.array(v) for k, v in weights.items()}
    sub = {}
    for key, value in weights.items():
        index = imap[key]
        sub[key] = value[outer_index(index, value.shape)] if any(i is not None for i in index) else np.array(value)
    return sub


def selection_fraction(spec: SplitSpec, selection: Selection | None, shapes: Mapping[str, tuple[int, ...]]) -> float:
    """Share of the global model's parameters a sub-model holds."""
    imap = index_map(spec, selection)
    total = kept = 0
    for key, shape in shapes.items():
        total += math.prod(shape)
        kept += math.prod(len(i) if i is not None else n for i, n in zip(imap[key], shape))
    return kept / total if total else 1.0
