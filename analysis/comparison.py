"""The comparison table of a set of runs: one row per experiment (runs that differ only by seed), with the metric
at the end and at its best (on the test split, and on the validation split where the data has one), what one
participant spent on average (FLOPs, bytes, joules), the tightest memory margin, and the virtual time and the
energy per participant it took to reach a target.

    python -m analysis.comparison sweeps/fmnist-compare [more dirs] --target 0.75
    python -m analysis.comparison sweeps/lm-compare --target 8 --target-split val
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.metrics import metric_of
from analysis.runs import RunRecords, cost_curves, label_runs, load_runs
from analysis.timeline import idle_share


SPLITS = ("test", "val")


def reached(metric: str, value: float, target: float) -> bool:
    return value <= target if metric.endswith("perplexity") else value >= target


def column(metric: str, split: str) -> str:
    """The `cost_curves` column of a metric on a split: 'perplexity' (test) or 'val_perplexity'."""
    return metric if split == "test" else f"{split}_{metric}"


def cost_to_target(run: RunRecords, metric: str, target: float, cost: str = "cum_device_s") -> float:
    """Cumulative `cost` (a column of `cost_curves`) at the first evaluated round whose `metric` (a column of
    `cost_curves`: 'accuracy', 'val_perplexity', ...) reached the target; NaN if none did."""
    curve = cost_curves(run).dropna(subset=[metric])
    hits = curve[[reached(metric, v, target) for v in curve[metric]]]
    return float(hits[cost].iloc[0]) if len(hits) else math.nan


def final_and_best(run: RunRecords, metric: str) -> tuple[float, float]:
    """The metric (a `cost_curves` column) at the last evaluated round and at its best; NaN if never evaluated."""
    values = cost_curves(run)[metric].dropna()
    if not len(values):
        return math.nan, math.nan
    best = values.min() if metric.endswith("perplexity") else values.max()
    return float(values.iloc[-1]), float(best)


def run_row(run: RunRecords, metric: str, target: float | None, split: str = "test") -> dict:
    final, best = final_and_best(run, metric)
    val_final, val_best = final_and_best(run, column(metric, "val"))
    rounds, size = run.rounds, run.fleet_size
    trained = run.participants[run.participants["status"] == "ok"]
    margin = (trained["mem_peak_tensor_bytes"] / trained["mem_cap_bytes"]).max() if len(trained) else math.nan
    return {
        "group": run.label, "seed": run.seed,
        "final": final, "best": best, "val_final": val_final, "val_best": val_best,
        "flops_per_participant": float(rounds["flops_total"].sum()) / size,
        "bytes_per_participant": float((rounds["bytes_down_total"] + rounds["bytes_up_total"]).sum()) / size,
        "p2p_bytes_per_participant": float(rounds["bytes_p2p_total"].sum()) / size,
        "peak_over_cap": float(margin),
        "oom": int((run.participants["status"] == "oom").sum()),
        "device_s": float(cost_curves(run)["cum_device_s"].iloc[-1]) if len(rounds) else math.nan,
        "idle_share": idle_share(run),
        "energy_per_participant": float(cost_curves(run)["cum_energy_per_participant"].iloc[-1]) if len(rounds)
        else math.nan,
        "device_s_to_target": cost_to_target(run, column(metric, split), target) if target is not None
        else math.nan,
        "energy_to_target": cost_to_target(run, column(metric, split), target, "cum_energy_per_participant")
        if target is not None else math.nan,
    }


def comparison_table(runs: Sequence[RunRecords], target: float | None = None, split: str = "test") -> pd.DataFrame:
    """Per group, means over its seeds (final metric also with min and max; `val_` columns: the same on the
    validation split); `reached` counts the seeds whose metric on `split` hit the target, and the virtual time and
    the joules per participant to it average over those (with their min and max)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    metric = metric_of(runs)
    rows = pd.DataFrame([run_row(run, metric, target, split) for run in runs])
    table = rows.groupby("group", sort=False).agg(
        seeds=("seed", "size"), final=("final", "mean"), final_min=("final", "min"), final_max=("final", "max"),
        best=("best", "mean"), best_min=("best", "min"), best_max=("best", "max"),
        val_final=("val_final", "mean"), val_final_min=("val_final", "min"), val_final_max=("val_final", "max"),
        val_best=("val_best", "mean"), val_best_min=("val_best", "min"), val_best_max=("val_best", "max"),
        flops_per_participant=("flops_per_participant", "mean"),
        bytes_per_participant=("bytes_per_participant", "mean"),
        p2p_bytes_per_participant=("p2p_bytes_per_participant", "mean"), peak_over_cap=("peak_over_cap", "max"),
        oom=("oom", "sum"), device_s=("device_s", "mean"), idle_share=("idle_share", "mean"),
        energy_per_participant=("energy_per_participant", "mean"),
        reached=("device_s_to_target", lambda s: int(s.notna().sum())),
        device_s_to_target=("device_s_to_target", "mean"), device_s_to_target_min=("device_s_to_target", "min"),
        device_s_to_target_max=("device_s_to_target", "max"), energy_to_target=("energy_to_target", "mean"),
        energy_to_target_min=("energy_to_target", "min"), energy_to_target_max=("energy_to_target", "max"))
    table.attrs.update(metric=metric, target=target, split=split)
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, in readable units (GFLOP, MB, s); validation columns where the runs have them."""
    metric, target = table.attrs.get("metric", "accuracy"), table.attrs.get("target")
    split = table.attrs.get("split", "test")
    has_val = "val_final" in table and table["val_final"].notna().any()
    test = "test " if has_val else ""
    header = ["scheme", "seeds", f"final {test}{metric} (min-max)", f"best {test}{metric}"]
    if has_val:
        header += [f"final val {metric} (min-max)", f"best val {metric} (min-max)"]
    header += ["GFLOP / participant", "MB / participant", "P2P MB / participant", "J / participant", "peak / cap",
               "OOM", "virtual s", "idle"]
    if target is not None:
        goal = f"{'' if split == 'test' else f'{split} '}{metric} {target:g}"
        header += [f"virtual s to {goal} (seeds)", f"J / participant to {goal}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples():
        cells = [row.group, str(row.seeds), f"{row.final:.3f} ({row.final_min:.3f}-{row.final_max:.3f})",
                 f"{row.best:.3f}"]
        if has_val:
            cells += [f"{row.val_final:.3f} ({row.val_final_min:.3f}-{row.val_final_max:.3f})",
                      f"{row.val_best:.3f} ({row.val_best_min:.3f}-{row.val_best_max:.3f})"]
        cells += [f"{row.flops_per_participant / 1e9:,.0f}", f"{row.bytes_per_participant / 1e6:,.1f}",
                  f"{row.p2p_bytes_per_participant / 1e6:,.1f}" if row.p2p_bytes_per_participant else "-",
                  _joules(row.energy_per_participant), f"{row.peak_over_cap:.2f}", str(row.oom),
                  _figure(row.device_s), f"{row.idle_share:.0%}"]
        if target is not None:
            cells += [f"{_spread(row.device_s_to_target, row.device_s_to_target_min, row.device_s_to_target_max)} "
                      f"({row.reached}/{row.seeds})" if row.reached else f"not reached (0/{row.seeds})",
                      _spread(row.energy_to_target, row.energy_to_target_min, row.energy_to_target_max)
                      if row.reached and not math.isnan(row.energy_to_target) else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(value: float) -> str:
    """Whole numbers from 100 up, three significant digits below (a virtual second of a miniature task counts)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _spread(mean: float, low: float, high: float) -> str:
    """The mean over the seeds that reached the target, with their range where there are several."""
    return _figure(mean) if low == high else f"{_figure(mean)} [{_figure(low)}-{_figure(high)}]"


def _joules(value: float) -> str:
    """Joules as `_figure` gives them ('-' where the devices have no power figures)."""
    return "-" if math.isnan(value) else _figure(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories")
    parser.add_argument("--target", type=float, help="accuracy (or perplexity) whose virtual time and energy per "
                                                     "participant to report")
    parser.add_argument("--target-split", choices=SPLITS, default="test",
                        help="the split the target is judged on (val: the validation split, where there is one)")
    parser.add_argument("--csv", help="also write the table as CSV")
    args = parser.parse_args(argv)
    runs = label_runs([run for path in args.paths for run in load_runs(path)])
    table = comparison_table(runs, args.target, args.target_split)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
