"""The figures and rules behind a comparison's decision: each scheme's value of every objective on every seed, their
means and 95 % intervals, and which scheme wins an objective (`judge`), by the rule SEPARABILITY_RULE states."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.comparison import cost_to_target, run_row
from analysis.runs import RunRecords, cost_curves

SEPARABILITY_RULE = (
    "Every scheme runs on the same seeds, and a seed fixes the data partition every scheme trains on, so schemes "
    "are compared seed by seed: the winner of an objective is separable from the runner-up when the 95 % "
    "t-interval of its paired lead (the runner-up's value minus the winner's, signed so that positive favours the "
    "winner, on the seeds both completed) excludes zero; on one seed nothing is separable. A scheme is ranked on an "
    "objective only where it has a value on every seed it completed: on the time to a target, a scheme that "
    "reached it on some seeds only is named, not ranked. Failed seeds are left out and named; a seed on which "
    "every device was refused for memory trained nothing and is left out too.")
ENERGY_COLUMN = "energy_j"  # joules of a participant task (compute, communication, waiting), where profiles say
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Objective:
    key: str  # its column in the seed table
    title: str  # how a line names it
    lower_is_better: bool
    unit: str  # accuracy, perplexity, s, J, MB, GFLOP, share
    verb: str  # what the winner does ("takes the least device time")
    tie_verb: str  # what two schemes within each other's spread do ("are")


@dataclass
class SeedOutcome:
    """One final run of a scheme: its records (None where it left no round) and, if it failed, the one-line error."""

    scheme: str
    seed: int
    run: RunRecords | None
    error: str | None = None


def quality_objective(metric: str) -> Objective:
    if metric == "perplexity":
        return Objective("final", "Final test perplexity", True, "perplexity", "ends lowest", "end")
    return Objective("final", "Final test accuracy", False, "accuracy", "ends most accurate", "end")


def target_objectives(metric: str, target: float, energy: bool) -> list[Objective]:
    goal = f"test {metric} {target:g}"
    found = [Objective("time_to_target", f"Device time to {goal}", True, "s", "reaches it first",
                       f"reach {target:g}")]
    if energy:
        found.append(Objective("energy_to_target", f"Energy per participant to {goal}", True, "J",
                               "reaches it on the least energy", f"reach {target:g} on"))
    return found


def cost_objectives(energy: bool) -> list[Objective]:
    found = [Objective("device_s", "Total device time", True, "s", "takes the least device time", "are")]
    if energy:
        found.append(Objective("energy", "Energy per participant", True, "J", "uses the least energy", "are"))
    return found + [
        Objective("bytes", "Bytes per participant", True, "MB", "sends the fewest bytes", "are"),
        Objective("flops", "FLOPs per participant", True, "GFLOP", "computes the least", "are"),
        Objective("memory_share", "Largest share of a device's memory", True, "share",
                  "needs the least of a device's memory", "are"),
    ]


def has_energy(run: RunRecords) -> bool:
    rows = run.participants
    return ENERGY_COLUMN in rows and bool(rows[ENERGY_COLUMN].notna().any()) and bool(rows[ENERGY_COLUMN].sum() > 0)


def energy_per_participant(run: RunRecords, up_to_round: float = math.inf) -> float:
    rows = run.participants
    return float(rows.loc[rows["round"] <= up_to_round, ENERGY_COLUMN].sum()) / run.fleet_size


def first_hit_round(run: RunRecords, metric: str, target: float) -> float:
    """The first evaluated round whose test metric reached the target (NaN: none did)."""
    curve = cost_curves(run)
    time = cost_to_target(run, metric, target, cost="cum_device_s")
    if math.isnan(time):
        return math.nan
    return float(curve.loc[curve["cum_device_s"] == time, "round"].iloc[0])


def memory_share(rows: pd.DataFrame) -> float:
    """The largest share of a device's memory cap the scheme used (a trained task's measured peak) or asked for
    (a task refused for memory: its planned footprint, above the cap)."""
    caps = rows["mem_cap_bytes"].replace(0, np.nan)
    used = rows["mem_peak_tensor_bytes"].where(rows["status"] == "ok")
    asked = rows["mem_planned_bytes"].where(rows["status"] == "oom")
    shares = pd.concat([used / caps, asked / caps]).dropna()
    return float(shares.max()) if len(shares) else math.nan


def trained_anything(run: RunRecords) -> bool:
    return bool((run.participants["status"] == "ok").any()) if len(run.participants) else False


def seed_row(outcome: SeedOutcome, metric: str, target: float | None, energy: bool) -> dict:
    """One scheme on one seed: its status (ok, failed, refused: every task refused for memory) and every
    objective's value."""
    base = {"scheme": outcome.scheme, "seed": outcome.seed, "error": outcome.error or ""}
    run = outcome.run
    if outcome.error is not None or run is None or not len(run.rounds):
        return {**base, "status": "failed", "error": outcome.error or "left no records"}
    if not trained_anything(run):
        return {**base, "status": "refused"}
    row = run_row(run, metric, target)
    values = {"final": row["final"], "device_s": row["device_s"], "bytes": row["bytes_per_participant"],
              "flops": row["flops_per_participant"], "memory_share": memory_share(run.participants),
              "time_to_target": row["device_s_to_target"]}
    if energy:
        values["energy"] = energy_per_participant(run)
        hit = first_hit_round(run, metric, target) if target is not None else math.nan
        values["energy_to_target"] = energy_per_participant(run, hit) if not math.isnan(hit) else math.nan
    return {**base, "status": "ok", **values}


def seed_table(outcomes: Sequence[SeedOutcome], metric: str, target: float | None) -> pd.DataFrame:
    """One row per scheme and seed (see `seed_row`); energy columns where any run recorded energy."""
    energy = any(o.run is not None and len(o.run.participants) and has_energy(o.run) for o in outcomes)
    rows = [seed_row(o, metric, target, energy) for o in outcomes]
    table = pd.DataFrame(rows)
    table.attrs.update(energy=energy)
    return table


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the 95 % t-interval of the mean (NaN bounds on fewer than two values)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def objective_stats(seeds: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """Per scheme and objective over the seeds it completed: the per-seed values, their mean and 95 % interval,
    and how many seeds have a value (the time to a target: reached it)."""
    rows = []
    ok = seeds[seeds["status"] == "ok"]
    for scheme, frame in ok.groupby("scheme", sort=False):
        for objective in objectives:
            present = frame.dropna(subset=[objective.key])
            mean, low, high = interval(present[objective.key].to_numpy())
            rows.append({"scheme": scheme, "objective": objective.key, "seeds": len(frame), "with_value": len(present),
                         "mean": mean, "low": low, "high": high,
                         "values": dict(zip(present["seed"].tolist(), present[objective.key].tolist()))})
    return pd.DataFrame(rows, columns=["scheme", "objective", "seeds", "with_value", "mean", "low", "high", "values"])


@dataclass
class Verdict:
    """One objective: the schemes ranked (best first), the winner against the runner-up seed by seed."""

    objective: Objective
    ranked: list[str]
    means: dict[str, float]
    tied: list[str] = field(default_factory=list)  # the winner and the schemes equal to it on every seed
    difference: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # runner-up minus winner, oriented
    paired_seeds: int = 0
    never: list[str] = field(default_factory=list)  # ranked nowhere: no value on any seed
    partial: list[tuple[str, int, int]] = field(default_factory=list)  # (scheme, seeds with a value, seeds)
    refused: list[str] = field(default_factory=list)  # not ranked: every task refused for memory

    @property
    def winner(self) -> str | None:
        return self.ranked[0] if self.ranked else None

    @property
    def runner_up(self) -> str | None:
        return self.ranked[1] if len(self.ranked) > 1 else None

    @property
    def separable(self) -> bool:
        return self.paired_seeds >= 2 and not self.tied and self.difference[1] > 0


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      lower_is_better: bool) -> tuple[tuple[float, float, float], int]:
    """How much better `a` is than `b` seed by seed (positive: better): mean and 95 % interval, and the seeds."""
    common = sorted(set(a) & set(b))
    sign = -1.0 if lower_is_better else 1.0
    differences = [sign * (a[seed] - b[seed]) for seed in common]
    return interval(differences), len(common)


def equal_on_common_seeds(a: Mapping[int, float], b: Mapping[int, float]) -> bool:
    """Whether two schemes have the same value on every seed both have (a tie, not a spread)."""
    common = set(a) & set(b)
    return bool(common) and all(math.isclose(a[s], b[s], rel_tol=1e-12, abs_tol=1e-15) for s in common)


def judge(statistics: pd.DataFrame, objective: Objective) -> Verdict:
    """Rank the schemes with a value on every seed they completed; compare the winner with the runner-up."""
    rows = statistics[statistics["objective"] == objective.key]
    complete = rows[(rows["with_value"] == rows["seeds"]) & (rows["seeds"] > 0)]
    ranked = complete.sort_values("mean", ascending=objective.lower_is_better, kind="stable")
    values = dict(zip(ranked["scheme"], ranked["values"]))
    verdict = Verdict(objective, ranked["scheme"].tolist(), dict(zip(ranked["scheme"], ranked["mean"])),
                      never=rows.loc[rows["with_value"] == 0, "scheme"].tolist(),
                      partial=[(r.scheme, r.with_value, r.seeds) for r in rows.itertuples()
                               if 0 < r.with_value < r.seeds])
    if len(verdict.ranked) < 2:
        return verdict
    winner = verdict.ranked[0]
    tied = [s for s in verdict.ranked[1:] if equal_on_common_seeds(values[winner], values[s])]
    verdict.tied = [winner, *tied] if tied else []
    runner = verdict.ranked[1]
    verdict.difference, verdict.paired_seeds = paired_difference(values[winner], values[runner],
                                                                 objective.lower_is_better)
    return verdict


def class_seed_table(outcomes: Sequence[SeedOutcome], energy: bool) -> pd.DataFrame:
    """Per scheme, seed and device class (compute nodes of a pipeline apart), what one device of the class paid
    over the run on average: device seconds busy, energy, bytes both ways, FLOPs; the largest share of its memory
    a trained task used, and the share of its tasks refused for memory."""
    frames = []
    for outcome in outcomes:
        run = outcome.run
        if outcome.error is not None or run is None or not len(run.participants) or not trained_anything(run):
            continue
        rows = run.participants.assign(bytes=run.participants["bytes_down"] + run.participants["bytes_up"])
        if "role" not in rows:
            rows = rows.assign(role="participant")
        for (device, role), frame in rows.groupby(["device", "role"], sort=False):
            members = frame["participant"].nunique()
            asked = frame[frame["status"].isin(["ok", "oom", "stale", "dropped", "timeout", "error"])]
            frames.append({
                "scheme": outcome.scheme, "seed": outcome.seed, "device": device, "role": role, "devices": members,
                "cap_bytes": float(frame["mem_cap_bytes"].max()), "status": "ok",
                "device_s": float(frame["device_time_s"].sum()) / members,
                "energy": float(frame[ENERGY_COLUMN].sum()) / members if energy else math.nan,
                "bytes": float(frame["bytes"].sum()) / members, "flops": float(frame["flops"].sum()) / members,
                "memory_share": memory_share(frame),
                "refused_share": float((asked["status"] == "oom").mean()) if len(asked) else 0.0,
            })
    return pd.DataFrame(frames)


CLASS_FIGURES = ("device_s", "energy", "bytes", "flops", "memory_share", "refused_share")


def class_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per scheme and device class: each figure's mean over the seeds, the device time's and energy's 95 %
    intervals."""
    if not len(per_seed):
        return pd.DataFrame(columns=["scheme", "device", "role", "devices", "cap_bytes", "seeds", *CLASS_FIGURES])
    rows = []
    for (scheme, device, role), frame in per_seed.groupby(["scheme", "device", "role"], sort=False):
        row = {"scheme": scheme, "device": device, "role": role, "devices": int(frame["devices"].max()),
               "cap_bytes": float(frame["cap_bytes"].max()), "seeds": len(frame)}
        for figure in CLASS_FIGURES:
            mean, low, high = interval(frame[figure].dropna().to_numpy())
            row[figure] = mean
            if figure in ("device_s", "energy"):
                row[f"{figure}_low"], row[f"{figure}_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def weakest_class(per_seed: pd.DataFrame) -> str | None:
    """The data owners' device class with the smallest memory cap (ties: by name)."""
    owners = per_seed[per_seed["role"] == "participant"] if len(per_seed) else per_seed
    if not len(owners):
        return None
    caps = owners.groupby("device")["cap_bytes"].max().reset_index().sort_values(["cap_bytes", "device"])
    return str(caps["device"].iloc[0])


def class_objectives(device: str, energy: bool) -> list[Objective]:
    found = [Objective("device_s", f"Device time of each {device}", True, "s", "takes the least of its time", "are")]
    if energy:
        found.append(Objective("energy", f"Energy of each {device}", True, "J", "drains it least", "are"))
    return found


def pairwise(statistics: pd.DataFrame, objective: Objective, schemes: Sequence[str]) -> pd.DataFrame:
    """Every pair of ranked schemes on one objective, the better first: the mean paired lead over their common
    seeds, its 95 % interval, on how many of those seeds the better one was ahead, and whether they separate."""
    values = statistics[statistics["objective"] == objective.key].set_index("scheme")["values"]
    rows = []
    for index, first in enumerate(schemes):
        for second in schemes[index + 1:]:
            (lead, low, high), seeds = paired_difference(values[first], values[second], objective.lower_is_better)
            better, worse = (first, second) if lead >= 0 else (second, first)
            sign = 1.0 if lead >= 0 else -1.0
            common = sorted(set(values[first]) & set(values[second]))
            ahead = sum(1 for s in common if sign * (values[first][s] - values[second][s])
                        * (-1.0 if objective.lower_is_better else 1.0) > 0)
            bounds = (low, high) if sign > 0 else (-high, -low)
            rows.append({"better": better, "worse": worse, "lead": abs(lead), "low": bounds[0], "high": bounds[1],
                         "seeds": seeds, "ahead_on": ahead, "separable": seeds >= 2 and bounds[0] > 0})
    return pd.DataFrame(rows, columns=["better", "worse", "lead", "low", "high", "seeds", "ahead_on", "separable"])
