"""Which scheme for this fleet: the decision of a comparison, from the final runs' records alone.

`decide` takes each scheme's runs on the final seeds (and the schemes that could not run, with why) and returns the
`Decision`: one verdict per objective (the final metric; the device time, and energy where the records hold it, to
the target and in total; bytes, FLOPs, the largest share of a device's memory), the Pareto front of the final
metric against each cost, what each device class paid, and the recommendation. The rules (separability over the
seeds, what is ranked) are analysis.decision_stats's; the words are analysis.decision_text's.

The recommendation follows RECOMMENDATION_RULE.

`load_decision` reads a comparison's directory (compare.json and its final runs), `write_decision` writes its
decision.md:

    python -m analysis.decision COMPARE_DIR        # writes and prints COMPARE_DIR/decision.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from analysis import decision_stats as ds
from analysis.decision_text import figure, lower_first, number, recommendation, seed_notes, verdict_line
from analysis.runs import load_run

COMPARE_FILE = "compare.json"  # what a comparison records (msfusion_ray.app.compare writes it)

RECOMMENDATION_RULE = (
    "The recommendation: of the schemes that end most accurate within each other's spread (the winner on the final "
    "metric and every scheme not separable from it), the one that reaches the target on the least energy where the "
    "records hold energy, else on the least device time (without a target: the least in total).")
# Without a given target: this share of the best scheme's mean final accuracy (perplexity: this much above the
# best), rounded to 0.01 towards the easier side.
DEFAULT_TARGET_SHARE = 0.9


def default_target(best_final: float, metric: str) -> float:
    if metric == "perplexity":
        return math.ceil(best_final / DEFAULT_TARGET_SHARE * 100) / 100
    return math.floor(best_final * DEFAULT_TARGET_SHARE * 100) / 100


def target_rule(metric: str) -> str:
    if metric == "perplexity":
        return f"the best final perplexity divided by {DEFAULT_TARGET_SHARE:g}, rounded up to 0.01"
    return f"{DEFAULT_TARGET_SHARE:.0%} of the best final accuracy, rounded down to 0.01".replace("%", " %")


@dataclass
class Decision:
    metric: str
    target: float | None
    target_given: bool
    energy: bool
    seeds: pd.DataFrame  # one row per scheme and seed (decision_stats.seed_table)
    statistics: pd.DataFrame  # per scheme and objective: per-seed values, mean, 95 % interval
    verdicts: list[ds.Verdict]
    notes: list[str]  # schemes that could not run, seeds left out
    per_class: pd.DataFrame  # per scheme and device class (decision_stats.class_table)
    weakest: str | None  # the owners' device class with the least memory
    class_verdicts: list[ds.Verdict]
    pareto: dict[str, list[str]]  # cost objective -> the schemes on the front, cheapest first
    recommendation: str
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        return [verdict_line(v) for v in self.verdicts]

    def frame(self) -> pd.DataFrame:
        """One row per objective: the winner, the runner-up, their means, the paired lead's 95 % interval, whether
        it separates them, and the line that says so."""
        rows = []
        for verdict in [*self.verdicts, *self.class_verdicts]:
            runner = verdict.runner_up
            mean, low, high = verdict.difference
            rows.append({"objective": verdict.objective.title, "key": verdict.objective.key,
                         "winner": verdict.winner, "runner_up": runner,
                         "winner_value": verdict.means.get(verdict.winner, math.nan) if verdict.winner else math.nan,
                         "runner_up_value": verdict.means.get(runner, math.nan) if runner else math.nan,
                         "lead": mean, "lead_low": low, "lead_high": high, "seeds": verdict.paired_seeds,
                         "separable": verdict.separable, "tied": ", ".join(verdict.tied),
                         "line": verdict_line(verdict)})
        return pd.DataFrame(rows)


def decide(outcomes: Sequence[ds.SeedOutcome], metric: str = "accuracy", target: float | None = None,
           excluded: Mapping[str, str] | None = None) -> Decision:
    """The decision over the final runs: `outcomes` per scheme and seed, `excluded` the schemes that could not run
    (scheme -> the one-line reason), `target` the metric to reach (None: `default_target`)."""
    given = target is not None
    if target is None:
        first = ds.seed_table(outcomes, metric, None)
        finals = first[first["status"] == "ok"].groupby("scheme")["final"].mean().dropna() if len(first) else []
        if len(finals):
            best = finals.min() if metric == "perplexity" else finals.max()
            target = default_target(float(best), metric)
    seeds = ds.seed_table(outcomes, metric, target)
    energy = bool(seeds.attrs.get("energy"))
    quality = ds.quality_objective(metric)
    costs = (ds.target_objectives(metric, target, energy) if target is not None else []) + ds.cost_objectives(energy)
    statistics = ds.objective_stats(seeds, [quality, *costs])
    verdicts = [ds.judge(statistics, objective) for objective in [quality, *costs]]
    per_seed_class = ds.class_seed_table(outcomes, energy)
    weakest = ds.weakest_class(per_seed_class)
    class_verdicts = []
    if weakest is not None:
        owners = per_seed_class[(per_seed_class["device"] == weakest) & (per_seed_class["role"] == "participant")]
        owners = owners.assign(status=owners["status"].where(owners["refused_share"] < 1, "refused"))
        refused = sorted(set(owners.loc[owners["status"] == "refused", "scheme"])
                         - set(owners.loc[owners["status"] == "ok", "scheme"]))
        objectives = ds.class_objectives(weakest, energy)
        class_stats = ds.objective_stats(owners, objectives)
        class_verdicts = [ds.judge(class_stats, objective) for objective in objectives]
        for verdict in class_verdicts:
            verdict.refused = refused
    notes = [f"{scheme}: {reason}" for scheme, reason in (excluded or {}).items()] + seed_notes(seeds)
    return Decision(metric, target, given, energy, seeds, statistics, verdicts, notes,
                    ds.class_table(per_seed_class), weakest, class_verdicts,
                    pareto_fronts(statistics, quality, costs), _recommend(statistics, verdicts), dict(excluded or {}))


def contenders(statistics: pd.DataFrame, quality: ds.Verdict) -> list[str]:
    """The quality winner and every ranked scheme whose paired difference from it is not separable."""
    if not quality.ranked:
        return []
    values = statistics[statistics["objective"] == quality.objective.key].set_index("scheme")["values"]
    best = quality.ranked[0]
    found = [best]
    for scheme in quality.ranked[1:]:
        (mean, low, _), seeds = ds.paired_difference(values[best], values[scheme], quality.objective.lower_is_better)
        if seeds < 2 or not low > 0:
            found.append(scheme)
    return found


def _recommend(statistics: pd.DataFrame, verdicts: list[ds.Verdict]) -> str:
    quality = verdicts[0]
    among = contenders(statistics, quality)
    keys = ["energy_to_target", "time_to_target", "energy", "device_s"]
    by = None
    for key in keys:
        objective = next((v.objective for v in verdicts if v.objective.key == key), None)
        if objective is None:
            continue
        verdict = ds.judge(statistics[statistics["scheme"].isin(among)], objective)
        if verdict.ranked:
            by = verdict
            break
    return recommendation(quality, among, by)


def pareto_fronts(statistics: pd.DataFrame, quality: ds.Objective,
                  costs: Sequence[ds.Objective]) -> dict[str, list[str]]:
    """Per cost, the schemes no other scheme beats on both the mean final metric and the mean cost (ranked schemes
    only: a value on every seed they completed), cheapest first."""
    means = {}
    for key in [quality.key, *(c.key for c in costs)]:
        rows = statistics[(statistics["objective"] == key) & (statistics["with_value"] == statistics["seeds"])
                          & (statistics["seeds"] > 0)]
        means[key] = dict(zip(rows["scheme"], rows["mean"]))
    sign = -1.0 if quality.lower_is_better else 1.0
    fronts = {}
    for cost in costs:
        points = {s: (sign * means[quality.key][s], means[cost.key][s]) for s in means[cost.key]
                  if s in means[quality.key]}
        front = [s for s, (q, c) in points.items()
                 if not any(q2 >= q and c2 <= c and (q2 > q or c2 < c) for t, (q2, c2) in points.items() if t != s)]
        fronts[cost.key] = sorted(front, key=lambda s: points[s][1])
    return fronts


def _cell(row: pd.Series | None, unit: str) -> str:
    """'0.778 [0.754, 0.802] (0.777, 0.769, 0.788)': mean, 95 % interval, per-seed values in seed order."""
    if row is None or not row["with_value"]:
        return "not reached" if row is not None else ""
    text = number(row["mean"], unit)
    if not math.isnan(row["low"]):
        text += f" [{number(row['low'], unit)}, {number(row['high'], unit)}]"
    per_seed = ", ".join(number(row["values"][s], unit) for s in sorted(row["values"]))
    text += f" ({per_seed})"
    return text + (f" {row['with_value']}/{row['seeds']} seeds" if row["with_value"] < row["seeds"] else "")


UNIT_HEADERS = {"s": "s", "J": "J", "MB": "MB", "GFLOP": "GFLOP", "share": "% of cap"}


def pairwise_markdown(decision: Decision) -> str:
    """The final metric pair by pair (ranked schemes, the better of each pair first)."""
    quality = decision.verdicts[0]
    table = ds.pairwise(decision.statistics, quality.objective, quality.ranked)
    if not len(table):
        return "(fewer than two schemes ranked)"
    unit = quality.objective.unit
    lines = ["| better | worse | lead (mean) | paired 95 % interval | ahead on seeds | separable |",
             "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        interval_text = "" if math.isnan(row.low) else f"{number(row.low, unit)} to {number(row.high, unit)}"
        lines.append(f"| {row.better} | {row.worse} | {number(row.lead, unit)} | {interval_text} | "
                     f"{row.ahead_on} of {row.seeds} | {'yes' if row.separable else 'no'} |")
    return "\n".join(lines)


def statistics_table(decision: Decision) -> str:
    """Per scheme, each objective's mean, 95 % interval and per-seed values, as Markdown."""
    objectives = [v.objective for v in decision.verdicts]
    header = ["scheme", "seeds"] + [o.title + (f" ({UNIT_HEADERS[o.unit]})" if o.unit in UNIT_HEADERS else "")
                                    for o in objectives]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    stats = decision.statistics
    for scheme in dict.fromkeys(stats["scheme"]):
        rows = stats[stats["scheme"] == scheme].set_index("objective")
        seeds = int(rows["seeds"].max())
        cells = [_cell(rows.loc[o.key] if o.key in rows.index else None, o.unit) for o in objectives]
        lines.append("| " + " | ".join([scheme, str(seeds), *cells]) + " |")
    return "\n".join(lines)


def class_markdown(decision: Decision) -> str:
    """What one device of each class paid, per scheme (mean over the seeds; device time with its 95 % interval)."""
    table = decision.per_class
    if not len(table):
        return "(no scheme trained)"
    header = ["scheme", "device class", "devices", "memory cap (MiB)", "device s [95 %]"]
    header += ["energy J [95 %]"] if decision.energy else []
    header += ["MB", "GFLOP", "largest share of its memory", "tasks refused for memory"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples():
        device = row.device if row.role == "participant" else f"{row.device} ({row.role})"
        cells = [row.scheme, device, str(row.devices), f"{row.cap_bytes / 2**20:.2f}",
                 _with_interval(row.device_s, row.device_s_low, row.device_s_high, "s")]
        if decision.energy:
            cells.append(_with_interval(row.energy, row.energy_low, row.energy_high, "J"))
        cells += [number(row.bytes, "MB"), number(row.flops, "GFLOP"),
                  f"{number(row.memory_share, 'share')} %", f"{row.refused_share:.0%}".replace("%", " %")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _with_interval(mean: float, low: float, high: float, unit: str) -> str:
    text = number(mean, unit)
    return text if math.isnan(low) else f"{text} [{number(low, unit)}, {number(high, unit)}]"


def pareto_lines(decision: Decision) -> list[str]:
    """'- Against total device time: FedRolex (0.700, 16.0 s), HeteroFL (0.810, 20.0 s).'"""
    quality = decision.verdicts[0].objective
    means = decision.statistics.set_index(["scheme", "objective"])["mean"]
    lines = []
    for verdict in decision.verdicts[1:]:
        cost = verdict.objective
        points = [f"{s} ({number(means[(s, quality.key)], quality.unit)}, {figure(means[(s, cost.key)], cost.unit)})"
                  for s in decision.pareto.get(cost.key, [])]
        if points:
            lines.append(f"- Against {lower_first(cost.title)}: {', '.join(points)}.")
    return lines


def decision_markdown(decision: Decision, title: str, context: Sequence[str] = ()) -> str:
    """decision.md: the recommendation first, then one line per objective, what was left out and why, the Pareto
    fronts, the per-scheme figures, what each device class paid, and the rules behind them."""
    target = "none (no scheme has a final value)" if decision.target is None else (
        f"test {decision.metric} {decision.target:g}" + ("" if decision.target_given
                                                        else f" (not given: {target_rule(decision.metric)})"))
    parts = [f"# {title}", "", f"**{decision.recommendation}**", "", f"Target: {target}.", "",
             "## One line per objective", "", *[f"- {line}" for line in decision.lines]]
    if not decision.energy:
        parts.append("- Energy: the records hold none (the fleet's profiles give no power figures); device time "
                     "stands in for it.")
    if decision.class_verdicts:
        parts += ["", f"The weakest devices ({decision.weakest}, the least memory):", "",
                  *[f"- {verdict_line(v)}" for v in decision.class_verdicts]]
    if decision.notes:
        parts += ["", "## Left out", "", *[f"- {note}" for note in decision.notes]]
    fronts = pareto_lines(decision)
    if fronts:
        parts += ["", f"## Pareto fronts: {lower_first(decision.verdicts[0].objective.title)} against each cost "
                      f"(means; cheapest first)", "", *fronts]
    parts += ["", f"## {decision.verdicts[0].objective.title}, pair by pair", "", pairwise_markdown(decision),
              "", "## Per scheme: mean [95 % interval] (per seed, in seed order)", "", statistics_table(decision),
              "", "## What one device of each class paid (mean over seeds)", "", class_markdown(decision),
              "", "## How this was decided", "", f"- {ds.SEPARABILITY_RULE}", f"- {RECOMMENDATION_RULE}",
              *[f"- {line}" for line in context]]
    return "\n".join(parts) + "\n"


DECISION_FILE = "decision.md"


def is_compare_dir(path: str | Path) -> bool:
    return (Path(path) / COMPARE_FILE).is_file()


def read_compare_record(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / COMPARE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a comparison directory (no {COMPARE_FILE})")
    return json.loads(path.read_text())


def final_outcomes(directory: str | Path, record: dict[str, Any]) -> list[ds.SeedOutcome]:
    """Each scheme's final runs: their records where they wrote any, the one-line error of a failed one (the final
    sweep's status is the truth: the record may be from before the last sitting)."""
    final = Path(directory) / "final"
    status_path = final / "status.json"
    cells = json.loads(status_path.read_text()).get("cells", {}) if status_path.is_file() else {}
    outcomes = []
    for scheme, entry in record["schemes"].items():
        for cell in entry.get("final_cells", []):
            state = cells.get(cell["cell"], {})
            if state.get("status") not in ("complete", "failed"):
                continue  # not run yet
            run_dir = final / state.get("run_dir", f"cells/{cell['cell']}")
            run = load_run(run_dir) if (run_dir / "records" / "rounds").is_dir() else None
            error = (state.get("error") or "failed") if state["status"] == "failed" else None
            outcomes.append(ds.SeedOutcome(scheme, int(cell["seed"]), run, error))
    return outcomes


def decide_from(record: dict[str, Any], outcomes: Sequence[ds.SeedOutcome], target: float | None = None) -> Decision:
    """The decision of a comparison's record and final runs; `target` replaces the recorded one."""
    target = target if target is not None else record.get("target")
    return decide(outcomes, record["metric"], target, record.get("excluded", {}))


def load_decision(directory: str | Path, target: float | None = None) -> Decision:
    """The decision of a comparison's directory; `target` replaces the recorded one."""
    record = read_compare_record(directory)
    return decide_from(record, final_outcomes(directory, record), target)


def _setting(values: dict[str, Any]) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in values.items()) or "defaults"


def _fixed(values: dict[str, Any]) -> dict[str, Any]:
    """What made a run its scheme, besides its name: the strategy's parameters set for it (e.g. width=fit)."""
    params = values.get("strategy.params") or {}
    return {**{f"strategy.params.{k}": v for k, v in params.items()},
            **{k: v for k, v in values.items() if k not in ("strategy.name", "strategy.params")}}


def context_lines(record: dict[str, Any]) -> list[str]:
    """How the runs behind the decision were made: tuning, budget, early stopping, the winners' settings."""
    seeds = ", ".join(map(str, record["seeds"]))
    schemes = record["schemes"]
    tuned = any(len(s.get("trials", [])) > 1 for s in schemes.values())
    lines = [f"Config: {record['config']}; {record['tasks_per_run']} participant tasks per run for every scheme (the "
             f"config's rounds times the participants of a round; a scheme whose step aggregates fewer updates runs "
             f"more steps)."]
    if tuned:
        lines.append(f"Tuning: {record['budget']} runs per scheme at most on the validation split (seed "
                     f"{record['tune_seed']}), over the learning rate and the scheme's own parameters; each scheme's "
                     f"best setting then ran on seeds {seeds}, reported on the test split.")
        early = record["early_stop"]
        stopped = [f"{name} ({_setting(t['values'])})" for name, s in schemes.items() for t in s["trials"]
                   if t.get("stopped")]
        lines.append(f"{early['rule']} " + ("Stopped: " + "; ".join(stopped) + "." if stopped and early["on"]
                                            else "None stopped." if early["on"] else "It was off here."))
    else:
        lines.append(f"No tuning runs: each scheme ran with its defaults and the config's learning rate, on seeds "
                     f"{seeds}, reported on the test split.")
    winners = [f"{name}: {_setting({**_fixed(s.get('set', {})), **(s.get('winner') or {})})}"
               + (f" (validation {s['winner_score']:.4g})" if s.get("winner_score") is not None else "")
               for name, s in schemes.items()]
    lines.append("Settings that ran on the final seeds: " + "; ".join(winners) + ".")
    return lines


def write_decision(directory: str | Path, target: float | None = None, decision: Decision | None = None) -> Path:
    """COMPARE_DIR/decision.md, from the records (or the `decision` already made of them)."""
    record = read_compare_record(directory)
    decision = decision if decision is not None else load_decision(directory, target)
    path = Path(directory) / DECISION_FILE
    path.write_text(decision_markdown(decision, f"Which scheme for this fleet: {record['name']}",
                                      context_lines(record)))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write and print a comparison's decision.md.")
    parser.add_argument("directory", help="the comparison's directory (python -m msfusion_ray compare)")
    parser.add_argument("--target", type=float, help="the accuracy (or perplexity) to reach, instead of the recorded")
    args = parser.parse_args(argv)
    print(write_decision(args.directory, args.target).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
