"""Host actors: the Ray processes that hold participants.

A host keeps a `ParticipantWorker` (data shard, what its procedure remembers) for every participant assigned to it
that has worked on it (made at its first task: a million registered participants, of whom a thousand train a
round, cost a host only those who trained) and carries out their work orders one after another. By default each
participant has its own host; for large fleets a bounded pool of hosts carries many participants each. Assignment
is sticky, so a participant's state never moves.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import ray
import torch

from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.devices.enforcement import HostLimits
from msfusion_ray.devices.gpu import host_gpu, release_cuda_memory
from msfusion_ray.experiment.shipment import Packed, opened
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.pool import ModulePool
from msfusion_ray.models.weights import Weights
from msfusion_ray.runtime.actor_classes import ByReference
from msfusion_ray.runtime.participant import ParticipantWorker, PlannerCache, Result, WorkerSettings
from msfusion_ray.runtime.settings import ParticipantSpecs
from msfusion_ray.strategies.base import WorkOrder
from msfusion_ray.training.evaluate_shards import Chunk, evaluate_chunks


class Host:
    def __init__(self, host_id: int, family: ModelFamily | Packed, data: ByReference, participants: ParticipantSpecs,
                 settings: WorkerSettings, threads: int, fetch_timeout_s: float):
        """`family` and `data` may come `Packed` (msfusion_ray.experiment.shipment). An enforced host joins its
        control group first, so that what it allocates from then on is charged there."""
        plan = settings.enforcement
        self.limits = HostLimits(plan, host_id, settings.generation) if plan is not None else None
        torch.set_num_threads(threads)
        self.gpu = host_gpu(settings.device, settings.device_required, settings.gpu_share, host_id)
        self.host_id = host_id
        self.fetch_timeout_s = fetch_timeout_s
        self.family = family = opened(family)
        self.data = data.fetch(fetch_timeout_s)
        self.participants = participants
        self.settings = settings
        self.costs = StepCostCache()  # shared by the host's participants: same shapes cost the same
        self.planners = PlannerCache(family, settings.training)  # and need the same memory
        # and train in the same modules (not an enforced host: modules kept between tasks would hold its memory)
        self.modules = ModulePool() if self.limits is None else None
        self.workers: dict[int, ParticipantWorker] = {}
        # After a resume or a replacement: a participant of whom the checkpoint holds nothing had an empty memory
        # then, whatever task its next order names.
        self.carried_over = False

    def worker(self, participant: int) -> ParticipantWorker:
        """The participant's worker, made the first time it is needed."""
        worker = self.workers.get(participant)
        if worker is None:
            spec = self.participants.spec_of(participant)
            if spec is None:
                raise KeyError(f"participant {participant} is not on host {self.host_id}")
            worker = ParticipantWorker(spec, self.family, self.data, self.settings, self.costs, self.planners,
                                       gpu=self.gpu, modules=self.modules, limits=self.limits)
            if self.carried_over:
                worker.restored = {}
            self.workers[participant] = worker
        return worker

    def ping(self) -> int:
        return self.host_id

    def node(self) -> str:
        """The address of the node it runs on (for the records of a failure)."""
        return ray.util.get_node_ip_address()

    def describe(self) -> dict[str, Any]:
        """What the host trains on, for its records: the device, and the GPU share it holds."""
        context, gpu = ray.get_runtime_context(), self.gpu
        ray_gpus = f"{context.get_node_id()[:12]}:{','.join(str(i) for i in ray.get_gpu_ids())}"
        return {"host": self.host_id, "device": gpu.device.type if gpu is not None else "cpu",
                "gpu": gpu.uuid if gpu is not None and gpu.uuid else ray_gpus,
                "gpu_name": gpu.name if gpu is not None else "",
                "gpu_fraction": float(context.get_assigned_resources().get("GPU", 0.0)),
                "gpu_budget_bytes": gpu.budget_bytes if gpu is not None else 0}

    def run(self, tasks: list[WorkOrder], payloads: list[ray.ObjectRef], lrs: list[float]) -> list[Result]:
        """Carry out work orders one after another, each with its payload and learning rate. The payload refs come
        in a list, unresolved: each is fetched the first time a participant's memory guard lets work on it start,
        and once for the whole call."""
        fetched: dict[ray.ObjectRef, Weights] = {}

        def fetch(ref: ray.ObjectRef) -> Weights:
            if ref not in fetched:
                fetched[ref] = ray.get(ref, timeout=self.fetch_timeout_s)
            return fetched[ref]

        return [self.worker(task.participant).run(task, functools.partial(fetch, ref), lr)
                for task, ref, lr in zip(tasks, payloads, lrs)]

    def evaluate(self, weights: Weights, chunks: list[Chunk], calibration: np.ndarray, batch_size: int,
                 calibration_batch_size: int) -> tuple[list[dict[str, float]], float]:
        """The global model's figures on this host's share of the evaluation, and the seconds it took."""
        started = time.perf_counter()
        if not chunks:
            return [], 0.0
        evaluate = lambda device: evaluate_chunks(self.family, self.data, weights, chunks, calibration,  # noqa: E731
                                                  batch_size, calibration_batch_size, device)
        try:
            parts = evaluate(self.gpu.device if self.gpu is not None else None)
        except torch.OutOfMemoryError:  # the GPU is full (hosts share it): the CPU can always evaluate
            release_cuda_memory()
            parts = evaluate(None)
        return parts, time.perf_counter() - started

    def export_state(self, tasks: dict[int, int]) -> dict[int, Any]:
        """The memory of each hosted participant in `tasks` as of its task there (its last aggregated one), for
        those whose memory holds anything (a checkpoint keeps only those)."""
        exported = {pid: self.workers[pid].export_state(task) for pid, task in tasks.items() if pid in self.workers}
        return {pid: entry for pid, entry in exported.items() if entry["state"]}

    def import_state(self, states: dict[int, Any]) -> None:
        """A resumed run's participants, as its checkpoint saved them (only those whose memory held anything)."""
        self.carried_over = True
        for pid, state in states.items():
            self.worker(pid).import_state(state)

    def restore_state(self, states: dict[int, Any]) -> None:
        """A replacement host's participants, as saved before the previous host died (only those whose memory
        held anything; the others start empty)."""
        self.carried_over = True
        for pid, state in states.items():
            self.worker(pid).restore_state(state)
