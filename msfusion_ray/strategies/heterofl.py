"""HeteroFL (Diao et al., ICLR 2021): static nested slices. Every participant keeps the first ceil(rate x units)
units of every width group, every round; updates are averaged over the participants holding each entry, counted
equally (the reference code's rule)."""

from __future__ import annotations

import numpy as np

from msfusion_ray.splitting import schedules
from msfusion_ray.strategies import register
from msfusion_ray.strategies.reference_recipe import BaselineSplitting, CountAveragedParams


@register("heterofl")
class HeteroFL(BaselineSplitting):
    Params = CountAveragedParams

    def pick(self, round_idx: int, participant: int, group_index: int, units: int, keep: int) -> np.ndarray:
        return schedules.prefix(units, keep)
