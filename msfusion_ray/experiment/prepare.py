"""From a checked config to everything a run needs (`Experiment`), refused before anything is started or written.

`prepare` resolves every name (data set, model, strategy, device profiles, fleet), loads and partitions the data,
asks the strategy to fix its global model against the fleet's capacity, and rejects impossible set-ups. The
launcher runs it once (msfusion_ray.app.lifecycle), before a run directory exists, so bad input leaves nothing
behind; the driver and host actors are handed what it made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from msfusion_ray.code_refs import is_code_ref
from msfusion_ray.config import ExperimentConfig
from msfusion_ray.data import check_enough_samples, load_data, partition
from msfusion_ray.data.arrays import DataBundle
from msfusion_ray.devices.availability import Availability, make_availability
from msfusion_ray.devices.capacity import CapacityOracle, make_planner
from msfusion_ray.devices.enforcement import check_enforcement
from msfusion_ray.devices.fleet import Fleet, FleetSpec, device_counts, load_fleet_spec, make_fleet
from msfusion_ray.devices.gpu import check_device
from msfusion_ray.devices.memory_plan import with_memory_plan
from msfusion_ray.devices.profile import DeviceProfile, default_profiles_dir, load_profiles
from msfusion_ray.devices.sources import ListedFleetSource
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.checks import check_fits_machine, check_module, check_object_store, check_tracking
from msfusion_ray.models import ModelFamily, build_family
from msfusion_ray.paths import find
from msfusion_ray.shards import SampledShards, Shards
from msfusion_ray.strategies import make_strategy
from msfusion_ray.strategies.base import ParticipantInfo, Strategy
from msfusion_ray.training.objective import make_objective


@dataclass
class Experiment:
    """A run's experiment, resolved and checked: what the driver and the hosts are handed."""

    config: ExperimentConfig
    data: DataBundle
    fleet: Fleet
    partitions: Shards | SampledShards  # each participant's training indices
    family: ModelFamily  # the global model's family (after the strategy fixed it)
    strategy: Strategy
    capacity: CapacityOracle
    availability: Availability

    def participant_infos(self) -> "ParticipantTable":
        """What the strategy may know of each participant (labels only where it reads them)."""
        return ParticipantTable(self.fleet, self.partitions, self.data if self.strategy.reads_labels() else None)


class ParticipantTable(Sequence[ParticipantInfo]):
    """What strategies may know of each participant, by id: its device class name, how many samples it holds,
    and (given the data) which labels its training targets hold (label-split masking, as HeteroFL's reference
    code keeps). Each is made when asked for, from the fleet's and the partitions' arrays: a round reads its
    cohort's, and a million registered participants cost nothing here."""

    def __init__(self, fleet: Fleet, partitions: Shards | SampledShards, data: DataBundle | None = None):
        self._fleet, self._partitions, self._data = fleet, partitions, data

    def __len__(self) -> int:
        return len(self._fleet)

    def __getitem__(self, participant: int) -> ParticipantInfo:  # type: ignore[override]  (no slices)
        if not 0 <= participant < len(self._fleet):
            raise IndexError(f"participant {participant} of {len(self._fleet)}")
        partitions = self._partitions
        labels = held_labels(self._data, partitions[participant]) if self._data is not None else None
        return ParticipantInfo(int(participant), self._fleet.profile(participant).name,
                               partitions.size_of(participant), labels)

    def __iter__(self) -> Iterator[ParticipantInfo]:
        return (self[i] for i in range(len(self)))


def held_labels(data: DataBundle, indices: np.ndarray) -> tuple[int, ...]:
    """The distinct labels of these training samples (every target token of a language model's windows)."""
    return tuple(int(label) for label in np.unique(data.train.y[indices]))


@dataclass(frozen=True)
class FleetSource:
    """A fleet as the config names it: the scenario, the profiles it draws on, and where errors point."""

    spec: FleetSpec
    profiles: dict[str, DeviceProfile]
    where: str

    def size(self, config: ExperimentConfig) -> int:
        """Participants the fleet will have, counted without building it."""
        return sum(device_counts(self.spec, self.profiles, config.fleet.size, self.where).values())

    def build(self, config: ExperimentConfig) -> Fleet:
        return make_fleet(self.spec, self.profiles, size=config.fleet.size, memory_scale=config.fleet.memory_scale,
                          seed=config.seed, where=self.where, jitter=config.fleet.jitter)


def fleet_source(config: ExperimentConfig) -> FleetSource | ListedFleetSource:
    fleet_config = config.fleet
    profiles_dir = find(fleet_config.profiles_dir) if fleet_config.profiles_dir else default_profiles_dir()
    profiles = load_profiles(profiles_dir)
    if fleet_config.sample is not None or fleet_config.device_list is not None:
        return ListedFleetSource(fleet_config, profiles)
    if fleet_config.file is not None:
        spec, where = load_fleet_spec(find(fleet_config.file)), str(fleet_config.file)
    else:
        spec, where = FleetSpec(name="inline", devices=dict(fleet_config.devices)), "fleet"
    if fleet_config.compute_nodes is not None:
        spec = replace(spec, compute_nodes=dict(fleet_config.compute_nodes))
    if fleet_config.aggregator is not None:
        spec = replace(spec, aggregator=fleet_config.aggregator)
    return FleetSource(spec, profiles, where)


def resolve_fleet(config: ExperimentConfig) -> Fleet:
    return fleet_source(config).build(config)


def resolve_availability(config: ExperimentConfig, fleet: Fleet) -> Availability:
    fleet_config = config.fleet
    if fleet_config.availability_trace is not None and fleet_config.availability != "trace":
        raise UserInputError("fleet.availability_trace", "a trace is read only with fleet.availability: trace")
    trace = find(fleet_config.availability_trace) if fleet_config.availability_trace else None
    return make_availability(fleet_config.availability, fleet, config.seed, trace)


def prepare(config: ExperimentConfig, data: DataBundle | None = None) -> Experiment:
    """The experiment of a whole-checked config (msfusion_ray.experiment.config_check); `data`: the data set,
    where the caller loaded it already (a sweep's cells share one)."""
    check_tracking(config.runtime)
    check_device(config.runtime.device, config.runtime.address)
    check_object_store(config)
    source = fleet_source(config)
    size = source.size(config)
    if data is None:
        data = load_data(config.data, config.seed)
    check_enough_samples(data, config.data, size)  # before a fleet of millions is built for nothing
    fleet = source.build(config)
    availability = resolve_availability(config, fleet)
    partitions = partition(data, config.data, len(fleet), config.seed)
    family = build_family(config.model.name, data.shape, config.model.width, config.model.options, config.seed,
                          config.model.memory_format)
    check_fits_machine(family, config.training)
    strategy = make_strategy(config.strategy, family, config.seed)
    check_enforcement(config.runtime, (fleet.device_of(pid) for pid in range(len(fleet))), strategy.engine)
    fleet = with_memory_plan(fleet, config.runtime)
    spec = strategy.objective()
    objective = make_objective(spec.name, spec.params) if spec is not None else None
    if is_code_ref(config.model.name):  # the user's code; the built-in networks are tested
        check_module(family, strategy, objective is not None)
    capacity = CapacityOracle(fleet, family, make_planner(family, config.training, objective),
                              config.training.batch_size)
    if not capacity.any_fits():
        narrowest = capacity.footprint_bytes(capacity.rate_widths(1e-9))
        largest = int(fleet.memory_caps.max())
        raise UserInputError("fleet", f"no participant can train even the narrowest sub-model (needs "
                                      f"{narrowest / 2**20:.1f} MiB, largest memory cap {largest / 2**20:.1f} MiB)")
    # configuring needs no labels: without them, a strategy that reads every participant's info reads arrays only
    global_family = strategy.configure(capacity, ParticipantTable(fleet, partitions))
    return Experiment(config, data, fleet, partitions, global_family, strategy, capacity, availability)
