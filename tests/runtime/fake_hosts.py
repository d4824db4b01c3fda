"""Host actors without Ray, for engine tests: every participant's work takes a fixed device time, answers come
back in a shuffled order and a few at a time (as hosts finishing in any order would)."""

from __future__ import annotations

import copy

import numpy as np

from msfusion_ray.devices.timeline import VirtualTimeline
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.records import ParticipantRoundRow
from msfusion_ray.runtime.engines import EngineContext, make_engine
from msfusion_ray.runtime.runner import initial_weights
from tests.conftest import SMALL_CONFIG


class FakeHosts:
    """`refused`: participants whose memory guard refuses every task (it answers at once: latency 0)."""

    def __init__(self, device_times: dict[int, float], hosts: int = 2, seed: int = 0, delta: float = 0.01,
                 refused: frozenset[int] = frozenset()):
        self.device_times = device_times
        self.refused = refused
        self.host_of = {pid: pid % hosts for pid in device_times}
        self.rng = np.random.default_rng(seed)
        self.delta = delta
        self.results: dict[int, tuple] = {}
        self.sent: list = []
        self.call_tasks = 32

    def put(self, value):
        return value

    def submit(self, tasks, payloads, lrs):
        return [self._submit_one(task, payload) for task, payload in zip(tasks, payloads)]

    def _submit_one(self, task, payload):
        handle = len(self.sent)
        self.sent.append(task)
        if task.participant in self.refused:
            self.results[handle] = (ParticipantRoundRow(
                run_id="fake", round=task.base_version + 1, participant=task.participant, device="fake",
                host=self.host_of[task.participant], status="oom", task=task.task, base_version=task.base_version,
                vt_start=task.vt_start, vt_end=task.vt_start), None, {})
            return handle
        spent = self.device_times[task.participant]
        row = ParticipantRoundRow(run_id="fake", round=task.base_version + 1, participant=task.participant,
                                  device="fake", host=self.host_of[task.participant], status="ok", task=task.task,
                                  base_version=task.base_version, samples=10, device_time_s=spent,
                                  device_compute_s=spent, vt_start=task.vt_start, vt_end=task.vt_start + spent)
        trained = {k: np.asarray(v) + self.delta * (task.participant + 1) for k, v in payload.items()}
        self.results[handle] = (row, trained, {})
        return handle

    def wait(self, handles, timeout_s):
        order = self.rng.permutation(len(handles))
        return [handles[i] for i in order[: self.rng.integers(1, len(handles) + 1)]]

    def get(self, handle, timeout_s):
        row, payload, trained = self.results.pop(handle)
        return row, payload, trained

    def host_died(self, err):
        return False

    def memory_killed(self, host):
        return False

    def describe(self, err, host):
        return f"host {host}: {err}"

    def replace(self, host, handle, cause, detail):
        raise AssertionError(f"fake hosts do not die ({cause})")


# A device so fast that predictions are ~0: the engine only has lower bounds and must wait for the hosts' answers.
INSTANT = {"name": "instant", "description": "test", "memory_mib": 10_000, "train_gflops": 1e9,
           "uplink_mbps": 1e9, "downlink_mbps": 1e9, "latency_ms": 0}


def engine_for(profiles_dir, strategy, params, device_times, rounds, seed=0, fleet_extra=(), refusing=(), **config):
    """The engine `strategy` names, on `instant` devices whose tasks take `device_times` (participant -> s) on fake
    hosts that answer in an order drawn from `seed`; devices of the classes `refusing` refuse every task."""
    data = copy.deepcopy(SMALL_CONFIG)
    data.update(rounds=rounds, strategy={"name": strategy, "params": params}, **config)
    data["fleet"] = {"devices": {"instant": len(device_times)}, "profiles_dir": str(profiles_dir), **dict(fleet_extra)}
    prepared = prepare(config_from_dict(data))
    refused = frozenset(p.id for p in prepared.fleet.participants if p.device.name in refusing)
    context = EngineContext(prepared, FakeHosts(device_times, seed=seed, refused=refused), "fake",
                            VirtualTimeline(len(prepared.fleet)), prepared.availability, prepared.participant_infos())
    return make_engine(prepared.strategy.engine, context, initial_weights(prepared))
