"""When a device is reachable, in the run's virtual time.

Three models (`fleet.availability`):
- `per_round` (default): in each synchronous round every device is reachable with its profile's `availability`
  (a seeded Bernoulli draw per round, `Fleet.available`); it never goes away mid-task. Engines without rounds
  (the semi-asynchronous one) see every device always on.
- `windows`: each device alternates on and off periods drawn from exponential distributions with its profile's
  means `on_mean_s` and `off_mean_s`, seeded per participant; it starts on with the stationary probability
  on / (on + off).
- `trace`: the on-windows are read from a CSV file: columns `start_s`, `end_s` and either `participant` (an id)
  or `device` (a profile name: every participant of that class). Outside its windows a device is off.
- `diurnal`: each device is on once a day, for its profile's `diurnal.hours` from `diurnal.start_h` (virtual time
  0 is midnight), its start shifted once per participant by a seeded offset within +- `diurnal.spread_h`; each
  day's window happens with the participant's `availability` (seeded per participant and day). A profile without
  a diurnal pattern is always on.

A device that goes off while it trains loses that work (`dropped`).
"""

from __future__ import annotations

import bisect
import csv
import math
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from msfusion_ray.devices.fleet import Fleet
from msfusion_ray.devices.profile import DiurnalPattern
from msfusion_ray.errors import UserInputError

INF = math.inf


class Availability(Protocol):
    windowed: bool  # whether devices can go off in virtual time (False: always on, or per-round draws only)

    def is_on(self, participant: int, t: float) -> bool: ...

    def window_end(self, participant: int, t: float) -> float:
        """End of the on-window that contains `t` (`inf` if it never ends); `t` must be on."""

    def next_on(self, participant: int, t: float) -> float:
        """Earliest time >= t at which the device is on (`inf`: never again)."""


class AlwaysOn:
    windowed = False

    def is_on(self, participant: int, t: float) -> bool:
        return True

    def window_end(self, participant: int, t: float) -> float:
        return INF

    def next_on(self, participant: int, t: float) -> float:
        return t


class Windows:
    """Sorted, disjoint on-windows [start, end) of one device, extended on demand by `more` (None: no more)."""

    def __init__(self, windows: Iterable[tuple[float, float]] = (),
                 more: Callable[[], tuple[float, float] | None] | None = None):
        self.starts: list[float] = []
        self.ends: list[float] = []
        for start, end in sorted(windows):
            self._append(start, end)
        self._more = more

    def _append(self, start: float, end: float) -> None:
        if self.ends and start <= self.ends[-1]:  # touching or overlapping: one window
            self.ends[-1] = max(self.ends[-1], end)
        else:
            self.starts.append(start)
            self.ends.append(end)

    def _cover(self, t: float) -> None:
        while self._more is not None and (not self.ends or self.ends[-1] <= t):
            window = self._more()
            if window is None:
                self._more = None
            else:
                self._append(*window)

    def _index(self, t: float) -> int:
        """Index of the last window starting at or before t (-1: none)."""
        self._cover(t)
        return bisect.bisect_right(self.starts, t) - 1

    def is_on(self, t: float) -> bool:
        i = self._index(t)
        return i >= 0 and t < self.ends[i]

    def window_end(self, t: float) -> float:
        i = self._index(t)
        return self.ends[i] if i >= 0 and t < self.ends[i] else t

    def next_on(self, t: float) -> float:
        if self.is_on(t):
            return t
        i = self._index(t)
        return self.starts[i + 1] if i + 1 < len(self.starts) else INF


class WindowedAvailability:
    """Each participant's on-windows, made the first time it is asked about (`make(participant)`): a run asks
    about the participants it considers, not the whole registered fleet."""

    windowed = True

    def __init__(self, make: Callable[[int], Windows]):
        self._make = make
        self._windows: dict[int, Windows] = {}

    def _of(self, participant: int) -> Windows:
        windows = self._windows.get(participant)
        if windows is None:
            windows = self._windows[participant] = self._make(participant)
        return windows

    def is_on(self, participant: int, t: float) -> bool:
        return self._of(participant).is_on(t)

    def window_end(self, participant: int, t: float) -> float:
        return self._of(participant).window_end(t)

    def next_on(self, participant: int, t: float) -> float:
        return self._of(participant).next_on(t)


def on_off_process(on_mean_s: float, off_mean_s: float, seed: list[int]) -> Windows:
    """Alternating exponential on and off periods, starting on with probability on / (on + off)."""
    rng = np.random.default_rng(seed)
    clock = 0.0
    if rng.random() >= on_mean_s / (on_mean_s + off_mean_s):
        clock = float(rng.exponential(off_mean_s))

    def more() -> tuple[float, float]:
        nonlocal clock
        start = clock
        end = start + float(rng.exponential(on_mean_s))
        clock = end + float(rng.exponential(off_mean_s))
        return start, end

    return Windows(more=more)


def process_availability(fleet: Fleet, seed: int) -> WindowedAvailability:
    def windows(participant: int) -> Windows:
        device = fleet.device_of(participant)
        if device.on_mean_s is None or device.off_mean_s is None:
            return Windows([(0.0, INF)])
        return on_off_process(device.on_mean_s, device.off_mean_s, [seed, participant, 0x0FF])

    return WindowedAvailability(windows)


DAY_S = 86_400.0


def daily_windows(pattern: DiurnalPattern, availability: float, seed: list[int]) -> Windows:
    """The daily on-windows of one participant (module docstring), generated day by day as the run needs them."""
    if availability <= 0:
        return Windows()
    offset_h = float(np.random.default_rng([*seed, 0x0FF5E7]).uniform(-pattern.spread_h, pattern.spread_h))
    start_s, length_s = (pattern.start_h + offset_h) * 3600.0, pattern.hours * 3600.0
    day = -1  # yesterday's window may reach into the first day

    def more() -> tuple[float, float]:
        nonlocal day
        while True:
            begin = day * DAY_S + start_s
            drawn = np.random.default_rng([*seed, day + 1]).random()  # day + 1 >= 0: seeds are non-negative
            day += 1
            if drawn < availability and begin + length_s > 0:
                return max(0.0, begin), begin + length_s

    return Windows(more=more)


def diurnal_availability(fleet: Fleet, seed: int) -> WindowedAvailability:
    def windows(participant: int) -> Windows:
        device = fleet.device_of(participant)
        if device.diurnal is None:
            return Windows([(0.0, INF)])
        return daily_windows(device.diurnal, device.availability, [seed, participant, 0xD1A])

    return WindowedAvailability(windows)


def read_trace(path: str | Path, fleet: Fleet) -> WindowedAvailability:
    """On-windows from a CSV trace (see the module docstring); every malformed row is a one-line error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(str(path), "availability trace not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(str(path), f"cannot read the availability trace ({err})") from None
    reader = csv.DictReader(text.splitlines())
    columns = set(reader.fieldnames or ())
    if not {"start_s", "end_s"} <= columns or not ({"participant", "device"} & columns):
        raise UserInputError(str(path), "an availability trace needs columns start_s, end_s and participant or device")
    classes = {profile.name: k for k, profile in enumerate(fleet.profiles) if np.any(fleet.profile_of == k)}
    own: dict[int, list[tuple[float, float]]] = {}  # rows naming a participant, by participant
    of_class: dict[int, list[tuple[float, float]]] = {}  # rows naming a device class, by its index in the fleet
    for line, row in enumerate(reader, start=2):
        where = f"{path}:{line}"
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
        except (TypeError, ValueError):
            raise UserInputError(where, "start_s and end_s must be numbers") from None
        if not (math.isfinite(start) and start >= 0 and end > start):
            raise UserInputError(where, f"needs 0 <= start_s < end_s (got {start}, {end})")
        kind, key = _trace_target(row, classes, len(fleet), where)
        (own if kind == "participant" else of_class).setdefault(key, []).append((start, end))

    def windows(participant: int) -> Windows:
        return Windows(own.get(participant, []) + of_class.get(int(fleet.profile_of[participant]), []))

    return WindowedAvailability(windows)


def _trace_target(row: dict, classes: dict[str, int], size: int, where: str) -> tuple[str, int]:
    """What a trace row names: ("participant", its id) or ("device", the class's index in the fleet)."""
    participant, device = (row.get("participant") or "").strip(), (row.get("device") or "").strip()
    if participant:
        if not participant.isdigit() or int(participant) >= size:
            raise UserInputError(where, f"participant {participant!r} is not in the fleet (ids 0..{size - 1})")
        return "participant", int(participant)
    if device not in classes:
        raise UserInputError(where, f"device {device!r} is not in the fleet (known: {', '.join(sorted(classes))})")
    return "device", classes[device]


def make_availability(mode: str, fleet: Fleet, seed: int, trace: str | Path | None = None) -> Availability:
    if mode == "windows":
        return process_availability(fleet, seed)
    if mode == "diurnal":
        return diurnal_availability(fleet, seed)
    if mode == "trace":
        if trace is None:
            raise UserInputError("fleet.availability_trace", "availability 'trace' needs a trace file")
        return read_trace(trace, fleet)
    return AlwaysOn()
