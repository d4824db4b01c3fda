"""Index maps: per parameter, the kept indices of each axis, computed from a selection of units per group.

A *selection* names, for each width group, the sorted unit indices a sub-model keeps; groups it omits are kept
whole. The index map expands units into element indices per parameter axis (a unit of an attention group is a
whole head of `head_dim` elements). `None` on an axis means "the whole axis". A depth cut (models/exits.py) holds
only some of the global model's keys: its index map names just those, and extraction leaves the others out.
"""

from __future__ import annotations

import math
from typing import Collection, Mapping

import numpy as np

from msfusion_ray.splitting.spec import Axis, SplitSpec

Weights = dict[str, np.ndarray]  # a model's floating-point tensors by name, as they travel
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


def index_map(spec: SplitSpec, selection: Selection | None, keys: Collection[str] | None = None) -> IndexMap:
    """Per parameter, the kept indices of each axis; with `keys` (a depth cut's), only those parameters."""
    selection = selection or {}
    imap: IndexMap = {}
    for key, axes in spec.params.items():
        if keys is not None and key not in keys:
            continue
        kept = []
        for axis in axes:
            units = selection.get(axis.group) if axis is not None else None
            if units is None or len(units) == spec.groups[axis.group]:
                kept.append(None)
            else:
                kept.append(axis_indices(axis, units, spec.groups[axis.group]))
        imap[key] = tuple(kept)
    return imap


def axis_indices(axis: Axis, units: np.ndarray, group_units: int) -> np.ndarray:
    """The element indices along `axis` of the kept `units` of its group (in each of its chunks)."""
    units = np.asarray(units, dtype=np.int64)
    one = (units[:, None] * axis.block + np.arange(axis.block)).ravel()
    if axis.chunks == 1:
        return one
    return (np.arange(axis.chunks)[:, None] * (group_units * axis.block) + one).ravel()


def outer_index(index: tuple[np.ndarray | None, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    return np.ix_(*[np.arange(n) if idx is None else idx for idx, n in zip(index, shape)])


def extract(weights: Mapping[str, np.ndarray], imap: IndexMap | None) -> Weights:
    """The sub-model's weights: each global array restricted to its kept indices (a copy); keys the map does not
    name (beyond a depth cut) are left out."""
    if imap is None:
        return {k: np.array(v) for k, v in weights.items()}
    sub = {}
    for key, value in weights.items():
        if key not in imap:
            continue
        index = imap[key]
        sub[key] = value[outer_index(index, value.shape)] if any(i is not None for i in index) else np.array(value)
    return sub


def realign(spec: SplitSpec, target: Mapping[str, np.ndarray], target_selection: Selection | None,
            source: Mapping[str, np.ndarray], source_selection: Selection | None) -> Weights:
    """Sub-model `source` expressed in the coordinates of sub-model `target` (the same network, other units): in
    every width group a unit both hold stays in its place, and the target's other units take the source's other
    units in order, as many as the source has (the rest keep the target's values). With equal widths every entry
    comes from the source and the result is the source's own network with its hidden units permuted, so it
    computes what the source computes; where the two selections share no unit of a group, that group is paired
    by position alone."""
    pairs = {group: _paired_units(_units(target_selection, group, units), _units(source_selection, group, units))
             for group, units in spec.groups.items()}
    out = {key: np.array(value) for key, value in target.items()}
    for key, value in out.items():
        if key not in source:
            continue
        into, take = [], []
        for axis, length in zip(spec.params[key], value.shape):
            if axis is None:
                into.append(np.arange(length))
                take.append(np.arange(length))
                continue
            (t_pos, s_pos), (t_units, s_units) = pairs[axis.group]
            into.append(axis_indices(axis, t_pos, t_units))
            take.append(axis_indices(axis, s_pos, s_units))
        if all(len(i) for i in into):
            value[np.ix_(*into)] = np.asarray(source[key])[np.ix_(*take)]
    return out


def _units(selection: Selection | None, group: str, units: int) -> np.ndarray:
    return np.asarray(selection[group]) if selection is not None and group in selection else np.arange(units)


def _paired_units(target: np.ndarray, source: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[int, int]]:
    """(positions in target, positions in source) of the paired units, and each side's unit count: common units
    by identity, then the rest in order."""
    _, t_common, s_common = np.intersect1d(target, source, assume_unique=True, return_indices=True)
    t_rest = np.setdiff1d(np.arange(len(target)), t_common)
    s_rest = np.setdiff1d(np.arange(len(source)), s_common)
    n = min(len(t_rest), len(s_rest))
    return ((np.concatenate([t_common, t_rest[:n]]), np.concatenate([s_common, s_rest[:n]])),
            (len(target), len(source)))


def shared_entries(spec: SplitSpec, a: Selection | None, b: Selection | None,
                   keys: Collection[str] | None = None) -> int:
    """Number of parameter entries two sub-models have in common (with a == b: the sub-model's size); with
    `keys`, within those parameters only (a depth cut)."""
    a, b = a or {}, b or {}
    common = {}
    for group, units in spec.groups.items():
        if group in a and group in b:
            common[group] = len(np.intersect1d(a[group], b[group], assume_unique=True))
        else:
            common[group] = len(a.get(group, b.get(group, range(units))))
    total = 0
    for key, axes in spec.params.items():
        if keys is not None and key not in keys:
            continue
        total += math.prod(n if axis is None else common[axis.group] * axis.block * axis.chunks
                           for axis, n in zip(axes, spec.shapes[key]))
    return total


def selection_fraction(spec: SplitSpec, selection: Selection | None, keys: Collection[str] | None = None) -> float:
    """Share of the global model's parameters a sub-model holds (within `keys`, where it is a depth cut)."""
    full = sum(math.prod(shape) for shape in spec.shapes.values())
    return shared_entries(spec, selection, selection, keys) / full if full else 1.0
