"""Running a comparison: each scheme's tuning runs on the validation split (to the rung, then the runs that are not
hopeless to the end), each scheme's winner on the final seeds; all on one cluster, each stage a sweep.

Resumable like a sweep: the same command again runs only what no sitting finished (every stage's status is in its
directory, and which runs stop at the rung follows from the recorded values alone). A run that fails is recorded and
the comparison goes on: a failed tuning run ranks last, a failed final run is left out of the decision, which names
it (`--retry-failed` runs failed runs again).

compare.json, in the comparison's directory, records the plan (the schemes that run, those that cannot and why, the
target, the seeds, the budget in participant tasks, the early-stopping rule) and, as the stages finish, every
tuning run with its validation value, which stopped at the rung, each winner and its final runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from analysis.decision import Decision, load_decision, write_decision
from analysis.report import write_report
from msfusion_ray.app import early_stop
from msfusion_ray.app.compare_plan import COMPARE_FILE, ComparePlan, budget_keys
from msfusion_ray.app.launching import Launcher
from msfusion_ray.app.run_dir import check_output_dir
from msfusion_ray.app.stops import stop_signals
from msfusion_ray.app.sweep import DataCache, prepare_cells, run_sweep
from msfusion_ray.app.sweep_plan import SweepConfig, SweepPlan, check_directory, plan_sweep
from msfusion_ray.app.sweep_status import SweepStatus, create_directory
from msfusion_ray.app.tuning import Trial, record, validation_score
from msfusion_ray.files import write_text_atomic
from msfusion_ray.runtime.run_log import run_log_handler


def stage(plan: ComparePlan, name: str, cases: list[dict[str, Any]], seeds: list[int]) -> SweepPlan:
    tune = plan.tuning.config
    config = SweepConfig(name=f"{tune.name}-{name}", base=tune.base, grid={"seed": seeds}, cases=cases,
                         max_parallel=tune.max_parallel, output_dir=tune.output_dir)
    return plan_sweep(config, plan.directory / name, plan.source)


def trial_case(plan: ComparePlan, trial: Trial) -> dict[str, Any]:
    sets = {s.name: s.set for s in plan.tuning.config.schemes}
    return budget_keys(plan, {**sets[trial.scheme], **trial.values})


def tuning_needed(plan: ComparePlan) -> bool:
    """Whether any scheme has more than one setting to choose from (with one, tuning runs would only confirm it)."""
    counts: dict[str, int] = {}
    for trial in plan.tuning.trials:
        counts[trial.scheme] = counts.get(trial.scheme, 0) + 1
    return any(count > 1 for count in counts.values())


def rung_case(plan: ComparePlan, case: dict[str, Any]) -> dict[str, Any] | None:
    rounds = case.get("rounds", plan.config.rounds)
    rung = early_stop.rung_steps(rounds, case.get("runtime.eval_every", plan.config.runtime.eval_every))
    return None if rung is None else {**case, "rounds": rung}


RunStage = Callable[[SweepPlan], SweepStatus]


class Comparison:
    """The protocol over a plan; `run_stage` runs one stage's sweep (the sweep runner on the open cluster)."""

    def __init__(self, plan: ComparePlan, run_stage: RunStage):
        self.plan = plan
        self.run_stage = run_stage
        self.lower = plan.metric == "perplexity"
        self.record = self._plan_record()
        self.started = False  # nothing is written before the first stage's cells are checked (`start`)

    def run(self) -> dict[str, Any]:
        trials = self.plan.tuning.trials
        if tuning_needed(self.plan):
            self._tune(trials)
        winners = self._winners(trials)
        schemes, seeds = self.plan.tuning.config.schemes, list(self.plan.tuning.config.seeds)
        final = stage(self.plan, "final", [trial_case(self.plan, winners[s.name]) for s in schemes], seeds)
        by_scheme = {s.name: final.cells[i * len(seeds):(i + 1) * len(seeds)] for i, s in enumerate(schemes)}
        for name, cells in by_scheme.items():
            self.record["schemes"][name]["final_cells"] = [{"cell": c.id, "seed": c.config.seed} for c in cells]
        self.save()
        status = self.run_stage(final)
        for name, cells in by_scheme.items():
            for entry, cell in zip(self.record["schemes"][name]["final_cells"], cells):
                entry.update(status=status.cells[cell.id]["status"], error=status.cells[cell.id].get("error"))
        self.save()
        record(self.plan.tuning, winners, self.lower, final)  # tuning.json: what analysis.tuning reads
        return self.record

    def _tune(self, trials: list[Trial]) -> None:
        cases = [trial_case(self.plan, t) for t in trials]
        rungs = [rung_case(self.plan, c) for c in cases] if self.plan.options.early_stop else [None] * len(cases)
        judged = early_stop.judged_schemes([t.scheme for t, r in zip(trials, rungs) if r is not None])
        rungs = [r if t.scheme in judged else None for t, r in zip(trials, rungs)]  # the others run straight on
        if all(r is None for r in rungs):
            self._score(stage(self.plan, "tune", cases, [self.plan.tuning.config.tune_seed]), trials)
            return
        rung = stage(self.plan, "tune", [r or c for r, c in zip(rungs, cases)], [self.plan.tuning.config.tune_seed])
        self._score(rung, trials, at_rung=True)
        early = [t for t, r in zip(trials, rungs) if r is not None]
        stopped = set(early_stop.hopeless({t.cell: t.score for t in early}, {t.cell: t.scheme for t in early},
                                          self.lower))
        going_on = [(t, c) for t, c, r in zip(trials, cases, rungs)
                    if r is not None and t.cell not in stopped and t.score is not None]
        for trial in trials:
            self._trial(trial).update(stopped=trial.cell in stopped, rung_score=trial.score, rung_cell=trial.cell)
        self.save()
        if not going_on:
            return
        rest = stage(self.plan, "tune-rest", [c for _, c in going_on], [self.plan.tuning.config.tune_seed])
        for (trial, _), cell in zip(going_on, rest.cells):
            continue_from(rung.directory / "cells" / trial.cell, rest.directory / "cells" / cell.id, cell.config)
        self._score(rest, [t for t, _ in going_on])

    def _score(self, sweep: SweepPlan, trials: list[Trial], at_rung: bool = False) -> None:
        status = self.run_stage(sweep)
        for trial, cell in zip(trials, sweep.cells):
            entry = status.cells[cell.id]
            trial.cell = cell.id
            trial.score = (validation_score(sweep.directory / entry["run_dir"], "final")[0]
                           if entry["status"] == "complete" else None)
            self._trial(trial).update(cell=f"{sweep.directory.name}/{cell.id}", score=trial.score,
                                      status=entry["status"], error=entry.get("error"))
        self.save()

    def _winners(self, trials: list[Trial]) -> dict[str, Trial]:
        """Each scheme's best trial: those that went on to the end first, then those stopped at the rung, failed
        last; ties by order."""
        def rank(trial: Trial) -> tuple[int, float]:
            entry = self._trial(trial)
            if trial.score is None:
                return 2, 0.0
            return int(bool(entry.get("stopped"))), trial.score if self.lower else -trial.score

        best: dict[str, Trial] = {}
        for trial in trials:
            if trial.scheme not in best or rank(trial) < rank(best[trial.scheme]):
                best[trial.scheme] = trial
        for name, trial in best.items():
            self.record["schemes"][name].update(winner=trial.values, winner_score=trial.score)
        return best

    def _trial(self, trial: Trial) -> dict[str, Any]:
        index = [t for t in self.plan.tuning.trials if t.scheme == trial.scheme].index(trial)
        return self.record["schemes"][trial.scheme]["trials"][index]

    def _plan_record(self) -> dict[str, Any]:
        plan, tune = self.plan, self.plan.tuning.config
        options = plan.options
        schemes = {}
        for scheme, strategy in zip(tune.schemes, plan.strategies):
            trials = [t for t in plan.tuning.trials if t.scheme == scheme.name]
            schemes[scheme.name] = {"strategy": strategy, "set": scheme.set, "tuning_runs": len(trials),
                                    "trials": [{"values": t.values} for t in trials], "final_cells": []}
        return {
            "name": tune.name, "config": plan.source, "metric": plan.metric, "target": options.target,
            "seeds": list(tune.seeds), "tune_seed": tune.tune_seed, "budget": tune.budget, "quick": options.quick,
            "space": tune.space, "tasks_per_run": plan.config.rounds * plan.sync_tasks(),
            "early_stop": {"on": options.early_stop, "rule": early_stop.RULE},
            "schemes": schemes, "excluded": plan.excluded, "facts": dataclasses.asdict(plan.facts),
        }

    def start(self) -> None:
        self.started = True
        self.save()

    def save(self) -> None:
        if not self.started:
            return
        self.plan.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.plan.directory / COMPARE_FILE, json.dumps(self.record, indent=2, default=str))


def continue_from(rung_dir: Path, run_dir: Path, config: Any) -> None:  # noqa: ANN401 (ExperimentConfig)
    """Make `run_dir` a copy of the run stopped at its rung, with the config that runs it to the end (the sweep then
    continues it from its checkpoint). Done once: a copy already there is the run's own, maybe further along."""
    if run_dir.exists() or not rung_dir.is_dir():
        return
    partial = run_dir.with_name(run_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(rung_dir, partial)
    write_text_atomic(partial / "config.yaml", config.to_yaml())
    partial.rename(run_dir)


def sweep_runner(retry_failed: bool, max_parallel: int | None, address: str | None,
                 show_progress: bool, first: Callable[[], None]) -> RunStage:
    """Runs a stage with the sweep runner: its directory checked, its cells to run prepared (every check before
    anything is written: `first` runs after the first stage's checks, before anything is written), then run."""
    called = []

    def run_stage(sweep: SweepPlan) -> SweepStatus:
        check_directory(sweep)
        check_output_dir(sweep.directory, f"{sweep.source}: output_dir")
        todo = SweepStatus.load_or_new(sweep).to_run(retry_failed)
        prepared = prepare_cells(sweep, todo, DataCache())
        if not called:
            called.append(True)
            first()
        status = create_directory(sweep)
        return run_sweep(sweep, prepared, status, todo, max_parallel, show_progress, address)

    return run_stage


COMPARE_LOG = "compare.log"  # Ray's own lines between the stages' sweeps (each sweep has its sweep.log)


def execute_comparison(plan: ComparePlan, retry_failed: bool = False, address: str | None = None,
                       show_progress: bool = True) -> dict[str, Any]:
    """Run the comparison (or what is left of it) on one cluster, started or joined once the first stage's cells
    are checked (bad input starts nothing and writes nothing); its record."""
    runtime = dataclasses.replace(plan.config.runtime, address=address) if address else plan.config.runtime
    with Launcher() as launcher, ExitStack() as stack:
        def first() -> None:
            comparison.start()
            handler = run_log_handler(plan.directory, COMPARE_LOG)
            stack.callback(handler.close)
            launcher.lines.to(handler)
            launcher.start_cluster(runtime, [plan.config])
            stack.enter_context(stop_signals())

        runner = sweep_runner(retry_failed, plan.options.max_parallel, address, show_progress, first)
        comparison = Comparison(plan, runner)
        return comparison.run()


@dataclass
class ComparisonDone:
    """What a comparison left: its directory and record, the decision made of its records, the report, and the
    final runs that did not complete (the decision leaves them out and names them)."""

    directory: Path
    record: dict[str, Any]
    decision: Decision
    report: Path | None
    failed: list[dict[str, Any]]


def run_comparison(plan: ComparePlan, retry_failed: bool = False, address: str | None = None,
                   show_progress: bool = True, report: bool = True) -> ComparisonDone:
    """Run what is left of the comparison, then write its decision.md and (`report`) its HTML report."""
    record = execute_comparison(plan, retry_failed, address, show_progress)
    decision = load_decision(plan.directory)
    write_decision(plan.directory, decision=decision)
    page = write_report(plan.directory, plan.directory / "report") if report else None
    failed = [c for s in record["schemes"].values() for c in s["final_cells"] if c.get("status") != "complete"]
    return ComparisonDone(plan.directory, record, decision, page, failed)
