"""Scalability of the runtime: what a round costs as the fleet grows from 10 to 1000 participants, and as the
registered fleet grows with the participants of a round fixed.

Every participant trains every round (fleet.sample_fraction 1; or `--per-round N` of them, a seeded sample) for
one local step of the small CNN, so a round's work grows with the participants asked and the runtime's own
costs show: the round's wall time as the driver sees it, participant tasks per second, the peak resident memory
of the driver actor and of the host actors (a bounded pool), and how fast the records are written (one row per
participant per round). Each size runs `--repeats` times on one Ray cluster; the table gives medians and the
load average around each run. Hosts: the runtime's default (one per core) unless `--hosts` caps them.

    .venv/bin/python benchmarks/scalability.py                    # 10, 100, 1000 participants, 3 repeats
    .venv/bin/python benchmarks/scalability.py --sizes 1000 10000 --per-round 1000   # 1000 a round of 10 000
    .venv/bin/python benchmarks/scalability.py --sizes 10 100 --repeats 1 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, markdown_table, measured_run, median, ray_session, write_results  # noqa: E402
from msfusion_ray.config import ExperimentConfig  # noqa: E402
from msfusion_ray.experiment.config_check import config_from_dict  # noqa: E402
from msfusion_ray.records import (ParticipantRoundRow, RecordWriter, RoundRow, read_participant_rows,  # noqa: E402
                                  read_round_rows)


def config_for(size: int, rounds: int, hosts: int | None, output_dir: str,
               per_round: int | None = None) -> ExperimentConfig:
    """`size` participants (IID shares of the 60 000 images: 6 each at 10 000), `per_round` of them asked each
    round (None: all)."""
    return config_from_dict({
        "name": f"scale{size}", "rounds": rounds, "seed": 0,
        "data": {"dataset": "fashion_mnist", "partition": "iid", "eval_samples": 1000,
                 "min_samples_per_participant": 4},
        "model": {"name": "cnn", "width": 0.25},
        "fleet": {"file": "device_profiles/fleets/quickstart.yaml", "size": size,
                  "sample_fraction": 1.0 if per_round is None else min(1.0, per_round / size)},
        "strategy": {"name": "fedavg"},
        "training": {"local_steps": 1, "batch_size": 16, "lr": 0.05},
        "runtime": {"max_hosts": hosts},
        "output_dir": output_dir,
    })


def writer_rows_per_s(participants: pd.DataFrame, rounds: pd.DataFrame) -> float:
    """Rows per second the record writer takes in, timed on a run's own rows (every round written again)."""
    names = [f.name for f in fields(ParticipantRoundRow) if f.name != "metrics"]
    metric_columns = {c: c.removeprefix("metric_") for c in participants.columns if c.startswith("metric_")}
    round_names = [f.name for f in fields(RoundRow) if f.name not in ("strategy_metrics", "eval_metrics")]
    batches = []
    for round_idx, frame in participants.groupby("round"):
        rows = [ParticipantRoundRow(**{k: record[k] for k in names},
                                    metrics={m: record[c] for c, m in metric_columns.items()})
                for record in frame.to_dict("records")]
        summary = rounds[rounds["round"] == round_idx].iloc[0]
        batches.append((rows, RoundRow(**{k: summary[k] for k in round_names})))
    with tempfile.TemporaryDirectory() as scratch:
        writer = RecordWriter(scratch)
        started = time.perf_counter()
        for rows, summary in batches:
            writer.write_round(rows, summary)
        elapsed = time.perf_counter() - started
    return len(participants) / elapsed


def measure(size: int, rounds: int, hosts: int | None, scratch: Path, per_round: int | None = None) -> dict:
    """One run of `size` participants; round times from its records, memory from its actors."""
    from msfusion_ray.experiment.prepare import prepare

    run = measured_run(prepare(config_for(size, rounds, hosts, str(scratch), per_round)))
    rounds_frame, participants = read_round_rows(run["run_dir"]), read_participant_rows(run["run_dir"])
    later = rounds_frame[rounds_frame["round"] >= 2]  # round 1 also warms up each host (first FLOP count)
    walls = (rounds_frame["wall_round_s"] + rounds_frame["wall_eval_s"]).sum()
    return {
        "participants": size, "hosts": run["summary"]["hosts"], "rounds": run["summary"]["rounds_completed"],
        "round_wall_s": median(later["wall_round_s"].tolist()),
        "tasks_per_s": median((later["participants_ok"] / later["wall_round_s"]).tolist()),
        "first_round_wall_s": float(rounds_frame["wall_round_s"].iloc[0]),
        "trained_per_round": float(rounds_frame["participants_ok"].mean()),
        **{k: run[k] for k in ("run_wall_s", "driver_peak_mb", "host_peak_mb", "hosts_total_mb")},
        "rows": len(participants),
        "writer_rows_per_s": writer_rows_per_s(participants, rounds_frame),
        "rows_per_s_of_rounds": len(participants) / float(walls),
        "load_before": run["load_before"], "load_after": run["load_after"],
    }


def summarise(runs: list[dict]) -> list[dict]:
    """Medians over the repeats of each size."""
    table = []
    for size in dict.fromkeys(r["participants"] for r in runs):
        mine = [r for r in runs if r["participants"] == size]
        row = {"participants": size, "hosts": mine[0]["hosts"], "repeats": len(mine)}
        for key in ("trained_per_round", "round_wall_s", "tasks_per_s", "first_round_wall_s", "run_wall_s", "driver_peak_mb",
                    "host_peak_mb", "hosts_total_mb", "writer_rows_per_s", "rows_per_s_of_rounds"):
            row[key] = median([r[key] for r in mine])
        loads = [r["load_before"] for r in mine] + [r["load_after"] for r in mine]
        row["load (min-max)"] = f"{min(loads):.1f}-{max(loads):.1f}"
        table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=None, help="participants asked each round (default: all)")
    parser.add_argument("--hosts", type=int, default=None, help="runtime.max_hosts (default: the runtime's own)")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch, ray_session():
        for repeat in range(args.repeats):
            for size in args.sizes:
                runs.append(measure(size, args.rounds, args.hosts, Path(scratch), args.per_round))
                print(f"repeat {repeat + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    table = summarise(runs)
    path = write_results("scalability", {"command": " ".join(sys.argv), "machine": machine(), "args": vars(args),
                                         "runs": runs, "medians": table})
    print(markdown_table(table))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
