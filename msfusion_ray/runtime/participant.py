"""One participant held to its device: memory guard, training, cost measurement, virtual clock.

This is plain Python (no Ray): a host actor keeps one `ParticipantWorker` per participant it hosts, with the
participant's data shard, virtual clock and objective state, and calls `run` once per round. Whatever happens
inside a round (work that does not fit, a failure in training) comes back as a recorded outcome, never as an
exception that would stop the run.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from msfusion_ray.config import TrainingConfig
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.costs.footprint import FootprintPlanner
from msfusion_ray.costs.memory import rss_peak
from msfusion_ray.costs.payload import payload_bytes
from msfusion_ray.data.arrays import DataBundle
from msfusion_ray.devices.capacity import make_planner
from msfusion_ray.devices.clock import VirtualClock, device_time, pace
from msfusion_ray.devices.memory_guard import MemoryGuard
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.weights import Weights, load_weights, to_weights
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.splitting.index_map import widths_of
from msfusion_ray.strategies.base import TrainTask
from msfusion_ray.training.local import train_local
from msfusion_ray.training.objective import ObjectiveContext, make_objective


@dataclass(frozen=True)
class ParticipantSpec:
    id: int
    device: DeviceProfile
    memory_cap_bytes: int
    indices: np.ndarray  # its samples in the training split


@dataclass(frozen=True)
class WorkerSettings:
    run_id: str
    host: int
    seed: int
    training: TrainingConfig
    clock: str = "virtual"  # or "real": sleep until wall time matches device time


class PlannerCache:
    """Footprint planners by local objective, shared by the participants of a host. A footprint depends on the
    sub-model's shape, the batch size and the objective, not on whose memory it must fit, so it is measured once
    per host instead of once per participant (at 1000 participants that was a forward pass in every
    participant's first round)."""

    def __init__(self, family: ModelFamily, training: TrainingConfig):
        self._family = family
        self._training = training
        self._planners: dict[str | None, FootprintPlanner] = {}

    def planner(self, objective) -> FootprintPlanner:  # noqa: ANN001 (LocalObjective | None)
        key = objective.name if objective is not None else None
        if key not in self._planners:
            self._planners[key] = make_planner(self._family, self._training, objective)
        return self._planners[key]


def seed_torch(seed: int) -> None:
    """Seed the generators training draws from. `torch.manual_seed` also queues a seed for every accelerator
    backend, capturing a stack trace each time (about 1 ms, paid per participant per round); on a CPU-only host
    the CPU generator is all there is."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class ParticipantWorker:
    def __init__(self, spec: ParticipantSpec, family: ModelFamily, data: DataBundle, settings: WorkerSettings,
                 step_costs: StepCostCache, planners: PlannerCache | None = None):
        self.spec = spec
        self.family = family
        self.data = data
        self.settings = settings
        self.step_costs = step_costs
        self.planners = planners if planners is not None else PlannerCache(family, settings.training)
        self.clock = VirtualClock()
        self.state: dict = {}  # what the local objective keeps between rounds

    def _guard(self, objective) -> MemoryGuard:  # noqa: ANN001 (LocalObjective | None)
        return MemoryGuard(self.spec.memory_cap_bytes, self.planners.planner(objective))

    def _row(self, round_idx: int, task: TrainTask, status: str, **values) -> ParticipantRoundRow:
        return ParticipantRoundRow(run_id=self.settings.run_id, round=round_idx, participant=self.spec.id,
                                   device=self.spec.device.name, host=self.settings.host, status=status,
                                   rate=task.rate, mem_cap_bytes=self.spec.memory_cap_bytes,
                                   device_clock_s=self.clock.now_s, **values)

    def run(self, round_idx: int, task: TrainTask, fetch_payload: Callable[[], Weights],
            lr: float) -> tuple[ParticipantRoundRow, Weights | None]:
        started = time.perf_counter()
        try:
            return self._run(round_idx, task, fetch_payload, lr, started)
        except Exception as err:  # a failed participant is an outcome, not a crashed run
            last = traceback.extract_tb(err.__traceback__)[-1]
            message = f"{type(err).__name__}: {err} ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})"
            return self._row(round_idx, task, "error", message=message[:500],
                             wall_total_s=time.perf_counter() - started), None

    def _run(self, round_idx: int, task: TrainTask, fetch_payload: Callable[[], Weights], lr: float,
             started: float) -> tuple[ParticipantRoundRow, Weights | None]:
        training = self.settings.training
        objective = make_objective(task.objective.name, task.objective.params) if task.objective else None
        widths = widths_of(self.family.spec, task.selection)
        verdict = self._guard(objective).check(widths, training.batch_size)
        if not verdict.fits and not self.spec.device.native:
            latency = device_time(self.spec.device, 0, 0, 0).latency_s
            self.clock.advance(latency)
            return self._row(round_idx, task, "oom", mem_planned_bytes=verdict.planned_bytes,
                             device_comm_s=latency, device_time_s=latency,
                             message=f"needs {verdict.planned_bytes / 2**20:.1f} MiB, cap "
                                     f"{verdict.cap_bytes / 2**20:.1f} MiB",
                             wall_total_s=time.perf_counter() - started), None

        seed = [self.settings.seed, round_idx, self.spec.id]
        seed_torch(int(np.random.default_rng(seed).integers(2**31)))
        with rss_peak() as rss:
            received = fetch_payload()
            model = self.family.build(widths)
            load_weights(model, received)
            context = ObjectiveContext(round_idx, self.family, task.selection, received, self.state)
            if objective is not None:
                objective.begin(model, context)
            setup_done = time.perf_counter()
            local = train_local(model, self.data, self.spec.indices, training, lr, np.random.default_rng(seed),
                                self.step_costs, self.family.shape_key(widths), objective)
            if objective is not None:
                objective.end(model, context)
            train_done = time.perf_counter()
            weights = to_weights(model)
        serialise_done = time.perf_counter()

        selection_bytes = sum(np.asarray(v).nbytes for v in (task.selection or {}).values())
        bytes_down = payload_bytes(received) + selection_bytes
        bytes_up = payload_bytes(weights)
        spent = device_time(self.spec.device, local.flops, bytes_down, bytes_up)
        if self.spec.device.native:  # the node is the device: its compute time is what it measured
            spent = replace(spent, compute_s=train_done - setup_done)
        self.clock.advance(spent.total_s)
        message = ""
        if self.settings.clock == "real":
            message = pace(spent.total_s, time.perf_counter() - started).warning(self.spec.device.name) or ""
        row = self._row(
            round_idx, task, "ok", samples=local.samples, steps=local.steps,
            tokens=local.samples * self.data.tokens_per_sample, flops=local.flops,
            bytes_down=bytes_down, bytes_up=bytes_up,
            wall_setup_s=setup_done - started, wall_train_s=train_done - setup_done,
            wall_serialize_s=serialise_done - train_done, wall_total_s=time.perf_counter() - started,
            device_compute_s=spent.compute_s, device_comm_s=spent.communication_s, device_time_s=spent.total_s,
            mem_planned_bytes=verdict.planned_bytes, mem_peak_rss_bytes=rss.delta_bytes,
            mem_peak_tensor_bytes=local.peak_tensor_bytes, train_loss=local.task_loss,
            extra_loss=local.extra_loss if objective is not None else float("nan"), message=message,
        )
        return row, weights

    def export_state(self) -> dict:
        return {"clock_s": self.clock.now_s, "state": self.state}

    def import_state(self, exported: dict) -> None:
        self.clock = VirtualClock(exported["clock_s"])
        self.state = exported["state"]
