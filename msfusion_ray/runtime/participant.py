"""One participant held to its device: memory guard, the local procedure, cost measurement, device time.

This is plain Python (no Ray): a host actor keeps one `ParticipantWorker` per participant it hosts, with the
participant's data shard and what its procedure remembers between tasks, and calls `run` once per work order.
Whatever happens inside a task (work that does not fit, a failure in training, a task that overruns its time)
comes back as a recorded outcome, never as an exception that would stop the run.

The participant's memory is kept per task: each task starts from the state the task named in its order
(`state_from`, the participant's last task the driver aggregated) and leaves its own. A task the driver never
aggregated (timed out, dropped, lost with a host) therefore never advances what later tasks see.
"""

from __future__ import annotations

import contextlib
import copy
import time
import traceback
from typing import Callable

import numpy as np
import torch

from msfusion_ray.config import TrainingConfig
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.costs.footprint import FootprintPlanner
from msfusion_ray.costs.memory import cuda_peak, rss_peak
from msfusion_ray.costs.payload import payload_bytes
from msfusion_ray.data.arrays import DataBundle
from msfusion_ray.devices.capacity import make_planner
from msfusion_ray.devices.clock import (TaskSpeed, pace_until, refusal_device_s, task_compute_s, task_speed,
                                       with_compute)
from msfusion_ray.devices.enforcement import HostLimits, TaskLimits
from msfusion_ray.devices.gpu import GpuWindow, HostGpu, release_cuda_memory
from msfusion_ray.devices.memory_need import plannable_bytes
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.pool import ModulePool
from msfusion_ray.models.weights import Weights
from msfusion_ray.procedures.base import ProcedureContext, TaskTimeout, make_procedure, refusal_text, refused_phase
from msfusion_ray.procedures.orders import WorkOrder
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.runtime.settings import ParticipantSpec, WorkerSettings
from msfusion_ray.training.objective import LocalObjective


Result = tuple[ParticipantRoundRow, Weights | None, dict]  # a task's record, its update, what it chose to train


class PlannerCache:
    """Footprint planners by local objective, shared by the participants of a host. A footprint depends on the
    sub-model's shape, the batch size and the objective, not on whose memory it must fit, so it is measured once
    per host instead of once per participant (at 1000 participants that was a forward pass in every
    participant's first round)."""

    def __init__(self, family: ModelFamily, training: TrainingConfig):
        self._family = family
        self._training = training
        self._planners: dict[str | None, FootprintPlanner] = {}

    def planner(self, objective: LocalObjective | None) -> FootprintPlanner:
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


def deadline_check(started: float, limit_s: float, clock: Callable[[], float]) -> Callable[[], None]:
    def check() -> None:
        if clock() - started > limit_s:
            raise TaskTimeout(f"ran past runtime.task_timeout_s={limit_s:g} s of its own")
    return check


class ParticipantWorker:
    def __init__(self, spec: ParticipantSpec, family: ModelFamily, data: DataBundle, settings: WorkerSettings,
                 step_costs: StepCostCache, planners: PlannerCache | None = None,
                 clock: Callable[[], float] = time.perf_counter, gpu: HostGpu | None = None,
                 modules: ModulePool | None = None, limits: HostLimits | None = None):
        self.spec = spec
        self.limits = limits  # enforced devices: the host's control group (None: virtual)
        self.gpu = gpu  # the host's GPU share (None: it trains on CPU)
        self.device = gpu.device if gpu is not None else torch.device("cpu")
        self.modules = modules if gpu is None else None  # on a GPU share, modules kept between tasks would hold it
        self.clock = clock
        self.family = family
        self.data = data
        self.settings = settings
        self.step_costs = step_costs
        self.planners = planners if planners is not None else PlannerCache(family, settings.training)
        self.states: dict[int, dict] = {-1: {}}  # what the procedure remembers, after each task (by task number)
        self.restored: dict | None = None  # after its host died: the state it was restored to (see `restore_state`)

    def _row(self, task: WorkOrder, status: str, **values) -> ParticipantRoundRow:
        return ParticipantRoundRow(run_id=self.settings.run_id, round=task.base_version + 1, participant=self.spec.id,
                                   device=self.spec.device.name, host=self.settings.host, status=status,
                                   task=task.task, base_version=task.base_version, rate=task.rate,
                                   mem_cap_bytes=self.spec.memory_cap_bytes, vt_start=task.vt_start,
                                   predicted_device_s=(task.predicted_device_s if task.predicted_device_s is not None
                                                       else float("nan")), **values)

    def run(self, task: WorkOrder, fetch_payload: Callable[[], Weights],
            lr: float) -> Result:
        """(record, payload or None, what the participant chose to train)."""
        started = self.clock()
        try:
            return self._run(task, fetch_payload, lr, started)
        except TaskTimeout as err:
            return self._row(task, "timeout", message=str(err), wall_total_s=self.clock() - started), None, {}
        except Exception as err:  # a failed participant is an outcome, not a crashed run
            last = traceback.extract_tb(err.__traceback__)[-1]
            message = f"{type(err).__name__}: {err} ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})"
            return self._row(task, "error", message=message[:500], wall_total_s=self.clock() - started), None, {}

    def _state_for(self, task: WorkOrder) -> dict:
        if task.state_from not in self.states:
            if self.restored is not None:  # the state of that task died with the previous host
                return copy.copy(self.restored)
            raise RuntimeError(f"participant {self.spec.id} has no state of task {task.state_from}")
        for older in [t for t in self.states if t < task.state_from]:
            del self.states[older]  # the driver aggregated a later task: nothing will start from these again
        return copy.copy(self.states[task.state_from])

    def _run(self, task: WorkOrder, fetch_payload: Callable[[], Weights], lr: float,
             started: float) -> Result:
        procedure = make_procedure(task.procedure)
        seed = [self.settings.seed, *task.seed_key, self.spec.id]
        context = ProcedureContext(task, self.family, self.data, self.spec.indices, self.settings.training, lr, seed,
                                   self.step_costs, self.planners.planner, fetch_payload, self._state_for(task),
                                   deadline_check(started, self.settings.task_timeout_s, self.clock),
                                   device=self.device, modules=self.modules)
        phases = procedure.memory_phases(context)
        planned = max(phase.planned_bytes for phase in phases)
        need = self.spec.device.memory_need
        need = need.of(self.family.name) if need is not None else None
        phase = refused_phase(phases, plannable_bytes(self.spec.memory_cap_bytes, need))
        if phase is not None and self._planner_guards():
            return self._out_of_memory(task, planned, started, refusal_text(phase, need, self.spec.memory_cap_bytes))
        over_share = [phase for phase in phases if self.gpu is not None and phase.planned_bytes > self.gpu.budget_bytes]
        if over_share:  # hosts that share a GPU never plan more than it holds
            phase = over_share[0]
            return self._out_of_memory(task, planned, started, f"{phase.name} needs {phase.planned_bytes / 2**20:.1f} "
                                                              f"MiB, its host's share of the GPU "
                                                              f"{self.gpu.budget_bytes / 2**20:.1f} MiB")

        seed_torch(int(np.random.default_rng(seed).integers(2**31)))
        ran_out = None
        self.step_costs.begin_tally()
        try:
            with rss_peak() as rss, cuda_peak(self.device) as gpu_peak, self._gpu_window() as gpu_use, \
                    self._limits() as limits:
                result = procedure.run(context)
        except torch.OutOfMemoryError as err:  # real memory ran out below the plan: an outcome, like the guard's
            ran_out = f"out of memory on {self.device.type}: {str(err).splitlines()[0][:300]}"
        if ran_out is not None:
            release_cuda_memory()  # once the error and the frames it kept are gone
            return self._out_of_memory(task, planned, started, ran_out, source="allocator")

        bytes_up = payload_bytes(result.payload)
        device = self.spec.profile()
        speed = task_speed(device, self.settings.seed, self.spec.id, task.task)
        predicted_s = self._predicted_compute_s(device, result.flops, speed)
        compute_s = self._measured_compute_s(result) if self._measures() else predicted_s
        spent = with_compute(device, compute_s, result.bytes_down, bytes_up, speed)
        total_s = spent.total_s
        message = ""
        if self.settings.clock == "real" and task.wall_anchor is not None:
            wall_0, vt_0 = task.wall_anchor
            message = pace_until(wall_0 + task.vt_start + total_s - vt_0).warning(self.spec.device.name) or ""
        self.states[task.task] = context.state
        row = self._row(
            task, "ok", samples=result.samples, steps=result.steps,
            tokens=result.samples * self.data.tokens_per_sample, flops=result.flops,
            bytes_down=result.bytes_down, bytes_up=bytes_up,
            wall_setup_s=result.wall_setup_s, wall_train_s=result.wall_train_s,
            wall_serialize_s=result.wall_serialize_s, wall_total_s=self.clock() - started,
            device_compute_s=compute_s, device_comm_s=spent.communication_s, device_time_s=total_s,
            device_download_s=spent.download_s, device_upload_s=spent.upload_s, vt_end=task.vt_start + total_s,
            mem_planned_bytes=planned, mem_peak_rss_bytes=rss.delta_bytes,
            mem_peak_tensor_bytes=result.peak_tensor_bytes, train_loss=result.task_loss,
            extra_loss=result.extra_loss, message=message, metrics=dict(result.metrics),
            mem_peak_gpu_bytes=gpu_peak.peak_bytes, gpu_samples=gpu_use.samples,
            gpu_total_bytes=gpu_use.total_bytes, gpu_used_bytes=gpu_use.used_max_bytes,
            gpu_util_pct=gpu_use.util_mean_pct, gpu_util_max_pct=gpu_use.util_max_pct,
            compute_s_predicted=predicted_s, cpu_quota=limits.cpu_quota, cpu_throttled_s=limits.throttled_s,
            mem_limit_bytes=limits.memory_limit_bytes, mem_baseline_bytes=limits.baseline_bytes,
            mem_peak_group_bytes=limits.peak_bytes,
        )
        return row, result.payload, result.trained

    def _planner_guards(self) -> bool:
        """Whether the planner refuses work over the cap: not on a native device (the node is the device), nor
        where an enforced device's memory limit alone decides (runtime.memory_guard: kernel)."""
        return not self.spec.device.native and (self.limits is None or self.limits.plan.memory_guard == "planner")

    def _measures(self) -> bool:
        """Whether compute time is measured (native and enforced devices) rather than predicted."""
        return self.spec.device.native or self.limits is not None

    def _measured_compute_s(self, result) -> float:  # noqa: ANN001 (ProcedureResult)
        """The wall time of training less what measuring its steps cost (each shape's first step runs under the
        FLOP counter and census); an enforced run slowed down by `slowdown` is scaled back to the device's."""
        seconds = max(0.0, result.wall_train_s - result.wall_measuring_s)
        return seconds / self.limits.plan.slowdown if self.limits is not None else seconds

    def _predicted_compute_s(self, device: DeviceProfile, flops: int, speed: TaskSpeed) -> float:
        """The run's time model on what the task computed (its steps as the census saw them); an enforced device
        without a calibration of its own is timed as the node's roofline at its speed, which is what it runs as."""
        device = self.limits.plan.timed_like_node(device) if self.limits is not None else device
        return task_compute_s(device, flops, self.step_costs.tally(), self.settings.time_model, speed)

    def _limits(self):  # noqa: ANN202 (a context manager of TaskLimits)
        if self.limits is None:
            return contextlib.nullcontext(TaskLimits())
        return self.limits.task(self.spec.profile(), self.spec.memory_cap_bytes)

    def _out_of_memory(self, task: WorkOrder, planned: int, started: float, message: str,
                       source: str = "planner") -> tuple[ParticipantRoundRow, None, dict]:
        """Work that does not fit: the device only answered (its latency), nothing trained, no state kept.
        `source`: who said so (the planner, or torch's allocator that ran out)."""
        latency_s = refusal_device_s(self.spec.profile())
        return self._row(task, "oom", oom_source=source, mem_planned_bytes=planned, device_comm_s=latency_s,
                         device_time_s=latency_s, vt_end=task.vt_start + latency_s, message=message,
                         wall_total_s=self.clock() - started), None, {}

    def _gpu_window(self) -> contextlib.AbstractContextManager[GpuWindow]:
        return self.gpu.window() if self.gpu is not None else contextlib.nullcontext(GpuWindow())

    def export_state(self, task: int) -> dict:
        """What a checkpoint keeps of this participant: its memory after `task` (its last aggregated one)."""
        if task not in self.states and self.restored is not None:
            return {"task": task, "state": self.restored}
        return {"task": task, "state": self.states[task]}

    def import_state(self, exported: dict) -> None:
        self.states = {int(exported["task"]): exported["state"]}

    def restore_state(self, exported: dict) -> None:
        """On a new host, after the previous one died: the participant's memory as saved (the last checkpoint's),
        which it starts its next task from whatever task that names, since what it did since died with the host."""
        self.import_state(exported)
        self.restored = exported["state"]
