"""FedAvg (McMahan et al., 2017): every participant trains the whole model; updates are averaged by sample count.

Participants whose memory cannot hold the model are refused by their memory guard, recorded as out-of-memory,
and left out of the average.
"""

from __future__ import annotations

from typing import Sequence

from msfusion_ray.strategies import register
from msfusion_ray.strategies.base import Capacity, ParticipantInfo, RoundStrategy, TrainTask


@register("fedavg")
class FedAvg(RoundStrategy):
    def plan(self, round_idx: int, participants: Sequence[ParticipantInfo], capacity: Capacity) -> list[TrainTask]:
        return [TrainTask(p.id) for p in participants]
