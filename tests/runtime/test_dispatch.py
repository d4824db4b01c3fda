"""The round engine's bookkeeping without Ray: bounded dispatch per host, and sub-models released when done."""

import itertools

import numpy as np

from msfusion_ray.runtime import engine
from msfusion_ray.runtime.engine import Dispatcher, PayloadStore
from msfusion_ray.strategies.base import TrainTask


def test_each_host_gets_its_tasks_in_order_a_few_at_a_time():
    tasks = [TrainTask(p) for p in range(6)]
    host_of = {0: 0, 1: 1, 2: 0, 3: 0, 4: 0, 5: 1}
    sent = []
    refs = itertools.count()

    def submit(task):
        sent.append(task.participant)
        return next(refs)

    dispatch = Dispatcher(tasks, host_of, submit, depth=2)
    assert sent == [0, 2, 1, 5]  # two per host, in plan order
    assert dispatch.complete(1).participant == 2  # the ref of participant 2
    assert sent[-1] == 3  # host 0's next task follows at once
    assert dispatch.complete(2).participant == 1 and sent[-1] == 3  # host 1 has nothing left to send
    assert sorted(t.participant for t in dispatch.unfinished()) == [0, 3, 4, 5]
    assert len(dispatch.in_flight) == 3


class _Strategy:
    spec = None

    def index_map(self, task):
        return None


def test_a_sub_model_is_put_once_and_dropped_after_its_last_task(monkeypatch):
    puts = []
    monkeypatch.setattr(engine.ray, "put", lambda value: puts.append(value) or len(puts))
    monkeypatch.setattr(engine, "extract", lambda weights, imap: weights)
    shared = {"h": np.arange(2)}
    tasks = [TrainTask(0, shared), TrainTask(1, shared), TrainTask(2, {"h": np.arange(3)})]
    store = PayloadStore(_Strategy(), {"w": np.zeros(3)}, tasks)
    assert store.ref(tasks[0]) == store.ref(tasks[1]) == 1 and store.ref(tasks[2]) == 2
    store.done(tasks[0])
    assert len(store._refs) == 2  # task 1 still trains the shared sub-model
    store.done(tasks[1])
    store.done(tasks[2])
    assert store._refs == {} and len(puts) == 2
