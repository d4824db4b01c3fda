"""Answers a strategy's question "what can this participant hold?" from the fleet's memory caps.

Strategies never see device profiles; they get the largest uniform splitting rate whose planned training
footprint fits a participant's cap, or a yes/no for given widths. The planner behind it is the same one each
participant's memory guard uses, so a planned rate is never refused. A scheme whose sub-models are shaped
otherwise (a depth cut with a width mask) or whose participants do other work (Co-S2P's mask phase: frozen weights
and learnable scores) asks for the largest rate of its own shape, and for the same caps under its own footprint.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Hashable, Mapping

import numpy as np

from msfusion_ray.config import TrainingConfig
from msfusion_ray.costs.footprint import FootprintPlanner
from msfusion_ray.devices.fleet import Fleet
from msfusion_ray.devices.memory_need import plannable_caps
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.splitting.index_map import prefix_selection, widths_of
from msfusion_ray.training.losses import loss_of
from msfusion_ray.training.objective import LocalObjective


def make_planner(family: ModelFamily, training: TrainingConfig,
                 objective: LocalObjective | None = None) -> FootprintPlanner:
    """The footprint planner for a model family trained with these settings and this local objective."""
    return FootprintPlanner(
        build=family.build,
        example_batch=family.example_batch,
        loss_of=loss_of(family.data.task),
        optimizer_state_copies=training.optimizer_state_copies(),
        extra_bytes=objective.extra_bytes if objective is not None else None,
    )


class CapacityOracle:
    """Rates are searched on a grid of 1/resolution steps (footprints grow with the rate)."""

    def __init__(self, fleet: Fleet, family: ModelFamily, planner: FootprintPlanner, batch_size: int,
                 resolution: int = 64):
        # per participant: the footprint its cap holds (the cap itself, or what its device's need model leaves)
        self._caps = plannable_caps([p.memory_need for p in fleet.profiles], fleet.profile_of, fleet.memory_caps,
                                    family.name)
        self._family = family
        self._planner = planner
        self._batch_size = batch_size
        self._resolution = resolution
        self._rate_by_cap: dict[int, float | None] = {}

    def footprint_bytes(self, widths: Mapping[str, int], depth: int | None = None) -> int:
        return self._planner.footprint(widths, self._batch_size, depth).total

    def rate_widths(self, rate: float) -> dict[str, int]:
        return widths_of(self._family.spec, prefix_selection(self._family.spec, rate))

    def fits(self, participant: int, widths: Mapping[str, int], depth: int | None = None) -> bool:
        return self.footprint_bytes(widths, depth) <= int(self._caps[participant])

    def largest_rate(self, participant: int,
                     shape_at: Callable[[float], tuple[Mapping[str, int], int | None]]) -> float | None:
        """Largest rate on the grid whose sub-model `shape_at(rate)` = (widths, depth) fits the participant
        (None: not even the smallest); shapes must grow with the rate."""
        cap = int(self._caps[participant])
        return self._largest(lambda rate: self.footprint_bytes(*shape_at(rate)) <= cap)

    def under(self, key: Hashable, **planner_changes: Any) -> "CapacityOracle":
        """The same caps and batch size under another footprint: the planner with `build`, `loss_of` or
        `extra_bytes` replaced (FootprintPlanner.variant, cached by `key`)."""
        other = copy.copy(self)
        other._planner = self._planner.variant(key, **planner_changes)
        other._rate_by_cap = {}
        return other

    def max_rate(self, participant: int) -> float | None:
        return self._rate_of_cap(int(self._caps[participant]))

    def alike(self, participant: int) -> int:
        """The footprint its memory cap holds: participants with the same get the same answers."""
        return int(self._caps[participant])

    def any_fits(self) -> bool:
        """Whether any participant can train any sub-model (each distinct memory cap searched once)."""
        return any(self._rate_of_cap(int(cap)) is not None for cap in np.unique(self._caps))

    def _rate_of_cap(self, cap: int) -> float | None:
        if cap not in self._rate_by_cap:
            self._rate_by_cap[cap] = self._search(cap)
        return self._rate_by_cap[cap]

    def _search(self, cap: int) -> float | None:
        return self._largest(lambda rate: self.footprint_bytes(self.rate_widths(rate)) <= cap)

    def _largest(self, fits: Callable[[float], bool]) -> float | None:
        """Where the whole model fits that is the answer, found with one footprint instead of a search's seven
        (each a measured forward and backward pass)."""
        if fits(1.0):
            return 1.0
        low, high = 0, self._resolution - 1  # invariant: step `low` fits (0 means none), steps above `high` do not
        if not fits(1 / self._resolution):
            return None
        low = 1
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle / self._resolution):
                low = middle
            else:
                high = middle - 1
        return low / self._resolution
