"""What every engine that sends work orders to host actors shares: the hosts as the engines see them, sub-model
payloads put once, bounded dispatch per host in calls of several tasks, collecting results as they finish, and the
outcome of a task whose host failed or stopped answering."""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Mapping, Protocol

import numpy as np
import ray
from ray.exceptions import OutOfMemoryError, RayActorError, RayError

from msfusion_ray.costs.payload import payload_bytes
from msfusion_ray.devices.cgroups import CgroupError
from msfusion_ray.devices.enforcement import TaskLimits
from msfusion_ray.models.weights import Weights
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.runtime.host_pool import HostPool
from msfusion_ray.runtime.participant import Result
from msfusion_ray.strategies.base import Strategy, WorkOrder

# Calls queued at each host at once: one working while the next waits, so a host never idles on the driver.
DISPATCH_DEPTH = 2
# What one call carries at most: tasks, and bytes of the sub-models they train (about what their updates bring back,
# held by the host until the call returns and by the driver until it folds them). An actor call cost the driver,
# the host and Ray's raylet about 4 ms of CPU between them (docs/benchmarks.md), more than a small model's step.
CALL_TASKS = 32
CALL_BYTES = 16 * 2**20
# A host that has worked on one call this much longer than its tasks' runtime.task_timeout_s has stopped answering
# (each task's own deadline check ends a slow task long before).
HUNG_HOST_GRACE_S = 120.0



class Executor(Protocol):
    """The host actors as an engine uses them (`RayHosts`; tests substitute their own)."""

    host_of: Mapping[int, int]  # participant -> host
    call_tasks: int  # tasks one call may carry (1: a host that dies was working on the first task sent to it)

    def put(self, value: Any) -> Any: ...

    def submit(self, tasks: list[WorkOrder], payloads: list[Any], lrs: list[float]) -> list[Any]:
        """Send work orders of one host in one call (each with its payload and learning rate); returns a handle per
        task that its result comes back under."""

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]:
        """Every finished handle, or the first to finish within `timeout_s` (none: it passed)."""

    def get(self, handle: Any, timeout_s: float) -> Result:
        """(row, payload, trained); raises RayError where the host failed."""

    def host_died(self, err: Exception) -> bool:
        """Whether a failure `get` raised means the host's process died (its tasks in flight are lost)."""

    def memory_killed(self, host: int) -> bool:
        """Whether the kernel killed that host's process at its memory limit (enforced devices)."""

    def killed_limits(self, host: int) -> TaskLimits:
        """The CPU quota and memory limit a host the kernel killed had set for its task (its group keeps them)."""

    def describe(self, err: Exception, host: int) -> str:
        """A failure of the host in one line (what failed, where, the likely cause)."""

    def replace(self, host: int, handle: Any, cause: str, detail: str) -> None:
        """Start a new actor for a host whose process died (`handle`: a task it lost), its participants' memory
        restored from the last checkpoint, unless it was replaced since that task was sent; may raise to end the
        run (too many deaths, no node left for it)."""


@dataclass(frozen=True)
class TaskHandle:
    """A task sent to a host: the actor call that carries it, and its place in that call's results."""

    call: ray.ObjectRef
    index: int


class RayHosts:
    def __init__(self, pool: HostPool):
        self._pool = pool
        self.host_of = pool.host_of
        # enforced hosts get one task per call: the task a host killed at its memory limit died in is then known
        self.call_tasks = 1 if pool.enforced is not None else CALL_TASKS
        self._generation: dict[ray.ObjectRef, int] = {}  # per call in flight: its host's generation when sent
        self._results: dict[ray.ObjectRef, dict[int, Result]] = {}  # per call fetched: its results not yet taken

    def put(self, value: Any) -> ray.ObjectRef:
        return ray.put(value)

    def submit(self, tasks: list[WorkOrder], payloads: list[ray.ObjectRef], lrs: list[float]) -> list[TaskHandle]:
        """The payload refs go in a list, unresolved: the host fetches each once, and only once a participant's
        memory guard has let work on it start."""
        call = self._pool.actor_for(tasks[0].participant).run.remote(tasks, payloads, lrs)
        self._generation[call] = self._pool.generations[self._pool.host_of[tasks[0].participant]]
        return [TaskHandle(call, index) for index in range(len(tasks))]

    def wait(self, handles: list[TaskHandle], timeout_s: float) -> list[TaskHandle]:
        """Every task of every finished call. Taking all finished calls in one `ray.wait` keeps a round linear in
        its tasks; waiting for one ref at a time over every pending one was quadratic (0.2 s a round with 1000
        tasks in flight)."""
        calls = list(dict.fromkeys(handle.call for handle in handles))
        ready, _ = ray.wait(calls, num_returns=len(calls), timeout=0)
        if not ready:
            ready, _ = ray.wait(calls, num_returns=1, timeout=max(0.0, timeout_s))
        finished = set(ready)
        return [handle for handle in handles if handle.call in finished]

    def get(self, handle: TaskHandle, timeout_s: float) -> Result:
        """The task's result; its call's results are fetched once and each let go once taken."""
        results = self._results.get(handle.call)
        if results is None:
            results = self._results[handle.call] = dict(enumerate(ray.get(handle.call, timeout=timeout_s)))
            self._generation.pop(handle.call, None)  # kept where it failed: `replace` reads it
        result = results.pop(handle.index)
        if not results:
            del self._results[handle.call]
        return result

    def host_died(self, err: Exception) -> bool:
        # the memory monitor stops the process too; an actor "unavailable" has lost its node or its connection
        return isinstance(err, (RayActorError, OutOfMemoryError))

    def memory_killed(self, host: int) -> bool:
        return self._pool.memory_killed(host)

    def killed_limits(self, host: int) -> TaskLimits:
        plan = self._pool.enforced.plan
        try:
            group = plan.host_group(host, self._pool.generations[host])
            return TaskLimits(group.cpu_quota() or float(plan.threads), group.memory_limit() or 0)
        except CgroupError:
            return TaskLimits()

    def describe(self, err: Exception, host: int) -> str:
        return self._pool.describe(err, host)

    def replace(self, host: int, handle: TaskHandle, cause: str, detail: str) -> None:
        if self._generation.pop(handle.call, self._pool.generations[host]) != self._pool.generations[host]:
            return  # sent to an actor that was replaced since (a checkpoint found it dead first)
        self._pool.replace(host, cause, detail)


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


@dataclass(eq=False)
class _Call:
    """Tasks sent to a host in one actor call: how many, and the handles of those not yet taken back."""

    size: int
    pending: dict[Any, None]  # in the order they were sent


class Dispatcher:
    """Tasks sent to their hosts a few calls at a time, in the order they were added per host: each host keeps
    `depth` calls queued (it never waits for the driver), each of at most `call_tasks` tasks whose payloads weigh
    at most `call_bytes` (`weigh`; a heavier task goes alone), so the driver never has more than that in flight.
    Ray keeps every in-flight call's spec and arguments in the driver, so sending a 1000-participant round at once
    made the driver's memory grow with the round. A host's queue is spread over the calls it has room for, so a
    short queue still comes back in parts while the host works on the rest."""

    def __init__(self, host_of: Mapping[int, int], submit: Callable[[list[WorkOrder]], list[Any]],
                 depth: int = DISPATCH_DEPTH, clock: Callable[[], float] = time.monotonic,
                 weigh: Callable[[WorkOrder], int] = lambda task: 0, call_tasks: int = CALL_TASKS,
                 call_bytes: int = CALL_BYTES):
        self._host_of = host_of
        self._submit = submit
        self._depth = depth
        self._clock = clock
        self._weigh = weigh
        self._call_tasks = call_tasks
        self._call_bytes = call_bytes
        self._queues: dict[int, deque[WorkOrder]] = {}
        self._sent: dict[int, deque[_Call]] = {}  # per host, in the order it will run them
        self._call_of: dict[Any, _Call] = {}  # per handle in flight
        self._busy_since: dict[int, float] = {}  # when each host began the call at the head of its queue
        self.in_flight: dict[Any, WorkOrder] = {}

    def add(self, tasks: Iterable[WorkOrder]) -> None:
        hosts = []
        for task in tasks:
            host = int(self._host_of[task.participant])
            self._queues.setdefault(host, deque()).append(task)
            hosts.append(host)
        for host in dict.fromkeys(hosts):
            self.refill(host)

    def _send(self, host: int) -> None:
        queue = self._queues[host]
        free = self._depth - len(self._sent.get(host, ()))
        most = min(self._call_tasks, -(-len(queue) // free))
        batch = [queue.popleft()]
        weight = self._weigh(batch[0])
        while queue and len(batch) < most and weight + self._weigh(queue[0]) <= self._call_bytes:
            weight += self._weigh(queue[0])
            batch.append(queue.popleft())
        handles = self._submit(batch)
        call = _Call(len(handles), dict.fromkeys(handles))
        sent = self._sent.setdefault(host, deque())
        if not sent:
            self._busy_since[host] = self._clock()
        sent.append(call)
        for handle, task in zip(handles, batch):
            self._call_of[handle] = call
            self.in_flight[handle] = task

    def complete(self, handle: Any) -> WorkOrder:
        """The task behind a finished handle; once its call is all taken, the host gets its next call."""
        task = self.in_flight.pop(handle)
        host = int(self._host_of[task.participant])
        call = self._call_of.pop(handle)
        call.pending.pop(handle, None)
        if not call.pending:
            self._sent[host].remove(call)
            self._busy_since[host] = self._clock()
            self.refill(host)
        return task

    def hung_hosts(self, task_limit_s: float, grace_s: float) -> list[int]:
        """Hosts that have been on their current call for longer than its tasks may take (`task_limit_s` each)
        and `grace_s`."""
        now = self._clock()
        return [host for host, sent in self._sent.items()
                if sent and now - self._busy_since[host] > sent[0].size * task_limit_s + grace_s]

    def _take_sent(self, host: int) -> list[Any]:
        """The handles of every call sent to a host, taken out of flight's bookkeeping (not `in_flight`)."""
        self._busy_since.pop(host, None)
        handles = [handle for call in self._sent.pop(host, ()) for handle in call.pending]
        for handle in handles:
            del self._call_of[handle]
        return handles

    def drop_host(self, host: int) -> list[tuple[Any, WorkOrder]]:
        """Take out of flight the tasks sent to a host whose process died, in the order it would have run them;
        those queued for it stay queued."""
        return [(handle, self.in_flight.pop(handle)) for handle in self._take_sent(host)]

    def requeue(self, host: int, tasks: list[WorkOrder]) -> None:
        """Queue again, first, tasks a host that died never started (sent to its replacement by `refill`)."""
        self._queues.setdefault(host, deque()).extendleft(reversed(tasks))

    def refill(self, host: int) -> None:
        """Send a host the tasks queued for it, up to `depth` calls in flight."""
        while len(self._sent.get(host, ())) < self._depth and self._queues.get(host):
            self._send(host)

    def abandon_host(self, host: int) -> list[WorkOrder]:
        """Give up on a host that stopped answering: its in-flight tasks and those queued for it."""
        tasks = [self.in_flight.pop(handle) for handle in self._take_sent(host)]
        tasks.extend(self._queues.pop(host, ()))
        return tasks

    def host_of(self, task: WorkOrder) -> int:
        return int(self._host_of[task.participant])


def unanswering_hosts(dispatch: Dispatcher, task_timeout_s: float, clock: str) -> dict[int, str]:
    """Hosts to give up on, each with the message its lost tasks are recorded with. Under the real clock a host
    sleeps as long as its tasks' virtual time: never given up."""
    task_limit_s = math.inf if clock == "real" else task_timeout_s
    message = (f"gave no answer for runtime.task_timeout_s={task_timeout_s:g} s per task it was sent plus "
               f"{HUNG_HOST_GRACE_S:g} s")
    return {host: f"host {host} {message}" for host in dispatch.hung_hosts(task_limit_s, HUNG_HOST_GRACE_S)}


def take_result(executor: Executor, handle: Any, dispatch: Dispatcher,
                fail: Callable[[WorkOrder, str], ParticipantRoundRow], timeout_s: float,
                killed: Callable[[WorkOrder, str], ParticipantRoundRow]) -> list[tuple[WorkOrder, Result]]:
    """The outcome of a finished task, and of every task lost with it: a host whose process died (or whose node
    was lost) costs the tasks it had in flight (`error` rows saying which host on which node, that its process
    died and the likely cause), is replaced with its participants' memory restored (`Executor.replace`), and
    gets the tasks queued for it. Any other failure of the host is an `error` row for that task alone. `killed`
    makes the row of a task the kernel killed at its host's memory limit."""
    task = dispatch.in_flight[handle]
    host = dispatch.host_of(task)
    try:
        result = executor.get(handle, timeout_s)
    except RayError as err:
        cause = executor.describe(err, host)
        if executor.host_died(err):
            lost = dispatch.drop_host(host)
            if executor.memory_killed(host):
                outcomes = _killed_at_limit(executor, lost, dispatch, host, killed)
            else:
                outcomes = [(order, _finished_or_failed(executor, lost_handle, order, fail, cause))
                            for lost_handle, order in lost]
            executor.replace(host, handle, cause, str(err))
            dispatch.refill(host)
            return outcomes
        result = fail(task, cause), None, {}
    dispatch.complete(handle)
    return [(task, result)]


def _killed_at_limit(executor: Executor, lost: list[tuple[Any, WorkOrder]], dispatch: Dispatcher, host: int,
                     killed: Callable[[WorkOrder, str], ParticipantRoundRow]) -> list[tuple[WorkOrder, Result]]:
    """A host the kernel killed at its memory limit: the first task it had not finished is the one that did not
    fit (`oom`, `oom_source: kernel`; hosts get one task per call when this can happen), the tasks sent after it
    never started and go to the host's replacement, those it had finished keep their results."""
    outcomes, unstarted, culprit = [], [], None
    for lost_handle, order in lost:
        done = _result_if_done(executor, lost_handle)
        if done is not None:
            outcomes.append((order, done))
        elif culprit is None:
            culprit = killed(order, f"killed by the kernel at host {host}'s memory limit (the participant's memory "
                                    "cap on top of what the host held)")
            outcomes.append((order, (culprit, None, {})))
        else:
            unstarted.append(order)
    dispatch.requeue(host, unstarted)
    return outcomes


def _finished_or_failed(executor: Executor, handle: Any, task: WorkOrder,
                        fail: Callable[[WorkOrder, str], ParticipantRoundRow], cause: str) -> Result:
    """A task of a host that died: its result if it was done before (results outlive the process), else `error`."""
    done = _result_if_done(executor, handle)
    return done if done is not None else (fail(task, cause), None, {})


def _result_if_done(executor: Executor, handle: Any) -> Result | None:
    """The result of a task of a host that died, if it was done before (results outlive the process)."""
    if executor.wait([handle], 0.0):
        try:
            return executor.get(handle, 0.0)
        except RayError:
            pass
    return None
