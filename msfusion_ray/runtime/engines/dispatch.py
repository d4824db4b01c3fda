"""What every engine that sends work orders to host actors shares: the hosts as the engines see them, sub-model
payloads put once, bounded dispatch per host, collecting results as they finish, and the outcome of a task whose
host failed or stopped answering."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, Callable, Hashable, Iterable, Mapping, Protocol

import numpy as np
import ray
from ray.exceptions import OutOfMemoryError, RayActorError, RayError

from msfusion_ray.costs.payload import payload_bytes
from msfusion_ray.failures import describe_failure
from msfusion_ray.models.weights import Weights
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.runtime.hosts import HostPool
from msfusion_ray.strategies.base import Strategy, WorkOrder

# Tasks queued at each host at once: one training while the next waits, so a host never idles on the driver.
DISPATCH_DEPTH = 2
# A host that has worked on one task this much longer than runtime.task_timeout_s has stopped answering (its own
# deadline check ends a slow task long before).
HUNG_HOST_GRACE_S = 120.0

Result = tuple[ParticipantRoundRow, Weights | None, dict]


class Executor(Protocol):
    """The host actors as an engine uses them (`RayHosts`; tests substitute their own)."""

    host_of: Mapping[int, int]  # participant -> host

    def put(self, value: Any) -> Any: ...

    def submit(self, task: WorkOrder, payload: Any, lr: float) -> Any:
        """Send a work order; returns a handle its result comes back under."""

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]:
        """Every finished handle, or the first to finish within `timeout_s` (none: it passed)."""

    def get(self, handle: Any, timeout_s: float) -> Result:
        """(row, payload, trained); raises RayError where the host failed."""

    def host_died(self, err: Exception) -> bool:
        """Whether a failure `get` raised means the host's process died (its tasks in flight are lost)."""

    def replace(self, host: int, handle: Any, cause: str, detail: str, state_from: Callable[[int], int]) -> None:
        """Start a new actor for a host whose process died (`handle`: a task it lost), its participants' memory
        restored as of the task `state_from(participant)` names, unless it was replaced since that task was sent;
        may raise to end the run (too many deaths)."""


class RayHosts:
    def __init__(self, pool: HostPool):
        self._pool = pool
        self.host_of = pool.host_of
        self._generation: dict[ray.ObjectRef, int] = {}  # per task in flight: its host's generation when sent

    def put(self, value: Any) -> ray.ObjectRef:
        return ray.put(value)

    def submit(self, task: WorkOrder, payload: ray.ObjectRef, lr: float) -> ray.ObjectRef:
        """The payload ref goes boxed in a list: the host fetches it only once the participant's memory guard has
        let the work start."""
        ref = self._pool.actor_for(task.participant).run.remote(task, [payload], lr)
        self._generation[ref] = self._pool.generations[self._pool.host_of[task.participant]]
        return ref

    def wait(self, handles: list[ray.ObjectRef], timeout_s: float) -> list[ray.ObjectRef]:
        """Taking all finished tasks in one call keeps a round linear in its tasks; waiting for one ref at a time
        over every pending task was quadratic (0.2 s a round with 1000 tasks in flight)."""
        ready, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        if not ready:
            ready, _ = ray.wait(handles, num_returns=1, timeout=max(0.0, timeout_s))
        return ready

    def get(self, handle: ray.ObjectRef, timeout_s: float) -> Result:
        result = ray.get(handle, timeout=timeout_s)
        self._generation.pop(handle, None)  # kept where it failed: `replace` reads it
        return result

    def host_died(self, err: Exception) -> bool:
        return isinstance(err, (RayActorError, OutOfMemoryError))  # the memory monitor stops the process too

    def replace(self, host: int, handle: ray.ObjectRef, cause: str, detail: str,
                state_from: Callable[[int], int]) -> None:
        if self._generation.pop(handle, self._pool.generations[host]) != self._pool.generations[host]:
            return  # sent to an actor that was replaced since (a checkpoint found it dead first)
        self._pool.replace(host, cause, {pid: state_from(pid) for pid in self._pool.members(host)}, detail)


def selection_key(selection: Mapping[str, np.ndarray] | None) -> Hashable:
    if selection is None:
        return None
    return tuple((group, np.asarray(units).tobytes()) for group, units in sorted(selection.items()))


def payload_key(task: WorkOrder) -> Hashable:
    return task.base_version, task.depth, selection_key(task.selection)


class PayloadStore:
    """One extraction and one object-store put per distinct sub-model of a global model version, kept until the
    last task that trains it is done: schemes that give every participant its own sub-model (random selections)
    then hold only the ones in flight, not one per participant."""

    def __init__(self, strategy: Strategy, put: Callable[[Any], Any]):
        self._strategy = strategy
        self._put = put
        self._refs: dict[Hashable, ray.ObjectRef] = {}
        self._fractions: dict[Hashable, float] = {}
        self._bytes: dict[Hashable, int] = {}
        self._remaining: Counter = Counter()

    def expect(self, tasks: Iterable[WorkOrder]) -> None:
        """Announce tasks before the first of them is sent, so that a shared sub-model stays put between them."""
        self._remaining.update(payload_key(t) for t in tasks)

    def ref(self, task: WorkOrder, global_weights: Weights) -> ray.ObjectRef:
        """The payload of `task`, cut from `global_weights` (the version it trains from)."""
        key = payload_key(task)
        if key not in self._refs:
            payload = self._strategy.payload(task, global_weights)
            self._bytes[key] = payload_bytes(payload)
            self._refs[key] = self._put(payload)
        return self._refs[key]

    def nbytes(self, task: WorkOrder, global_weights: Weights) -> int:
        """Bytes of the payload of `task` (put in the store if it is not there yet)."""
        self.ref(task, global_weights)
        return self._bytes[payload_key(task)]

    def done(self, task: WorkOrder) -> None:
        key = payload_key(task)
        self._remaining[key] -= 1
        if self._remaining[key] <= 0:
            self._refs.pop(key, None)
            self._bytes.pop(key, None)
            del self._remaining[key]

    def param_fraction(self, task: WorkOrder) -> float:
        key = payload_key(task)[1:]
        if key not in self._fractions:
            self._fractions[key] = self._strategy.param_fraction(task)
        return self._fractions[key]


class Dispatcher:
    """Tasks sent to their hosts a few at a time, in the order they were added per host: each host keeps `depth`
    tasks queued (it never waits for the driver), and the driver never has more than depth x hosts tasks in
    flight. Ray keeps every in-flight task's spec and arguments in the driver, so sending a 1000-participant
    round at once made the driver's memory grow with the round."""

    def __init__(self, host_of: Mapping[int, int], submit: Callable[[WorkOrder], ray.ObjectRef],
                 depth: int = DISPATCH_DEPTH, clock: Callable[[], float] = time.monotonic):
        self._host_of = host_of
        self._submit = submit
        self._depth = depth
        self._clock = clock
        self._queues: dict[int, deque[WorkOrder]] = {}
        self._sent: dict[int, deque[ray.ObjectRef]] = {}  # per host, in the order it will run them
        self._busy_since: dict[int, float] = {}  # when each host began the task at the head of its queue
        self.in_flight: dict[ray.ObjectRef, WorkOrder] = {}

    def add(self, tasks: Iterable[WorkOrder]) -> None:
        hosts = []
        for task in tasks:
            host = self._host_of[task.participant]
            self._queues.setdefault(host, deque()).append(task)
            hosts.append(host)
        for host in dict.fromkeys(hosts):
            while len(self._sent.get(host, ())) < self._depth and self._queues[host]:
                self._send(host)

    def _send(self, host: int) -> None:
        task = self._queues[host].popleft()
        ref = self._submit(task)
        sent = self._sent.setdefault(host, deque())
        if not sent:
            self._busy_since[host] = self._clock()
        sent.append(ref)
        self.in_flight[ref] = task

    def complete(self, ref: ray.ObjectRef) -> WorkOrder:
        """The task behind a finished ref; its host gets its next task."""
        task = self.in_flight.pop(ref)
        host = self._host_of[task.participant]
        self._sent[host].remove(ref)
        self._busy_since[host] = self._clock()
        if self._queues.get(host):
            self._send(host)
        return task

    def hung_hosts(self, limit_s: float) -> list[int]:
        """Hosts that have been on their current task for more than `limit_s`."""
        now = self._clock()
        return [host for host, sent in self._sent.items() if sent and now - self._busy_since[host] > limit_s]

    def drop_host(self, host: int) -> list[tuple[ray.ObjectRef, WorkOrder]]:
        """Take out of flight the tasks sent to a host whose process died; those queued for it stay queued."""
        self._busy_since.pop(host, None)
        return [(ref, self.in_flight.pop(ref)) for ref in self._sent.pop(host, ())]

    def refill(self, host: int) -> None:
        """Send a (replaced) host the tasks queued for it, `depth` at a time as usual."""
        while len(self._sent.get(host, ())) < self._depth and self._queues.get(host):
            self._send(host)

    def abandon_host(self, host: int) -> list[WorkOrder]:
        """Give up on a host that stopped answering: its in-flight tasks and those queued for it."""
        tasks = [self.in_flight.pop(ref) for ref in self._sent.pop(host, ())]
        tasks.extend(self._queues.pop(host, ()))
        return tasks

    def host_of(self, task: WorkOrder) -> int:
        return self._host_of[task.participant]


def take_result(executor: Executor, handle: Any, dispatch: Dispatcher, state_from: Callable[[int], int],
                fail: Callable[[WorkOrder, str], ParticipantRoundRow],
                timeout_s: float) -> list[tuple[WorkOrder, Result]]:
    """The outcome of a finished task, and of every task lost with it: a host whose process died costs the tasks it
    had in flight (`error` rows saying which host, that its process died and the likely cause), is replaced with
    its participants' memory restored (`Executor.replace`), and gets the tasks queued for it. Any other failure
    of the host is an `error` row for that task alone."""
    task = dispatch.in_flight[handle]
    host = dispatch.host_of(task)
    try:
        result = executor.get(handle, timeout_s)
    except RayError as err:
        cause = describe_failure(err, f"host {host}")
        if executor.host_died(err):
            outcomes = [(lost, _finished_or_failed(executor, lost_handle, lost, fail, cause))
                        for lost_handle, lost in dispatch.drop_host(host)]
            executor.replace(host, handle, cause, str(err), state_from)
            dispatch.refill(host)
            return outcomes
        result = fail(task, cause), None, {}
    dispatch.complete(handle)
    return [(task, result)]


def _finished_or_failed(executor: Executor, handle: Any, task: WorkOrder,
                        fail: Callable[[WorkOrder, str], ParticipantRoundRow], cause: str) -> Result:
    """A task of a host that died: its result if it was done before (results outlive the process), else `error`."""
    if executor.wait([handle], 0.0):
        try:
            return executor.get(handle, 0.0)
        except RayError:
            pass
    return fail(task, cause), None, {}
