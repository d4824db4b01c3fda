"""Running a sweep: each cell a run of the lifecycle (msfusion_ray.app.lifecycle), on one shared Ray cluster,
side by side where they fit.

Every cell that will run is checked and prepared before anything is written or started (cells with the same data
config and seed share one data set); then the sweep directory is written (msfusion_ray.app.sweep_status), the
cluster starts, and the cells run, each in its own run directory under cells/, watched from one loop.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import ray

from msfusion_ray.app.launching import Launcher, open_run_dir
from msfusion_ray.app.progress import ProgressDisplay
from msfusion_ray.app.request import CheckedRun
from msfusion_ray.app.run_dir import RunDirectory, check_output_dir
from msfusion_ray.app.run_handle import RunHandle
from msfusion_ray.app.stops import RunFailed, interruption, stop_signals
from msfusion_ray.app.sweep_plan import SweepPlan
from msfusion_ray.app.sweep_status import SweepStatus, cell_summary, create_directory
from msfusion_ray.app.tracking import RoundFollower, follow_rounds
from msfusion_ray.config import ExperimentConfig, RuntimeConfig
from msfusion_ray.data import load_data
from msfusion_ray.data.arrays import DataBundle
from msfusion_ray.devices.gpu_share import gpu_share
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.prepare import prepare
from msfusion_ray.experiment.shipment import Shipment
from msfusion_ray.runtime.checkpoint import check_resume
from msfusion_ray.runtime.host_pool import host_count
from msfusion_ray.runtime.run_log import run_log_handler

# Peak resident set of one actor of a run (a host or the driver: torch, the data set, a small model), as
# benchmarks/scalability.py measured it here (docs/benchmarks.md); a cell needs its hosts and its driver.
ACTOR_MEMORY_BYTES = 500 * 2**20
SWEEP_LOG = "sweep.log"  # Ray's own lines while the sweep runs, and what the launcher saw


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


def prepare_cells(plan: SweepPlan, cell_ids: Iterable[str], cache: DataCache) -> dict[str, Shipment]:
    """Prepare every cell that will run (its config was checked whole with the plan); the first bad one ends the
    sweep before anything is written. A cell that continues has its checkpoint checked."""
    by_id = {c.id: c for c in plan.cells}
    shipments = {}
    for cell_id in cell_ids:
        cell = by_id[cell_id]
        try:
            experiment = prepare(cell.config, data=cache.get(cell.config))
            run_dir = plan.directory / "cells" / cell_id
            if (run_dir / "config.yaml").is_file():  # the cell continues: its checkpoint must hold up
                check_resume(run_dir, experiment)
        except UserInputError as err:
            raise UserInputError(f"{plan.source}: cell {cell_id}: {err.where}", err.message) from None
        shipments[cell_id] = Shipment.of(experiment)
    return shipments


def auto_parallel(cpus: float, memory_bytes: float, actors_per_cell: int) -> int:
    """Cells side by side: no more than the cluster's CPUs (training is CPU-bound; more cells only overlap
    their start-up, evaluation and writing), nor than 80% of its memory holds at ACTOR_MEMORY_BYTES an actor."""
    by_memory = int(0.8 * memory_bytes // (actors_per_cell * ACTOR_MEMORY_BYTES))
    return max(1, min(int(cpus), by_memory))


def with_runtime(shipment: Shipment, **changes: Any) -> Shipment:
    config = shipment.config
    return shipment.with_config(dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, **changes)))


def with_cpu_share(shipment: Shipment, host_cpus: float) -> Shipment:
    """The cell with its hosts' logical CPU claim set to its share, unless its config sets one."""
    if shipment.config.runtime.host_cpus is not None:
        return shipment
    return with_runtime(shipment, host_cpus=host_cpus)


def with_gpu_share(shipment: Shipment, gpus: float, cpus: float) -> Shipment:
    """The cell with its hosts' GPU fraction sized so that they share `gpus` (its part of the cluster's) evenly,
    unless its config sets one or trains on CPU (`cpus`: the cluster's, which size its default host count)."""
    runtime = shipment.config.runtime
    if runtime.gpus_per_host is not None or runtime.device == "cpu":
        return shipment
    return with_runtime(shipment, gpus_per_host=gpu_share(gpus, host_count(runtime, len(shipment.fleet), cpus)))


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
    shipments: dict[str, Shipment]
    parallel: int
    display: ProgressDisplay
    running: dict[str, _Running] = field(default_factory=dict)
    data_refs: dict[str, Any] = field(default_factory=dict)

    def run(self, cell_ids: list[str]) -> None:
        queue = deque(cell_ids)
        users: dict[str, int] = {}
        for cell_id in cell_ids:
            key = DataCache.key(self.shipments[cell_id].config)
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
        shipment = self.shipments[cell_id]
        path = self.plan.directory / "cells" / cell_id
        resume = (path / "config.yaml").is_file()
        key = DataCache.key(shipment.config)
        try:
            checked = CheckedRun(shipment.config, path if resume else None)
            run_dir = open_run_dir(checked, shipment) if resume else RunDirectory.create(
                path, cell_id, shipment.config, shipment.strategy_name, shipment.artifacts)
            if key not in self.data_refs:
                self.data_refs[key] = ray.put(shipment.data)
            handle = RunHandle(shipment, run_dir, resume=resume, data_ref=self.data_refs[key])
        except Exception as err:  # a cell that cannot start is a failed cell, not a failed sweep
            self.status.set(cell_id, status="failed", error=one_line(err))
            self.display.note(f"cell {cell_id} failed to start: {one_line(err)}")
            return
        self.running[cell_id] = _Running(handle, key, follow_rounds(shipment.config, path, cell_id))
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
        done = sum(self._rounds_done(cell_id) for cell_id in self.shipments)
        counts = self.status.counts()
        self.display.update(done, {"cells": f"{counts['complete']}/{len(self.status.cells)}",
                                   "running": counts["running"], "failed": counts["failed"]})

    def _rounds_done(self, cell_id: str) -> int:
        cell = self.status.cells[cell_id]
        if cell["status"] == "complete":
            return self.shipments[cell_id].config.rounds
        if cell_id in self.running:
            if self.running[cell_id].tracker is not None:
                self.running[cell_id].tracker.poll()
            return int(self.running[cell_id].handle.poll_progress().get("round", 0))
        return int(cell.get("rounds_completed") or 0)


def one_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:500]


def execute_sweep(plan: SweepPlan, retry_failed: bool = False, max_parallel: int | None = None,
                  address: str | None = None, show_progress: bool = True) -> SweepStatus:
    """Run what is left of a sweep: the output directory and every cell to run are checked and prepared before
    anything is written."""
    check_output_dir(plan.directory, f"{plan.source}: output_dir")
    todo = SweepStatus.load_or_new(plan).to_run(retry_failed)
    shipments = prepare_cells(plan, todo, DataCache())  # every check before anything is written
    status = create_directory(plan)
    return run_sweep(plan, shipments, status, todo, max_parallel, show_progress, address)


def run_sweep(plan: SweepPlan, shipments: dict[str, Shipment], status: SweepStatus, cell_ids: list[str],
              max_parallel: int | None = None, show_progress: bool = True, address: str | None = None) -> SweepStatus:
    """Run `cell_ids` (prepared into `shipments`) on one cluster: the first cell's runtime settings start it, or
    `address` names an existing one (or the Ray session open in this process is used). Ray's own lines go to the
    sweep's log (`SWEEP_LOG` in its directory)."""
    if not cell_ids:
        return status
    runtime: RuntimeConfig = shipments[cell_ids[0]].config.runtime
    if address:
        runtime = dataclasses.replace(runtime, address=address)
    handler = run_log_handler(plan.directory, SWEEP_LOG)
    with Launcher() as launcher, stop_signals():
        launcher.lines.to(handler)
        launcher.start_cluster(runtime, [s.config for s in shipments.values()])
        resources = ray.cluster_resources()
        cpus = resources.get("CPU", 1.0)
        actors = max(host_count(s.config.runtime, len(s.fleet), cpus) for s in shipments.values()) + 1
        parallel = max_parallel or plan.config.max_parallel or auto_parallel(cpus, resources.get("memory", 0.0),
                                                                             actors)
        parallel = min(parallel, len(cell_ids))
        if parallel > 1:
            shipments = {k: with_cpu_share(s, round(0.9 * cpus / parallel, 4)) for k, s in shipments.items()}
        if parallel > 1 and resources.get("GPU", 0.0) > 0:
            shipments = {k: with_gpu_share(s, resources["GPU"] / parallel, cpus) for k, s in shipments.items()}
        total = sum(shipments[c].config.rounds for c in cell_ids)
        display = ProgressDisplay(total, "round", show_progress, label="sweep rounds ")
        display.note(f"sweep {plan.config.name}: {len(cell_ids)} cells to run, {parallel} side by side, "
                     f"in {plan.directory}")
        try:
            SweepRunner(plan, status, {c: shipments[c] for c in cell_ids}, parallel, display).run(cell_ids)
        finally:
            display.close()
    handler.close()
    return status
