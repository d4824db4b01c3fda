"""A sweep's plan: a grid over any config keys, and hand-picked cases crossed with it; each cell a run.

A sweep file holds a base experiment config (inline, or the path of its YAML) and a grid of dotted config keys to
lists of values; the cells are the product of the lists, crossed with the cases. Every cell's config is checked
whole (msfusion_ray.experiment.config_check) when the plan is made, before anything is written or started.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from msfusion_ray.config import ExperimentConfig, parse_override, safe_name
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.inputs import load_yaml, set_dotted
from msfusion_ray.paths import anchor_paths, find, find_config
from msfusion_ray.validation import build, checked, positive

# The cells share one cluster, so the keys that configure the cluster belong in the base config, not in the grid.
CLUSTER_KEYS = ("runtime.address", "runtime.num_cpus", "runtime.object_store_mib", "runtime.dashboard")
# Peak resident set of one actor of a run (a host or the driver: torch, the data set, a small model), as
# benchmarks/scalability.py measured it here (docs/benchmarks.md); a cell needs its hosts and its driver.
ACTOR_MEMORY_BYTES = 500 * 2**20
SWEEP_FILE = "sweep.yaml"


@dataclass(frozen=True)
class SweepConfig:
    name: str = checked(check=safe_name)  # the sweep directory is output_dir/<name>
    base: dict[str, Any] | str  # an experiment config, inline or the path of its YAML file
    grid: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> its values; cells: their product
    # Hand-picked combinations (dotted key -> value), each crossed with the grid: for cells that differ in several
    # keys at once, e.g. the upper-bound scheme on its own fleet beside the others on the constrained one.
    cases: list[dict[str, Any]] = field(default_factory=list)
    max_parallel: int | None = checked(None, check=positive)  # cells side by side (default: from the cluster)
    output_dir: str = "sweeps"


@dataclass(frozen=True)
class Cell:
    id: str
    values: dict[str, Any]  # dotted key -> value, as the grid gives them
    config: ExperimentConfig


@dataclass
class SweepPlan:
    config: SweepConfig  # with the base resolved to a mapping (what sweep.yaml records)
    cells: list[Cell]
    directory: Path
    source: str  # the file the sweep came from, for error messages

    def identity(self) -> dict[str, Any]:
        """What makes two sweeps the same sweep (max_parallel may change between sittings)."""
        data = dataclasses.asdict(self.config)
        data.pop("max_parallel")
        return data


def read_sweep(path: str | Path, overrides: Iterable[str] = ()) -> SweepConfig:
    """Read a sweep file, its base resolved to a mapping; `overrides` (key=value) apply to the base config."""
    sweep = build(SweepConfig, load_yaml(path), str(path))
    return dataclasses.replace(sweep, base=resolve_base(sweep.base, Path(path).parent, overrides))


def resolve_base(base: dict[str, Any] | str, directory: Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """A base experiment config as a mapping: inline, or the YAML file it names (in `directory`, the sweep file's,
    else among the project's, else a ready config by name); `overrides` (key=value) applied, and the files it
    names anchored (msfusion_ray.paths)."""
    base_dir = directory
    if isinstance(base, str):
        beside = directory / base
        base_file = beside if beside.is_file() else find(base)
        base_file = base_file if base_file.is_file() else find_config(base)  # a ready config by name
        base, base_dir = load_yaml(base_file), base_file.parent
    base = copy.deepcopy(base)
    for text in overrides:
        set_dotted(base, *parse_override(text))
    return anchor_paths(base, base_dir)


def load_sweep(path: str | Path, overrides: Iterable[str] = ()) -> SweepPlan:
    """The plan of a sweep file; its directory is output_dir/name. Errors name the file and the field."""
    sweep = read_sweep(path, overrides)
    return plan_sweep(sweep, Path(sweep.output_dir) / sweep.name, str(path))


def load_sweep_dir(directory: str | Path) -> SweepPlan:
    """The sweep recorded in a sweep directory (for --resume); the directory may have moved."""
    directory = Path(directory)
    if not (directory / SWEEP_FILE).is_file():
        raise UserInputError(str(directory), f"not a sweep directory (no {SWEEP_FILE})")
    return plan_sweep(read_sweep(directory / SWEEP_FILE), directory, str(directory / SWEEP_FILE))


def check_factors(sweep: SweepConfig, source: str) -> None:
    """Cases and grid name each key once, never a cluster key, and no value or case twice."""
    if not sweep.grid and not sweep.cases:
        raise UserInputError(f"{source}: grid", "give at least one key with a list of values (or cases)")
    for index, case in enumerate(sweep.cases):
        for key in case:
            if key in CLUSTER_KEYS:
                raise UserInputError(f"{source}: cases[{index}].{key}", "the cells share one cluster: set it in base")
            if key in sweep.grid:
                raise UserInputError(f"{source}: cases[{index}].{key}", "also in the grid: give it in one place")
    texts = [json.dumps(case, sort_keys=True) for case in sweep.cases]
    if len(set(texts)) < len(texts):
        raise UserInputError(f"{source}: cases", "a case is repeated")
    for key, values in sweep.grid.items():
        if key in CLUSTER_KEYS:
            raise UserInputError(f"{source}: grid.{key}", "the cells share one cluster: set it in base")
        if not values:
            raise UserInputError(f"{source}: grid.{key}", "needs at least one value")
        texts = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(texts)) < len(texts):
            raise UserInputError(f"{source}: grid.{key}", "a value is repeated")


def plan_sweep(sweep: SweepConfig, directory: Path, source: str) -> SweepPlan:
    """Expand cases x grid into cells and build each cell's config (strictly, like any experiment config)."""
    check_factors(sweep, source)
    cells = []
    points = [{**case, **point} for case in (sweep.cases or [{}]) for point in grid_points(sweep.grid)]
    for index, values in enumerate(points):
        cell_id = cell_name(index, values)
        data = copy.deepcopy(sweep.base)
        try:
            for key, value in values.items():
                set_dotted(data, key, copy.deepcopy(value))
            data["output_dir"] = str(directory / "cells")
            config = config_from_dict(data)
        except UserInputError as err:
            raise UserInputError(f"{source}: cell {cell_id}: {err.where.removeprefix('--set ')}", err.message) from None
        cells.append(Cell(cell_id, values, config))
    return SweepPlan(sweep, cells, directory, source)


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The product of the grid's lists, the first key varying slowest."""
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**point, key: value} for point in points for value in values]
    return points


def cell_name(index: int, values: dict[str, Any]) -> str:
    """A readable, file-safe, unique name: the index, then key=value for each grid key (last part of the key;
    a file path by its stem)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, str) and "/" in value:
            value = Path(value).stem
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{key.rsplit('.', 1)[-1]}={text}")
    return re.sub(r"[^A-Za-z0-9._=,-]+", "-", f"{index:03d}-" + "_".join(parts))[:120]


def check_directory(plan: SweepPlan) -> None:
    """A sweep directory that exists must hold this same sweep (running the same command again continues it)."""
    recorded = plan.directory / SWEEP_FILE
    if recorded.is_file():
        previous = load_yaml(recorded)
        previous.pop("max_parallel", None)
        if previous != plain(plan.identity()):
            raise UserInputError(str(plan.directory), "holds a different sweep; change the sweep's name or "
                                                      "output_dir, or continue it with --resume")


def plain(data: Any) -> Any:
    """As YAML would read it back (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))
