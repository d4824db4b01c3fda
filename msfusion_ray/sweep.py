"""Sweeps: a grid over any config keys, each cell a run on one shared Ray cluster, side by side where they fit.

A sweep file holds a base experiment config (inline, or the path of its YAML) and a grid of dotted config keys to
lists of values; the cells are the product of the lists. Every cell is validated (`prepare`) before anything is
written or started. The sweep directory (`output_dir/name`) records each cell's status as it changes
(status.json), so a sweep that stopped continues where it was, whether by `sweep --resume DIR` or by running the
same command again: finished cells are not run again, an interrupted cell continues from its checkpoint, and a
failed cell keeps its one-line error (`--retry-failed` runs it again).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import sys
import types
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from msfusion_ray.config import ExperimentConfig, config_from_dict, parse_override, safe_name
from msfusion_ray.data import load_data
from msfusion_ray.data.arrays import DataBundle
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment import Prepared, prepare, project_path
from msfusion_ray.code_refs import job_runtime_env
from msfusion_ray.inputs import load_json, load_yaml, set_dotted
from msfusion_ray.launch import (ProgressDisplay, RunFailed, RunHandle, code_named, interruption,
                                 quiet_ray_crash_handler, stop_signals, write_run_dir)
from msfusion_ray.paths import anchor_paths, find_config
from msfusion_ray.tracking import RoundFollower, follow_rounds
from msfusion_ray.validation import build, checked, positive

# The cells share one cluster, so the keys that configure the cluster belong in the base config, not in the grid.
CLUSTER_KEYS = ("runtime.address", "runtime.num_cpus", "runtime.object_store_mib", "runtime.dashboard")
# Peak resident set of one actor of a run (a host or the driver: torch, the data set, a small model), as
# benchmarks/scalability.py measured it here (docs/benchmarks.md); a cell needs its hosts and its driver.
ACTOR_MEMORY_BYTES = 500 * 2**20
STATUS_FILE = "status.json"
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
        base_file = beside if beside.is_file() else project_path(base)
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


class SweepStatus:
    """status.json: per cell its grid values, status (pending, running, complete, failed), the one-line error of
    a failed cell and the summary of a finished one. Rewritten atomically on every change."""

    def __init__(self, directory: Path, cells: dict[str, dict[str, Any]]):
        self.path = directory / STATUS_FILE
        self.cells = cells

    @classmethod
    def load_or_new(cls, plan: SweepPlan) -> "SweepStatus":
        path = plan.directory / STATUS_FILE
        known = load_json(path).get("cells", {}) if path.is_file() else {}
        if not isinstance(known, dict) or not all(isinstance(cell, dict) for cell in known.values()):
            raise UserInputError(str(path), "'cells' must map each cell to its status")
        cells = {c.id: known.get(c.id) or {"values": c.values, "status": "pending", "error": None,
                                            "run_dir": f"cells/{c.id}"} for c in plan.cells}
        return cls(plan.directory, cells)

    def to_run(self, retry_failed: bool) -> list[str]:
        again = {"pending", "running"} | ({"failed"} if retry_failed else set())
        return [cell_id for cell_id, cell in self.cells.items() if cell["status"] in again]

    def set(self, cell_id: str, **values: Any) -> None:
        self.cells[cell_id].update(values)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cells": self.cells}, indent=2))
        tmp.replace(self.path)

    def counts(self) -> dict[str, int]:
        counts = {"complete": 0, "running": 0, "failed": 0, "pending": 0}
        for cell in self.cells.values():
            counts[cell["status"]] += 1
        return counts


def check_directory(plan: SweepPlan) -> None:
    """A sweep directory that exists must hold this same sweep (running the same command again continues it)."""
    recorded = plan.directory / SWEEP_FILE
    if recorded.is_file():
        previous = load_yaml(recorded)
        previous.pop("max_parallel", None)
        if previous != _plain(plan.identity()):
            raise UserInputError(str(plan.directory), "holds a different sweep; change the sweep's name or "
                                                      "output_dir, or continue it with --resume")


def _plain(data: Any) -> Any:
    """As YAML would read it back (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))


class DataCache:
    """Data sets loaded once per distinct (data config, seed): cells that differ elsewhere share one copy, in
    this process and in the object store."""

    def __init__(self) -> None:
        self.bundles: dict[str, DataBundle] = {}

    @staticmethod
    def key(config: ExperimentConfig) -> str:
        return json.dumps([dataclasses.asdict(config.data), config.seed], sort_keys=True)

    def get(self, config: ExperimentConfig) -> DataBundle:
        key = self.key(config)
        if key not in self.bundles:
            self.bundles[key] = load_data(config.data, config.seed)
        return self.bundles[key]


def prepare_cells(plan: SweepPlan, cell_ids: Iterable[str], cache: DataCache) -> dict[str, Prepared]:
    """Validate every cell that will run; the first bad one ends the sweep before anything is written."""
    from msfusion_ray.runtime.checkpoint import check_resume

    by_id = {c.id: c for c in plan.cells}
    prepared = {}
    for cell_id in cell_ids:
        cell = by_id[cell_id]
        try:
            prepared[cell_id] = prepare(cell.config, data=cache.get(cell.config))
            run_dir = plan.directory / "cells" / cell_id
            if (run_dir / "config.yaml").is_file():  # the cell continues: its checkpoint must hold up
                check_resume(run_dir, prepared[cell_id])
        except UserInputError as err:
            raise UserInputError(f"{plan.source}: cell {cell_id}: {err.where}", err.message) from None
    return prepared


def create_directory(plan: SweepPlan) -> SweepStatus:
    """Write sweep.yaml (the resolved sweep) and status.json; both are kept when the sweep continues."""
    (plan.directory / "cells").mkdir(parents=True, exist_ok=True)
    sweep_file = plan.directory / SWEEP_FILE
    if not sweep_file.is_file():
        sweep_file.write_text(yaml.safe_dump(_plain(dataclasses.asdict(plan.config)), sort_keys=False))
    status = SweepStatus.load_or_new(plan)
    status.save()
    return status


def auto_parallel(cpus: float, memory_bytes: float, actors_per_cell: int) -> int:
    """Cells side by side: no more than the cluster's CPUs (training is CPU-bound; more cells only overlap
    their start-up, evaluation and writing), nor than 80% of its memory holds at ACTOR_MEMORY_BYTES an actor."""
    by_memory = int(0.8 * memory_bytes // (actors_per_cell * ACTOR_MEMORY_BYTES))
    return max(1, min(int(cpus), by_memory))


def with_cpu_share(prepared: Prepared, host_cpus: float) -> Prepared:
    """The cell with its hosts' logical CPU claim set to its share, unless its config sets one."""
    runtime = prepared.config.runtime
    if runtime.host_cpus is not None:
        return prepared
    config = dataclasses.replace(prepared.config, runtime=dataclasses.replace(runtime, host_cpus=host_cpus))
    return dataclasses.replace(prepared, config=config)


def with_gpu_share(prepared: Prepared, gpus: float, cpus: float) -> Prepared:
    """The cell with its hosts' GPU fraction sized so that they share `gpus` (its part of the cluster's) evenly,
    unless its config sets one or trains on CPU (`cpus`: the cluster's, which size its default host count)."""
    from msfusion_ray.devices.gpu_share import gpu_share
    from msfusion_ray.runtime.hosts import host_count

    runtime = prepared.config.runtime
    if runtime.gpus_per_host is not None or runtime.device == "cpu":
        return prepared
    share = gpu_share(gpus, host_count(runtime, len(prepared.fleet), cpus))
    config = dataclasses.replace(prepared.config, runtime=dataclasses.replace(runtime, gpus_per_host=share))
    return dataclasses.replace(prepared, config=config)


@dataclass
class _Running:
    handle: RunHandle
    data_key: str
    tracker: RoundFollower | None = None


@dataclass
class SweepRunner:
    """Starts cells while fewer than `parallel` run, watches them all from one loop, and records each outcome."""

    plan: SweepPlan
    status: SweepStatus
    prepared: dict[str, Prepared]
    parallel: int
    display: ProgressDisplay
    running: dict[str, _Running] = field(default_factory=dict)
    data_refs: dict[str, Any] = field(default_factory=dict)

    def run(self, cell_ids: list[str]) -> None:
        import ray

        queue = deque(cell_ids)
        users: dict[str, int] = {}
        for cell_id in cell_ids:
            key = DataCache.key(self.prepared[cell_id].config)
            users[key] = users.get(key, 0) + 1
        try:
            while queue or self.running:
                while queue and len(self.running) < self.parallel:
                    self._start(queue.popleft())
                refs = {r.handle.finished: cell_id for cell_id, r in self.running.items()}
                done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.5) if refs else ([], [])
                for ref in done:
                    key = self._finish(refs[ref])
                    users[key] -= 1
                    if users[key] == 0:
                        self.data_refs.pop(key, None)  # no cell left needs this data set in the object store
                self._show()
        except KeyboardInterrupt as err:  # these stay "running" in status.json and continue next time
            stop = interruption(err)
            for running in self.running.values():
                running.handle.interrupt(stop.reason)
            raise stop from None
        finally:
            for running in self.running.values():
                running.handle.stop()

    def _start(self, cell_id: str) -> None:
        import ray

        prepared = self.prepared[cell_id]
        run_dir = self.plan.directory / "cells" / cell_id
        resume = (run_dir / "config.yaml").is_file()
        key = DataCache.key(prepared.config)
        try:
            if not resume:
                write_run_dir(prepared, run_dir)
            if key not in self.data_refs:
                self.data_refs[key] = ray.put(prepared.data)
            handle = RunHandle(prepared, run_dir, cell_id, resume=resume, data_ref=self.data_refs[key])
        except Exception as err:  # a cell that cannot start is a failed cell, not a failed sweep
            self.status.set(cell_id, status="failed", error=one_line(err))
            self.display.note(f"cell {cell_id} failed to start: {one_line(err)}")
            return
        self.running[cell_id] = _Running(handle, key, follow_rounds(prepared.config, run_dir, cell_id))
        self.status.set(cell_id, status="running", error=None)
        self.display.note(f"cell {cell_id} {'continues' if resume else 'started'}")

    def _finish(self, cell_id: str) -> str:
        running = self.running.pop(cell_id)
        try:
            summary = running.handle.result()
        except (RunFailed, UserInputError) as err:
            reached = running.handle.progress.get("round", 0)
            self.status.set(cell_id, status="failed", error=str(err), rounds_completed=reached)
            self.display.note(f"cell {cell_id} failed: {err}")
            if running.tracker is not None:
                running.tracker.finish("failed")
        else:
            if running.tracker is not None:
                running.tracker.finish("complete")
            kept = cell_summary(summary)
            self.status.set(cell_id, status="complete", error=None, **kept)
            self.display.note(f"cell {cell_id} complete: final accuracy {kept['final_accuracy']}, perplexity "
                              f"{kept['final_perplexity']}, {summary.get('wall_s', 0.0):.1f} s")
        finally:
            running.handle.stop()
        return running.data_key

    def _show(self) -> None:
        done = sum(self._rounds_done(cell_id) for cell_id in self.prepared)
        counts = self.status.counts()
        self.display.update(done, {"cells": f"{counts['complete']}/{len(self.status.cells)}",
                                   "running": counts["running"], "failed": counts["failed"]})

    def _rounds_done(self, cell_id: str) -> int:
        cell = self.status.cells[cell_id]
        if cell["status"] == "complete":
            return self.prepared[cell_id].config.rounds
        if cell_id in self.running:
            if self.running[cell_id].tracker is not None:
                self.running[cell_id].tracker.poll()
            return int(self.running[cell_id].handle.poll_progress().get("round", 0))
        return int(cell.get("rounds_completed") or 0)


def cell_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """What status.json keeps of a finished cell's summary (language models: the last test perplexity)."""
    keys = ("rounds_completed", "final_accuracy", "best_accuracy", "participants", "wall_s")
    perplexities = [h["perplexity"] for h in summary.get("history", [])
                    if h.get("perplexity") is not None and not math.isnan(h["perplexity"])]
    return {**{k: summary.get(k) for k in keys}, "final_perplexity": perplexities[-1] if perplexities else None}


def one_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:500]


def execute_sweep(plan: SweepPlan, retry_failed: bool = False, max_parallel: int | None = None,
                  address: str | None = None, show_progress: bool = True) -> SweepStatus:
    """Run what is left of a sweep: the output directory and every cell to run are checked before anything is
    written."""
    from msfusion_ray.launch import check_output_dir

    check_output_dir(plan.directory, f"{plan.source}: output_dir")
    todo = SweepStatus.load_or_new(plan).to_run(retry_failed)
    prepared = prepare_cells(plan, todo, DataCache())  # every check before anything is written
    status = create_directory(plan)
    return run_sweep(plan, prepared, status, todo, max_parallel, show_progress, address)


def run_sweep(plan: SweepPlan, prepared: dict[str, Prepared], status: SweepStatus, cell_ids: list[str],
              max_parallel: int | None = None, show_progress: bool = True, address: str | None = None) -> SweepStatus:
    """Run `cell_ids` (validated into `prepared`) on one cluster: the first cell's runtime settings start it, or
    `address` names an existing one."""
    import ray

    from msfusion_ray.runtime.cluster import ray_cluster
    from msfusion_ray.runtime.hosts import host_count

    if not cell_ids:
        return status
    runtime = prepared[cell_ids[0]].config.runtime
    if address:
        runtime = dataclasses.replace(runtime, address=address)
    code = [ref for p in prepared.values() for ref in code_named(p.config)]
    quiet_ray_crash_handler()
    with ray_cluster(runtime, job_runtime_env(code)), stop_signals():
        resources = ray.cluster_resources()
        cpus = resources.get("CPU", 1.0)
        actors = max(host_count(p.config.runtime, len(p.fleet), cpus) for p in prepared.values()) + 1
        parallel = max_parallel or plan.config.max_parallel or auto_parallel(cpus, resources.get("memory", 0.0),
                                                                             actors)
        parallel = min(parallel, len(cell_ids))
        if parallel > 1:
            prepared = {k: with_cpu_share(p, round(0.9 * cpus / parallel, 4)) for k, p in prepared.items()}
        if parallel > 1 and resources.get("GPU", 0.0) > 0:
            prepared = {k: with_gpu_share(p, resources["GPU"] / parallel, cpus) for k, p in prepared.items()}
        total = sum(prepared[c].config.rounds for c in cell_ids)
        display = ProgressDisplay(total, "round", show_progress, label="sweep rounds ")
        display.note(f"sweep {plan.config.name}: {len(cell_ids)} cells to run, {parallel} side by side, "
                     f"in {plan.directory}")
        try:
            SweepRunner(plan, status, {c: prepared[c] for c in cell_ids}, parallel, display).run(cell_ids)
        finally:
            display.close()
    return status


class _SweepModule(types.ModuleType):
    """`msfusion_ray.sweep(...)` is the Python API's sweep (msfusion_ray.api.sweep); as a module it is this one."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from msfusion_ray.api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _SweepModule
