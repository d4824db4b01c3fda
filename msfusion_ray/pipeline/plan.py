"""The plan of a pipeline split learning run: where the model is cut, which compute node holds what, each actor's
memory, and the per-batch times that make the epoch's schedule.

Data owners keep the first `front_layers` and the last `back_layers` layers (U-shaped: inputs and labels never leave
them); the fleet's compute nodes share the layers in between, by the integer program (`split: optimal`), by equal
layer counts (`equal`), by the paper's manual rule (`balanced`), or at given `cuts`. One compute node is one-hop
parallel split learning (SplitFed V1 with the owner keeping the last layers). Times come from counted FLOPs and each
device's profile (devices/clock.py); memory from the per-layer costs (costs/layers.py): a compute node holds one
copy of its part per owner, with one batch in flight per owner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Sequence

from msfusion_ray.config import TrainingConfig
from msfusion_ray.costs.layers import LayerCost, part_flops, part_memory, profile_layers
from msfusion_ray.devices.clock import compute_seconds, hop_seconds
from msfusion_ray.devices.fleet import ComputeNode, Fleet, Participant
from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.pipeline.depth_split import (Split, SplitProblem, balanced_split, equal_split, make_split,
                                               optimal_split)
from msfusion_ray.pipeline.schedule import EpochSchedule, schedule_epoch
from msfusion_ray.pipeline.time_model import EdgeSysEstimate, OwnerTimes, PipelineTimes, StageTimes, edgesys_estimate
from msfusion_ray.validation import checked, positive

SplitKind = Literal["optimal", "equal", "balanced"]


@dataclass(frozen=True)
class PipelineParams:
    """strategy.params of pipeline split learning (MP-SL; with one compute node, one-hop parallel split learning)."""

    front_layers: int = checked(1, check=positive)  # part 1: the first layers, on every data owner
    back_layers: int = checked(1, check=positive)  # part P: the last layers, on every data owner
    split: SplitKind = "optimal"  # how the compute nodes share the layers in between
    cuts: list[int] | None = None  # or explicitly: the first layer of each compute node after the first
    compute_nodes: int | None = checked(None, check=positive)  # the first N of the fleet's compute nodes (all)
    batches_per_owner: int | None = checked(None, check=positive)  # plan with B batches per owner, not the data's


@dataclass(frozen=True)
class OwnerPlan:
    participant: Participant
    batches: int  # this epoch (local epochs x batches of its data)
    memory_bytes: int  # its first and last parts, one batch in flight

    @property
    def fits(self) -> bool:
        return self.memory_bytes <= self.participant.memory_cap_bytes


@dataclass(frozen=True)
class PipelinePlan:
    layer_names: tuple[str, ...]
    front: tuple[int, int]  # layer range of part 1
    back: tuple[int, int]  # layer range of part P
    split: Split  # the compute nodes' parts (split.order indexes `candidates`)
    nodes: tuple[ComputeNode, ...]  # in pipeline order
    owners: tuple[OwnerPlan, ...]
    times: PipelineTimes

    @property
    def fits(self) -> bool:
        return self.split.fits and all(o.fits for o in self.owners)

    @cached_property
    def estimate(self) -> EdgeSysEstimate:
        return edgesys_estimate(self.times)

    @cached_property
    def schedule(self) -> EpochSchedule:
        return schedule_epoch(self.times)


def owner_batches(samples: int, training: TrainingConfig) -> int:
    """Batches a data owner trains per epoch (round), as training.local.batch_indices draws them."""
    if training.local_steps is not None:
        return training.local_steps
    return training.local_epochs * math.ceil(samples / training.batch_size)


class PipelinePlanner:
    """Profiles the model's layers once, then plans any split of them over the fleet's compute nodes."""

    def __init__(self, family: ModelFamily, fleet: Fleet, training: TrainingConfig, params: PipelineParams,
                 batches: Sequence[int], costs: Sequence[LayerCost] | None = None):
        layers = family.layers()
        self.layer_names = tuple(layer.name for layer in layers)
        self.costs = list(costs) if costs is not None else profile_layers(
            layers, family.example_batch(training.batch_size)[0])
        self.fleet, self.training, self.params = fleet, training, params
        self.batches = list(batches)
        self.candidates = self._compute_nodes()
        n_layers = len(layers)
        self.front = (0, params.front_layers)
        self.back = (n_layers - params.back_layers, n_layers)
        if self.back[0] - self.front[1] < len(self.candidates):
            raise UserInputError("strategy.params.front_layers",
                                 f"owners keep {params.front_layers} + {params.back_layers} of the model's {n_layers} "
                                 f"layers, leaving {max(0, self.back[0] - self.front[1])} for "
                                 f"{len(self.candidates)} compute nodes (at least one each)")
        self.problem = SplitProblem(
            costs=self.costs, middle=(self.front[1], self.back[0]),
            seconds_per_flop=[compute_seconds(node.device, 1.0) for node in self.candidates],
            caps=[node.memory_cap_bytes for node in self.candidates], owners=len(fleet),
            optimizer_state_copies=training.optimizer_state_copies())

    def _compute_nodes(self) -> tuple[ComputeNode, ...]:
        nodes = self.fleet.compute_nodes
        if not nodes:
            raise UserInputError("fleet.compute_nodes", "pipeline split learning needs at least one compute node")
        wanted = self.params.compute_nodes
        if wanted is not None and wanted > len(nodes):
            raise UserInputError("strategy.params.compute_nodes", f"{wanted} asked, the fleet has {len(nodes)}")
        return nodes[:wanted] if wanted is not None else nodes

    @property
    def aggregator(self) -> ComputeNode:
        """The fleet's aggregator, or the first compute node where the fleet names none."""
        return self.fleet.aggregator if self.fleet.aggregator is not None else self.fleet.compute_nodes[0]

    def split(self, kind: SplitKind) -> Split | None:
        """The compute nodes' parts by one rule (None: the integer program found nothing that fits)."""
        if kind == "optimal":
            return optimal_split(self.problem)
        return equal_split(self.problem) if kind == "equal" else balanced_split(self.problem)

    def configured_split(self) -> Split | None:
        """The split strategy.params asks for: explicit cuts (nodes in fleet order), or a rule."""
        cuts = self.params.cuts
        if cuts is None:
            return self.split(self.params.split)
        first, end = self.problem.middle
        bounds = [first, *cuts, end]
        if len(cuts) != len(self.candidates) - 1 or any(b <= a for a, b in zip(bounds, bounds[1:])):
            raise UserInputError("strategy.params.cuts",
                                 f"give {len(self.candidates) - 1} increasing layer indices within {first + 1}.."
                                 f"{end - 1} (got {list(cuts)})")
        return make_split(self.problem, range(len(self.candidates)), list(zip(bounds, bounds[1:])))

    def plan(self, split: Split) -> PipelinePlan:
        nodes = tuple(self.candidates[i] for i in split.order)
        stages = tuple(StageTimes(f, b) for f, b in zip(split.forward_s, split.backward_s))
        hops = [hop_seconds(a.device, b.device, self.costs[end - 1].output_bytes)
                for a, b, (_, end) in zip(nodes, nodes[1:], split.ranges)]
        hops_back = [hop_seconds(b.device, a.device, self.costs[end - 1].output_bytes)
                     for a, b, (_, end) in zip(nodes, nodes[1:], split.ranges)]
        owners = tuple(self._owner_times(p, batches, nodes[0], nodes[-1])
                       for p, batches in zip(self.fleet.participants, self.batches))
        times = PipelineTimes(owners, stages, tuple(hops), tuple(hops_back))
        memory = self.owner_memory()
        plans = tuple(OwnerPlan(p, b, memory) for p, b in zip(self.fleet.participants, self.batches))
        return PipelinePlan(self.layer_names, self.front, self.back, split, nodes, plans, times)

    def owner_memory(self) -> int:
        copies = self.training.optimizer_state_copies()
        return (part_memory(self.costs, *self.front, copies).total() + part_memory(self.costs, *self.back, copies).total())

    def owner_part_bytes(self) -> int:
        """What an owner sends to the aggregator and gets back: its first and last parts' parameters and buffers."""
        return sum(c.parameter_bytes for c in (*self.costs[slice(*self.front)], *self.costs[slice(*self.back)]))

    def _owner_times(self, owner: Participant, batches: int, first: ComputeNode, last: ComputeNode) -> OwnerTimes:
        device = owner.device
        front_forward, front_backward = part_flops(self.costs, *self.front)
        back_forward, back_backward = part_flops(self.costs, *self.back)
        cut_front = self.costs[self.front[1] - 1].output_bytes
        cut_back = self.costs[self.back[0] - 1].output_bytes
        parts = self.owner_part_bytes()
        return OwnerTimes(
            batches=batches,
            front_forward_s=compute_seconds(device, front_forward),
            front_backward_s=compute_seconds(device, front_backward),
            back_s=compute_seconds(device, back_forward + back_backward),
            to_first_s=hop_seconds(device, first.device, cut_front),
            from_last_s=hop_seconds(last.device, device, cut_back),
            to_last_s=hop_seconds(device, last.device, cut_back),
            from_first_s=hop_seconds(first.device, device, cut_front),
            upload_s=hop_seconds(device, self.aggregator.device, parts),
            download_s=hop_seconds(self.aggregator.device, device, parts),
        )
