"""Energy of each task, in joules, from what its record says it did and its device's power figures.

    compute       = compute_power_w * device_compute_s + compute_j_per_gflop * flops / 1e9
    communication = radio_tx_w * device_upload_s + radio_rx_w * (device_download_s + latency_s)
                    + tx_j_per_mb * bytes_up / 1e6 + rx_j_per_mb * bytes_down / 1e6
    idle          = idle_power_w * device_wait_s

latency_s is the task's round trip (device_comm_s less its download and upload); device_wait_s is how long the
device waited, after its work, for the round's barrier or the buffer's aggregation (the engines set it). A power
figure the profile does not give counts 0 where the profile gives another figure of the same part, and the part is
NaN (unknown) where it gives none. The compute part reads the recorded compute seconds, whatever model produced
them (the FLOP/s of the profile, or time measured on a native or enforced device), never a FLOP/s of its own. A
device that was off (`unavailable`) spent nothing.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.records import ParticipantRoundRow

POWER_FIELDS = ("compute_power_w", "compute_j_per_gflop", "radio_tx_w", "radio_rx_w", "tx_j_per_mb", "rx_j_per_mb",
                "idle_power_w")


def _known_sum(terms: Iterable[tuple[float | None, float]]) -> float:
    """sum(coefficient * amount) over the terms whose coefficient is given; NaN if none is."""
    given = [(c, amount) for c, amount in terms if c is not None]
    return sum(c * amount for c, amount in given) if given else math.nan


def task_energy(profile: DeviceProfile, row: ParticipantRoundRow) -> tuple[float, float, float]:
    """(compute, communication, idle) joules of a recorded task (the module's formulas)."""
    if row.status == "unavailable":
        return 0.0, 0.0, 0.0
    latency_s = max(0.0, row.device_comm_s - row.device_download_s - row.device_upload_s)
    compute = _known_sum([(profile.compute_power_w, row.device_compute_s),
                          (profile.compute_j_per_gflop, row.flops / 1e9)])
    communication = _known_sum([(profile.radio_tx_w, row.device_upload_s),
                                (profile.radio_rx_w, row.device_download_s + latency_s),
                                (profile.tx_j_per_mb, row.bytes_up / 1e6), (profile.rx_j_per_mb, row.bytes_down / 1e6)])
    idle = _known_sum([(profile.idle_power_w, row.device_wait_s)])
    return compute, communication, idle


def stamp_energy(rows: Iterable[ParticipantRoundRow], device_for: Callable[[str, int], DeviceProfile]) -> None:
    """Fill in every row's energy columns (`device_for(role, index)`: the device that did the row's task, as
    `Fleet.device_for` gives it)."""
    for row in rows:
        compute, communication, idle = task_energy(device_for(row.role, row.participant), row)
        row.energy_compute_j, row.energy_comm_j, row.energy_idle_j = compute, communication, idle
        row.energy_j = compute + communication + idle
