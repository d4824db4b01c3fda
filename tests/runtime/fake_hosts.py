"""Host actors without Ray, for engine tests: every participant's work takes a fixed device time, answers come
back in a shuffled order and a few at a time (as hosts finishing in any order would)."""

from __future__ import annotations

import numpy as np

from msfusion_ray.records import ParticipantRoundRow


class FakeHosts:
    def __init__(self, device_times: dict[int, float], hosts: int = 2, seed: int = 0, delta: float = 0.01):
        self.device_times = device_times
        self.host_of = {pid: pid % hosts for pid in device_times}
        self.rng = np.random.default_rng(seed)
        self.delta = delta
        self.results: dict[int, tuple] = {}
        self.sent: list = []

    def put(self, value):
        return value

    def submit(self, task, payload, lr):
        handle = len(self.sent)
        self.sent.append(task)
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
