"""The Python API: run an experiment or a sweep from a script or a notebook, and get its records as DataFrames.

    import msfusion_ray
    run = msfusion_ray.run("quickstart", rounds=3, strategy={"name": "heterofl"})
    run.summary["final_accuracy"], run.rounds[["round", "test_accuracy"]], run.participants
    choice = msfusion_ray.compare("quickstart", quick=True)
    choice.recommendation, choice.decision  # one row per objective: winner, runner-up, lead, separable, the line

The same lifecycle as `msfusion-ray run` / `sweep` (msfusion_ray.app): the same checks, records and run directory
(bad input raises the one-line `UserInputError`; a run that fails raises `RunFailed`, its records so far kept).
Both start an embedded local cluster, use the Ray session already open in this process, or join `address=`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from analysis.plots import plot_runs
from msfusion_ray.app import lifecycle
from msfusion_ray.app.request import RunRequest, checked_config
from msfusion_ray.app.run_dir import RunDirectory
from msfusion_ray.app.stops import RunFailed, RunInterrupted
from msfusion_ray.app.sweep import execute_sweep
from msfusion_ray.app.sweep_plan import SweepConfig, check_directory, plan_sweep, read_sweep, resolve_base
from msfusion_ray.config import ExperimentConfig
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.paths import find_config
from msfusion_ray.records import read_participant_rows, read_round_rows
from msfusion_ray.validation import build

__all__ = ["Run", "RunFailed", "RunInterrupted", "Sweep", "UserInputError", "load", "run", "sweep"]


@dataclass
class Run:
    """A finished run: its directory, config and summary; its records, read when first asked for."""

    run_dir: Path
    config: ExperimentConfig
    summary: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @cached_property
    def rounds(self) -> pd.DataFrame:
        """One row per round (records/rounds): outcomes, totals, device and wall time, evaluation, the scheme's
        metrics."""
        return read_round_rows(self.run_dir)

    @cached_property
    def participants(self) -> pd.DataFrame:
        """One row per round and participant (records/participants): status, rate, FLOPs, bytes, times, memory,
        losses."""
        return read_participant_rows(self.run_dir)

    def __repr__(self) -> str:
        return (f"Run({self.run_id!r}, strategy={self.summary.get('strategy')!r}, "
                f"rounds={self.summary.get('rounds_completed')}, final_accuracy={self.summary.get('final_accuracy')})")


@dataclass
class Sweep:
    """A sweep's directory, each cell's status and summary (`cells`), and the runs its cells left."""

    directory: Path
    status: dict[str, dict[str, Any]]
    runs: dict[str, Run] = field(default_factory=dict)

    @cached_property
    def cells(self) -> pd.DataFrame:
        """One row per cell: its grid values, status, error, and summary figures."""
        rows = []
        for cell_id, cell in self.status.items():
            rows.append({"cell": cell_id, **cell.get("values", {}),
                         **{k: v for k, v in cell.items() if k not in ("values", "run_dir")}})
        return pd.DataFrame(rows)

    @cached_property
    def rounds(self) -> pd.DataFrame:
        return self._joined("rounds")

    @cached_property
    def participants(self) -> pd.DataFrame:
        return self._joined("participants")

    def _joined(self, which: str) -> pd.DataFrame:
        frames = [getattr(run, which).assign(cell=cell_id) for cell_id, run in self.runs.items()]
        frames = [f for f in frames if not f.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for cell in self.status.values():
            counts[cell["status"]] = counts.get(cell["status"], 0) + 1
        return f"Sweep({str(self.directory)!r}, {counts})"


def _overrides(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Keyword overrides as dotted keys: `training__lr=0.1` and `training={"lr": 0.1}` both set training.lr."""
    items = []
    for key, value in values.items():
        dotted = prefix + key.replace("__", ".")
        if isinstance(value, Mapping) and value:
            items.extend(_overrides(value, dotted + "."))
        else:
            items.append((dotted, copy.deepcopy(value)))
    return items


def _override_texts(values: Mapping[str, Any]) -> list[str]:
    """Keyword overrides as `--set` texts (key=value; a JSON value is YAML too, so it reads back as given)."""
    return [f"{key}={json.dumps(value)}" for key, value in _overrides(values)]


def load(config_or_path: Any, address: str | None = None, **overrides: Any) -> ExperimentConfig:
    """The checked config a call to `run` would run (nothing is started)."""
    return checked_config(RunRequest.of(config_or_path, _overrides(overrides), address), config_from_dict)


def run(config_or_path: Any = None, *, resume: str | Path | None = None, address: str | None = None,
        progress: bool = True, plots: bool = False, **overrides: Any) -> Run:
    """Run one experiment and return it with its records.

    `config_or_path`: a config file, a ready config by name ("quickstart"), a mapping, or an ExperimentConfig.
    `overrides`: config fields (`rounds=3`, `training__lr=0.01`, `strategy={"name": "heterofl"}`).
    `resume`: instead of a config, a run directory to continue from its last checkpoint (`overrides` then change
    its recorded config, e.g. more rounds). `address`: an existing Ray cluster (default: the session open in this
    process, else an embedded one). A driver whose process dies is started again from the last checkpoint
    (runtime.max_driver_restarts times); then the run raises `RunFailed`. Ctrl-C or SIGTERM raise
    `RunInterrupted` (a KeyboardInterrupt)."""
    if resume is not None:
        if config_or_path is not None:
            raise UserInputError("run", "give a config or resume=RUN_DIR, not both")
        request = RunRequest.resuming(resume, _override_texts(overrides), address)
    elif config_or_path is None:
        raise UserInputError("run", "give a config or resume=RUN_DIR")
    else:
        request = RunRequest.of(config_or_path, _overrides(overrides), address)
    finished = lifecycle.run(request, show_progress=progress)
    if plots:
        plot_runs([finished.run_dir], finished.run_dir / "plots")
    return Run(finished.run_dir, finished.config, finished.summary)


def sweep(sweep_or_path: Any, *, address: str | None = None, max_parallel: int | None = None,
          retry_failed: bool = False, progress: bool = True, **overrides: Any) -> Sweep:
    """Run a sweep (or what is left of it: the same sweep run again continues) and return its cells and runs.

    `sweep_or_path`: a sweep file, a ready one by name ("sweeps/fmnist_compare"), or a mapping (name, base,
    grid, cases). `overrides` apply to the base config, as in `run`."""
    if isinstance(sweep_or_path, Mapping):
        where, config = "sweep", build(SweepConfig, copy.deepcopy(dict(sweep_or_path)), "")
        config = dataclasses.replace(config, base=resolve_base(config.base, Path.cwd(), _override_texts(overrides)))
    else:
        path = find_config(str(sweep_or_path))
        where, config = str(path), read_sweep(path, _override_texts(overrides))
    plan = plan_sweep(config, Path(config.output_dir) / config.name, where)
    check_directory(plan)
    status = execute_sweep(plan, retry_failed, max_parallel, address, progress)
    runs = {}
    for cell in plan.cells:
        run_dir = RunDirectory.existing(plan.directory / status.cells[cell.id].get("run_dir", f"cells/{cell.id}"))
        summary = run_dir.summary()
        if summary is not None:
            runs[cell.id] = Run(run_dir.path, cell.config, summary)
    return Sweep(plan.directory, status.cells, runs)


@dataclass
class Comparison:
    """A finished comparison: its directory, its record (compare.json) and the decision made of its records."""

    directory: Path
    record: dict[str, Any]
    result: Any  # analysis.decision.Decision

    @property
    def decision(self) -> pd.DataFrame:
        """One row per objective: the winner, the runner-up, their means, the 95 % interval of the winner's paired
        lead over the seeds, whether it separates them, and the line that says so."""
        return self.result.frame()

    @property
    def recommendation(self) -> str:
        return self.result.recommendation

    @property
    def statistics(self) -> pd.DataFrame:
        """Per scheme and objective: per-seed values, mean and 95 % interval."""
        return self.result.statistics

    @property
    def per_class(self) -> pd.DataFrame:
        """Per scheme and device class: what one device of the class paid (device time, energy, bytes, FLOPs)."""
        return self.result.per_class

    def __repr__(self) -> str:
        return f"Comparison({str(self.directory)!r}, {self.recommendation!r})"


def compare(config_or_path: Any, *, schemes: list[str] | None = None, seeds: int | None = None,
            budget: int | None = None, target: float | None = None, quick: bool = False, early_stop: bool = True,
            max_parallel: int | None = None, retry_failed: bool = False, address: str | None = None,
            progress: bool = True, report: bool = True, output_dir: str = "sweeps",
            **overrides: Any) -> Comparison:
    """Which scheme for this fleet: every scheme that applies to the config's model and fleet, tuned alike on the
    validation split, its winner run on `seeds` seeds (default 3), and the decision (what `compare` writes as
    decision.md), resumable like a sweep. The arguments are the command's options (`schemes`: strategy names);
    `overrides` change the config as in `run`."""
    from msfusion_ray.app.compare import run_comparison
    from msfusion_ray.app.compare_plan import CompareOptions, plan_compare

    options = CompareOptions(schemes=schemes, seeds=seeds, budget=budget, target=target, quick=quick,
                             early_stop=early_stop, max_parallel=max_parallel, output_dir=output_dir)
    request = RunRequest.of(config_or_path, _overrides(overrides))
    plan = plan_compare(checked_config(request, config_from_dict), options, request.where or "config")
    done = run_comparison(plan, retry_failed, address, progress, report)
    return Comparison(done.directory, done.record, done.decision)
