"""Per-device and per-exit breakdowns of a set of runs: what each device class held and spent under each scheme,
how busy the fleet was, and how well each early exit of the final global model does.

    python -m analysis.breakdown sweeps/cos2p-vit [more dirs] [--exits]

Per group (runs that differ only by seed) and device class: tasks that trained and that were refused, the planned
and measured memory against the cap, FLOPs and bytes per participant, the mean staleness of its updates; per group:
the mean resource utilisation of the steps (device seconds worked within a step over its length x participants).
`--exits`: every exit of each run's final global model on the test split, means over seeds (models with early exits
only; from the round records, or from the final checkpoint for runs recorded before the records carried exits).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import pandas as pd

from analysis.runs import RunRecords, label_runs, load_runs

MIB = 2**20


def device_table(runs: Sequence[RunRecords]) -> pd.DataFrame:
    """One row per (group, device class), means over the group's seeds and the class's participants."""
    frames = []
    for run in runs:
        rows = run.participants
        per_device = rows.groupby("device")
        trained = rows[rows["status"] == "ok"].groupby("device")
        frame = pd.DataFrame({
            "participants": per_device["participant"].nunique(),
            "ok": per_device["status"].agg(lambda s: int((s == "ok").sum())),
            "oom": per_device["status"].agg(lambda s: int((s == "oom").sum())),
            "cap_mib": per_device["mem_cap_bytes"].max() / MIB,
            "planned_mib": trained["mem_planned_bytes"].max() / MIB,
            "peak_tensor_mib": trained["mem_peak_tensor_bytes"].max() / MIB,
            "gflop_per_participant": trained["flops"].sum() / per_device["participant"].nunique() / 1e9,
            "mb_per_participant": (trained["bytes_down"].sum() + trained["bytes_up"].sum())
            / per_device["participant"].nunique() / 1e6,
            "staleness": trained["staleness"].mean(),
            "depth": trained["metric_depth"].mean() if "metric_depth" in rows else math.nan,
        }).reset_index()
        frame.insert(0, "group", run.label)
        frames.append(frame)
    table = pd.concat(frames).groupby(["group", "device"], sort=False).mean(numeric_only=True).reset_index()
    return table


def utilisation(runs: Sequence[RunRecords]) -> pd.DataFrame:
    rows = [{"group": run.label, "seed": run.seed, "utilisation": float(run.rounds["device_utilisation"].mean()),
             "virtual_s": float(run.rounds["vt_end"].max())} for run in runs]
    return pd.DataFrame(rows).groupby("group", sort=False).mean(numeric_only=True).drop(columns="seed").reset_index()


def exit_metrics(run: RunRecords) -> dict[str, float]:
    """Every exit of the run's final global model on the test split (empty for models without exits): from its
    last evaluated round's `test_exit*` columns, or, for runs recorded before round rows carried them, evaluated
    again from its final checkpoint."""
    recorded = [c for c in run.rounds.columns if c.startswith("test_exit")]
    if recorded:
        last = run.rounds.dropna(subset=["test_loss"]).sort_values("round").iloc[-1]
        return {c.removeprefix("test_"): float(last[c]) for c in recorded}
    return evaluated_exits(run)


def evaluated_exits(run: RunRecords) -> dict[str, float]:
    """Every exit of the run's final checkpoint evaluated on the test split."""
    from msfusion_ray.experiment.config_check import config_from_dict
    from msfusion_ray.experiment.prepare import prepare
    from msfusion_ray.models.weights import load_weights
    from msfusion_ray.runtime.checkpoint import load_checkpoint
    from msfusion_ray.training.evaluate import evaluate

    checkpoint = load_checkpoint(run.run_dir)
    if checkpoint is None:
        return {}
    prepared = prepare(config_from_dict(run.config))
    model = prepared.family.build()
    load_weights(model, checkpoint.weights)
    metrics = evaluate(model, prepared.data, prepared.data.test, prepared.config.runtime.eval_batch_size)
    return {k: v for k, v in metrics.items() if k.startswith("exit")}


def exit_table(runs: Sequence[RunRecords]) -> pd.DataFrame:
    rows = [{"group": run.label, "seed": run.seed, **exit_metrics(run)} for run in runs]
    return pd.DataFrame(rows).groupby("group", sort=False).mean(numeric_only=True).drop(columns="seed").reset_index()


def markdown(table: pd.DataFrame, digits: int = 2) -> str:
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns)
    lines = ["| " + " | ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row) + " |"
             for row in table.itertuples(index=False)]
    return "\n".join([header, *lines])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories")
    parser.add_argument("--exits", action="store_true", help="every exit of each run's final model")
    args = parser.parse_args(argv)
    runs = label_runs([run for path in args.paths for run in load_runs(path)])
    print(markdown(device_table(runs)), end="\n\n")
    print(markdown(utilisation(runs)), end="\n\n")
    if args.exits:
        print(markdown(exit_table(runs), digits=3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
