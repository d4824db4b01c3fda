"""A comparison's plan, checked in full before anything is written or started: the options, the base config (with
a validation split to tune on, and sized down by --quick), the schemes that apply, and the tuning protocol that
gives each the same budget.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msfusion_ray.app.applicability import Facts, applicable, facts_of
from msfusion_ray.app.compare_schemes import LR_FACTORS, SCHEMES
from msfusion_ray.app.tuning import SchemeSpace, TuneConfig, TuningPlan, draw_trials
from msfusion_ray.config import ExperimentConfig
from msfusion_ray.data import planned_shape
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.strategies import strategy_class
from msfusion_ray.validation import build

COMPARE_FILE = "compare.json"
# --quick: a comparison sized for a laptop: each run this much smaller at most, no tuning runs (each scheme runs
# with its defaults and the config's learning rate), on this many seeds.
QUICK = {"rounds": 4, "data.train_samples": 1200, "data.eval_samples": 500, "data.validation_samples": 500}
QUICK_SEEDS = 3
# Where the config holds no validation split: as many training images held out as the test split evaluates.
DEFAULT_VALIDATION = 2000


@dataclass(frozen=True)
class CompareOptions:
    schemes: list[str] | None = None  # strategy names (None: every scheme compare knows)
    seeds: int | None = None  # the winners' runs: seeds 1..N (default 3; --quick: QUICK_SEEDS)
    budget: int | None = None  # tuning runs per scheme (default 3; --quick: 1)
    target: float | None = None  # accuracy in (0, 1], or perplexity >= 1 (None: analysis.decision's default)
    quick: bool = False
    early_stop: bool = True
    max_parallel: int | None = None
    output_dir: str = "sweeps"

    @property
    def seed_count(self) -> int:
        return self.seeds if self.seeds is not None else (QUICK_SEEDS if self.quick else 3)

    @property
    def tuning_budget(self) -> int:
        return self.budget if self.budget is not None else (1 if self.quick else 3)


def check_options(options: CompareOptions) -> None:
    """What the options alone can get wrong (the target's range needs the model's metric: `check_target`)."""
    if options.schemes is not None:
        if not options.schemes:
            raise UserInputError("--schemes", "name at least one scheme")
        for name in options.schemes:
            if name not in SCHEMES:
                raise UserInputError("--schemes", f"unknown scheme '{name}' (known: {', '.join(SCHEMES)})")
        if len(set(options.schemes)) < len(options.schemes):
            raise UserInputError("--schemes", "a scheme is named twice")
    if options.seeds is not None and options.seeds < 1:
        raise UserInputError("--seeds", f"must be >= 1 (got {options.seeds})")
    if options.budget is not None and options.budget < 1:
        raise UserInputError("--budget", f"must be >= 1 (got {options.budget})")
    if options.max_parallel is not None and options.max_parallel < 1:
        raise UserInputError("--max-parallel", f"must be >= 1 (got {options.max_parallel})")
    if options.target is not None and not math.isfinite(options.target):
        raise UserInputError("--target", f"must be a finite number (got {options.target})")


def check_target(target: float | None, metric: str) -> None:
    if target is None:
        return
    if metric == "accuracy" and not 0 < target <= 1:
        raise UserInputError("--target", f"an accuracy must be in (0, 1] (got {target:g})")
    if metric == "perplexity" and target < 1:
        raise UserInputError("--target", f"a perplexity is at least 1 (got {target:g})")


def base_mapping(config: ExperimentConfig, options: CompareOptions) -> dict[str, Any]:
    """The config every run starts from: a validation split to tune on where the data set has none to offer (image
    data sets: DEFAULT_VALIDATION images held out, or as many as the test split evaluates), sized by --quick."""
    data = config.to_dict()
    if planned_shape(config.data) is not None and data["data"]["validation_samples"] is None:
        data["data"]["validation_samples"] = data["data"]["eval_samples"] or DEFAULT_VALIDATION
    if options.quick:
        for key, most in QUICK.items():
            section, _, name = key.rpartition(".")
            holder = data[section] if section else data
            holder[name] = most if holder[name] is None else min(holder[name], most)
    return data


@dataclass
class ComparePlan:
    options: CompareOptions
    config: ExperimentConfig  # the base, as every run starts from it
    facts: Facts
    metric: str  # accuracy, or perplexity for a language model
    strategies: list[str]  # the schemes that run, in order
    excluded: dict[str, str]  # label -> why it cannot run
    tuning: TuningPlan
    source: str

    @property
    def directory(self) -> Path:
        return self.tuning.directory

    def sync_tasks(self) -> int:
        """Participant tasks one synchronous round asks for: the budget in tasks is rounds times this."""
        return max(1, round(self.facts.participants * self.config.fleet.sample_fraction))


def scheme_space(strategy: str, config: ExperimentConfig, facts: Facts, budget: int) -> SchemeSpace:
    """What makes a run this scheme (its name; the config's own parameters only for the scheme the config names;
    prefix slices for the asynchronous schemes where the model has width tags), and its own space to tune (none
    at a budget of 1)."""
    scheme = SCHEMES[strategy]
    fixed: dict[str, Any] = {"strategy.name": strategy}
    if config.strategy.name != strategy:
        fixed["strategy.params"] = {"width": "fit"} if scheme.needs == "async" and facts.width_tags else {}
    return SchemeSpace(scheme.label, fixed, copy.deepcopy(scheme.space) if budget > 1 else {})


def plan_compare(config: ExperimentConfig, options: CompareOptions, source: str) -> ComparePlan:
    """Every check a comparison makes before anything is written: options, the base config with its changes, the
    model's metric against the target, which schemes apply (none: the fleet cannot train this model at all)."""
    check_options(options)
    base = config_from_dict(base_mapping(config, options))
    facts = facts_of(base)
    metric = "perplexity" if facts.task == "language_model" else "accuracy"
    check_target(options.target, metric)
    strategies, excluded = applicable(facts, options.schemes or list(SCHEMES))
    if not strategies:
        why = "; ".join(f"{name}: {reason}" for name, reason in excluded.items())
        raise UserInputError(f"{source}: fleet", f"no scheme can train this model on this fleet ({why})")
    budget = options.tuning_budget
    space = {"training.lr": [round(base.training.lr * f, 10) for f in LR_FACTORS]} if budget > 1 else {}
    name = f"{base.name}-compare{'-quick' if options.quick else ''}"
    tune = TuneConfig(name=name, base=base.to_dict(), budget=budget, space=space,
                      schemes=[scheme_space(s, base, facts, budget) for s in strategies],
                      seeds=list(range(1, options.seed_count + 1)), max_parallel=options.max_parallel,
                      output_dir=options.output_dir)
    tuning = TuningPlan(tune, Path(options.output_dir) / name, source, draw_trials(tune))
    return ComparePlan(options, base, facts, metric, strategies, excluded, tuning, source)


def budget_keys(plan: ComparePlan, case: dict[str, Any]) -> dict[str, Any]:
    """The case with its steps and evaluation cadence scaled so that it hands out the same participant tasks as
    the config's synchronous rounds (msfusion_ray.app.compare_schemes)."""
    strategy = case["strategy.name"]
    params = dict(plan.config.strategy.params) if plan.config.strategy.name == strategy else {}
    params.update(case.get("strategy.params", {}))
    params.update({k.removeprefix("strategy.params."): v for k, v in case.items() if k.startswith("strategy.params.")})
    typed = build(strategy_class(strategy).Params, params, "strategy.params")
    per_step = SCHEMES[strategy].tasks_per_step(typed, plan.facts.participants)
    scale = plan.sync_tasks() / per_step
    if scale == 1:
        return dict(case)
    rounds = max(1, round(plan.config.rounds * scale))
    every = max(1, round(plan.config.runtime.eval_every * scale))
    return {**case, "rounds": rounds, "runtime.eval_every": every}
