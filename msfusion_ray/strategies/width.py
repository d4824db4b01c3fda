"""The common part of every width-splitting scheme: each participant trains a width slice sized to its device.

A participant's splitting rate is the largest rate whose training footprint fits its memory cap (the capacity
answer the memory guard also uses), optionally snapped down to a fixed set of levels as HeteroFL's paper does;
each group then keeps ceil(rate x units) units. Which units is the scheme's own rule (`select`). Updates are
scatter-averaged over the participants that hold each entry, weighted by sample count or counted equally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.index_map import Selection, units_at_rate
from msfusion_ray.strategies.base import Capacity, ObjectiveSpec, ParticipantInfo, RoundStrategy, TrainTask, Update
from msfusion_ray.models.weights import Weights
from msfusion_ray.validation import checked

# A participant that cannot hold even this is still asked, so that its refusal is recorded.
SMALLEST_RATE = 1 / 64


def check_levels(value: list[float] | None) -> str | None:
    if value is None:
        return None
    if not value or any(not 0 < v <= 1 for v in value):
        return f"must be a non-empty list of rates in (0, 1] (got {value})"
    return None


def snap_to_levels(largest: float | None, levels: list[float] | None) -> float:
    """The largest level at or below the largest rate that fits (the smallest level where none does);
    SMALLEST_RATE where nothing fits at all: the participant is still asked, so that its refusal is recorded."""
    if largest is None:
        return SMALLEST_RATE
    if levels is None:
        return largest
    fitting = [level for level in levels if level <= largest + 1e-9]
    return max(fitting) if fitting else min(levels)


@dataclass(frozen=True)
class WidthParams:
    rate_levels: list[float] | None = checked(None, check=check_levels)  # None: the largest rate that fits
    weighting: Literal["samples", "count"] = "samples"  # how overlapping updates are averaged


class WidthSplitting(RoundStrategy):
    Params = WidthParams

    def rate(self, participant: int, capacity: Capacity) -> float:
        return snap_to_levels(capacity.max_rate(participant), self.params.rate_levels)

    def units(self, rate: float) -> dict[str, int]:
        """Units each group keeps at this rate."""
        return {group: units_at_rate(size, rate) for group, size in self.spec.groups.items()}

    def rates(self, participants: Sequence[ParticipantInfo], capacity: Capacity) -> dict[int, float]:
        return {p.id: self.rate(p.id, capacity) for p in participants}

    def plan(self, round_idx: int, participants: Sequence[ParticipantInfo], capacity: Capacity) -> list[TrainTask]:
        rates = self.rates(participants, capacity)
        selections = self.select(round_idx, list(participants), rates)
        return [TrainTask(p.id, selections[p.id], self.task_objective(p, rates[p.id]), rates[p.id])
                for p in participants]

    def task_objective(self, participant: ParticipantInfo, rate: float) -> ObjectiveSpec | None:
        """The local objective of one participant's task (by default the strategy's one objective)."""
        return self.objective()

    def select(self, round_idx: int, participants: list[ParticipantInfo],
               rates: dict[int, float]) -> dict[int, Selection]:
        """Each participant's kept units per group this round; by default each group independently by `pick`."""
        return {p.id: {group: self.pick(round_idx, p.id, index, units, units_at_rate(units, rates[p.id]))
                       for index, (group, units) in enumerate(self.spec.groups.items())}
                for p in participants}

    def pick(self, round_idx: int, participant: int, group_index: int, units: int, keep: int) -> np.ndarray:
        """Sorted indices of the `keep` units (of `units`) a participant trains in one group."""
        raise NotImplementedError(f"{type(self).__name__} must define pick() or select()")

    def fold(self, accumulator: ScatterAccumulator, task: TrainTask, update: Update, global_weights: Weights) -> None:
        weight = float(update.samples) if self.params.weighting == "samples" else 1.0
        accumulator.add(update.weights, self.index_map(task), weight=weight)
