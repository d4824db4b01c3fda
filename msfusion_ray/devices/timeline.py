"""The run's virtual timeline: where each participant's work sits in virtual time, and how busy each device was.

Virtual time is a property of the run, not of a participant: a task starts when its participant is handed the
model (after any wait for a round's barrier or for the device to become available) and ends at start + its device
time. Engines place tasks on it; this keeps, per participant, the device seconds spent so far, which the records
carry as `device_clock_s`.
"""

from __future__ import annotations

import numpy as np

from msfusion_ray.records import ParticipantRoundRow


class VirtualTimeline:
    """Per participant (ids 0 .. `participants`-1), its device seconds so far, as one array."""

    def __init__(self, participants: int) -> None:
        self.busy_s = np.zeros(participants, dtype=np.float64)

    def record(self, row: ParticipantRoundRow) -> None:
        """Count a finished (or lost) task's device time and stamp the participant's total on its row."""
        self.busy_s[row.participant] += row.device_time_s
        row.device_clock_s = float(self.busy_s[row.participant])

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The participants that have spent any device time, and how much (what a checkpoint keeps)."""
        ids = np.flatnonzero(self.busy_s)
        return {"busy_ids": ids, "busy_s": self.busy_s[ids]}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.busy_s[:] = 0.0
        self.busy_s[np.asarray(arrays["busy_ids"], dtype=np.int64)] = arrays["busy_s"]
