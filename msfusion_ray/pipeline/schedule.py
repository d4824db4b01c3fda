"""One epoch of pipeline split learning as a discrete-event schedule on virtual time.

Every data owner starts at time 0 and has one batch in the pipeline at a time (its next batch needs its first part
stepped): front forward on the owner, forward through compute nodes 1..N, last part forward, loss and backward on
the owner, backward through nodes N..1, front backward on the owner; then its next batch. A compute node works on
one message at a time: when it is free it starts the message that arrived first among those that have arrived
(ties: lower owner id, then backward before forward), as MP-SL's compute node takes the task that has waited
longest (pipeline_simulation/network_layer.cpp, check_new_task). A transfer delays a message by its seconds
(bytes / bandwidth + latency); links are delays, not queues (EdgeSys'25: nodes overlap compute and communication).

After its last batch each owner uploads its first and last parts to the aggregator; the aggregator averages once it
has them all (0 s: elementwise) and sends the result to the owners one after the other over its link, as eq. 5's
sum says. Compute nodes average their per-owner copies locally, without traffic (0 s).

The result depends only on the inputs: events at the same instant are all applied before any node chooses its next
message.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Literal, Protocol

Kind = Literal["front_forward", "forward", "back", "backward", "front_backward"]


class MessageTimes(Protocol):
    """Seconds of every piece of work and every transfer of an epoch. `time_model.PipelineTimes` gives the same
    figure for every batch of an owner (a plan); the pipeline engine gives what each message really carried."""

    n_owners: int
    n_nodes: int

    def owner_batches(self, owner: int) -> int: ...

    def owner_s(self, owner: int, batch: int, kind: str) -> float:
        """kind: front_forward, back, front_backward (compute) or to_first, from_last, to_last, from_first
        (transfers), upload, download (the parts to and from the aggregator; batch is ignored)."""

    def node_s(self, node: int, owner: int, batch: int, kind: str) -> float:
        """kind: forward or backward."""

    def hop_s(self, node: int, owner: int, batch: int, kind: str) -> float:
        """Between node and node + 1: forward (the activation) or backward (the gradient)."""


@dataclass(frozen=True)
class Task:
    """One piece of work on one actor: `actor` is "owner" or "node", `index` its id (a node's pipeline position)."""

    actor: str
    index: int
    owner: int
    batch: int
    kind: Kind
    ready_s: float  # when its input had arrived
    start_s: float
    end_s: float


@dataclass
class EpochSchedule:
    tasks: list[Task]
    owner_done_s: list[float]  # each owner's last front backward
    aggregated_s: float  # the aggregator has every owner's parts and averages
    owner_updated_s: list[float]  # each owner has the averaged parts back
    node_busy_s: list[float] = field(default_factory=list)
    owner_busy_s: list[float] = field(default_factory=list)

    @property
    def epoch_s(self) -> float:
        """T_all: the last owner's last batch is done."""
        return max(self.owner_done_s)

    @property
    def total_s(self) -> float:
        """T_tot: every owner has the averaged first and last parts."""
        return max(self.owner_updated_s)

    @property
    def aggregation_s(self) -> float:
        return self.total_s - self.epoch_s

    def node_idle_s(self, node: int) -> float:
        """Seconds node `node` waits between the epoch's start and its end."""
        return self.epoch_s - self.node_busy_s[node]


@dataclass(order=True)
class _Message:
    ready_s: float
    owner: int
    rank: int  # 0 backward, 1 forward: backward first on ties
    batch: int = field(compare=False)
    kind: Kind = field(compare=False)


class _Simulation:
    def __init__(self, times: MessageTimes):
        self.times = times
        self.events: list[tuple[float, int, str, object]] = []
        self.sequence = 0
        self.queues: list[list[_Message]] = [[] for _ in range(times.n_nodes)]
        self.free = [True] * times.n_nodes
        self.tasks: list[Task] = []
        self.owner_done = [0.0] * times.n_owners

    def push(self, at: float, what: str, payload: object) -> None:
        heapq.heappush(self.events, (at, self.sequence, what, payload))
        self.sequence += 1

    def run(self) -> None:
        for owner in range(self.times.n_owners):
            if self.times.owner_batches(owner) > 0:
                self.push(0.0, "owner_start", (owner, 0))
        while self.events:
            now = self.events[0][0]
            while self.events and self.events[0][0] == now:
                _, _, what, payload = heapq.heappop(self.events)
                getattr(self, f"_on_{what}")(now, payload)
            self._start_free_nodes(now)

    def _record(self, actor: str, index: int, owner: int, batch: int, kind: Kind, ready: float, start: float,
                seconds: float) -> float:
        self.tasks.append(Task(actor, index, owner, batch, kind, ready, start, start + seconds))
        return start + seconds

    def _on_owner_start(self, now: float, payload: tuple[int, int]) -> None:
        owner, batch = payload
        times = self.times
        done = self._record("owner", owner, owner, batch, "front_forward", now, now,
                            times.owner_s(owner, batch, "front_forward"))
        at = done + times.owner_s(owner, batch, "to_first")
        self.push(at, "arrive", (0, _Message(at, owner, 1, batch, "forward")))

    def _on_owner_back(self, now: float, payload: tuple[int, int]) -> None:
        owner, batch = payload
        times = self.times
        done = self._record("owner", owner, owner, batch, "back", now, now, times.owner_s(owner, batch, "back"))
        at = done + times.owner_s(owner, batch, "to_last")
        self.push(at, "arrive", (times.n_nodes - 1, _Message(at, owner, 0, batch, "backward")))

    def _on_owner_front_backward(self, now: float, payload: tuple[int, int]) -> None:
        owner, batch = payload
        done = self._record("owner", owner, owner, batch, "front_backward", now, now,
                            self.times.owner_s(owner, batch, "front_backward"))
        if batch + 1 < self.times.owner_batches(owner):
            self.push(done, "owner_start", (owner, batch + 1))
        else:
            self.owner_done[owner] = done

    def _on_arrive(self, now: float, payload: tuple[int, _Message]) -> None:
        node, message = payload
        heapq.heappush(self.queues[node], message)

    def _on_node_done(self, now: float, payload: tuple[int, _Message]) -> None:
        node, message = payload
        self.free[node] = True
        times, owner, batch = self.times, message.owner, message.batch
        if message.kind == "forward":
            if node + 1 < times.n_nodes:
                at = now + times.hop_s(node, owner, batch, "forward")
                self.push(at, "arrive", (node + 1, _Message(at, owner, 1, batch, "forward")))
            else:
                self.push(now + times.owner_s(owner, batch, "from_last"), "owner_back", (owner, batch))
        elif node > 0:
            at = now + times.hop_s(node - 1, owner, batch, "backward")
            self.push(at, "arrive", (node - 1, _Message(at, owner, 0, batch, "backward")))
        else:
            self.push(now + times.owner_s(owner, batch, "from_first"), "owner_front_backward", (owner, batch))

    def _start_free_nodes(self, now: float) -> None:
        for node, queue in enumerate(self.queues):
            if self.free[node] and queue:
                message = heapq.heappop(queue)
                seconds = self.times.node_s(node, message.owner, message.batch, message.kind)
                done = self._record("node", node, message.owner, message.batch, message.kind, message.ready_s, now,
                                    seconds)
                self.free[node] = False
                self.push(done, "node_done", (node, message))


def schedule_epoch(times: MessageTimes) -> EpochSchedule:
    simulation = _Simulation(times)
    simulation.run()
    owners = range(times.n_owners)
    aggregated = max(simulation.owner_done[k] + times.owner_s(k, 0, "upload") for k in owners)
    updated, clock = [], aggregated
    for k in owners:
        clock += times.owner_s(k, 0, "download")
        updated.append(clock)
    node_busy = [0.0] * times.n_nodes
    owner_busy = [0.0] * times.n_owners
    for task in simulation.tasks:
        busy = node_busy if task.actor == "node" else owner_busy
        busy[task.index] += task.end_s - task.start_s
    return EpochSchedule(simulation.tasks, simulation.owner_done, aggregated, updated, node_busy, owner_busy)
