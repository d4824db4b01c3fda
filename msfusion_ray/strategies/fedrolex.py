"""FedRolex (Alam et al., NeurIPS 2022): a rolling window. In round j (from 0) every participant keeps the
window of ceil(rate x units) units starting at (units - j mod units) mod units, wrapping around: one start for
everybody, moving one unit per round, so every unit is trained about equally often. Count-averaged like HeteroFL
(the reference code's default)."""

from __future__ import annotations

import numpy as np

from msfusion_ray.splitting import schedules
from msfusion_ray.strategies import register
from msfusion_ray.strategies.reference_recipe import BaselineSplitting, CountAveragedParams


@register("fedrolex")
class FedRolex(BaselineSplitting):
    Params = CountAveragedParams

    def pick(self, round_idx: int, participant: int, group_index: int, units: int, keep: int) -> np.ndarray:
        return schedules.rolling(units, keep, round_idx - 1)
