"""Small-model FedAvg: FedAvg on the largest uniformly narrowed model that every participant can hold.

The global model keeps ceil(r * units) of every width group, with r the smallest of the participants' largest
feasible rates. A participant that cannot hold even the narrowest model is left at that (it is refused and recorded
out-of-memory each round) rather than shrinking the model for everybody to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.splitting.index_map import prefix_selection, widths_of
from msfusion_ray.strategies import register
from msfusion_ray.strategies.base import Capacity, ParticipantInfo, RoundStrategy, TrainTask
from msfusion_ray.validation import checked, fraction


@dataclass(frozen=True)
class SmallFedAvgParams:
    rate: float | None = checked(None, check=fraction)  # force this rate instead of deriving it from the fleet


@register("small_fedavg")
class SmallFedAvg(RoundStrategy):
    Params = SmallFedAvgParams

    def configure(self, capacity: Capacity, participants: Sequence[ParticipantInfo]) -> ModelFamily:
        rate = self.params.rate
        if rate is None:
            feasible = [r for r in (capacity.max_rate(p.id) for p in participants) if r is not None]
            if not feasible:
                raise UserInputError("fleet", "no participant can hold even the narrowest model")
            rate = min(feasible)
        self.rate = rate
        self.family = self.base_family.narrowed(widths_of(self.base_family.spec,
                                                          prefix_selection(self.base_family.spec, rate)))
        return self.family

    def plan(self, round_idx: int, participants: Sequence[ParticipantInfo], capacity: Capacity) -> list[TrainTask]:
        return [TrainTask(p.id, rate=self.rate) for p in participants]
