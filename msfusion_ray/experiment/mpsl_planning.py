"""MP-SL's planning experiments, without training: memory per compute node, the cheapest nodes that fit, and the
split optimiser against manual splits on the virtual timeline. Markdown tables on stdout.

    python -m msfusion_ray.experiment.mpsl_planning memory   # VGG-19, 100 owners: one hop against 2, 3, 4 nodes
    python -m msfusion_ray.experiment.mpsl_planning splits   # ResNet-101 and VGG-19, K = 100, 150, N = 3, 4, 5

Both start from configs/mpsl/vgg19_paper.yaml (the paper's setting: batch 128, 16 batches per owner, 2 local
epochs, Raspberry Pi 4 owners on 8 Mb/s, SGD with momentum) and profile each model's layers once.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import replace
from typing import Sequence

from functools import lru_cache

from msfusion_ray.config import ExperimentConfig
from msfusion_ray.costs.layers import LayerCost, part_memory
from msfusion_ray.data import planned_shape
from msfusion_ray.devices.fleet import FleetSpec, make_fleet
from msfusion_ray.devices.profile import DeviceProfile, load_profiles
from msfusion_ray.experiment.config_check import load_config
from msfusion_ray.experiment.pipeline_planning import pipeline_params
from msfusion_ray.models import ModelFamily, build_family
from msfusion_ray.paths import find
from msfusion_ray.pipeline.depth_split import Split, optimal_split
from msfusion_ray.pipeline.plan import PipelineParams, PipelinePlanner

GB = 1e9
GIB = 2**30
PAPER_CONFIG = "configs/mpsl/vgg19_paper.yaml"
OWNER = "raspberry-pi-4-vpn"
PAPER_NODE = "vm-8vcpu-16gb"
UNBOUNDED = 10**6  # memory_scale that makes no cap bind (the authors' released ILP leaves K out of eq. 9)


def _config(overrides: Sequence[str]) -> ExperimentConfig:
    return load_config(find(PAPER_CONFIG), list(overrides))


@lru_cache(maxsize=1)
def _profiles() -> dict[str, DeviceProfile]:
    return load_profiles()


def _family(config: ExperimentConfig) -> ModelFamily:
    return build_family(config.model.name, planned_shape(config.data), config.model.width, config.model.options,
                          memory_format=config.model.memory_format)


def _planner(config: ExperimentConfig, owners: int, nodes: dict[str, int], params: PipelineParams,
             costs: Sequence[LayerCost] | None = None, memory_scale: float = 1.0) -> PipelinePlanner:
    """A planner for `owners` Pi owners and these compute nodes (profiling the layers unless `costs` are given)."""
    spec = FleetSpec(name="planning", devices={OWNER: owners}, compute_nodes=nodes, aggregator=PAPER_NODE,
                     memory_scale=memory_scale)
    fleet = make_fleet(spec, _profiles(), seed=config.seed)
    batches = [params.batches_per_owner * config.training.local_epochs] * owners
    return PipelinePlanner(_family(config), fleet, config.training, params, batches, costs=costs)


def cheapest_nodes(config: ExperimentConfig, owners: int, n_nodes: int, params: PipelineParams,
                   costs: Sequence[LayerCost]) -> tuple[float, dict[str, int], Split] | None:
    """The cheapest multiset of priced compute-node profiles (per hour) for which the integer program finds a split
    that fits, with its fastest split; equal prices go to the faster pipeline."""
    priced = {name: p.hourly_cost_usd for name, p in _profiles().items() if p.hourly_cost_usd is not None}
    best = None
    for combo in itertools.combinations_with_replacement(sorted(priced), n_nodes):
        price = sum(priced[name] for name in combo)
        if best is not None and price > best[0] + 1e-9:
            continue
        nodes = {name: combo.count(name) for name in dict.fromkeys(combo)}
        split = optimal_split(_planner(config, owners, nodes, params, costs).problem)
        if split is not None and (best is None or price < best[0] - 1e-9 or split.pipe_full_s < best[2].pipe_full_s):
            best = (price, nodes, split)
    return best


def memory_table(back_layers: int, owners: int = 100) -> list[str]:
    """Per compute-node count: the smallest possible largest node (the integer program minimising it, no caps), in
    full (training state: SGD with momentum) and counting parameters and activations only; then the cheapest priced
    nodes that fit, with the fastest split on them and its per-node memory."""
    config = _config([])
    params = replace(pipeline_params(config), back_layers=back_layers)
    costs = _planner(config, owners, {PAPER_NODE: 1}, params, memory_scale=UNBOUNDED).costs
    names = [c.name for c in costs]
    middle = (params.front_layers, len(costs) - back_layers)
    rows = [f"Owners keep layers 0-{middle[0] - 1} and {middle[1]}-{len(names) - 1} ({', '.join(names[middle[1]:])});"
            f" {owners} owners, batch {config.training.batch_size}.", "",
            "| compute nodes | largest node, at best (GB) | that split, parameters + activations only (GB) "
            "| cheapest nodes that fit | $/hour | their memory, in pipeline order (GB) | pipe-full s/batch "
            "| epoch, schedule (min) | $ per epoch |",
            "|---|---|---|---|---|---|---|---|---|"]
    for n_nodes in (1, 2, 3, 4):
        planner = _planner(config, owners, {PAPER_NODE: n_nodes}, params, costs, memory_scale=UNBOUNDED)
        smallest = optimal_split(planner.problem, "memory")
        largest = max(smallest.memory_bytes)
        light_bytes = max(owners * (m.parameters + m.activations)
                          for m in (part_memory(costs, a, b, 0) for a, b in smallest.ranges))
        label = "1 (one hop)" if n_nodes == 1 else str(n_nodes)
        cheapest = cheapest_nodes(config, owners, n_nodes, params, costs)
        if cheapest is None:
            rows.append(f"| {label} | {largest / GB:.1f} | {light_bytes / GB:.1f} | none of the profiles | | | | | |")
            continue
        price, nodes, fitted = cheapest
        epoch_s = _planner(config, owners, nodes, params, costs).plan(fitted).schedule.epoch_s
        chosen = " + ".join(f"{count} x {name}" for name, count in nodes.items())
        memory = " / ".join(f"{m / GB:.1f}" for m in fitted.memory_bytes)
        rows.append(f"| {label} | {largest / GB:.1f} | {light_bytes / GB:.1f} | {chosen} | {price:.3f} | {memory} | "
                    f"{fitted.pipe_full_s:.2f} | {epoch_s / 60:.1f} | {price * epoch_s / 3600:.2f} |")
    rows += horizontal_rows(config, owners, params, costs)
    return rows


def horizontal_rows(config: ExperimentConfig, owners: int, params: PipelineParams,
                    costs: Sequence[LayerCost]) -> list[str]:
    """Horizontally scaled one-hop parallel split learning (the paper's baseline): h nodes, each serving its own
    ceil(K / h) owners with the whole middle; the cheapest profile of which h fit, and the slowest node's epoch."""
    priced = {name: p.hourly_cost_usd for name, p in _profiles().items() if p.hourly_cost_usd is not None}
    rows = []
    for h in (2, 3, 4):
        share = math.ceil(owners / h)
        best = None
        for name in sorted(priced, key=priced.get):
            planner = _planner(config, share, {name: 1}, params, costs)
            split = optimal_split(planner.problem)
            if split is not None:
                best = (name, split, planner.plan(split).schedule.epoch_s)
                break
        if best is None:
            rows.append(f"| {h} x one hop, {share} owners each | | | none of the profiles | | | | | |")
            continue
        name, split, epoch_s = best
        rows.append(f"| {h} x one hop, {share} owners each | | | {h} x {name} | {h * priced[name]:.3f} | "
                    f"{split.memory_bytes[0] / GB:.1f} each | {split.pipe_full_s:.2f} | {epoch_s / 60:.1f} | "
                    f"{h * priced[name] * epoch_s / 3600:.2f} |")
    return rows


def memory_experiment() -> None:
    print("## Memory per compute node: VGG-19 (CIFAR-10 input), 100 owners\n")
    for back_layers in (1, 3):
        print("\n".join(memory_table(back_layers)))
        print()


def split_rows(model: str, owners: Sequence[int] = (100, 150), nodes: Sequence[int] = (3, 4, 5)) -> list[str]:
    overrides = [] if model == "vgg" else ["model.name=resnet101", "strategy.params.front_layers=2"]
    config = _config(overrides)
    params = pipeline_params(config)
    costs = _planner(config, owners[0], {PAPER_NODE: nodes[0]}, params, memory_scale=UNBOUNDED).costs
    rows = []
    for k, n in itertools.product(owners, nodes):
        planner = _planner(config, k, {PAPER_NODE: n}, params, costs, memory_scale=UNBOUNDED)
        solving = time.perf_counter()
        optimal = planner.split("optimal")
        solve_s = time.perf_counter() - solving
        plans = {rule: planner.plan(planner.split(rule)) for rule in ("equal", "balanced")}
        plans["optimal"] = planner.plan(optimal)
        epochs = {rule: plan.schedule.epoch_s for rule, plan in plans.items()}
        closed = plans["optimal"].estimate.epoch_s
        fits = optimal_split(_planner(config, k, {PAPER_NODE: n}, params, costs).problem) is not None
        rows.append(
            f"| {model} | {k} | {n} | {' '.join(map(str, plans['optimal'].split.cuts))} | "
            f"{epochs['optimal'] / 60:.1f} | {epochs['equal'] / 60:.1f} | {epochs['balanced'] / 60:.1f} | "
            f"{(epochs['optimal'] - epochs['equal']) / epochs['equal'] * 100:+.1f} | "
            f"{(epochs['optimal'] - epochs['balanced']) / epochs['balanced'] * 100:+.1f} | "
            f"{(closed - epochs['optimal']) / epochs['optimal'] * 100:+.2f} | {'yes' if fits else 'no'} | "
            f"{solve_s:.2f} |")
    return rows


def split_experiment() -> None:
    print("## Split optimiser against manual splits: epoch time on the virtual timeline\n")
    print("| model | owners K | nodes N | optimal cuts | optimal (min) | equal layers (min) | balanced (min) | "
          "optimal vs equal (%) | optimal vs balanced (%) | closed form vs schedule, optimal (%) | "
          "optimal fits 16 GB VMs with K copies | solve s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in ("resnet101", "vgg"):
        print("\n".join(split_rows(model)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msfusion_ray.experiment.mpsl_planning", description=__doc__)
    parser.add_argument("experiment", choices=["memory", "splits"])
    args = parser.parse_args(argv)
    {"memory": memory_experiment, "splits": split_experiment}[args.experiment]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
