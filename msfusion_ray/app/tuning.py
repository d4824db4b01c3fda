"""The fair tuning protocol: every scheme gets the same tuning budget on the validation split, then its best
setting is run on fresh seeds and reported on the test split.

A tuning file names a base experiment config, the schemes (each a label, the config keys that make it that scheme,
and a search space of its own parameters), a space every scheme shares (the learning rate) and the budget: how many
tuning runs each scheme gets. Two sweeps follow, both run by the sweep runner (one cluster, cells side by side,
resumable by running the same command again):

1. `tune/`: each scheme's settings, `budget` of the product of the shared space and its own (all of it when that
   is smaller; else drawn without replacement, seeded, every shared value tried once where the budget allows),
   each run once on `tune_seed`. The setting with the best validation metric (`select`: its final or its best
   value over the run; accuracy up, perplexity down) wins.
2. `final/`: each scheme's winner on every seed of `seeds` (fresh seeds: the test numbers carry no selection on
   the tuning seed).

A stage whose cells did not all complete stops the protocol (run the same command with `--retry-failed`): a run
that failed (an error, a host killed for memory) says nothing about its setting. A run that completed without a
validation value (it never evaluated) ranks last.

`tuning.json` in the protocol's directory records every setting tried with its validation value, each winner and
the runs it took; `python -m analysis.tuning DIR` turns it and the final runs into the report.

Neither Ray Tune nor Optuna is used: the runs are themselves Ray programs (a driver actor and host actors), which
the sweep runner already schedules on one cluster with resume and per-cell validation; a fixed budget of settings
drawn from small discrete spaces needs no search algorithm, and adaptive samplers or early-stopping schedulers
would hand schemes unequal budgets.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np

from analysis.comparison import final_and_best
from analysis.metrics import metric_of
from analysis.runs import load_run
from analysis.tuning import TUNING_FILE
from msfusion_ray.app import sweep
from msfusion_ray.app.sweep_plan import (CLUSTER_KEYS, SweepConfig, SweepPlan, check_directory, grid_points, plan_sweep,
                                         resolve_base)
from msfusion_ray.errors import UserInputError
from msfusion_ray.files import write_text_atomic
from msfusion_ray.inputs import load_yaml
from msfusion_ray.validation import build, checked, positive


@dataclass(frozen=True)
class SchemeSpace:
    name: str  # the scheme's label in the report
    set: dict[str, Any] = field(default_factory=dict)  # dotted key -> value: what makes the run this scheme
    space: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> values of its own parameters


@dataclass(frozen=True)
class TuneConfig:
    name: str
    base: dict[str, Any] | str  # an experiment config, inline or the path of its YAML file
    schemes: list[SchemeSpace]
    budget: int = checked(check=positive)  # tuning runs per scheme
    space: dict[str, list[Any]] = field(default_factory=dict)  # tuned for every scheme (e.g. training.lr)
    tune_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])  # the winners' runs, reported on the test split
    select: Literal["final", "best"] = "final"  # which validation value of a run ranks it
    max_parallel: int | None = checked(None, check=positive)
    output_dir: str = "sweeps"


@dataclass
class Trial:
    scheme: str
    values: dict[str, Any]  # the tuned keys' values
    cell: str = ""
    score: float | None = None  # the validation metric (None: failed or never evaluated)


@dataclass
class TuningPlan:
    config: TuneConfig  # with the base resolved to a mapping
    directory: Path
    source: str
    trials: list[Trial]

    @property
    def tune_dir(self) -> Path:
        return self.directory / "tune"

    @property
    def final_dir(self) -> Path:
        return self.directory / "final"


def read_tuning(path: str | Path, overrides: Iterable[str] = ()) -> TuningPlan:
    """The protocol of a tuning file: its schemes' settings, checked, and its directory output_dir/name."""
    tune = build(TuneConfig, load_yaml(path), str(path))
    tune = dataclasses.replace(tune, base=resolve_base(tune.base, Path(path).parent, overrides))
    check_tuning(tune, str(path))
    return TuningPlan(tune, Path(tune.output_dir) / tune.name, str(path), draw_trials(tune))


def check_tuning(tune: TuneConfig, source: str) -> None:
    names = [s.name for s in tune.schemes]
    if not names:
        raise UserInputError(f"{source}: schemes", "name at least one scheme")
    if len(set(names)) < len(names):
        raise UserInputError(f"{source}: schemes", "a scheme name is repeated")
    if not tune.seeds:
        raise UserInputError(f"{source}: seeds", "give at least one seed")
    for index, scheme in enumerate(tune.schemes):
        for key in [*scheme.set, *scheme.space, *tune.space]:
            if key in CLUSTER_KEYS or key == "seed":
                raise UserInputError(f"{source}: schemes[{index}].{key}", "set by the protocol or the cluster")
        for key, values in {**tune.space, **scheme.space}.items():
            if not values:
                raise UserInputError(f"{source}: schemes[{index}].space.{key}", "needs at least one value")
            if key in scheme.set:
                raise UserInputError(f"{source}: schemes[{index}].space.{key}", "also in set: give it in one place")


def scheme_settings(tune: TuneConfig, index: int) -> list[dict[str, Any]]:
    """The settings scheme `index` is tuned over, in grid order: all of the product of the shared space and its
    own if that is within the budget; else `budget` of them drawn without replacement (seeded by the tuning seed
    and the scheme's place), stratified on the shared space: when the budget allows, every shared value (each
    learning rate) is tried once with a drawn setting of the scheme's own parameters, and the rest of the budget is
    drawn from the remaining settings."""
    scheme = tune.schemes[index]
    shared = grid_points({k: v for k, v in tune.space.items() if k not in scheme.space})
    own = grid_points(scheme.space)
    points = [{**s, **o} for s in shared for o in own]
    if len(points) <= tune.budget:
        return points
    rng = np.random.default_rng([tune.tune_seed, index, 0x7E5])
    if tune.budget >= len(shared):
        chosen = [i * len(own) + int(rng.integers(len(own))) for i in range(len(shared))]
        rest = np.setdiff1d(np.arange(len(points)), chosen)
        chosen += rng.choice(rest, tune.budget - len(chosen), replace=False).tolist()
    else:
        chosen = rng.choice(len(points), tune.budget, replace=False).tolist()
    return [points[i] for i in sorted(chosen)]


def draw_trials(tune: TuneConfig) -> list[Trial]:
    return [Trial(scheme.name, values) for index, scheme in enumerate(tune.schemes)
            for values in scheme_settings(tune, index)]


def _sweep(tune: TuneConfig, name: str, cases: list[dict[str, Any]], seeds: list[int]) -> SweepConfig:
    return SweepConfig(name=f"{tune.name}-{name}", base=copy.deepcopy(tune.base), grid={"seed": seeds},
                       cases=cases, max_parallel=tune.max_parallel, output_dir=tune.output_dir)


def tune_sweep(plan: TuningPlan) -> SweepPlan:
    """Stage 1: every trial once, on the tuning seed."""
    sets = {s.name: s.set for s in plan.config.schemes}
    cases = [{**sets[t.scheme], **t.values} for t in plan.trials]
    sweep = plan_sweep(_sweep(plan.config, "tune", cases, [plan.config.tune_seed]), plan.tune_dir, plan.source)
    for trial, cell in zip(plan.trials, sweep.cells):
        trial.cell = cell.id
    return sweep


def winners(plan: TuningPlan, lower_is_better: bool) -> dict[str, Trial]:
    """Each scheme's best trial by its validation score (ties: the first in grid order; unscored trials last)."""
    def rank(trial: Trial) -> float:
        if trial.score is None or math.isnan(trial.score):
            return math.inf
        return trial.score if lower_is_better else -trial.score

    best: dict[str, Trial] = {}
    for trial in plan.trials:
        if trial.scheme not in best or rank(trial) < rank(best[trial.scheme]):
            best[trial.scheme] = trial
    return best


def final_sweep(plan: TuningPlan, best: dict[str, Trial]) -> SweepPlan:
    """Stage 2: each scheme's winning setting on every final seed."""
    cases = [{**s.set, **best[s.name].values} for s in plan.config.schemes]
    return plan_sweep(_sweep(plan.config, "final", cases, list(plan.config.seeds)), plan.final_dir, plan.source)


def final_cells(final: SweepPlan, schemes: list[SchemeSpace]) -> dict[str, list[str]]:
    """The final sweep's cells of each scheme (cases in scheme order, each crossed with the seeds)."""
    per_scheme = len(final.cells) // len(schemes)
    return {s.name: [c.id for c in final.cells[i * per_scheme:(i + 1) * per_scheme]] for i, s in enumerate(schemes)}


def record(plan: TuningPlan, best: dict[str, Trial], lower_is_better: bool,
           final: SweepPlan | None = None) -> dict[str, Any]:
    """tuning.json: per scheme its trials (setting, cell, validation score), the winner and the runs it took."""
    cells = final_cells(final, plan.config.schemes) if final is not None else {}
    schemes = {}
    for scheme in plan.config.schemes:
        trials = [t for t in plan.trials if t.scheme == scheme.name]
        schemes[scheme.name] = {
            "set": scheme.set,
            "trials": [{"values": t.values, "cell": t.cell, "score": t.score} for t in trials],
            "winner": best[scheme.name].values, "winner_score": best[scheme.name].score,
            "tuning_runs": len(trials), "final_runs": len(plan.config.seeds), "final_cells": cells.get(scheme.name, []),
        }
    data = {"name": plan.config.name, "budget": plan.config.budget, "select": plan.config.select,
            "metric_direction": "lower" if lower_is_better else "higher", "tune_seed": plan.config.tune_seed,
            "seeds": list(plan.config.seeds), "schemes": schemes}
    write_text_atomic(plan.directory / TUNING_FILE, json.dumps(data, indent=2))
    return data


# Runs the cells of a stage; returns, per cell, its validation score (None: failed or not evaluated), and the
# metric the scores are in ("accuracy", or "perplexity" for a language model).
StageRunner = Callable[[SweepPlan, str], tuple[dict[str, float | None], str]]


def run_protocol(plan: TuningPlan, run_stage: StageRunner) -> dict[str, Any]:
    """Tune, pick, run the winners; `run_stage(sweep, select)` does the running (the sweep runner, or a toy)."""
    tune = tune_sweep(plan)
    scores, metric = run_stage(tune, plan.config.select)
    for trial in plan.trials:
        trial.score = scores.get(trial.cell)
    lower = metric.endswith("perplexity")
    best = winners(plan, lower)
    record(plan, best, lower)
    final = final_sweep(plan, best)
    run_stage(final, plan.config.select)
    return record(plan, best, lower, final)


def validation_score(run_dir: Path, select: str) -> tuple[float | None, str]:
    """A run's validation metric (accuracy, or perplexity for a language model): its last or its best value, and
    the metric's name."""
    if not (run_dir / "records" / "rounds").is_dir():
        return None, "accuracy"
    run = load_run(run_dir)
    metric = metric_of([run])
    final, best = final_and_best(run, f"val_{metric}")
    score = final if select == "final" else best
    return (None if math.isnan(score) else score), metric


class StageFailed(Exception):
    """Cells of a stage failed (an error, a host killed for memory): no winner is picked from a stage with holes."""


def sweep_stage_runner(max_parallel: int | None = None, address: str | None = None, show_progress: bool = True,
                       retry_failed: bool = False) -> StageRunner:
    """Runs a stage with the sweep runner (continuing it if its directory holds it; `retry_failed` runs its failed
    cells again) and scores its cells. A failed cell stops the protocol (`StageFailed`): a run the machine
    killed says nothing about its setting, so it must be run again rather than ranked."""
    def run_stage(plan: SweepPlan, select: str) -> tuple[dict[str, float | None], str]:
        check_directory(plan)
        status = sweep.execute_sweep(plan, retry_failed, max_parallel, address, show_progress)
        failed = [cell_id for cell_id, cell in status.cells.items() if cell["status"] != "complete"]
        if failed:
            raise StageFailed(f"{len(failed)} cells of {plan.directory} did not complete (first: {failed[0]}); run "
                              f"the same command with --retry-failed")
        scores, metrics = {}, set()
        for cell_id, cell in status.cells.items():
            score, metric = validation_score(plan.directory / cell["run_dir"], select)
            scores[cell_id] = score if cell["status"] == "complete" else None
            metrics.add(metric)
        return scores, "perplexity" if "perplexity" in metrics else "accuracy"

    return run_stage
