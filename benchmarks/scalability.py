"""Scalability of the runtime: what a round costs as the fleet grows from 10 to 1000 participants, and as the
registered fleet grows with the participants of a round fixed (up to a million).

Every participant trains every round (fleet.sample_fraction 1; or `--per-round N` of them, a seeded sample) for
one local step of the small CNN, so a round's work grows with the participants asked and the runtime's own
costs show: the round's wall time as the driver sees it, participant tasks per second, the peak resident memory
of the driver actor and of the host actors (a bounded pool), and how fast the records are written (one row per
participant per round); and what a registered fleet costs before the first round: preparing it (`prepare_s`),
start-up (`startup_s`: from the start of preparing to the first round's start, the cluster already up), and the
size of the last checkpoint besides the model's weights. Participants hold IID shares of Fashion-MNIST's 60 000
training images where those hold 4 each; beyond that (`partition: sampled`) each draws 6 at random, shares
overlapping. Each size runs `--repeats` times on one Ray cluster; the table gives medians and the load average
around each run. Hosts: the runtime's default (one per core) unless `--hosts` caps them.

    .venv/bin/python benchmarks/scalability.py                    # 10, 100, 1000 participants, 3 repeats
    .venv/bin/python benchmarks/scalability.py --sizes 1000 10000 --per-round 1000   # 1000 a round of 10 000
    .venv/bin/python benchmarks/scalability.py --sizes 10000 100000 1000000 --per-round 1000   # up to a million
    .venv/bin/python benchmarks/scalability.py --sizes 10000 1000000 --per-round 1000 --fleets phones  # sampled
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

from benchmarks.common import measured_run, median, ray_session, report  # noqa: E402
from msfusion_ray.config import ExperimentConfig  # noqa: E402
from msfusion_ray.experiment.config_check import config_from_dict  # noqa: E402
from msfusion_ray.records import (ParticipantRoundRow, RecordWriter, RoundRow, read_participant_rows,  # noqa: E402
                                  read_round_rows)
from msfusion_ray.runtime.checkpoint import WEIGHTS  # noqa: E402


TRAINING_IMAGES, MIN_SAMPLES, DRAWN_SAMPLES = 60_000, 4, 6


FLEETS = {"quickstart": lambda size: {"file": "device_profiles/fleets/quickstart.yaml", "size": size},  # 4 classes
          "phones": lambda size: {"sample": {"source": "phones", "size": size}}}  # drawn from the shipped list


def config_for(size: int, rounds: int, hosts: int | None, output_dir: str,
               per_round: int | None = None, fleet: str = "quickstart") -> ExperimentConfig:
    """`size` participants of `fleet` (IID shares of the 60 000 images: 6 each at 10 000; 6 drawn at random each
    beyond 15 000), `per_round` of them asked each round (None: all)."""
    shares = ({"partition": "iid"} if size * MIN_SAMPLES <= TRAINING_IMAGES
              else {"partition": "sampled", "samples_per_participant": DRAWN_SAMPLES})
    return config_from_dict({
        "name": f"scale{size}", "rounds": rounds, "seed": 0,
        "data": {"dataset": "fashion_mnist", **shares, "eval_samples": 1000,
                 "min_samples_per_participant": MIN_SAMPLES},
        "model": {"name": "cnn", "width": 0.25},
        "fleet": {**FLEETS[fleet](size),
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


def checkpoint_bytes(run_dir: Path) -> tuple[int, int]:
    """The last checkpoint's size: its files besides the model's weights, and the weights."""
    files = [p for p in (run_dir / "checkpoint").iterdir() if p.is_file()]
    weights = sum(p.stat().st_size for p in files if p.name == WEIGHTS)
    return sum(p.stat().st_size for p in files) - weights, weights


def measure(size: int, rounds: int, hosts: int | None, scratch: Path, per_round: int | None = None,
            fleet: str = "quickstart") -> dict:
    """One run of `size` participants; round times from its records, memory from its actors."""
    from msfusion_ray.experiment.prepare import prepare

    started = time.time()
    prepared = prepare(config_for(size, rounds, hosts, str(scratch), per_round, fleet))
    prepare_s = time.time() - started
    run = measured_run(prepared)
    rounds_frame, participants = read_round_rows(run["run_dir"]), read_participant_rows(run["run_dir"])
    besides_weights, weights = checkpoint_bytes(run["run_dir"])
    later = rounds_frame[rounds_frame["round"] >= 2]  # round 1 also warms up each host (first FLOP count)
    walls = (rounds_frame["wall_round_s"] + rounds_frame["wall_eval_s"]).sum()
    return {
        "fleet": fleet, "participants": size, "hosts": run["summary"]["hosts"], "rounds": run["summary"]["rounds_completed"],
        "prepare_s": prepare_s, "startup_s": run["summary"]["timing"]["run_started"] - started,
        "checkpoint_mb_besides_weights": besides_weights / 1e6, "weights_mb": weights / 1e6,
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
    for fleet, size in dict.fromkeys((r["fleet"], r["participants"]) for r in runs):
        mine = [r for r in runs if (r["fleet"], r["participants"]) == (fleet, size)]
        row = {"fleet": fleet, "participants": size, "hosts": mine[0]["hosts"], "repeats": len(mine)}
        for key in ("trained_per_round", "prepare_s", "startup_s", "round_wall_s", "tasks_per_s", "first_round_wall_s",
                    "run_wall_s", "driver_peak_mb", "host_peak_mb", "hosts_total_mb", "checkpoint_mb_besides_weights",
                    "writer_rows_per_s", "rows_per_s_of_rounds"):
            row[key] = median([r[key] for r in mine])
        row["tasks_per_s (min-max)"] = f"{min(r['tasks_per_s'] for r in mine):.0f}-" \
                                        f"{max(r['tasks_per_s'] for r in mine):.0f}"
        first = next((r for r in table if r["fleet"] == fleet), row)  # the fleet's smallest size
        row["driver_peak_x_first"] = row["driver_peak_mb"] / first["driver_peak_mb"]
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
    parser.add_argument("--fleets", nargs="+", choices=sorted(FLEETS), default=["quickstart"],
                        help="quickstart: its four device classes rescaled; phones: drawn from the shipped list")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch, ray_session():
        for repeat in range(args.repeats):
            for fleet in args.fleets:
                for size in args.sizes:
                    runs.append(measure(size, args.rounds, args.hosts, Path(scratch), args.per_round, fleet))
                    print(f"repeat {repeat + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    table = summarise(runs)
    report("scalability", {"args": vars(args), "runs": runs, "medians": table}, table)


if __name__ == "__main__":
    main()
