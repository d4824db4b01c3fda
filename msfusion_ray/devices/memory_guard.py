"""The memory guard: training work that does not fit a device's memory is refused before it starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from msfusion_ray.costs.footprint import FootprintPlanner


@dataclass(frozen=True)
class MemoryVerdict:
    fits: bool
    planned_bytes: int
    cap_bytes: int


class MemoryGuard:
    def __init__(self, cap_bytes: int, planner: FootprintPlanner):
        self.cap_bytes = cap_bytes
        self._planner = planner

    def check(self, widths: Mapping[str, int], batch_size: int, depth: int | None = None) -> MemoryVerdict:
        planned = self._planner.footprint(widths, batch_size, depth).total
        return MemoryVerdict(fits=planned <= self.cap_bytes, planned_bytes=planned, cap_bytes=self.cap_bytes)
