"""Local procedures: how a participant turns the weights it receives into the update it sends.

A work order names its procedure (`ProcedureSpec`, default `standard`); the participant builds it from this
registry. The participant first asks `memory_phases` for the planned footprint of each phase of the work and
refuses the order (`oom`) if any exceeds its cap; then `run` does the work and reports what it cost. Procedures
are plain torch: no Ray, no device profiles (the participant turns counted FLOPs and bytes into device time).

State: `context.state` is the participant's memory from its previous consumed task (a shallow copy). A
procedure replaces entries in it (never mutates them in place): the participant keeps the version each task
produced, so a task the driver never aggregates (timed out, dropped) does not advance it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch

from msfusion_ray.config import TrainingConfig
from msfusion_ray.costs.flops import StepCostCache, TrainingStepFlops
from msfusion_ray.costs.footprint import FootprintPlanner
from msfusion_ray.costs.payload import payload_bytes
from msfusion_ray.data.arrays import DataBundle
from msfusion_ray.devices.memory_need import MemoryNeed
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.pool import ModulePool
from msfusion_ray.models.weights import Weights, load_weights, to_weights
from msfusion_ray.procedures.orders import NoParams, ProcedureSpec, WorkOrder
from msfusion_ray.registry import Registry
from msfusion_ray.splitting.index_map import widths_of
from msfusion_ray.training.local import train_local
from msfusion_ray.training.objective import LocalObjective, ObjectiveContext, make_objective
from msfusion_ray.validation import build


class TaskTimeout(Exception):
    """The task ran past runtime.task_timeout_s (measured from its own start)."""


@dataclass
class ProcedureContext:
    order: WorkOrder
    family: ModelFamily  # the global model's family
    data: DataBundle
    indices: np.ndarray  # the participant's samples in the training split
    training: TrainingConfig
    lr: float
    seed: list[int]  # (run seed, *order.seed_key, participant): what every random draw of the task derives from
    step_costs: StepCostCache
    planner: Callable[[LocalObjective | None], FootprintPlanner]  # footprint planners by objective (shared per host)
    fetch: Callable[[], Weights]  # the payload; fetched only once the work is known to fit
    state: dict[str, Any] = field(default_factory=dict)
    check_deadline: Callable[[], None] = lambda: None  # raises TaskTimeout; call it between steps
    device: torch.device = torch.device("cpu")  # where the host trains (weights still arrive and leave as numpy)
    modules: ModulePool | None = None  # the host's built modules, reused by shape (None: build one per task)


@dataclass(frozen=True)
class PlannedTask:
    """All a driver knows of a task before it sends it: what `memory_phases` may read (a ProcedureContext has it
    too), so that the driver knows which tasks its participants will refuse."""

    order: WorkOrder
    family: ModelFamily
    training: TrainingConfig
    planner: Callable[[LocalObjective | None], FootprintPlanner]


MemoryContext = PlannedTask | ProcedureContext


@dataclass(frozen=True)
class MemoryPhase:
    name: str
    planned_bytes: int


def refused_phase(phases: list[MemoryPhase], cap_bytes: int) -> MemoryPhase | None:
    """The first phase of the work that does not fit the cap (the footprint a cap holds, where the device has a
    need model: devices.memory_need.plannable_bytes): the memory guard refuses the task for it."""
    return next((phase for phase in phases if phase.planned_bytes > cap_bytes), None)


def refusal_text(phase: MemoryPhase, need: MemoryNeed | None, cap_bytes: int) -> str:
    """Why the guard refused: the phase's footprint, or the need its device's model makes of it, against the cap."""
    if need is None:
        return f"{phase.name} needs {phase.planned_bytes / 2**20:.1f} MiB, cap {cap_bytes / 2**20:.1f} MiB"
    return (f"{phase.name} needs {need.need_bytes(phase.planned_bytes) / 2**20:.1f} MiB ({need.scale:g} x its "
            f"footprint of {phase.planned_bytes / 2**20:.1f} MiB + {need.fixed_mib:g} MiB), "
            f"cap {cap_bytes / 2**20:.1f} MiB")


@dataclass
class ProcedureResult:
    payload: Weights  # what goes back to the driver
    samples: int
    steps: int
    flops: int
    bytes_down: int  # arrays received
    peak_tensor_bytes: int = 0
    task_loss: float = float("nan")
    extra_loss: float = float("nan")
    wall_setup_s: float = 0.0
    wall_train_s: float = 0.0
    wall_serialize_s: float = 0.0
    wall_measuring_s: float = 0.0  # of wall_train_s, what measuring (not training) took: see training.local
    trained: dict[str, Any] = field(default_factory=dict)  # what the participant actually trained, if it chose
    metrics: dict[str, float] = field(default_factory=dict)


class LocalProcedure(ABC):
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any):
        self.params = params

    @abstractmethod
    def memory_phases(self, context: MemoryContext) -> list[MemoryPhase]:
        """The planned footprint of each phase of the work, checked against the cap before anything starts (from
        the order and planners alone: a driver asks too, to know which tasks will be refused)."""

    @abstractmethod
    def run(self, context: ProcedureContext) -> ProcedureResult:
        """Do the work."""

    def predict_flops(self, family: ModelFamily, order: WorkOrder, batch_sizes: list[int],
                      step_flops: TrainingStepFlops) -> int | None:
        """The FLOPs `run` will count for this order, if they are known before it runs (None: not predictable)."""
        return None


# Procedures are declared in msfusion_ray.procedures, one file each; the registry finds them there.
PROCEDURES: Registry[type[LocalProcedure]] = Registry("local procedure", "procedure",
                                                      ("msfusion_ray.procedures",))
register_procedure = PROCEDURES.register


def make_procedure(spec: ProcedureSpec) -> LocalProcedure:
    cls = PROCEDURES.get(spec.name)
    return cls(build(cls.Params, dict(spec.params), f"procedure {spec.name}"))


def selection_bytes(selection: Mapping[str, np.ndarray] | None) -> int:
    """Bytes of the unit indices a participant receives with its sub-model."""
    return sum(np.asarray(v).nbytes for v in (selection or {}).values())


@register_procedure("standard")
class StandardProcedure(LocalProcedure):
    """Train the sub-model it is sent (its width selection) with the scheme's local objective, and send the
    trained weights back."""

    @staticmethod
    def _objective(order: WorkOrder) -> LocalObjective | None:
        return make_objective(order.objective.name, order.objective.params) if order.objective else None

    def memory_phases(self, context: MemoryContext) -> list[MemoryPhase]:
        planner = context.planner(self._objective(context.order))
        widths = widths_of(context.family.spec, context.order.selection)
        return [MemoryPhase("training", planner.footprint(widths, context.training.batch_size).total)]

    def predict_flops(self, family: ModelFamily, order: WorkOrder, batch_sizes: list[int],
                      step_flops: TrainingStepFlops) -> int | None:
        if order.objective is not None:  # an objective's extra passes are its own business
            return None
        widths = widths_of(family.spec, order.selection)
        return sum(step_flops.flops(widths, size) for size in batch_sizes)

    def run(self, context: ProcedureContext) -> ProcedureResult:
        started = time.perf_counter()
        order, family = context.order, context.family
        objective = self._objective(order)
        widths = widths_of(family.spec, order.selection)
        received = context.fetch()
        shape = family.shape_key(widths)
        build = lambda: family.build(widths)  # noqa: E731
        model = context.modules.take(shape, build) if context.modules is not None else build()
        load_weights(model, received)
        if context.device.type != "cpu":
            model.to(context.device)
        objective_context = ObjectiveContext(order.base_version + 1, family, order.selection, received, context.state)
        if objective is not None:
            objective.begin(model, objective_context)
        setup_done = time.perf_counter()
        local = train_local(model, context.data, context.indices, context.training, context.lr,
                            np.random.default_rng(context.seed), context.step_costs, shape, objective,
                            on_step=context.check_deadline)
        if objective is not None:
            objective.end(model, objective_context)
        train_done = time.perf_counter()
        payload = to_weights(model)
        if context.modules is not None:
            context.modules.give_back(shape, model)
        return ProcedureResult(
            payload=payload, samples=local.samples, steps=local.steps, flops=local.flops,
            bytes_down=payload_bytes(received) + selection_bytes(order.selection),
            peak_tensor_bytes=local.peak_tensor_bytes, task_loss=local.task_loss,
            extra_loss=local.extra_loss if objective is not None else float("nan"),
            wall_setup_s=setup_done - started, wall_train_s=train_done - setup_done,
            wall_serialize_s=time.perf_counter() - train_done, wall_measuring_s=local.wall_measuring_s)
