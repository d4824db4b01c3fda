"""The engine contract: how work flows among actors and when the global model changes.

A strategy says what is trained and how updates combine; the engine it names (`strategy.engine`) moves the work:
synchronous rounds (`sync`), a buffered-asynchronous event loop on the virtual clock (`async`), a pipeline of
actors (`pipeline`). The Runner keeps what every engine shares (hosts, records, evaluation, checkpoints, progress)
and consumes the engine's steps: a step is whatever ends with a new global model (a round, an aggregation of the
buffer, a pipeline epoch). Between steps the Runner may checkpoint; the engine's `state_dict` must then hold
everything needed to continue exactly (docs/engines.md).
"""

from __future__ import annotations

import functools
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from msfusion_ray.config import ExperimentConfig
from msfusion_ray.devices.availability import Availability
from msfusion_ray.devices.timeline import VirtualTimeline
from msfusion_ray.experiment.prepare import Experiment
from msfusion_ray.models.weights import Weights
from msfusion_ray.procedures.base import PlannedTask, make_procedure
from msfusion_ray.procedures.orders import WorkOrder
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.registry import Registry
from msfusion_ray.runtime.engines.dispatch import Executor
from msfusion_ray.runtime.participant import PlannerCache
from msfusion_ray.strategies.base import ParticipantInfo, Strategy


@dataclass
class Step:
    """One boundary of the run: the global model after it and the records of the work that ended in it."""

    index: int  # 1-based: the round, aggregation or epoch number
    rows: list[ParticipantRoundRow]
    weights: Weights
    metrics: dict[str, float]  # the strategy's (and the engine's) figures for this step
    vt_start: float  # virtual time of the previous step's end
    vt_end: float  # virtual time of this step's aggregation
    wall_s: float  # wall seconds the engine spent on it
    utilisation: float = float("nan")  # device seconds worked within the step / (its length x participants)


@dataclass
class EngineContext:
    """What the Runner hands every engine."""

    experiment: Experiment
    executor: Executor  # the host actors (RayHosts)
    run_id: str
    timeline: VirtualTimeline
    availability: Availability
    infos: Sequence[ParticipantInfo] = ()  # by participant id (the prepared experiment's table)

    @property
    def config(self) -> ExperimentConfig:
        return self.experiment.config

    @property
    def strategy(self) -> Strategy:
        return self.experiment.strategy

    def device_of(self, participant: int) -> str:
        return self.experiment.fleet.profile(participant).name

    @functools.cached_property
    def planners(self) -> PlannerCache:
        """Footprint planners as the hosts have them (what a task was planned at, where its host cannot say)."""
        return PlannerCache(self.experiment.family, self.config.training)

    def lr(self, step: int) -> float:
        """The learning rate of step t: lr * lr_decay^(t-1)."""
        training = self.config.training
        return training.lr * training.lr_decay ** (step - 1)

    def out_of_time(self, vt: float) -> bool:
        budget = self.config.time_budget_s
        return budget is not None and vt >= budget


class Engine(ABC):
    name: ClassVar[str] = ""

    def __init__(self, context: EngineContext, weights: Weights):
        self.context = context
        self.weights = weights
        self.tasks_issued = 0
        # per participant: its last task the engine aggregated (or accepted); -1: none yet
        self.consumed = np.full(len(context.experiment.fleet), -1, dtype=np.int64)

    @abstractmethod
    def steps(self, start: int) -> Iterator[Step]:
        """Steps `start`, `start` + 1, ... until `config.rounds` or the virtual time budget."""

    def next_task(self) -> int:
        self.tasks_issued += 1
        return self.tasks_issued - 1

    def state_from(self, participant: int) -> int:
        return int(self.consumed[participant])

    def consumed_tasks(self) -> dict[int, int]:
        """The participants the engine aggregated work of, each with its last such task."""
        ids = np.flatnonzero(self.consumed >= 0)
        return dict(zip(ids.tolist(), self.consumed[ids].tolist()))

    def at_step_boundary(self) -> bool:
        """Whether the engine is where its last step left it (a checkpoint now continues exactly)."""
        return True

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What a checkpoint between steps must keep: JSON-able values and arrays. The per-participant tables go
        sparse: only the participants that worked."""
        ids = np.flatnonzero(self.consumed >= 0)
        return {"tasks_issued": self.tasks_issued}, {"consumed_ids": ids, "consumed_tasks": self.consumed[ids],
                                                     **self.context.timeline.state_arrays()}

    def load_state_dict(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.tasks_issued = int(values["tasks_issued"])
        if "consumed" in values:  # a checkpoint written before the tables were arrays: JSON by participant
            busy = values.get("timeline", {}).get("busy_s", {})
            arrays = {"consumed_ids": [int(k) for k in values["consumed"]],
                      "consumed_tasks": list(values["consumed"].values()),
                      "busy_ids": [int(k) for k in busy], "busy_s": list(busy.values()), **arrays}
        self.consumed[:] = -1
        self.consumed[np.asarray(arrays["consumed_ids"], dtype=np.int64)] = arrays["consumed_tasks"]
        self.context.timeline.load_arrays(arrays)


def absent_row(context: EngineContext, step: int, participant: int, vt: float) -> ParticipantRoundRow:
    return ParticipantRoundRow(run_id=context.run_id, round=step, participant=participant,
                               device=context.device_of(participant), host=int(context.executor.host_of[participant]),
                               status="unavailable", vt_start=vt, vt_end=vt)


def lost_row(context: EngineContext, step: int, order: WorkOrder, status: str, message: str) -> ParticipantRoundRow:
    """A task that never came back (its host failed or stopped answering)."""
    return ParticipantRoundRow(run_id=context.run_id, round=step, participant=order.participant,
                               device=context.device_of(order.participant),
                               host=int(context.executor.host_of[order.participant]), status=status, rate=order.rate,
                               task=order.task, base_version=order.base_version, vt_start=order.vt_start,
                               vt_end=order.vt_start, message=message[:500])


def killed_row(context: EngineContext, step: int, order: WorkOrder, message: str) -> ParticipantRoundRow:
    """A task the kernel killed at its host's memory limit (`oom`, `oom_source: kernel`), with what the host had
    set and planned for it: the participant's cap, the limit and CPU quota its group still has (the host died
    before lifting them), the baseline under the cap, and the planner's footprint of the work."""
    row = lost_row(context, step, order, "oom", message)
    row.oom_source = "kernel"
    row.mem_cap_bytes = int(context.experiment.fleet.memory_caps[order.participant])
    limits = context.executor.killed_limits(row.host)
    row.cpu_quota, row.mem_limit_bytes = limits.cpu_quota, limits.memory_limit_bytes
    row.mem_baseline_bytes = max(0, limits.memory_limit_bytes - row.mem_cap_bytes) if limits.memory_limit_bytes else 0
    planned = PlannedTask(order, context.experiment.family, context.config.training, context.planners.planner)
    row.mem_planned_bytes = max(phase.planned_bytes for phase in make_procedure(order.procedure).memory_phases(planned))
    return row


def drop_at(row: ParticipantRoundRow, end_s: float) -> None:
    """The device went off at `end_s` while it worked: the work is lost. A task runs download (after the
    latency), compute, upload; what it spent of each until then is counted, FLOPs pro rata of the compute."""
    spent = max(0.0, end_s - row.vt_start)
    latency = row.device_comm_s - row.device_download_s - row.device_upload_s
    download = min(spent, latency + row.device_download_s)
    compute = min(spent - download, row.device_compute_s)
    upload = min(spent - download - compute, row.device_upload_s)
    message = f"went off at virtual time {end_s:.1f} s, {spent:.1f} of {row.device_time_s:.1f} s into its work"
    row.flops = int(row.flops * compute / row.device_compute_s) if row.device_compute_s > 0 else 0
    row.status, row.message, row.vt_end = "dropped", message, end_s
    row.device_download_s = max(0.0, download - latency)
    row.device_compute_s, row.device_upload_s = compute, upload
    row.device_comm_s, row.device_time_s = download + upload, spent
    row.bytes_up = int(row.bytes_up * upload / row.device_upload_s) if upload > 0 else 0


def hold_until(rows: list[ParticipantRoundRow], release_s: float,
               held: Callable[[ParticipantRoundRow], bool] | None = None) -> None:
    """Devices that worked in a step and then waited for it to end (a round's barrier, the buffer's aggregation at
    `release_s`): their idle seconds. `held(row)` picks them (default: every task that was not lost to the device
    going off)."""
    for row in rows:
        waits = held(row) if held is not None else row.task >= 0 and row.status not in ("unavailable", "dropped")
        if waits and not math.isnan(row.vt_end):
            row.device_wait_s = max(0.0, release_s - row.vt_end)


def wall_clock() -> float:
    return time.time()


ENGINES: Registry[type[Engine]] = Registry("engine", "strategy engine", ("msfusion_ray.runtime.engines",))
register_engine = ENGINES.register


def make_engine(name: str, context: EngineContext, weights: Weights) -> Engine:
    if name not in ENGINES:  # the strategy's choice, not the user's: a programming error
        raise ValueError(f"strategy asks for engine '{name}' (known: {', '.join(ENGINES.names())})")
    return ENGINES.get(name)(context, weights)
