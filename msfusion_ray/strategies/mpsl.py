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

from msfusion_ray.pipeline.plan import PipelineParams
from msfusion_ray.strategies import register
from msfusion_ray.strategies.base import PipelineStrategy


@register("mpsl")
class MPSL(PipelineStrategy):
    Params = PipelineParams
