"""The semi-asynchronous engine: buffered aggregation on the virtual timeline (FedBuff, FedAsync, Co-S2P).

Fast devices do not wait for slow ones. Events are ordered by virtual time (ties: task completions first, then
the aggregation deadline, then devices coming on; among completions by participant id):

- At most `concurrency` participants train at once. Whenever a slot is free, an idle participant that is on is
  handed the current global model (version v): a seeded draw among those eligible.
- A task completes at its start + device time. Its update has staleness s = v_now - v; one staler than
  `max_staleness` is recorded `stale`; otherwise the strategy folds it into the buffer. A device that goes off
  before its work ends loses it (`dropped`, at the instant it went off).
- The driver aggregates when `buffer_size` updates have arrived (None: once every handed-out task is back, which
  makes rounds: nobody gets new work until then), or at `deadline_s` after the last aggregation if the buffer
  has anything. Each aggregation is a step: version v + 1, one round row, its tasks' rows.
- A participant whose task brought no update (oom, error, timeout) waits for the next aggregation; so does one
  whose update was buffered, where the schedule's `dispatch` is `after_aggregation` (at most one task per
  participant, idle again once the aggregation that takes its update is done: Co-S2P's code).
- The run ends after `rounds` aggregations or once the next event lies beyond `time_budget_s`.

Hosts train in parallel in wall time, ahead of the virtual clock; the driver takes each result in virtual-time
order. It knows a lower bound of every in-flight task's end (its predicted device time, or its start) and waits
for exactly the results that could come before the next known event, so the run does not depend on which host
finished first. A task its participant's memory guard will refuse ends after one round trip, long before the
training it was predicted from: the driver asks the procedure's memory phases of the same planners first, and
predicts such a task at its refusal (a host's GPU share is the one limit it cannot see: keep runs whose hosts
share a GPU clear of it).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np

from msfusion_ray.costs.flops import TrainingStepFlops
from msfusion_ray.devices.clock import earliest_device_time, refusal_device_s, task_speed
from msfusion_ray.devices.memory_need import plannable_bytes
from msfusion_ray.models.weights import Weights
from msfusion_ray.procedures.base import PlannedTask, make_procedure, refused_phase, selection_bytes
from msfusion_ray.procedures.orders import ObjectiveSpec, ProcedureSpec, WorkOrder
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.runtime.checkpoint import join_arrays, split_arrays
from msfusion_ray.runtime.engines.base import (Engine, EngineContext, Step, drop_at, hold_until, killed_row,
                                               lost_row, register_engine, wall_clock)
from msfusion_ray.runtime.engines.dispatch import Dispatcher, PayloadStore, Result, take_result, unanswering_hosts
from msfusion_ray.runtime.participant import PlannerCache
from msfusion_ray.strategies.base import Update
from msfusion_ray.training.local import batch_sizes
from msfusion_ray.training.losses import loss_of

POLL_S = 5.0
COMPLETION, DEADLINE, DEVICE_ON = 0, 1, 2  # event kinds, in the order they are taken at equal times


class RunStalled(RuntimeError):
    """No participant can deliver an update any more (every one refused, failed, or off for good)."""


@dataclass
class InFlight:
    order: WorkOrder
    lower_bound_end: float  # virtual time before which it cannot end
    result: Result | None = None  # once its host answered

    def end(self) -> float:
        """When its event happens on the timeline (its result must be in)."""
        return self.result[0].vt_end


class VersionStore:
    """Global models by version: the ones in-flight tasks trained from, and the strategy's staleness window."""

    def __init__(self) -> None:
        self.models: dict[int, Weights] = {}

    def __getitem__(self, version: int) -> Weights:
        return self.models[version]

    def __contains__(self, version: int) -> bool:
        return version in self.models

    def keep_only(self, versions: set[int]) -> None:
        for version in set(self.models) - versions:
            del self.models[version]


@register_engine("async")
class SemiAsyncEngine(Engine):
    def __init__(self, context: EngineContext, weights: Weights):
        super().__init__(context, weights)
        self.schedule = context.strategy.schedule()
        participants = len(context.experiment.fleet)
        self.concurrency = min(self.schedule.concurrency or participants, participants)
        self.now = 0.0
        self.version = 0
        self.last_aggregation = 0.0
        self.history = VersionStore()
        self.history.models[0] = weights
        self.in_flight: dict[int, InFlight] = {}  # by task number
        self.parked: set[int] = set()  # participants whose last task brought no update: until the next aggregation
        self.waiting: set[int] = set()  # participants whose buffered update awaits its aggregation (after_aggregation)
        self.draws = 0
        self.buffer: Any = None
        self.buffered = 0
        self.rows: list[ParticipantRoundRow] = []  # tasks that ended since the last aggregation
        self.boundary = True
        self._payloads = PayloadStore(context.strategy, context.executor.put)
        self._dispatch: Dispatcher | None = None
        self._refs: dict[Any, int] = {}  # handle of a sent task -> its task number
        self._step_flops = TrainingStepFlops(context.experiment.family.build, context.experiment.family.example_batch,
                                             loss_of(context.experiment.family.data.task))
        self._planners = PlannerCache(context.experiment.family, context.config.training)  # the hosts' footprints
        self._wall_anchor = (wall_clock(), 0.0)
        self._step_wall = time.perf_counter()

    # the event loop -----------------------------------------------------------------------------------------

    def steps(self, start: int) -> Iterator[Step]:
        context = self.context
        self._wall_anchor = (wall_clock(), self.now)
        self._dispatch = Dispatcher(context.executor.host_of, self._submit, call_tasks=context.executor.call_tasks,
                                    weigh=lambda order: self._payloads.nbytes(order, self.history[order.base_version]))
        resumed = [replace(flight.order, wall_anchor=self._wall_anchor) for flight in self.in_flight.values()]
        self._payloads.expect(resumed)
        self._dispatch.add(resumed)  # a resumed run's work in flight
        self.buffer = context.strategy.new_buffer(self.weights)
        self._step_wall = time.perf_counter()
        self._hand_out()
        while self.version < context.config.rounds:
            event = self._next_event()
            if event is None:
                if self.buffered:  # nothing else can happen: what the buffer holds is all there is
                    event = (self.now, DEADLINE, -1)
                else:
                    raise RunStalled(f"no participant can deliver an update at virtual time {self.now:.1f} s "
                                     f"({len(self.parked)} refused or failed their last task)")
            if context.out_of_time(event[0]):
                return
            self.boundary = False
            self.now = max(self.now, event[0])
            if event[1] == COMPLETION:
                self._complete(event[2])
            if self._aggregation_due(event[1] == DEADLINE):
                yield self._aggregate()
                self.boundary = True
            self._hand_out()

    def _next_event(self) -> tuple[float, int, int] | None:
        """The next event on the timeline, waiting for the hosts' results that could come before it."""
        while True:
            known = [(max(f.end(), self.now), COMPLETION, task) for task, f in self.in_flight.items()
                     if f.result is not None]
            if self.schedule.deadline_s is not None and self.buffered:
                known.append((self.last_aggregation + self.schedule.deadline_s, DEADLINE, -1))
            known.extend(self._devices_coming_on())
            candidate = min(known, default=None, key=lambda e: (e[0], e[1], self._participant_of(e)))
            blocking = [task for task, f in self.in_flight.items() if f.result is None and
                        (candidate is None or f.lower_bound_end <= candidate[0])]
            if not blocking:
                return candidate
            self._wait_for(blocking)

    def _participant_of(self, event: tuple[float, int, int]) -> int:
        return self.in_flight[event[2]].order.participant if event[1] == COMPLETION else event[2]

    def _devices_coming_on(self) -> list[tuple[float, int, int]]:
        """Idle devices that are off now, at the instant they come on (only while a slot is free to hand them)."""
        if len(self.in_flight) >= self.concurrency or not self._handing_out():
            return []
        availability = self.context.availability
        events = []
        for pid in self._idle():
            if not availability.is_on(pid, self.now):
                on = availability.next_on(pid, self.now)
                if math.isfinite(on):
                    events.append((on, DEVICE_ON, pid))
        return events

    def _wait_for(self, tasks: list[int]) -> None:
        runtime = self.context.config.runtime
        wanted = [ref for ref, task in self._refs.items() if task in tasks]
        # a task still queued for its host goes out when one sent before it is back: wait for those then
        for ref in self.context.executor.wait(wanted or list(self._refs), POLL_S):
            if ref in self._refs:  # not lost with a host that died
                self._take(ref)
        for host, message in unanswering_hosts(self._dispatch, runtime.task_timeout_s, runtime.clock).items():
            for order in self._dispatch.abandon_host(host):
                self._refs = {r: t for r, t in self._refs.items() if t != order.task}
                self._payloads.done(order)
                self.in_flight[order.task].result = (lost_row(self.context, 0, order, "timeout", message), None, {})

    def _take(self, ref: Any) -> None:
        """A finished task's result, and those of the tasks lost with it where its host died."""
        outcomes = take_result(self.context.executor, ref, self._dispatch,
                               lambda order, message: lost_row(self.context, 0, order, "error", message),
                               self.context.config.runtime.task_timeout_s,
                               lambda order, message: killed_row(self.context, 0, order, message))
        for order, result in outcomes:
            self._payloads.done(order)
            result[0].param_fraction = self._payloads.param_fraction(order)
            self.in_flight[order.task].result = result
        # handles taken, or lost with a host that died (a task it never started was sent again under a new one)
        self._refs = {r: t for r, t in self._refs.items() if r in self._dispatch.in_flight}

    # what happens at an event -------------------------------------------------------------------------------

    def _complete(self, task: int) -> None:
        flight = self.in_flight.pop(task)
        order = flight.order
        row, payload, trained = flight.result
        row.round = self.version + 1
        row.staleness = self.version - order.base_version
        if row.status == "ok" and self.context.availability.windowed:
            end = self.context.availability.window_end(order.participant, order.vt_start)
            if row.vt_end > end:
                drop_at(row, end)
        if row.status == "ok" and self.schedule.max_staleness is not None \
                and row.staleness > self.schedule.max_staleness:
            row.status = "stale"
            row.message = f"{row.staleness} versions late (max_staleness {self.schedule.max_staleness})"
        if row.status == "ok":
            update = Update(order.participant, payload, row.samples, order.base_version, trained,
                            row.device_time_s, row.metrics)
            self.context.strategy.fold(self.buffer, order, update, row.staleness, self.history)
            self.buffered += 1
            if self.schedule.dispatch == "after_aggregation":
                self.waiting.add(order.participant)
        if row.status in ("ok", "stale"):
            self.consumed[order.participant] = order.task
        elif row.status != "dropped":
            self.parked.add(order.participant)  # it would only refuse or fail again before the model changes
        self.context.timeline.record(row)
        self.rows.append(row)

    def _aggregation_due(self, deadline: bool) -> bool:
        if self.schedule.buffer_size is None:
            return not self.in_flight and (self.buffered > 0 or bool(self.rows))
        if self.buffered >= self.schedule.buffer_size:
            return True
        overdue = self.schedule.deadline_s is not None and \
            self.now >= self.last_aggregation + self.schedule.deadline_s
        return self.buffered > 0 and (deadline or overdue)

    def _aggregate(self) -> Step:
        strategy = self.context.strategy
        self.weights, metrics = strategy.aggregate(self.version, self.weights, self.buffer, self.history)
        self.version += 1
        self.history.models[self.version] = self.weights
        rows = sorted(self.rows, key=lambda r: (r.vt_end, r.participant))
        barrier = self.schedule.buffer_size is None  # rounds: everyone waits for the aggregation
        hold_until(rows, self.now, None if barrier else self._held)
        step = Step(self.version, rows, self.weights, dict(metrics), self.last_aggregation, self.now,
                    time.perf_counter() - self._step_wall, utilisation=self._utilisation(rows))
        self.rows, self.buffered, self.parked, self.waiting = [], 0, set(), set()
        self.buffer = strategy.new_buffer(self.weights)
        self.last_aggregation = self.now
        self._forget_old_versions()
        self._step_wall = time.perf_counter()
        return step

    def _held(self, row: ParticipantRoundRow) -> bool:
        """Whether a device waited for this aggregation: it brought no update, or (`after_aggregation`) its update
        is one this aggregation takes."""
        return row.status in ("oom", "error", "timeout") or \
            (row.status == "ok" and self.schedule.dispatch == "after_aggregation")

    def _utilisation(self, rows: list[ParticipantRoundRow]) -> float:
        """Device seconds worked within the step / (its length x participants): Co-S2P's resource utilisation."""
        start, end = self.last_aggregation, self.now
        if end <= start:
            return math.nan
        busy = sum(max(0.0, min(r.vt_end, end) - max(r.vt_start, start)) for r in rows if not math.isnan(r.vt_end))
        busy += sum(max(0.0, end - max(f.order.vt_start, start)) for f in self.in_flight.values())
        return busy / ((end - start) * len(self.context.experiment.fleet))

    def _forget_old_versions(self) -> None:
        keep = {f.order.base_version for f in self.in_flight.values()}
        keep.update(range(max(0, self.version - self.context.strategy.history_depth()), self.version + 1))
        self.history.keep_only(keep)

    # handing out work ---------------------------------------------------------------------------------------

    def _handing_out(self) -> bool:
        """Barrier mode (buffer_size None) hands out work only when nothing is in flight: rounds."""
        return self.schedule.buffer_size is not None or not self.in_flight

    def _idle(self) -> list[int]:
        idle = np.ones(len(self.context.experiment.fleet), dtype=bool)
        idle[[f.order.participant for f in self.in_flight.values()]] = False
        idle[list(self.parked | self.waiting)] = False
        return np.flatnonzero(idle).tolist()

    def _hand_out(self) -> None:
        free = self.concurrency - len(self.in_flight)
        if free <= 0 or not self._handing_out():
            return
        availability = self.context.availability
        eligible = [pid for pid in self._idle() if availability.is_on(pid, self.now)] if availability.windowed \
            else self._idle()
        if len(eligible) > free:
            rng = np.random.default_rng([self.context.config.seed, self.draws, 0xA5])
            eligible = sorted(rng.choice(eligible, free, replace=False).tolist())
        self.draws += 1
        orders = [self._order(pid) for pid in eligible]
        self._payloads.expect(orders)
        self._dispatch.add(orders)

    def _order(self, pid: int) -> WorkOrder:
        context = self.context
        planned = context.strategy.order(context.infos[pid], self.version, context.experiment.capacity)
        task = self.next_task()
        order = replace(planned, task=task, seed_key=(task,), base_version=self.version,
                        state_from=self.state_from(pid), vt_start=self.now, wall_anchor=self._wall_anchor)
        predicted = self._predict(order)
        order = replace(order, predicted_device_s=predicted)
        self.in_flight[task] = InFlight(order, self.now + (predicted if predicted is not None else 0.0))
        return order

    def _predict(self, order: WorkOrder) -> float | None:
        """Device time known before the task runs: a refusal's round trip where the participant's memory guard
        will refuse it, else from counted FLOPs of its shapes and bytes of its payload (exact under the FLOP/s
        time model, the earliest it can end under the roofline). None where it is measured (native and enforced
        devices), or where it depends on what the task will draw."""
        fleet = self.context.experiment.fleet
        participant, device = fleet.participants[order.participant], fleet.device_of(order.participant)
        runtime = self.context.config.runtime
        if device.native or runtime.enforce != "virtual":
            return None
        procedure = make_procedure(order.procedure)
        planned = PlannedTask(order, self.context.experiment.family, self.context.config.training,
                              self._planners.planner)
        cap = plannable_bytes(participant.memory_cap_bytes, device.memory_need, self.context.experiment.family.name)
        if refused_phase(procedure.memory_phases(planned), cap) is not None:
            return refusal_device_s(device)
        sizes = batch_sizes(self.context.infos[order.participant].samples, self.context.config.training)
        flops = procedure.predict_flops(self.context.experiment.family, order, sizes, self._step_flops)
        if flops is None:
            return None
        payload = self._payloads.nbytes(order, self.history[order.base_version])
        speed = task_speed(device, self.context.config.seed, order.participant, order.task)
        spent = earliest_device_time(device, flops, payload + selection_bytes(order.selection), payload, speed,
                                     runtime.time_model)
        return spent.total_s

    def _submit(self, orders: list[WorkOrder]) -> list[Any]:
        payloads = [self._payloads.ref(order, self.history[order.base_version]) for order in orders]
        handles = self.context.executor.submit(orders, payloads,
                                               [self.context.lr(order.base_version + 1) for order in orders])
        self._refs.update((handle, order.task) for handle, order in zip(handles, orders))
        return handles

    # checkpoints --------------------------------------------------------------------------------------------

    def at_step_boundary(self) -> bool:
        return self.boundary

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        values, arrays = super().state_dict()
        orders = [dataclasses.asdict(f.order) for f in self.in_flight.values()]
        history = {str(v): w for v, w in self.history.models.items()}
        values.update(now=self.now, version=self.version, last_aggregation=self.last_aggregation,
                      draws=self.draws, parked=sorted(self.parked), waiting=sorted(self.waiting),
                      in_flight=split_arrays(orders, arrays, prefix="order"),
                      history=split_arrays(history, arrays, prefix="model"))
        return values, arrays

    def load_state_dict(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().load_state_dict(values, arrays)
        self.now, self.version = float(values["now"]), int(values["version"])
        self.last_aggregation, self.draws = float(values["last_aggregation"]), int(values["draws"])
        self.parked = set(values["parked"])
        self.waiting = set(values.get("waiting", ()))
        self.history.models = {int(v): w for v, w in join_arrays(values["history"], arrays).items()}
        self.in_flight = {}
        for fields in join_arrays(values["in_flight"], arrays):
            order = order_from_dict(fields)
            bound = order.vt_start + (order.predicted_device_s or 0.0)
            self.in_flight[order.task] = InFlight(order, bound)


def order_from_dict(fields: dict[str, Any]) -> WorkOrder:
    """A work order back from its checkpointed form."""
    fields = dict(fields)
    if fields["objective"] is not None:
        fields["objective"] = ObjectiveSpec(**fields["objective"])
    fields["procedure"] = ProcedureSpec(**fields["procedure"])
    fields["seed_key"] = tuple(fields["seed_key"])
    fields["wall_anchor"] = None
    return WorkOrder(**fields)
