"""The comparison table of a set of runs: one row per experiment (runs that differ only by seed), with the metric
at the end and at its best, what one participant spent on average, the tightest memory margin, and the device
time it took to reach a target.

    python -m analysis.comparison sweeps/fmnist-compare [more dirs] --target 0.75 [--markdown]
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


def reached(metric: str, value: float, target: float) -> bool:
    return value <= target if metric == "perplexity" else value >= target


def cost_to_target(run: RunRecords, metric: str, target: float, cost: str = "cum_device_s") -> float:
    """Cumulative `cost` (a column of `cost_curves`) at the first evaluated round that reached the target; NaN if
    none did."""
    curve = cost_curves(run).dropna(subset=[metric])
    hits = curve[[reached(metric, v, target) for v in curve[metric]]]
    return float(hits[cost].iloc[0]) if len(hits) else math.nan


def run_row(run: RunRecords, metric: str, target: float | None) -> dict:
    curve = cost_curves(run).dropna(subset=[metric])
    best = curve[metric].min() if metric == "perplexity" else curve[metric].max()
    rounds, size = run.rounds, run.fleet_size
    trained = run.participants[run.participants["status"] == "ok"]
    margin = (trained["mem_peak_tensor_bytes"] / trained["mem_cap_bytes"]).max() if len(trained) else math.nan
    return {
        "group": run.label, "seed": run.seed,
        "final": float(curve[metric].iloc[-1]) if len(curve) else math.nan,
        "best": float(best) if len(curve) else math.nan,
        "flops_per_participant": float(rounds["flops_total"].sum()) / size,
        "bytes_per_participant": float((rounds["bytes_down_total"] + rounds["bytes_up_total"]).sum()) / size,
        "p2p_bytes_per_participant": float(rounds["bytes_p2p_total"].sum()) / size,
        "peak_over_cap": float(margin),
        "oom": int((run.participants["status"] == "oom").sum()),
        "device_s": float(rounds["device_time_s"].sum()),
        "device_s_to_target": cost_to_target(run, metric, target) if target is not None else math.nan,
    }


def comparison_table(runs: Sequence[RunRecords], target: float | None = None) -> pd.DataFrame:
    """Per group, means over its seeds (final metric also with min and max); `reached` counts the seeds that hit
    the target, and the device time to it averages over those."""
    metric = metric_of(runs)
    rows = pd.DataFrame([run_row(run, metric, target) for run in runs])
    table = rows.groupby("group", sort=False).agg(
        seeds=("seed", "size"), final=("final", "mean"), final_min=("final", "min"), final_max=("final", "max"),
        best=("best", "mean"), flops_per_participant=("flops_per_participant", "mean"),
        bytes_per_participant=("bytes_per_participant", "mean"),
        p2p_bytes_per_participant=("p2p_bytes_per_participant", "mean"), peak_over_cap=("peak_over_cap", "max"),
        oom=("oom", "sum"), device_s=("device_s", "mean"),
        reached=("device_s_to_target", lambda s: int(s.notna().sum())),
        device_s_to_target=("device_s_to_target", "mean"))
    table.attrs.update(metric=metric, target=target)
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, in readable units (GFLOP, MB, s)."""
    metric, target = table.attrs.get("metric", "accuracy"), table.attrs.get("target")
    header = ["scheme", "seeds", f"final {metric} (min-max)", f"best {metric}", "GFLOP / participant",
              "MB / participant", "P2P MB / participant", "peak / cap", "OOM", "device s"]
    if target is not None:
        header.append(f"device s to {metric} {target:g} (seeds)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples():
        cells = [row.group, str(row.seeds), f"{row.final:.3f} ({row.final_min:.3f}-{row.final_max:.3f})",
                 f"{row.best:.3f}", f"{row.flops_per_participant / 1e9:,.0f}", f"{row.bytes_per_participant / 1e6:,.1f}",
                 f"{row.p2p_bytes_per_participant / 1e6:,.1f}" if row.p2p_bytes_per_participant else "-",
                 f"{row.peak_over_cap:.2f}", str(row.oom), f"{row.device_s:,.0f}"]
        if target is not None:
            cells.append(f"{row.device_s_to_target:,.0f} ({row.reached}/{row.seeds})" if row.reached
                         else f"not reached (0/{row.seeds})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories")
    parser.add_argument("--target", type=float, help="accuracy (or perplexity) whose device time to report")
    parser.add_argument("--csv", help="also write the table as CSV")
    args = parser.parse_args(argv)
    runs = label_runs([run for path in args.paths for run in load_runs(path)])
    table = comparison_table(runs, args.target)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
