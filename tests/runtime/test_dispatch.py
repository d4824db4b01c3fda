"""The engines' dispatch bookkeeping without Ray: bounded dispatch per host, sub-models released when done, hosts
that stopped answering."""

import itertools

import numpy as np

from msfusion_ray.runtime.engines.dispatch import Dispatcher, PayloadStore
from msfusion_ray.strategies.base import WorkOrder


def _recording_submit():
    """A submit that records the participants of each call and hands out numbered handles."""
    calls, handles = [], itertools.count()

    def submit(batch):
        calls.append([task.participant for task in batch])
        return [next(handles) for _ in batch]

    return calls, submit


def test_each_host_gets_its_tasks_in_order_in_calls_spread_over_its_depth():
    host_of = {p: 0 if p in (0, 2, 3, 4, 6) else 1 for p in range(8)}
    calls, submit = _recording_submit()
    dispatch = Dispatcher(host_of, submit, depth=2)
    dispatch.add([WorkOrder(p) for p in range(8)])
    # host 0's five tasks over its two calls (3 + 2), then host 1's three (2 + 1), in plan order
    assert calls == [[0, 2, 3], [4, 6], [1, 5], [7]]
    assert dispatch.complete(0).participant == 0 and dispatch.complete(1).participant == 2
    assert len(calls) == 4  # host 0's first call is not all back yet
    dispatch.add([WorkOrder(p) for p in (0, 2)])  # queued behind host 0's two calls in flight
    assert len(calls) == 4
    dispatch.complete(2)  # the last of the call: host 0 gets its next call at once, all it has room for
    assert calls[-1] == [0, 2]
    dispatch.complete(5)  # host 1's first call (tasks 1, 5) is back only when both are
    assert calls[-1] == [0, 2]
    dispatch.complete(6)
    assert sorted(t.participant for t in dispatch.in_flight.values()) == [0, 2, 4, 6, 7]


def test_a_call_carries_at_most_its_tasks_and_bytes():
    calls, submit = _recording_submit()
    weights = {0: 3, 1: 3, 2: 3, 3: 3, 4: 10, 5: 1}
    dispatch = Dispatcher(dict.fromkeys(range(6), 0), submit, depth=1, weigh=lambda task: weights[task.participant],
                          call_tasks=3, call_bytes=6)
    dispatch.add([WorkOrder(p) for p in range(6)])
    assert calls == [[0, 1]]  # two of 3 bytes fill the 6 bytes
    for handle in (0, 1):
        dispatch.complete(handle)
    assert calls[-1] == [2, 3]
    for handle in (2, 3):
        dispatch.complete(handle)
    assert calls[-1] == [4]  # heavier than a call may be: it goes alone
    dispatch.complete(4)
    assert calls[-1] == [5]


def test_a_host_that_stopped_answering_is_given_up_with_its_queue():
    now = [0.0]
    calls, submit = _recording_submit()
    dispatch = Dispatcher({0: 0, 1: 1, 2: 0, 3: 0, 4: 0}, submit, depth=2, clock=lambda: now[0])
    dispatch.add([WorkOrder(p) for p in range(5)])
    assert calls == [[0, 2], [3, 4], [1]]
    now[0] = 5.0
    dispatch.complete(4)  # host 1 answers; host 0 has been on its first call, of two tasks, since t=0
    now[0] = 10.0
    assert dispatch.hung_hosts(task_limit_s=3.0, grace_s=3.0) == [0]  # more than 2 x 3 + 3 s
    assert dispatch.hung_hosts(task_limit_s=4.0, grace_s=3.0) == []
    dispatch.add([WorkOrder(0)])
    assert sorted(t.participant for t in dispatch.abandon_host(0)) == [0, 0, 2, 3, 4]
    assert dispatch.in_flight == {}


class _Strategy:
    def payload(self, task, weights):
        return weights


def test_a_sub_model_is_put_once_per_version_and_dropped_after_its_last_task():
    puts = []
    shared = {"h": np.arange(2)}
    tasks = [WorkOrder(0, shared), WorkOrder(1, shared), WorkOrder(2, {"h": np.arange(3)}),
             WorkOrder(3, shared, base_version=1)]
    store = PayloadStore(_Strategy(), put=lambda value: puts.append(value) or len(puts))
    store.expect(tasks)
    weights = {"w": np.zeros(3)}
    assert store.ref(tasks[0], weights) == store.ref(tasks[1], weights) == 1 and store.ref(tasks[2], weights) == 2
    assert store.ref(tasks[3], weights) == 3  # same sub-model of another global version: its own payload
    store.done(tasks[0])
    assert len(store._refs) == 3  # task 1 still trains the shared sub-model
    for task in tasks[1:]:
        store.done(task)
    assert store._refs == {} and len(puts) == 3
    assert store.nbytes(tasks[2], {"w": np.zeros(3)}) == 24 and len(puts) == 4


def test_a_dead_hosts_tasks_leave_flight_and_its_queue_goes_to_the_replacement():
    calls, submit = _recording_submit()
    dispatch = Dispatcher({0: 0, 1: 1, 2: 0, 3: 0, 4: 0, 5: 0}, submit, depth=2, call_tasks=1)
    dispatch.add([WorkOrder(p) for p in range(6)])
    assert calls == [[0], [2], [1]]
    lost = dispatch.drop_host(0)  # host 0 died with two tasks in flight
    assert [task.participant for _, task in lost] == [0, 2] and len(calls) == 3  # nothing sent to the dead one
    assert [t.participant for t in dispatch.in_flight.values()] == [1]
    dispatch.refill(0)  # its replacement gets what was queued, two calls at a time
    assert calls[3:] == [[3], [4]] and sorted(dispatch.hung_hosts(task_limit_s=0.0, grace_s=-1.0)) == [0, 1]
    dispatch.complete(3)
    assert calls[-1] == [5]
