"""What a fleet's devices are, participant by participant (the run's records/fleet.parquet) and as a spread per
class (what `validate` and `profiles` print)."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from msfusion_ray.devices.energy import POWER_FIELDS
from msfusion_ray.devices.fleet import Fleet
from msfusion_ray.devices.profile import MIB, DeviceProfile
from msfusion_ray.devices.sources import load_source, shipped_sources, whole_source

FIGURES = ("train_gflops", "uplink_mbps", "downlink_mbps", "latency_ms", "availability", "jitter", *POWER_FIELDS)
# (column, heading, scale) of the spread table
SPREAD = (("memory_cap_bytes", "memory cap MiB", 1 / MIB), ("train_gflops", "GFLOP/s", 1.0),
          ("uplink_mbps", "up Mb/s", 1.0), ("downlink_mbps", "down Mb/s", 1.0), ("latency_ms", "RTT ms", 1.0))


def fleet_table(fleet: Fleet, rows: range | None = None) -> dict[str, np.ndarray]:
    """One entry per participant (of `rows`, where given): its class, its device's name (listed or sampled fleets),
    its memory cap and every figure of its own device (NaN: a power figure its profile does not give)."""
    ids = np.arange(len(fleet), dtype=np.int64) if rows is None else np.arange(rows.start, rows.stop, dtype=np.int64)
    profiles, class_of = fleet.profiles, fleet.profile_of[ids]
    table: dict[str, np.ndarray] = {
        "participant": ids,
        "device": np.asarray([p.name for p in profiles], dtype=object)[class_of],
        "name": _device_names(fleet, ids),
        "memory_cap_bytes": np.asarray(fleet.memory_caps[ids], dtype=np.int64),
    }
    own = fleet.values.fields if fleet.values is not None else {}
    for figure in FIGURES:
        per_class = np.asarray([_number(getattr(p, figure)) for p in profiles], dtype=np.float64)
        table[figure] = np.asarray(own[figure][ids], dtype=np.float64) if figure in own else per_class[class_of]
    return table


def fleet_parts(fleet: Fleet, rows_per_part: int = 65_536) -> Iterator[dict[str, np.ndarray]]:
    """`fleet_table` a part at a time (what records/fleet.parquet is written from: a million participants' whole
    table took the driver 316 MB more at its peak, a part of 65 536 takes a few)."""
    for start in range(0, len(fleet), rows_per_part):
        yield fleet_table(fleet, range(start, min(start + rows_per_part, len(fleet))))


def _device_names(fleet: Fleet, ids: np.ndarray) -> np.ndarray:
    values = fleet.values
    if values is None or values.name_of is None:
        return np.full(len(ids), "", dtype=object)
    return np.asarray(values.names, dtype=object)[values.name_of[ids]]


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def spread_lines(fleet: Fleet) -> list[str]:
    """Per class: how many participants, and the min, median and max of each figure that may differ."""
    table = fleet_table(fleet)
    lines = [f"{'class (min / median / max)':<26} {'count':>6}" + "".join(f"{heading:>22}" for _, heading, _ in SPREAD)]
    for name in dict.fromkeys(table["device"]):
        members = table["device"] == name
        cells = [_spread(table[column][members] * scale) for column, _, scale in SPREAD]
        lines.append(f"{name:<26} {int(members.sum()):>6}" + "".join(f"{cell:>22}" for cell in cells))
    return lines


def _spread(values: np.ndarray) -> str:
    return f"{_short(values.min())} / {_short(float(np.median(values)))} / {_short(values.max())}"


def _short(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def distribution_lines(profiles: Iterable[DeviceProfile]) -> list[str]:
    """The fields each profile gives as a distribution, with the 10th to 90th percentile they draw, and its
    per-task jitter."""
    lines = []
    for profile in profiles:
        for field, distribution in profile.spread.items():
            z = np.random.default_rng(0).standard_normal(10_000)
            u = np.random.default_rng(1).random(10_000)
            drawn = distribution.values(z, u)
            lines.append(f"{profile.name:<22} {field:<14} {distribution.describe()}: 10th-90th percentile "
                         f"{_short(np.percentile(drawn, 10))}-{_short(np.percentile(drawn, 90))}")
        if profile.jitter:
            lines.append(f"{profile.name:<22} {'jitter':<14} FLOP/s and bandwidths times exp({profile.jitter:g} z), "
                         "z drawn per task")
    return lines


def source_lines() -> list[str]:
    """The shipped device lists (fleet.sample.source), each with the spread of its whole list."""
    lines = []
    for name in shipped_sources():
        source = load_source(name)
        lines += ["", f"source '{name}' (fleet: {{sample: {{source: {name}, size: N}}}}): {source.description}; "
                      f"{source.repository} at {source.commit[:12]}, {source.license}",
                  *spread_lines(whole_source(name))]
    return lines


def profile_lines(profiles: dict[str, DeviceProfile]) -> list[str]:
    """`profiles`: each profile's figures (the median of any it draws), how its members differ, its power."""
    lines = [f"{'profile':<22} {'memory MiB':>10} {'GFLOP/s':>8} {'up Mb/s':>8} {'down Mb/s':>9} {'RTT ms':>7} "
             f"{'avail':>5} {'W train/idle':>12}"]
    for p in profiles.values():
        power = f"{p.compute_power_w:g}/{p.idle_power_w or 0:g}" if p.compute_power_w is not None else "-"
        lines.append(f"{p.name:<22} {p.memory_mib:>10.0f} {p.train_gflops:>8.1f} {p.uplink_mbps:>8.1f} "
                     f"{p.downlink_mbps:>9.1f} {p.latency_ms:>7.0f} {p.availability:>5.2f} {power:>12}")
    varying = distribution_lines(profiles.values())
    if varying:
        lines += ["", "within a class (drawn per participant; the table shows each median):", *varying]
    return lines + source_lines()
