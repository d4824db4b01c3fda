"""Which need model (devices/memory_need.py) the planner holds a fleet's memory caps against, by run settings."""

from __future__ import annotations

from dataclasses import replace

from msfusion_ray.devices.enforcement import load_node
from msfusion_ray.devices.fleet import Fleet


def with_memory_plan(fleet: Fleet, runtime) -> Fleet:  # noqa: ANN001 (RuntimeConfig)
    """The fleet as the planner sees it: each profile's own `memory_need`; under `enforce: cgroups` with
    `enforce_memory: process` the node's calibration's where a profile has none (what runs is a process on this
    node); none at all under `memory_plan: footprint`, nor where the limit judges tensors (`enforce_memory:
    tensors`, which the footprint predicts)."""
    if runtime.memory_plan == "footprint" or (runtime.enforce == "cgroups" and runtime.enforce_memory == "tensors"):
        profiles = tuple(replace(p, memory_need=None) for p in fleet.profiles)
    elif runtime.enforce == "cgroups":
        node = load_node(runtime.node_profile).memory_need
        profiles = tuple(p if p.memory_need is not None or node is None else replace(p, memory_need=node)
                         for p in fleet.profiles)
    else:
        return fleet
    if profiles == fleet.profiles:
        return fleet
    return Fleet.of_arrays(profiles, fleet.profile_of, fleet.memory_caps, fleet.name, fleet.seed,
                           fleet.compute_nodes, fleet.aggregator, fleet.values)
