"""How long one epoch of pipeline split learning takes: the inputs, and EdgeSys'25's closed form.

The inputs are per-batch seconds: each data owner's own compute (its first part forward and backward, its last part
forward, loss and backward), its transfers to and from the first and last compute node, each compute node's forward
and backward of its part, and the transfers between consecutive compute nodes. The closed form is the paper's
(Tirana, Lalis, Chatzopoulos, "Estimating the Training Time in Single- and Multi-Hop Split Federated Learning",
EdgeSys'25, eqs. 1-6):

    startT     = mean_k ( procT_1^fwd(d_k) + commT^fwd(d_k, n_2) )
    pipe-empty = sum_p procT_p^fwd + sum_p procT_p^back           (p over compute nodes)
    pipe-full  = max_p procT_p^fwd + max_p procT_p^back
    endT       = mean_k ( commT^back(n_2, d_k) + procT_1^back(d_k) )
    T_all      = startT + pipe-empty + (r B K - 1) pipe-full + endT          (multi-hop)
    T_all      = startT + r B K (procT_2^fwd + procT_2^back) + endT          (one hop)
    T_aggr     = mean_k commT(d_k -> c_aggr) + procT_aggr + sum_k commT(c_aggr -> d_k)

with r B K the batches of all owners in the epoch (r local epochs of B batches each; owners may differ in B here:
the sum over owners). The aggregator's own compute is taken as 0 (averaging is elementwise; FLOPs count none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class OwnerTimes:
    """One data owner's per-batch seconds and its batches this epoch."""

    batches: int  # r * B_k
    front_forward_s: float  # part 1 forward
    front_backward_s: float  # part 1 backward (and its optimizer step)
    back_s: float  # part P forward, loss, backward
    to_first_s: float  # activation to the first compute node: transfer and latency
    from_last_s: float  # activation from the last compute node
    to_last_s: float  # gradient to the last compute node
    from_first_s: float  # gradient from the first compute node
    upload_s: float = 0.0  # its first and last parts to the aggregator
    download_s: float = 0.0  # the averaged parts back


@dataclass(frozen=True)
class StageTimes:
    """One compute node's per-batch seconds for its part."""

    forward_s: float
    backward_s: float


@dataclass(frozen=True)
class PipelineTimes:
    owners: tuple[OwnerTimes, ...]
    stages: tuple[StageTimes, ...]  # compute nodes in pipeline order
    hops_forward_s: tuple[float, ...] = ()  # activation from stage p to p + 1 (one fewer than stages)
    hops_backward_s: tuple[float, ...] = ()  # gradient from stage p + 1 to p

    def __post_init__(self) -> None:
        if not self.stages or not self.owners:
            raise ValueError("a pipeline needs at least one data owner and one compute node")
        hops = len(self.stages) - 1
        if len(self.hops_forward_s) != hops or len(self.hops_backward_s) != hops:
            raise ValueError(f"{len(self.stages)} stages need {hops} hops each way")

    @property
    def batches(self) -> int:
        return sum(o.batches for o in self.owners)

    # The per-message view the schedule reads (schedule.MessageTimes): every batch of an owner costs the same.
    @property
    def n_owners(self) -> int:
        return len(self.owners)

    @property
    def n_nodes(self) -> int:
        return len(self.stages)

    def owner_batches(self, owner: int) -> int:
        return self.owners[owner].batches

    def owner_s(self, owner: int, batch: int, kind: str) -> float:
        return getattr(self.owners[owner], f"{kind}_s")

    def node_s(self, node: int, owner: int, batch: int, kind: str) -> float:
        stage = self.stages[node]
        return stage.forward_s if kind == "forward" else stage.backward_s

    def hop_s(self, node: int, owner: int, batch: int, kind: str) -> float:
        """Between node and node + 1: the activation (`forward`) or the gradient coming back (`backward`)."""
        return self.hops_forward_s[node] if kind == "forward" else self.hops_backward_s[node]


@dataclass(frozen=True)
class EdgeSysEstimate:
    start_s: float
    pipe_empty_s: float
    pipe_full_s: float
    end_s: float
    batches: int
    epoch_s: float  # T_all
    aggregation_s: float  # T_aggr
    one_hop: bool

    @property
    def total_s(self) -> float:
        """T_tot = T_all + T_aggr (eq. 6)."""
        return self.epoch_s + self.aggregation_s


def edgesys_estimate(times: PipelineTimes) -> EdgeSysEstimate:
    owners, stages = times.owners, times.stages
    start = sum(o.front_forward_s + o.to_first_s for o in owners) / len(owners)
    end = sum(o.from_first_s + o.front_backward_s for o in owners) / len(owners)
    empty = sum(s.forward_s for s in stages) + sum(s.backward_s for s in stages)
    full = max(s.forward_s for s in stages) + max(s.backward_s for s in stages)
    one_hop = len(stages) == 1
    if one_hop:
        epoch = start + times.batches * full + end
    else:
        epoch = start + empty + (times.batches - 1) * full + end
    aggregation = sum(o.upload_s for o in owners) / len(owners) + sum(o.download_s for o in owners)
    return EdgeSysEstimate(start, empty, full, end, times.batches, epoch, aggregation, one_hop)


def round_trip_s(times: PipelineTimes, owner: int) -> float:
    """One batch of `owner` alone through the empty pipeline: its own work, every node's, every transfer."""
    o = times.owners[owner]
    nodes = sum(s.forward_s + s.backward_s for s in times.stages)
    hops = sum(times.hops_forward_s) + sum(times.hops_backward_s)
    return (o.front_forward_s + o.to_first_s + o.from_last_s + o.back_s + o.to_last_s + o.from_first_s
            + o.front_backward_s + nodes + hops)


FULL_FEED = 1.5  # owners' batches per batch the busiest node serves, below which it is seen to wait


@dataclass(frozen=True)
class Regime:
    """Whether an epoch's schedule is in the closed form's regime, and if it is not, why. The closed form counts
    every batch after the first at pipe-full, the busiest node's forward and backward: that holds while the owners
    keep a batch waiting at that node, i.e. while enough owners have batches left."""

    gap: float  # (schedule - closed form) / closed form
    tolerance: float
    reasons: tuple[str, ...]  # why the pipeline runs part-empty (where the gap is beyond the tolerance)

    @property
    def holds(self) -> bool:
        return abs(self.gap) <= self.tolerance


def regime(times: PipelineTimes, schedule_epoch_s: float, tolerance: float = 0.03) -> Regime:
    """Compare the schedule's epoch with the closed form's and name what empties the pipeline: too few owners (each
    has one batch in flight, so K owners feed the busiest node at most K / round trip batches a second, fewer than
    the 1 / pipe-full it serves), and unequal batches (the owners with more batches go on with fewer beside them,
    down to one alone, B_max round trips)."""
    estimate = edgesys_estimate(times)
    gap = (schedule_epoch_s - estimate.epoch_s) / estimate.epoch_s
    if abs(gap) <= tolerance:
        return Regime(gap, tolerance, ())
    full = estimate.pipe_full_s
    trips = [round_trip_s(times, k) for k in range(len(times.owners))]
    batches = [o.batches for o in times.owners]
    reasons = []
    feed = sum(full / trip for trip in trips)  # batches the owners can bring per pipe-full period, one each in flight
    if feed < FULL_FEED:
        slowest = max(trips)
        few = "too few owners to fill the pipeline" if feed < 1 else "barely enough owners to keep it full"
        reasons.append(f"{few}: a batch's round trip takes up to {slowest:.3g} s, {slowest / full:.1f} times "
                       f"pipe-full ({full:.3g} s), so the {len(trips)} owners bring the busiest node {feed:.2f} "
                       f"batches per batch it can serve (about {math.ceil(slowest / full)} owners would bring one; "
                       f"below {FULL_FEED:g} it waits whenever their batches bunch)")
    if min(batches) != max(batches):
        longest = max(b * trip for b, trip in zip(batches, trips))
        reasons.append(f"unequal batches ({min(batches)} to {max(batches)} per owner): the owners with more go on "
                       f"with fewer beside them; the one with the most needs {longest:.3g} s alone, "
                       f"{longest / estimate.epoch_s:.2f} times the closed form's epoch")
    if not reasons:
        owner_side = max(t - estimate.pipe_empty_s for t in trips)
        reasons.append(f"what the closed form leaves out: the hops between nodes and each owner's own part of a "
                       f"batch's round trip (up to {owner_side:.3g} s)")
    return Regime(gap, tolerance, tuple(reasons))
