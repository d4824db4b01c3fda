"""The strategy contract: what each participant trains, and how the updates combine.

A strategy never touches Ray or device profiles, and names the engine that runs it (`engine`); the engine says
how work flows among actors and when the global model changes (docs/engines.md). Every strategy is first asked
`configure(capacity, participants)` once: it may narrow the global model (small-model FedAvg) and returns the
family of the global model; `self.spec` is then its split spec. Then, by family:

- `RoundStrategy` (engine `sync`): `plan` a round, `fold` each update as it arrives, `combine` at the barrier;
- `AsyncStrategy` (engine `async`): `order` work for an idle participant, `fold` each update with its staleness,
  `aggregate` when its `schedule` says so;
- `PipelineStrategy` (engine `pipeline`): `choose_split` over the fleet's compute nodes, send each data owner its
  parts, `fold_owner` and `fold_part` the copies at the epoch's end, `combine`.

Work goes out as `WorkOrder`s and comes back as `Update`s. `capacity` answers "what can this participant hold?"
(the largest uniform rate, or whether given widths fit) without the strategy seeing any device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, ClassVar, Hashable, Literal, Mapping, Protocol, Sequence

import numpy as np

from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.layers import build_part, part_weights
from msfusion_ray.models.weights import Weights
from msfusion_ray.pipeline.depth_split import Split
from msfusion_ray.pipeline.plan import PipelinePlanner
from msfusion_ray.procedures.orders import NoParams, ObjectiveSpec, ProcedureSpec, WorkOrder
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.index_map import IndexMap, extract, index_map, selection_fraction, widths_of
from msfusion_ray.splitting.spec import SplitSpec


@dataclass(frozen=True, slots=True)  # one per participant: 10 000 in a large fleet
class ParticipantInfo:
    id: int
    device: str
    samples: int
    labels: tuple[int, ...] | None = None  # the classes (language models: tokens) its training targets hold


TrainTask = WorkOrder  # the name round strategies have always used


@dataclass(frozen=True)
class Update:
    """What a participant sends back: its payload (trained sub-model weights, or a delta where the procedure says
    so), what it actually trained, how much data it saw, the version it trained from, and open metrics."""

    participant: int
    weights: Weights
    samples: int
    base_version: int = 0
    trained: Mapping[str, Any] = field(default_factory=dict)  # e.g. a mask the participant chose
    device_time_s: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)


class Capacity(Protocol):
    def max_rate(self, participant: int) -> float | None:
        """Largest uniform splitting rate whose training footprint fits the participant (None: nothing fits)."""

    def fits(self, participant: int, widths: Mapping[str, int]) -> bool:
        """Whether a model with these units per width group fits the participant."""

    def largest_rate(self, participant: int,
                     shape_at: Callable[[float], tuple[Mapping[str, int], int | None]]) -> float | None:
        """Largest rate whose sub-model `shape_at(rate)` = (widths, depth) fits the participant (None: none)."""

    def alike(self, participant: int) -> Hashable:
        """The same for participants whose answers are the same (a strategy that works out something per
        participant from the capacity works it out once per kind)."""

    def under(self, key: Hashable, **footprint: Any) -> "Capacity":
        """The same answers for another training footprint (its build, loss or extra bytes replaced)."""


class Strategy(ABC):
    """What every scheme says, whichever engine runs it: its params, its global model, its local objective and
    procedure, how a work order maps onto the global model's entries, and what a checkpoint keeps."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    engine: ClassVar[str] = "sync"  # the engine that runs it (msfusion_ray.runtime.engines)

    def __init__(self, params: Any, family: ModelFamily, seed: int):
        self.params = params
        self.base_family = family
        self.family = family
        self.seed = seed

    @property
    def spec(self) -> SplitSpec:
        return self.family.spec

    def configure(self, capacity: Capacity, participants: Sequence[ParticipantInfo]) -> ModelFamily:
        """Fix the global model; the default trains the configured model."""
        return self.family

    def largest_trainable_rate(self, participant: int, capacity: Capacity) -> float | None:
        """After `configure`: the largest rate the participant's memory lets it train under this scheme (what
        `validate` shows; None: nothing fits). The default is the width-only rate of the global model."""
        return capacity.max_rate(participant)

    def objective(self) -> ObjectiveSpec | None:
        """The local objective participants train with (its memory counts in every footprint)."""
        return None

    def reads_labels(self) -> bool:
        """Whether it reads `ParticipantInfo.labels` (finding them reads each participant's samples: a run whose
        strategy does not leaves them None)."""
        return False

    def index_map(self, task: WorkOrder) -> IndexMap | None:
        return None if task.selection is None else index_map(self.spec, task.selection)

    def widths(self, task: WorkOrder) -> dict[str, int]:
        return widths_of(self.spec, task.selection)

    def payload(self, task: WorkOrder, global_weights: Weights) -> Weights:
        """The arrays a participant is sent for `task`, cut from the global model it trains from."""
        return extract(global_weights, self.index_map(task))

    def param_fraction(self, task: WorkOrder) -> float:
        """Share of the global model's parameters the task asks the participant to hold."""
        return selection_fraction(self.spec, task.selection)

    def peer_bytes(self, task: WorkOrder, round_tasks: Sequence[WorkOrder], weights: Weights) -> int:
        """Bytes this update would cost in a peer-to-peer exchange instead of through a coordinator (0 where the
        scheme defines no such exchange)."""
        return 0

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What a checkpoint must keep to continue exactly: JSON-able values and arrays."""
        return {}, {}

    def load_state_dict(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        pass


class RoundStrategy(Strategy):
    """A scheme of synchronous rounds (the `sync` engine): every round the driver calls

    1. `plan(round, participants, capacity)`: one work order per available participant of the round's cohort;
    2. for each update as it arrives, `fold(accumulator, task, update, global_weights)`: streaming aggregation;
    3. `combine(round, global_weights, accumulator)`: the new global weights and the round's strategy metrics.
    """

    engine: ClassVar[str] = "sync"

    @abstractmethod
    def plan(self, round_idx: int, participants: Sequence[ParticipantInfo], capacity: Capacity) -> list[WorkOrder]:
        """One task per participant that should train this round."""

    def new_accumulator(self, global_weights: Weights) -> ScatterAccumulator:
        return ScatterAccumulator(global_weights)

    def fold(self, accumulator: ScatterAccumulator, task: WorkOrder, update: Update, global_weights: Weights) -> None:
        """Add one update; by default weighted by the participant's sample count."""
        accumulator.add(update.weights, self.index_map(task), weight=float(update.samples))

    def combine(self, round_idx: int, global_weights: Weights,
                accumulator: ScatterAccumulator) -> tuple[Weights, dict[str, float]]:
        return accumulator.result(global_weights), {}


@dataclass(frozen=True)
class AsyncSchedule:
    """When a buffered-asynchronous scheme hands out work and aggregates (the `async` engine)."""

    concurrency: int | None = None  # participants training at once (None: every participant)
    buffer_size: int | None = 1  # aggregate after this many updates (None: after every handed-out task is back)
    deadline_s: float | None = None  # ... or once this much virtual time has passed since the last aggregation
    max_staleness: int | None = None  # updates staler than this are recorded `stale` and not aggregated
    # when a participant whose update arrived may be handed work again: at once (`on_arrival`), or only after the
    # aggregation that takes its update (`after_aggregation`: at most one update per participant per aggregation)
    dispatch: Literal["on_arrival", "after_aggregation"] = "on_arrival"


class ModelHistory(Protocol):
    """The global models the engine still holds, by version (every version an in-flight task or a strategy's
    staleness window refers to)."""

    def __getitem__(self, version: int) -> Weights: ...

    def __contains__(self, version: int) -> bool: ...


class AsyncStrategy(Strategy):
    """A buffered-asynchronous scheme (the `async` engine): participants do not wait for each other. The engine
    hands the current global model (version v) to an idle participant with `order`, and for every update that
    arrives with staleness s = v_now - v_base calls `fold`; when the schedule says so, `aggregate` gives global
    version v_now + 1."""

    engine: ClassVar[str] = "async"

    @abstractmethod
    def schedule(self) -> AsyncSchedule:
        """The scheme owns its schedule."""

    @abstractmethod
    def order(self, participant: ParticipantInfo, version: int, capacity: Capacity) -> WorkOrder:
        """The work an idle participant is handed with global version `version`."""

    def history_depth(self) -> int:
        """How many versions back the strategy reads global models in `fold`/`aggregate` (beyond those in flight)."""
        return 0

    @abstractmethod
    def new_buffer(self, global_weights: Weights) -> Any:
        """An empty buffer for the updates of one aggregation."""

    @abstractmethod
    def fold(self, buffer: Any, task: WorkOrder, update: Update, staleness: int, history: ModelHistory) -> None:
        """Add one update (trained from `history[update.base_version]`) to the buffer."""

    @abstractmethod
    def aggregate(self, version: int, global_weights: Weights, buffer: Any,
                  history: ModelHistory) -> tuple[Weights, dict[str, float]]:
        """The next global model from the current one (`version`) and the buffer; and the step's metrics."""


OWNER_PROCEDURE = ProcedureSpec("pipeline_owner")  # msfusion_ray.procedures.pipeline_owner


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


@lru_cache(maxsize=64)
def _part_keys(family: ModelFamily, start: int, end: int) -> tuple[str, ...]:
    return tuple(part_weights(build_part(family.layers(), start, end)))
