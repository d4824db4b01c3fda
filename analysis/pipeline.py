"""Tables of pipeline split learning runs (and the runs they are compared with), in Markdown, from the records.

    python -m analysis.pipeline SWEEP_OR_RUN_DIR [...]

Per run: accuracy per epoch; the epoch's virtual time from the schedule beside EdgeSys'25's closed form; bytes per
hop per epoch (hop 0: owners and the first compute node, hop N: the last node and the owners); memory of each
compute node and of an owner, planned against measured (live-tensor peak) and the cap; owners that could not train.
"""

from __future__ import annotations

import argparse
import math
from typing import Sequence

import pandas as pd

from analysis.runs import RunRecords, load_runs

MIB = 2**20
MB = 1e6


def _mean(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].mean()) if column in frame and len(frame) else math.nan


def summary_rows(runs: Sequence[RunRecords]) -> list[str]:
    lines = ["| run | final accuracy | epoch, schedule (s) | epoch, closed form (s) | bytes per hop per epoch (MB) "
             "| compute nodes' memory, planned / measured / cap (MiB) | owner memory, planned / measured / cap (MiB) "
             "| owners ok / oom |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        rounds, rows = run.rounds, run.participants
        owners = rows[rows["role"] == "participant"] if "role" in rows else rows
        nodes = rows[rows["role"] == "compute"] if "role" in rows else rows.iloc[0:0]
        hops = sorted((c for c in rounds if c.startswith("strategy_hop")), key=lambda c: int(c[12:-6]))
        hop_text = " / ".join(f"{_mean(rounds, c) / MB:.1f}" for c in hops) or "-"
        node_text = " ; ".join(
            f"{g['mem_planned_bytes'].max() / MIB:.1f} / {g['mem_peak_tensor_bytes'].max() / MIB:.1f} / "
            f"{g['mem_cap_bytes'].max() / MIB:.0f}" for _, g in nodes.groupby("participant")) or "-"
        trained = owners[owners["status"] == "ok"]
        owner_text = (f"{owners['mem_planned_bytes'].max() / MIB:.1f} / "
                      f"{trained['mem_peak_tensor_bytes'].max() / MIB if len(trained) else math.nan:.1f} / "
                      f"{owners['mem_cap_bytes'].max() / MIB:.0f}")
        epoch = _mean(rounds, "strategy_epoch_schedule_s")
        if math.isnan(epoch):  # not a pipeline: a synchronous round waits for its slowest participant
            epoch = float((rounds["vt_end"] - rounds["vt_start"]).mean())
        accuracy = rounds["test_accuracy"].dropna()
        lines.append(f"| {run.label} | {accuracy.iloc[-1] if len(accuracy) else math.nan:.4f} | {epoch:.1f} | "
                     f"{_mean(rounds, 'strategy_epoch_closed_form_s'):.1f} | {hop_text} | {node_text} | "
                     f"{owner_text} | {(owners['status'] == 'ok').sum()} / {(owners['status'] == 'oom').sum()} |")
    return lines


def accuracy_rows(runs: Sequence[RunRecords]) -> list[str]:
    epochs = sorted({int(r) for run in runs for r in run.rounds["round"]})
    lines = ["| epoch | " + " | ".join(run.label for run in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for epoch in epochs:
        cells = []
        for run in runs:
            value = run.rounds.loc[run.rounds["round"] == epoch, "test_accuracy"]
            cells.append(f"{value.iloc[0]:.4f}" if len(value) and not math.isnan(value.iloc[0]) else "")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.pipeline", description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="SWEEP_OR_RUN_DIR")
    args = parser.parse_args(argv)
    runs = [run for path in args.paths for run in load_runs(path)]
    print("\n".join(summary_rows(runs)))
    print()
    print("\n".join(accuracy_rows(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
