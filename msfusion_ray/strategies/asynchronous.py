"""What the buffered-asynchronous schemes share: when work goes out (their schedule), what a participant is
handed, and how much a stale update still counts.

Staleness s of an update: global versions published between the version a participant trained from and the one
its update meets. The weight of a stale update is a decreasing function of s:
- polynomial: (1 + s)^-a (FedAsync's default with a = 0.5; FedBuff's 1/sqrt(1 + s) is a = 0.5),
- hinge: 1 while s <= b, then 1 / (a (s - b) + 1) (FedAsync's alternative),
- constant: 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from msfusion_ray.splitting.index_map import prefix_selection
from msfusion_ray.strategies.base import AsyncSchedule, AsyncStrategy, Capacity, ParticipantInfo, WorkOrder
from msfusion_ray.strategies.width import SMALLEST_RATE
from msfusion_ray.validation import checked, non_negative, positive


def staleness_weight(staleness: int, kind: str, a: float, b: float = 0.0) -> float:
    if kind == "polynomial":
        return (1.0 + staleness) ** -a
    if kind == "hinge":
        return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)
    return 1.0


@dataclass(frozen=True)
class AsyncParams:
    concurrency: int | None = checked(None, check=positive)  # participants training at once (None: all)
    max_staleness: int | None = checked(None, check=non_negative)  # staler updates are recorded `stale`
    deadline_s: float | None = checked(None, check=positive)  # aggregate at most this long after the last one
    # a participant whose update arrived trains again at once (the papers' rule), or after the next aggregation
    dispatch: Literal["on_arrival", "after_aggregation"] = "on_arrival"
    # what a participant trains: the whole model (refused where it does not fit), or the largest prefix slice of
    # every width group its memory holds (HeteroFL's sub-models, asynchronously)
    width: Literal["full", "fit"] = "full"


class BufferedAsync(AsyncStrategy):
    """Schedule and hand-out from the params; subclasses say how updates fold and aggregate."""

    Params = AsyncParams

    def buffer_size(self) -> int | None:
        return 1

    def schedule(self) -> AsyncSchedule:
        return AsyncSchedule(concurrency=self.params.concurrency, buffer_size=self.buffer_size(),
                             deadline_s=self.params.deadline_s, max_staleness=self.params.max_staleness,
                             dispatch=self.params.dispatch)

    def order(self, participant: ParticipantInfo, version: int, capacity: Capacity) -> WorkOrder:
        if self.params.width == "full":
            return WorkOrder(participant.id)
        rate = capacity.max_rate(participant.id) or SMALLEST_RATE
        selection = None if rate >= 1.0 else prefix_selection(self.spec, rate)
        return WorkOrder(participant.id, selection, rate=rate)
