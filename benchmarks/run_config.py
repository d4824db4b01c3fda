"""One experiment config run as a measurement: its outcome and what it cost the machine (wall time with and
without start-up, rounds, peak memory of the driver and host actors, record rows), e.g. the 1000-participant run
that docs/benchmarks.md reports:

    .venv/bin/python benchmarks/run_config.py configs/scale_1000.yaml [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import measured_run, median, ray_session, report  # noqa: E402
from msfusion_ray.experiment.config_check import load_config  # noqa: E402
from msfusion_ray.experiment.prepare import prepare  # noqa: E402
from msfusion_ray.records import read_participant_rows, read_round_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, ray_session():
        prepared = prepare(load_config(args.config, [*args.set, f"output_dir={scratch}"]))
        run = measured_run(prepared)
        rounds, participants = read_round_rows(run["run_dir"]), read_participant_rows(run["run_dir"])
    summary = run["summary"]
    result = {
        "config": args.config, "participants": summary["participants"], "hosts": summary["hosts"],
        "rounds": summary["rounds_completed"], "asked_per_round": len(participants) / len(rounds),
        "trained_per_round": float(rounds["participants_ok"].mean()), "rows": len(participants),
        "final_accuracy": summary["final_accuracy"], "best_accuracy": summary["best_accuracy"],
        "run_wall_s": run["run_wall_s"], "rounds_wall_s": float((rounds["wall_round_s"] + rounds["wall_eval_s"]).sum()),
        "median_round_wall_s": median(rounds["wall_round_s"].tolist()),
        "median_round_device_s": median(rounds["device_time_s"].tolist()),
        **{k: run[k] for k in ("driver_peak_mb", "host_peak_mb", "hosts_total_mb", "load_before", "load_after")},
    }
    report(f"run-{Path(args.config).stem}", {"result": result}, [result])


if __name__ == "__main__":
    main()
