"""The engines' dispatch bookkeeping without Ray: bounded dispatch per host, sub-models released when done, hosts
that stopped answering."""

import itertools

import numpy as np

from msfusion_ray.runtime.engines.dispatch import Dispatcher, PayloadStore
from msfusion_ray.strategies.base import WorkOrder


def test_each_host_gets_its_tasks_in_order_a_few_at_a_time():
    tasks = [WorkOrder(p) for p in range(6)]
    host_of = {0: 0, 1: 1, 2: 0, 3: 0, 4: 0, 5: 1}
    sent = []
    refs = itertools.count()

    def submit(task):
        sent.append(task.participant)
        return next(refs)

    dispatch = Dispatcher(host_of, submit, depth=2)
    dispatch.add(tasks)
    assert sent == [0, 2, 1, 5]  # two per host, in plan order
    assert dispatch.complete(1).participant == 2  # the ref of participant 2
    assert sent[-1] == 3  # host 0's next task follows at once
    assert dispatch.complete(2).participant == 1 and sent[-1] == 3  # host 1 has nothing left to send
    assert sorted(t.participant for t in dispatch.in_flight.values()) == [0, 3, 5]
    dispatch.add([WorkOrder(1)])  # a task added later goes out at once where its host has room
    assert sent[-1] == 1


def test_a_host_that_stopped_answering_is_given_up_with_its_queue():
    now = [0.0]
    refs = itertools.count()
    dispatch = Dispatcher({0: 0, 1: 1, 2: 0, 3: 0}, lambda task: next(refs), depth=2, clock=lambda: now[0])
    dispatch.add([WorkOrder(p) for p in range(4)])
    now[0] = 5.0
    dispatch.complete(2)  # host 1 answers; host 0 has been on its first task since t=0
    now[0] = 10.0
    assert dispatch.hung_hosts(limit_s=8.0) == [0] and dispatch.hung_hosts(limit_s=20.0) == []
    assert sorted(t.participant for t in dispatch.abandon_host(0)) == [0, 2, 3]
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
    sent = []
    refs = itertools.count()

    def submit(task):
        sent.append(task.participant)
        return next(refs)

    dispatch = Dispatcher({0: 0, 1: 1, 2: 0, 3: 0, 4: 0}, submit, depth=2)
    dispatch.add([WorkOrder(p) for p in range(5)])
    assert sent == [0, 2, 1]
    lost = dispatch.drop_host(0)  # host 0 died with two tasks in flight
    assert [task.participant for _, task in lost] == [0, 2] and sent == [0, 2, 1]  # nothing sent to the dead one
    assert [t.participant for t in dispatch.in_flight.values()] == [1]
    dispatch.refill(0)  # its replacement gets what was queued, two at a time
    assert sent == [0, 2, 1, 3, 4] and sorted(dispatch.hung_hosts(limit_s=-1.0)) == [0, 1]
