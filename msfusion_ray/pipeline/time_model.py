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
