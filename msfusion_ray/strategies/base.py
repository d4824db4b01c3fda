"""The strategy contract: what each participant trains this round, and how the updates combine.

A strategy never touches Ray or device profiles. The driver calls, in order:

1. `configure(capacity, participants)` once: the strategy may narrow the global model (small-model FedAvg) and
   returns the family of the global model; `self.spec` is then its split spec.
2. every round, `plan(round, participants, capacity)`: one `TrainTask` per participant (a selection of width
   units, or None for the whole model, and an optional local objective).
3. for each update as it arrives, `fold(accumulator, task, update, global_weights)`: streaming aggregation.
4. `combine(round, global_weights, accumulator)`: the new global weights and the round's strategy metrics.

`capacity` answers "what can this participant hold?" (the largest uniform rate, or whether given widths fit)
without the strategy seeing any device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import numpy as np

from msfusion_ray.models.base import ModelFamily
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.index_map import IndexMap, Weights, index_map, widths_of
from msfusion_ray.splitting.spec import SplitSpec


@dataclass(frozen=True)
class ParticipantInfo:
    id: int
    device: str
    samples: int
    labels: tuple[int, ...] | None = None  # the classes (language models: tokens) its training targets hold


@dataclass(frozen=True)
class ObjectiveSpec:
    """A local objective by registered name, with its parameters (see msfusion_ray.training.objective)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainTask:
    participant: int
    selection: Mapping[str, np.ndarray] | None = None  # width units kept per group; None: the whole model
    objective: ObjectiveSpec | None = None
    rate: float = 1.0  # the splitting rate this task was planned at, for the records


@dataclass(frozen=True)
class Update:
    """What a participant sends back: its trained (sub-)model weights and how much data it saw."""

    participant: int
    weights: Weights
    samples: int


class Capacity(Protocol):
    def max_rate(self, participant: int) -> float | None:
        """Largest uniform splitting rate whose training footprint fits the participant (None: nothing fits)."""

    def fits(self, participant: int, widths: Mapping[str, int]) -> bool:
        """Whether a model with these units per width group fits the participant."""


@dataclass(frozen=True)
class NoParams:
    pass


class Strategy(ABC):
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    engine: ClassVar[str] = "sync"

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

    def objective(self) -> ObjectiveSpec | None:
        """The local objective participants train with (its memory counts in every footprint)."""
        return None

    @abstractmethod
    def plan(self, round_idx: int, participants: Sequence[ParticipantInfo], capacity: Capacity) -> list[TrainTask]:
        """One task per participant that should train this round."""

    def index_map(self, task: TrainTask) -> IndexMap | None:
        return None if task.selection is None else index_map(self.spec, task.selection)

    def widths(self, task: TrainTask) -> dict[str, int]:
        return widths_of(self.spec, task.selection)

    def peer_bytes(self, task: TrainTask, round_tasks: Sequence[TrainTask], weights: Weights) -> int:
        """Bytes this update would cost in a peer-to-peer exchange instead of through a coordinator (0 where the
        scheme defines no such exchange)."""
        return 0

    def new_accumulator(self, global_weights: Weights) -> ScatterAccumulator:
        return ScatterAccumulator(global_weights)

    def fold(self, accumulator: ScatterAccumulator, task: TrainTask, update: Update, global_weights: Weights) -> None:
        """Add one update; by default weighted by the participant's sample count."""
        accumulator.add(update.weights, self.index_map(task), weight=float(update.samples))

    def combine(self, round_idx: int, global_weights: Weights,
                accumulator: ScatterAccumulator) -> tuple[Weights, dict[str, float]]:
        return accumulator.result(global_weights), {}

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What a checkpoint must keep to continue exactly: JSON-able values and arrays."""
        return {}, {}

    def load_state_dict(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        pass
