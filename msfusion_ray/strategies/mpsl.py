"""MP-SL: multihop parallel split learning (Tirana, Lalis, Chatzopoulos, arXiv 2402.00208; EdgeSys'25), and with
one compute node one-hop parallel split learning (SplitFed V1 semantics, U-shaped).

The model is cut by depth into P = N + 2 parts: every data owner keeps its own copy of the first and the last part
(inputs and labels never leave it), compute node p holds part p + 1, one copy per data owner (SplitFed V1: each
owner trains its own instance of the model). Per batch the owner runs its first part, the activation travels
through the compute nodes to the owner's last part, the loss's gradient travels back, and every holder steps its
own copy (SGD as configured). An epoch (the step) is `training.local_epochs` passes of every owner over its data;
then each compute node averages its per-owner copies and the aggregator averages the owners' first and last
parts, both weighted by the samples each owner trained on (FedAvg). Which layers each compute node holds comes from
the split-and-placement integer program (`split: optimal`), a manual rule, or explicit `cuts`
(msfusion_ray/pipeline/plan.py).

Each owner's chain computes what its own whole model would, so one epoch equals a FedAvg round of every owner
training the whole model on the same batches; what differs is who holds what, the bytes on each hop and time.
"""

from __future__ import annotations

import math
from functools import lru_cache

from msfusion_ray.models.layers import build_part, part_weights
from msfusion_ray.models.weights import Weights
from msfusion_ray.pipeline.plan import PipelineParams, PipelinePlanner
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.depth_split import Split
from msfusion_ray.strategies import register
from msfusion_ray.strategies.base import ProcedureSpec, Strategy, Update, WorkOrder
from msfusion_ray.training import pipeline_owner  # noqa: F401  (registers the owners' procedure)

OWNER_PROCEDURE = ProcedureSpec("pipeline_owner")


class PipelineStrategy(Strategy):
    """The contract of pipeline split learning (the `pipeline` engine): choose the split over the fleet's compute
    nodes, say what each owner is sent and does, and combine the copies of every part at the epoch's end."""

    engine = "pipeline"

    def choose_split(self, planner: PipelinePlanner) -> Split | None:
        """The compute nodes' parts (None: nothing fits the nodes' memory)."""
        return planner.configured_split()

    def owner_order(self, participant: int, front: tuple[int, int], back: tuple[int, int]) -> WorkOrder:
        return WorkOrder(participant, procedure=OWNER_PROCEDURE, extras={"front": front, "back": back})

    def part_keys(self, start: int, end: int) -> list[str]:
        """The global model's entries layers [start, end) hold."""
        return list(_part_keys(self.family, start, end))

    def payload(self, task: WorkOrder, global_weights: Weights) -> Weights:
        """An owner is sent its first and last parts."""
        keys = [*self.part_keys(*task.extras["front"]), *self.part_keys(*task.extras["back"])]
        return {k: global_weights[k] for k in keys}

    def param_fraction(self, task: WorkOrder) -> float:
        """Share of the global model's parameters an owner holds: its first and last parts."""
        shapes = self.spec.shapes
        held = [*self.part_keys(*task.extras["front"]), *self.part_keys(*task.extras["back"])]
        return sum(math.prod(shapes[k]) for k in held) / sum(math.prod(s) for s in shapes.values())

    def new_accumulator(self, global_weights: Weights) -> ScatterAccumulator:
        return ScatterAccumulator(global_weights)

    def fold_owner(self, accumulator: ScatterAccumulator, update: Update) -> None:
        """An owner's trained first and last parts, weighted by the samples it trained on (the aggregator's
        FedAvg)."""
        accumulator.add(update.weights, None, weight=float(update.samples))

    def fold_part(self, accumulator: ScatterAccumulator, averaged: Weights) -> None:
        """A compute node's part, already the sample-weighted average of its per-owner copies."""
        accumulator.add(averaged, None, weight=1.0)

    def combine(self, epoch: int, global_weights: Weights,
                accumulator: ScatterAccumulator) -> tuple[Weights, dict[str, float]]:
        return accumulator.result(global_weights), {}


@register("mpsl")
class MPSL(PipelineStrategy):
    Params = PipelineParams


@lru_cache(maxsize=64)
def _part_keys(family, start: int, end: int) -> tuple[str, ...]:  # noqa: ANN001 (ModelFamily)
    return tuple(part_weights(build_part(family.layers(), start, end)))
