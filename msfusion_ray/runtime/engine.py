"""The synchronous round engine: fan the round's tasks out to the hosts, fold updates in as they arrive.

Each distinct sub-model is extracted once and put in the object store once; tasks that share it share the ref.
Tasks go out a few per host at a time and updates are folded into the strategy's streaming accumulator in
arrival order, so driver memory does not grow with the number of participants in a round. A task that fails or
overruns the timeout becomes a recorded outcome.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping

import numpy as np
import ray
from ray.exceptions import RayError

from msfusion_ray.models.weights import Weights
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.runtime.hosts import HostPool
from msfusion_ray.splitting.index_map import extract, selection_fraction
from msfusion_ray.strategies.base import Strategy, TrainTask, Update

# Tasks queued at each host at once: one training while the next waits, so a host never idles on the driver.
DISPATCH_DEPTH = 2


@dataclass
class RoundResult:
    rows: list[ParticipantRoundRow]
    weights: Weights
    metrics: dict[str, float]


def selection_key(selection: Mapping[str, np.ndarray] | None) -> Hashable:
    if selection is None:
        return None
    return tuple((group, np.asarray(units).tobytes()) for group, units in sorted(selection.items()))


class PayloadStore:
    """One extraction and one object-store put per distinct sub-model in a round, kept until the last task that
    trains it is done: schemes that give every participant its own sub-model (random selections) then hold only
    the ones in flight, not one per participant of the round."""

    def __init__(self, strategy: Strategy, global_weights: Weights, tasks: list[TrainTask]):
        self._strategy = strategy
        self._weights = global_weights
        self._refs: dict[Hashable, ray.ObjectRef] = {}
        self._fractions: dict[Hashable, float] = {}
        self._remaining = Counter(selection_key(t.selection) for t in tasks)

    def ref(self, task: TrainTask) -> ray.ObjectRef:
        key = selection_key(task.selection)
        if key not in self._refs:
            self._refs[key] = ray.put(extract(self._weights, self._strategy.index_map(task)))
        return self._refs[key]

    def done(self, task: TrainTask) -> None:
        key = selection_key(task.selection)
        self._remaining[key] -= 1
        if self._remaining[key] == 0:
            self._refs.pop(key, None)

    def param_fraction(self, task: TrainTask) -> float:
        key = selection_key(task.selection)
        if key not in self._fractions:
            self._fractions[key] = selection_fraction(self._strategy.spec, task.selection)
        return self._fractions[key]


class Dispatcher:
    """A round's tasks sent to their hosts a few at a time, in plan order per host: each host keeps `depth`
    tasks queued (it never waits for the driver), and the driver never has more than depth x hosts tasks in
    flight. Ray keeps every in-flight task's spec and arguments in the driver, so sending a 1000-participant
    round at once made the driver's memory grow with the round."""

    def __init__(self, tasks: list[TrainTask], host_of: Mapping[int, int],
                 submit: Callable[[TrainTask], ray.ObjectRef], depth: int = DISPATCH_DEPTH):
        self._host_of = host_of
        self._submit = submit
        self._queues: dict[int, deque[TrainTask]] = {}
        for task in tasks:
            self._queues.setdefault(host_of[task.participant], deque()).append(task)
        self.in_flight: dict[ray.ObjectRef, TrainTask] = {}
        for host in self._queues:
            for _ in range(depth):
                self._send(host)

    def _send(self, host: int) -> None:
        if self._queues[host]:
            task = self._queues[host].popleft()
            self.in_flight[self._submit(task)] = task

    def complete(self, ref: ray.ObjectRef) -> TrainTask:
        """The task behind a finished ref; its host gets its next task."""
        task = self.in_flight.pop(ref)
        self._send(self._host_of[task.participant])
        return task

    def unfinished(self) -> list[TrainTask]:
        return list(self.in_flight.values()) + [t for queue in self._queues.values() for t in queue]


def failed_row(task: TrainTask, round_idx: int, run_id: str, device: str, host: int, status: str,
               message: str) -> ParticipantRoundRow:
    return ParticipantRoundRow(run_id=run_id, round=round_idx, participant=task.participant, device=device,
                               host=host, status=status, rate=task.rate, message=message[:500])


def finished(refs: list[ray.ObjectRef], deadline: float) -> list[ray.ObjectRef]:
    """Every task that has finished, or the first to finish before the deadline (none: the deadline passed).
    Taking all finished tasks in one call keeps a round linear in its tasks; waiting for one ref at a time over
    every pending task was quadratic (0.2 s a round with 1000 tasks in flight)."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    if not ready:
        ready, _ = ray.wait(refs, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
    return ready


def run_sync_round(round_idx: int, tasks: list[TrainTask], strategy: Strategy, hosts: HostPool,
                   global_weights: Weights, lr: float, timeout_s: float, run_id: str,
                   devices: Mapping[int, str]) -> RoundResult:
    payloads = PayloadStore(strategy, global_weights, tasks)
    dispatch = Dispatcher(tasks, hosts.host_of, lambda task: hosts.actor_for(task.participant).run.remote(
        round_idx, task, [payloads.ref(task)], lr))
    accumulator = strategy.new_accumulator(global_weights)
    rows: list[ParticipantRoundRow] = []
    deadline = time.monotonic() + timeout_s
    while dispatch.in_flight:
        ready = finished(list(dispatch.in_flight), deadline)
        if not ready:
            break
        for ref in ready:  # one at a time: each update is folded in and dropped before the next is fetched
            task = dispatch.complete(ref)
            try:
                row, weights = ray.get(ref, timeout=timeout_s)
            except RayError as err:
                row, weights = failed_row(task, round_idx, run_id, devices[task.participant],
                                          hosts.host_of[task.participant], "error",
                                          f"host failed: {type(err).__name__}: {str(err).splitlines()[0]}"), None
            payloads.done(task)
            row.param_fraction = payloads.param_fraction(task)
            if weights is not None:
                row.bytes_p2p = strategy.peer_bytes(task, tasks, weights)
                strategy.fold(accumulator, task, Update(task.participant, weights, row.samples), global_weights)
            rows.append(row)
    for task in dispatch.unfinished():
        rows.append(failed_row(task, round_idx, run_id, devices[task.participant], hosts.host_of[task.participant],
                               "timeout", f"no answer within runtime.task_timeout_s={timeout_s:g}"))
    new_weights, metrics = strategy.combine(round_idx, global_weights, accumulator)
    return RoundResult(sorted(rows, key=lambda r: r.participant), new_weights, metrics)


ENGINES = {"sync": run_sync_round}
