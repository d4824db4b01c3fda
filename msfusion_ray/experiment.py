"""From a config to everything a run needs, checked before anything is started or written.

`prepare` resolves every name (data set, model, strategy, device profiles, fleet), loads and partitions the data,
asks the strategy to fix its global model against the fleet's capacity, and rejects impossible set-ups. It runs in
the CLI before a run directory exists (so bad input leaves nothing behind) and again inside the driver actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msfusion_ray.code_refs import is_code_ref
from msfusion_ray.config import ExperimentConfig
from msfusion_ray.data import load_data, partition
from msfusion_ray.data.arrays import DataBundle
from msfusion_ray.devices.availability import Availability, make_availability
from msfusion_ray.devices.capacity import CapacityOracle, make_planner
from msfusion_ray.devices.fleet import Fleet, FleetSpec, load_fleet_spec, make_fleet
from msfusion_ray.devices.profile import default_profiles_dir, load_profiles
from msfusion_ray.errors import UserInputError
from msfusion_ray.models import ModelFamily, ModuleFamily, build_family
from msfusion_ray.models.module import check_sub_model
from msfusion_ray.paths import find
from msfusion_ray.strategies import make_strategy
from msfusion_ray.strategies.base import ParticipantInfo, Strategy
from msfusion_ray.strategies.width import WidthSplitting
from msfusion_ray.tracking import check_tracking
from msfusion_ray.training.objective import make_objective


@dataclass
class Prepared:
    config: ExperimentConfig
    data: DataBundle
    fleet: Fleet
    partitions: list[np.ndarray]
    family: ModelFamily  # the global model's family (after the strategy fixed it)
    strategy: Strategy
    capacity: CapacityOracle
    availability: Availability

    def participant_infos(self) -> list[ParticipantInfo]:
        return participant_infos(self.fleet, self.partitions)


def participant_infos(fleet: Fleet, partitions: list[np.ndarray]) -> list[ParticipantInfo]:
    """What strategies may know of each participant: id, device class name, and how many samples it holds."""
    return [ParticipantInfo(p.id, p.device.name, len(partitions[p.id])) for p in fleet.participants]


def project_path(path: str) -> Path:
    """A path as given (absolute, or relative to the current directory) if it is there, else among the files that
    ship with the package (msfusion_ray.paths)."""
    return find(path)


def resolve_fleet(config: ExperimentConfig) -> Fleet:
    fleet_config = config.fleet
    profiles_dir = project_path(fleet_config.profiles_dir) if fleet_config.profiles_dir else default_profiles_dir()
    profiles = load_profiles(profiles_dir)
    if fleet_config.file is not None:
        spec, where = load_fleet_spec(project_path(fleet_config.file)), str(fleet_config.file)
    else:
        spec, where = FleetSpec(name="inline", devices=dict(fleet_config.devices)), "fleet"
    return make_fleet(spec, profiles, size=fleet_config.size, memory_scale=fleet_config.memory_scale,
                      seed=config.seed, where=where)


def check_module(family: ModuleFamily, strategy: Strategy, needs_features: bool) -> None:
    """What a network from a function must offer its scheme: width tags for a width-splitting scheme (checked by
    cutting a random sub-model), penultimate features for an objective that uses them."""
    if needs_features and not family.has_features:
        raise UserInputError("model.name", f"{strategy.name} trains with a loss on the penultimate features: give "
                                           f"the module of {family.source} a forward_features(x) returning "
                                           "(features, logits)")
    if family.spec.groups:
        check_sub_model(family, seed=0)
    elif isinstance(strategy, WidthSplitting):
        raise UserInputError("model.name", f"{strategy.name} splits the model by width, but {family.source} has "
                                           "no width tags (see width_axes in msfusion_ray.splitting.spec)")


def resolve_availability(config: ExperimentConfig, fleet: Fleet) -> Availability:
    fleet_config = config.fleet
    if fleet_config.availability_trace is not None and fleet_config.availability != "trace":
        raise UserInputError("fleet.availability_trace", "a trace is read only with fleet.availability: trace")
    trace = project_path(fleet_config.availability_trace) if fleet_config.availability_trace else None
    return make_availability(fleet_config.availability, fleet, config.seed, trace)


def prepare(config: ExperimentConfig, data: DataBundle | None = None) -> Prepared:
    check_tracking(config.runtime)
    fleet = resolve_fleet(config)
    availability = resolve_availability(config, fleet)
    if data is None:
        data = load_data(config.data, config.seed)
    partitions = partition(data, config.data, len(fleet), config.seed)
    family = build_family(config.model.name, data.shape, config.model.width, config.model.options, config.seed)
    strategy = make_strategy(config.strategy, family, config.seed)
    spec = strategy.objective()
    objective = make_objective(spec.name, spec.params) if spec is not None else None
    if isinstance(family, ModuleFamily) and is_code_ref(family.source):  # the built-in networks are tested
        check_module(family, strategy, objective is not None)
    capacity = CapacityOracle(fleet, family, make_planner(family, config.training, objective),
                              config.training.batch_size)
    if all(capacity.max_rate(p.id) is None for p in fleet.participants):
        narrowest = capacity.footprint_bytes(capacity.rate_widths(1e-9))
        largest = max(p.memory_cap_bytes for p in fleet.participants)
        raise UserInputError("fleet", f"no participant can train even the narrowest sub-model (needs "
                                      f"{narrowest / 2**20:.1f} MiB, largest memory cap {largest / 2**20:.1f} MiB)")
    global_family = strategy.configure(capacity, participant_infos(fleet, partitions))
    return Prepared(config, data, fleet, partitions, global_family, strategy, capacity, availability)
