"""Fleets drawn from device lists: the phone list that ships (device_profiles/sources/phones.yaml, converted from
public data) or a user's own list, and fleets that are a list row for row.

    fleet: {sample: {source: phones, size: 100, seed: 3}}     # 100 phones drawn from the shipped list
    fleet: {sample: {source: my_devices.csv, size: 40}}        # drawn from the user's list
    fleet: {device_list: my_devices.csv}                       # every row of the list a participant

A shipped source is a YAML file under device_profiles/sources/ naming its CSV files, their license and origin,
the conversion of its columns to a profile's figures, and the figures every device of it shares. The phone list's
conversion (`ai_benchmark_table`):

    memory_mib   = ram_gb * 1024 * memory_share
    train_gflops = cpu_f_ai_score * anchor_gflops / median(cpu_f_ai_score of the anchor phones)
    uplink_mbps, downlink_mbps = one network user's mean speeds (KiB/s) * 1024 * 8 / 1e6, drawn per participant

Devices are drawn uniformly, with replacement unless `replace: false`, seeded by `sample.seed` (default: the run's
seed); a participant's network user is drawn from the same seed. Each participant's figures travel as arrays.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msfusion_ray.config import ExperimentConfig, FleetConfig
from msfusion_ray.devices.device_list import DeviceTable, read_device_list, table_fleet
from msfusion_ray.devices.fleet import Fleet, FleetSpec, compute_nodes_of
from msfusion_ray.devices.profile import DeviceProfile, default_profiles_dir, profile_from_dict
from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import load_yaml, read_text
from msfusion_ray.validation import build, checked, fraction, positive

KIB_S_TO_MBPS = 1024 * 8 / 1e6


@dataclass(frozen=True)
class AiBenchmarkSource:
    """A shipped source in the AI-Benchmark format (device_profiles/sources/phones.yaml)."""

    name: str
    description: str
    devices: str  # CSV beside the YAML: model, soc, ram_gb, year, cpu_f_ai_score, ...
    network: str  # CSV beside the YAML: user, down_kib_s, down_sigma_kib_s, up_kib_s, up_sigma_kib_s
    license: str
    repository: str
    commit: str
    memory_share: float = checked(check=fraction)  # of a phone's RAM that training may use
    anchor_soc_prefix: str  # the phones whose published training throughput anchors the conversion
    anchor_gflops: float = checked(check=positive)  # ... and that throughput (GFLOP/s), given to their median
    shared: dict[str, Any] = checked({})  # profile fields every phone shares (latency, availability, power)


def sources_dir() -> Path:
    return default_profiles_dir() / "sources"


def shipped_sources() -> list[str]:
    return sorted(p.stem for p in sources_dir().glob("*.yaml"))


def load_source(name: str) -> AiBenchmarkSource:
    path = sources_dir() / f"{name}.yaml"
    return build(AiBenchmarkSource, load_yaml(path), str(path))


def ai_benchmark_table(source: AiBenchmarkSource) -> DeviceTable:
    """The source's phones converted to a profile's figures (module docstring); its shared figures checked as a
    profile's."""
    path = sources_dir() / source.devices
    rows = list(csv.DictReader(read_text(path).splitlines()))
    names = tuple(row["model"] for row in rows)
    ram_gb = np.asarray([float(row["ram_gb"]) for row in rows])
    score = np.asarray([float(row["cpu_f_ai_score"]) for row in rows])
    anchors = np.asarray([row["soc"].startswith(source.anchor_soc_prefix) for row in rows])
    if not anchors.any():
        raise UserInputError(f"{sources_dir() / source.name}.yaml.anchor_soc_prefix",
                             f"no phone of {source.devices} has a SoC starting with {source.anchor_soc_prefix!r}")
    gflops_per_point = source.anchor_gflops / float(np.median(score[anchors]))
    checked_as_profile = profile_from_dict({"name": source.name, "description": source.description,
                                            "memory_mib": 1.0, "train_gflops": 1.0, "uplink_mbps": 1.0,
                                            "downlink_mbps": 1.0, **source.shared},
                                           f"{sources_dir() / source.name}.yaml.shared")
    shared = {key: getattr(checked_as_profile, key) for key in source.shared}
    return DeviceTable(source.name, names, {"memory_mib": ram_gb * 1024 * source.memory_share,
                                            "train_gflops": score * gflops_per_point}, source.description, shared)


def network_table(source: AiBenchmarkSource) -> tuple[np.ndarray, np.ndarray]:
    """Each network user's mean uplink and downlink, in Mb/s."""
    rows = list(csv.DictReader(read_text(sources_dir() / source.network).splitlines()))
    up = np.asarray([float(row["up_kib_s"]) for row in rows]) * KIB_S_TO_MBPS
    down = np.asarray([float(row["down_kib_s"]) for row in rows]) * KIB_S_TO_MBPS
    return up, down


def sampled_fleet(source: str, size: int, seed: int, run_seed: int, *, replace_draws: bool = True,
                  memory_scale: float = 1.0, jitter: float | None = None, where: str = "fleet.sample") -> Fleet:
    """`size` devices drawn from a shipped source or a device list CSV (module docstring)."""
    shipped = load_source(source) if source in shipped_sources() else None
    table = ai_benchmark_table(shipped) if shipped is not None else _user_list(source, where)
    check_draws(len(table), size, replace_draws, source, where)
    rng = np.random.default_rng([seed, 0x5A3])
    rows = rng.integers(len(table), size=size) if replace_draws else rng.choice(len(table), size, replace=False)
    extra = None
    if shipped is not None:
        up, down = network_table(shipped)
        users = rng.integers(len(up), size=size)
        extra = {"uplink_mbps": up[users], "downlink_mbps": down[users]}
    return table_fleet(table, rows, memory_scale=memory_scale, seed=run_seed, extra=extra, jitter=jitter)


def check_draws(listed: int, size: int, replace_draws: bool, source: str, where: str = "fleet.sample") -> None:
    if not replace_draws and size > listed:
        raise UserInputError(f"{where}.size", f"{size} devices drawn without replacement from a list of {listed} "
                                              f"({source}): lower the size or set replace: true")


def source_length(source: str, where: str = "fleet.sample") -> int:
    """How many devices a sample's source lists."""
    if source in shipped_sources():
        return len(ai_benchmark_table(load_source(source)))
    return len(_user_list(source, where))


def listed_fleet(path: str, run_seed: int, *, memory_scale: float = 1.0, jitter: float | None = None) -> Fleet:
    """Every device of a user's list, in its order, one participant each."""
    table = read_device_list(path)
    return table_fleet(table, np.arange(len(table)), memory_scale=memory_scale, seed=run_seed, jitter=jitter)


def _user_list(source: str, where: str) -> DeviceTable:
    if not Path(source).is_file():
        raise UserInputError(f"{where}.source", f"neither a shipped source ({', '.join(shipped_sources())}) nor a "
                                                f"device list file: {source}")
    return read_device_list(source)


def whole_source(name: str) -> Fleet:
    """A shipped source's whole list, one participant per device (network users taken in turn): what `profiles`
    shows the spread of."""
    shipped = load_source(name)
    table = ai_benchmark_table(shipped)
    up, down = network_table(shipped)
    return table_fleet(table, np.arange(len(table)), memory_scale=1.0, seed=0,
                       extra={"uplink_mbps": np.resize(up, len(table)), "downlink_mbps": np.resize(down, len(table))})


@dataclass(frozen=True)
class ListedFleetSource:
    """A fleet the config draws from a list (`fleet.sample`) or takes row for row (`fleet.device_list`), with the
    pipeline's compute nodes and aggregator from the profiles, where it names them."""

    fleet: FleetConfig
    profiles: dict[str, DeviceProfile]
    where: str = "fleet"

    def size(self, config: ExperimentConfig) -> int:
        """Participants the fleet will have, and whether the list can give them (before anything is built)."""
        sample = self.fleet.sample
        if sample is not None:
            size = self.fleet.size or sample.size
            check_draws(source_length(sample.source), size, sample.replace, sample.source)
            return size
        return len(read_device_list(self.fleet.device_list))

    def build(self, config: ExperimentConfig) -> Fleet:
        fleet, scale = self.fleet, self.fleet.memory_scale if self.fleet.memory_scale is not None else 1.0
        if fleet.sample is not None:
            sample = fleet.sample
            seed = sample.seed if sample.seed is not None else config.seed
            built = sampled_fleet(sample.source, self.size(config), seed, config.seed, replace_draws=sample.replace,
                                  memory_scale=scale, jitter=fleet.jitter)
        else:
            built = listed_fleet(fleet.device_list, config.seed, memory_scale=scale, jitter=fleet.jitter)
        spec = FleetSpec(name=built.name, devices={}, compute_nodes=dict(fleet.compute_nodes or {}),
                         aggregator=fleet.aggregator)
        nodes, aggregator = compute_nodes_of(spec, self.profiles, scale, self.where)
        return built.with_nodes(nodes, aggregator)
