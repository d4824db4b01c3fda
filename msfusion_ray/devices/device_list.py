"""A fleet from a list of devices: the user's own CSV (one row per device), or a list sampled from public data
(msfusion_ray.devices.sources).

A device list is a CSV file with a header and the columns

    name, memory_mib, train_gflops, uplink_mbps, downlink_mbps, latency_ms

(a device's name, the memory training may use, sustained training FLOP/s in GFLOP/s, its link in Mb/s and its
round trip in ms, as in a device profile), and optionally any of availability, jitter and the power figures of a
profile (compute_power_w, compute_j_per_gflop, radio_tx_w, radio_rx_w, tx_j_per_mb, rx_j_per_mb, idle_power_w).
Every row is one participant (`fleet.device_list`), or the list is drawn from (`fleet.sample.source`). The fleet
is one class, named after the list, whose profile holds each column's median; each participant's own figures are
kept as arrays (msfusion_ray.devices.variation).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from msfusion_ray.devices.energy import POWER_FIELDS
from msfusion_ray.devices.fleet import Fleet
from msfusion_ray.devices.profile import MIB, DeviceProfile
from msfusion_ray.devices.variation import ParticipantValues
from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import read_text

REQUIRED = ("name", "memory_mib", "train_gflops", "uplink_mbps", "downlink_mbps", "latency_ms")
OPTIONAL = ("availability", "jitter", *POWER_FIELDS)
_POSITIVE = ("memory_mib", "train_gflops", "uplink_mbps", "downlink_mbps")


@dataclass(frozen=True)
class DeviceTable:
    """Devices as columns: their names and, per numeric column, one value per device; `shared`: figures every
    device of the list has (profile fields: a source's latency and power, say)."""

    name: str  # the list's (and the fleet's one class's) name
    names: tuple[str, ...]
    columns: dict[str, np.ndarray]
    description: str = ""
    shared: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def read_device_list(path: str | Path) -> DeviceTable:
    """A device list CSV (module docstring); a missing column, a value that is not a number or out of range names
    the file, the row and the column."""
    path = Path(path)
    reader = csv.DictReader(read_text(path).splitlines())
    columns = [c.strip() for c in reader.fieldnames or ()]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise UserInputError(str(path), f"a device list needs the column(s) {', '.join(missing)} (it has: "
                                        f"{', '.join(columns) or 'none'})")
    unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise UserInputError(str(path), f"unknown column(s) {', '.join(unknown)} (known: "
                                        f"{', '.join(REQUIRED + OPTIONAL)})")
    numeric = [c for c in columns if c != "name"]
    names, values = [], {c: [] for c in numeric}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row.get("name"):
            raise UserInputError(f"{path}:{line}.name", "every device needs a name")
        names.append(row["name"])
        for column in numeric:
            values[column].append(_number(row.get(column, ""), column, f"{path}:{line}.{column}"))
    if not names:
        raise UserInputError(str(path), "the device list has no devices")
    return DeviceTable(path.stem, tuple(names), {c: np.asarray(v, dtype=np.float64) for c, v in values.items()},
                       f"devices listed in {path.name}")


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserInputError(where, f"must be a number (got {text!r})") from None
    if not math.isfinite(value):
        raise UserInputError(where, f"must be finite (got {text!r})")
    if column in _POSITIVE and not value > 0:
        raise UserInputError(where, f"must be > 0 (got {text})")
    if column == "availability" and not 0 <= value <= 1:
        raise UserInputError(where, f"must be in [0, 1] (got {text})")
    if not value >= 0:
        raise UserInputError(where, f"must be >= 0 (got {text})")
    return value


def table_fleet(table: DeviceTable, rows: Sequence[int] | np.ndarray, *, memory_scale: float, seed: int,
                extra: dict[str, np.ndarray] | None = None, jitter: float | None = None) -> Fleet:
    """Participant i is the device at `rows[i]` of the table, with `extra` per-participant figures (a sampled
    network, say) beside the table's. The fleet's one class holds the participants' medians and the table's shared
    figures."""
    rows = np.asarray(rows, dtype=np.int64)
    fields = {c: v[rows] for c, v in table.columns.items()}
    fields.update(extra or {})
    shared = dict(table.shared)
    if jitter is not None:
        fields.pop("jitter", None)
        shared["jitter"] = jitter
    memory = fields.pop("memory_mib")
    caps = memory * MIB * memory_scale
    if len(caps) and not math.isfinite(float(caps.max())):
        raise UserInputError("fleet.memory_scale", f"is too large (got {memory_scale}: memory caps become infinite)")
    profile = DeviceProfile(name=table.name, description=table.description or f"{len(table)} listed devices",
                            memory_mib=float(np.median(memory)),
                            **{**{c: float(np.median(v)) for c, v in fields.items()}, **shared})
    return Fleet.of_arrays((profile,), np.zeros(len(caps), np.int32), caps.astype(np.int64), name=table.name,
                           seed=seed, values=ParticipantValues(fields, table.names, rows.astype(np.int32)))
