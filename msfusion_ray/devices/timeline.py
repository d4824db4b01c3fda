"""The run's virtual timeline: where each participant's work sits in virtual time, and how busy each device was.

Virtual time is a property of the run, not of a participant: a task starts when its participant is handed the
model (after any wait for a round's barrier or for the device to become available) and ends at start + its device
time. Engines place tasks on it; this keeps, per participant, the device seconds spent so far, which the records
carry as `device_clock_s`.
"""

from __future__ import annotations

from typing import Any

from msfusion_ray.records import ParticipantRoundRow


class VirtualTimeline:
    def __init__(self) -> None:
        self.busy_s: dict[int, float] = {}

    def record(self, row: ParticipantRoundRow) -> None:
        """Count a finished (or lost) task's device time and stamp the participant's total on its row."""
        self.busy_s[row.participant] = self.busy_s.get(row.participant, 0.0) + row.device_time_s
        row.device_clock_s = self.busy_s[row.participant]

    def state_dict(self) -> dict[str, Any]:
        return {"busy_s": {str(k): v for k, v in self.busy_s.items()}}

    def load_state_dict(self, values: dict[str, Any]) -> None:
        self.busy_s = {int(k): float(v) for k, v in values["busy_s"].items()}
