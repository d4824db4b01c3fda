"""The synchronous engine: rounds of fan-out and fan-in behind a barrier.

Each round the driver samples its cohort, finds who is reachable, asks the strategy to `plan` the round, sends the
work orders to the hosts (each distinct sub-model put in the object store once, a few tasks queued per host at a
time) and folds the updates into the strategy's streaming accumulator, then `combine`s them into the next global
model. On the virtual timeline a round starts when the previous one ended; every participant is handed the model
at that instant and the round ends with its slowest participant.

Updates are folded in plan order, whatever order the hosts finish in (an update that arrives early waits for the
ones planned before it): floating-point sums then do not depend on which host was faster, so a run is the same
with any number of hosts.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Iterator

import numpy as np

from msfusion_ray.models.weights import Weights
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.runtime.engines.base import (Engine, EngineContext, Step, absent_row, drop_at, hold_until,
                                               killed_row, lost_row, register_engine, wall_clock)
from msfusion_ray.runtime.engines.dispatch import Dispatcher, PayloadStore, Result, take_result, unanswering_hosts
from msfusion_ray.strategies.base import Update, WorkOrder

POLL_S = 5.0  # how often a waiting driver looks for hosts that stopped answering


@register_engine("sync")
class SyncEngine(Engine):
    def __init__(self, context: EngineContext, weights: Weights):
        super().__init__(context, weights)
        self.now = 0.0  # virtual time: the end of the last round

    def steps(self, start: int) -> Iterator[Step]:
        for round_idx in range(start, self.context.config.rounds + 1):
            if self.context.out_of_time(self.now):
                return
            yield self.round(round_idx)

    def cohort(self, round_idx: int) -> list[int]:
        """Participants asked to train this round: a seeded sample of the fleet."""
        config = self.context.config
        n = len(self.context.experiment.fleet)
        k = max(1, round(config.fleet.sample_fraction * n))
        if k == n:
            return list(range(n))
        return sorted(np.random.default_rng([config.seed, round_idx, 0xC0]).choice(n, k, replace=False).tolist())

    def reachable(self, round_idx: int, cohort: list[int]) -> dict[int, bool]:
        availability = self.context.availability
        if availability.windowed:
            return {pid: availability.is_on(pid, self.now) for pid in cohort}
        drawn = self.context.experiment.fleet.available(round_idx, among=cohort)
        return {pid: bool(on) for pid, on in zip(cohort, drawn)}

    def round(self, round_idx: int) -> Step:
        started = time.perf_counter()
        context, strategy = self.context, self.context.strategy
        cohort = self.cohort(round_idx)
        reachable = self.reachable(round_idx, cohort)
        absent = [absent_row(context, round_idx, pid, self.now) for pid in cohort if not reachable[pid]]
        present = [context.infos[pid] for pid in cohort if reachable[pid]]
        anchor = (wall_clock(), self.now)
        tasks = [replace(task, task=self.next_task(), seed_key=(round_idx,), base_version=round_idx - 1,
                         state_from=self.state_from(task.participant), vt_start=self.now, wall_anchor=anchor)
                 for task in strategy.plan(round_idx, present, context.experiment.capacity)]
        accumulator = strategy.new_accumulator(self.weights)
        rows = absent
        for task, (row, payload, _) in self.collect(round_idx, tasks):
            self.settle(row)
            if row.status == "ok" and payload is not None:
                row.bytes_p2p = strategy.peer_bytes(task, tasks, payload)
                update = Update(task.participant, payload, row.samples, task.base_version,
                                device_time_s=row.device_time_s, metrics=row.metrics)
                strategy.fold(accumulator, task, update, self.weights)
                self.consumed[task.participant] = task.task
            context.timeline.record(row)
            rows.append(row)
        self.weights, metrics = strategy.combine(round_idx, self.weights, accumulator)
        vt_start = self.now
        self.now = max([self.now] + [r.vt_end for r in rows if not math.isnan(r.vt_end)])
        hold_until(rows, self.now)
        length = (self.now - vt_start) * len(context.experiment.fleet)
        utilisation = sum(r.device_time_s for r in rows) / length if length > 0 else math.nan
        return Step(round_idx, sorted(rows, key=lambda r: r.participant), self.weights, metrics, vt_start, self.now,
                    time.perf_counter() - started, utilisation)

    def settle(self, row: ParticipantRoundRow) -> None:
        """A device that went off before its work ended loses it (availability windows)."""
        if row.status == "ok" and self.context.availability.windowed:
            end = self.context.availability.window_end(row.participant, row.vt_start)
            if row.vt_end > end:
                drop_at(row, end)

    def collect(self, round_idx: int, tasks: list[WorkOrder]) -> Iterator[tuple[WorkOrder, Result]]:
        """Every task's result, in plan order, while the hosts work in parallel."""
        context, executor = self.context, self.context.executor
        runtime = context.config.runtime
        payloads = PayloadStore(context.strategy, executor.put)
        payloads.expect(tasks)
        lr = context.lr(round_idx)
        submit = lambda batch: executor.submit(batch, [payloads.ref(t, self.weights) for t in batch],  # noqa: E731
                                               [lr] * len(batch))
        dispatch = Dispatcher(executor.host_of, submit, weigh=lambda task: payloads.nbytes(task, self.weights),
                              call_tasks=executor.call_tasks)
        dispatch.add(tasks)
        position = {task.task: i for i, task in enumerate(tasks)}
        arrived: dict[int, tuple[WorkOrder, Result]] = {}
        following = 0
        while following < len(tasks):
            while following in arrived:
                yield arrived.pop(following)
                following += 1
            if following == len(tasks):
                return
            ready = executor.wait(list(dispatch.in_flight), POLL_S)
            for ref in ready:  # one at a time: each update is folded in and dropped before the next is fetched
                if ref not in dispatch.in_flight:
                    continue  # lost with its host, which died
                lost = lambda task, message: lost_row(context, round_idx, task, "error", message)  # noqa: E731
                killed = lambda task, message: killed_row(context, round_idx, task, message)  # noqa: E731
                for task, result in take_result(executor, ref, dispatch, lost, runtime.task_timeout_s, killed):
                    payloads.done(task)
                    result[0].param_fraction = payloads.param_fraction(task)
                    arrived[position[task.task]] = task, result
            hung = {} if ready else unanswering_hosts(dispatch, runtime.task_timeout_s, runtime.clock)
            for host, message in hung.items():
                for task in dispatch.abandon_host(host):
                    payloads.done(task)
                    arrived[position[task.task]] = task, (lost_row(context, round_idx, task, "timeout", message),
                                                          None, {})

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        values, arrays = super().state_dict()
        return {**values, "now": self.now}, arrays

    def load_state_dict(self, values: dict, arrays: dict[str, np.ndarray]) -> None:
        super().load_state_dict(values, arrays)
        self.now = float(values["now"])
