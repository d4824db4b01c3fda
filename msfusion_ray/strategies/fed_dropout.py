"""Federated Dropout (Caldas et al., 2018): each participant trains a random sub-model. Every round, for every
width group, it keeps ceil(rate x units) units drawn uniformly without replacement, independently per participant
(FedRolex's `random` extraction, the rule we could verify in code); updates are mapped back and averaged by sample
count over the participants holding each entry. The paper's lossy compression of the exchanged sub-models is not
part of this implementation."""

from __future__ import annotations

import numpy as np

from msfusion_ray.splitting import schedules
from msfusion_ray.strategies import register
from msfusion_ray.strategies.reference_recipe import BaselineSplitting


@register("fed_dropout")
class FederatedDropout(BaselineSplitting):
    def pick(self, round_idx: int, participant: int, group_index: int, units: int, keep: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, round_idx, participant, group_index])
        return schedules.random_subset(units, keep, rng)
