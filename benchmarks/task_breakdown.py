"""Where a participant task's time goes: CPU seconds of each kind of process over the steady rounds of the
scalability config, per participant task, beside the tasks' own recorded wall times.

One run of `benchmarks/scalability.py`'s config (the small CNN at width 0.25, one local step, `--per-round` of
`--participants` asked a round, the runtime's default hosts). A watcher reads the CPU times of every process of
the cluster every 0.2 s; the CPU the hosts, the driver, the raylet and the rest of Ray spent between the first
step's end and the last's is divided by the tasks trained in rounds 2 on (the previous round's evaluation, which
runs beside a round, included). The tasks' records split their own wall time: `wall_setup_s` (payload fetched,
model built or taken from the pool, weights loaded), `wall_train_s`, `wall_serialize_s`, and the rest of
`wall_total_s` (memory guard, seeding, the record).

    .venv/bin/python benchmarks/task_breakdown.py                       # 10 000 registered, 1000 a round, 5 rounds
    .venv/bin/python benchmarks/task_breakdown.py --participants 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load, measured_run, ray_session, report  # noqa: E402
from benchmarks.scalability import config_for  # noqa: E402
from msfusion_ray.records import read_participant_rows, read_round_rows  # noqa: E402

PROCESS_KINDS = ("ray::Host", "ray::Driver", "raylet", "gcs_server")
TASK_WALL_FIELDS = ("wall_setup_s", "wall_train_s", "wall_serialize_s", "wall_total_s")


def process_kind(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    return next((kind for kind in PROCESS_KINDS if kind in command), "other Ray")


class CpuWatch:
    """CPU seconds (user + system) of this process's descendants by kind, sampled every `interval_s`: each sample
    is the running total, so the CPU spent between two moments is the difference of the samples nearest them."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.samples: list[tuple[float, Counter]] = []
        self._per_process: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for process in me.children(recursive=True):
                try:
                    times = process.cpu_times()
                    self._per_process[process.pid] = (process_kind(process), times.user + times.system)
                except psutil.Error:
                    pass
            totals = Counter()
            for kind, seconds in self._per_process.values():
                totals[kind] += seconds
            self.samples.append((time.time(), totals))
            self._stop.wait(self.interval_s)

    def between(self, start: float, end: float) -> Counter:
        def nearest(moment: float) -> Counter:
            return min(self.samples, key=lambda sample: abs(sample[0] - moment))[1]

        first, last = nearest(start), nearest(end)
        return Counter({kind: last[kind] - first.get(kind, 0.0) for kind in last})

    def __enter__(self) -> "CpuWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(self.interval_s * 2)  # a sample after the run's end
        self._stop.set()
        self._thread.join(timeout=10)


def breakdown(participants: int, per_round: int, rounds: int) -> dict:
    from msfusion_ray.experiment.prepare import prepare

    with tempfile.TemporaryDirectory() as scratch, ray_session():
        prepared = prepare(config_for(participants, rounds, None, scratch, per_round))
        load_before = load()
        with CpuWatch() as watch:
            run = measured_run(prepared)
        rows, round_rows = read_participant_rows(run["run_dir"]), read_round_rows(run["run_dir"])
        steps = json.loads((Path(run["run_dir"]) / "summary.json").read_text())["timing"]["steps"]
    steady = round_rows[round_rows["round"] >= 2]
    tasks = int(steady["participants_ok"].sum())
    cpu = watch.between(steps[0], steps[-1])
    trained = rows[(rows["status"] == "ok") & (rows["round"] >= 2)]
    wall = {field: 1000 * float(trained[field].mean()) for field in TASK_WALL_FIELDS}
    return {
        "tasks (rounds 2 on)": tasks,
        "cpu_ms_per_task": {kind: 1000 * seconds / tasks for kind, seconds in sorted(cpu.items())},
        "cpu_ms_per_task_all": 1000 * sum(cpu.values()) / tasks,
        "task_wall_ms": {**wall, "rest of wall_total_s": wall["wall_total_s"] - wall["wall_setup_s"]
                         - wall["wall_train_s"] - wall["wall_serialize_s"]},
        "tasks_per_s": [float(x) for x in steady["participants_ok"] / steady["wall_round_s"]],
        "load_before": load_before, "load_after": load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--per-round", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = breakdown(args.participants, args.per_round, args.rounds)
    print("\n| per participant task | ms |\n|---|---|")
    for kind, ms in result["cpu_ms_per_task"].items():
        print(f"| CPU of {kind} | {ms:.2f} |")
    print(f"| **CPU of all processes** | **{result['cpu_ms_per_task_all']:.2f}** |")
    for field, ms in result["task_wall_ms"].items():
        print(f"| in the task: {field} | {ms:.2f} |")
    rates = result["tasks_per_s"]
    print(f"| participant tasks / s in rounds 2 on | {min(rates):.0f}-{max(rates):.0f} |")
    report("task_breakdown", {"args": vars(args), **result}, [])


if __name__ == "__main__":
    main()
