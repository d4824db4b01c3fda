"""Where msfusion_ray's start-up goes: from launch to the first training of round 1, as a user starts a run.

Each repetition launches `python -m msfusion_ray run CONFIG --no-plots` (one round) and samples its process tree
every 0.1 s: when each process appeared, the titles Ray gives a worker as it becomes a host or the driver actor
(`ray::Host.__init__`, then `ray::Host` once it is ready), and the CPU seconds each had used by the first
training (the run's `timing.run_started`). Then it repeats the launcher's preparing in a process of its own with
a clock on each part (imports, the config's check, the data, footprint planning and FLOP counting, the rest of
`prepare`), CPU seconds. On 2 cores, start-up can be no shorter than half the CPU seconds spent before the first
training: what every process costs is the figure to cut.

    .venv/bin/python benchmarks/startup.py --model benchmarks/fedavg_net.py:make_net --repeats 3
    .venv/bin/python benchmarks/startup.py --config configs/quickstart.yaml
    .venv/bin/python benchmarks/startup.py --model ... --tree /tmp/main-tree   # the code of another checkout

Without `--config` it runs benchmarks/flower.py's workload (`--model`, `--momentum`: as there). `--tree` runs the
package of another checkout (an A/B of two commits: its command line, its preparing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load, median, report  # noqa: E402

DAEMONS = ("dashboard.py", "agent.py", "runtime_env/agent/main.py", "log_monitor.py", "monitor.py")
SAMPLE_S = 0.1


def kind_of(command: str) -> str:
    """What a process of the run is, from its command line (Ray retitles its workers `ray::Class.method`)."""
    program = command.split()[0].rsplit("/", 1)[-1] if command else "?"
    if program in ("gcs_server", "raylet"):  # before the workers: the raylet's arguments name default_worker.py
        return f"ray {program}"
    if "app.apart import _child" in command:
        return "preparing"
    if command.startswith("ray::"):
        title = command.split()[0]
        return {"ray::IDLE": "idle worker"}.get(title, title.split(".")[0])
    if "default_worker.py" in command:
        return "idle worker"
    for daemon in DAEMONS:
        if daemon in command:
            return f"ray {daemon.rsplit('/', 1)[-1].removesuffix('.py')}"
    if "-m msfusion_ray" in command:
        return "command line"
    return program


class TreeTrace:
    """Every process under `pid`, sampled: first and last seen, first sight of each title, CPU seconds over time."""

    def __init__(self, pid: int, launched: float):
        self.root = psutil.Process(pid)
        self.launched = launched
        self.processes: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            now = time.time() - self.launched
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            for process in tree:
                try:
                    command = " ".join(process.cmdline())
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                entry = self.processes.setdefault(process.pid, {"first": now, "titles": {}, "cpu": []})
                entry["last"] = now
                entry["titles"].setdefault(command.split()[0] if command.startswith("ray::") else kind_of(command),
                                           now)
                entry["cpu"].append((now, times.user + times.system))
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> "TreeTrace":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def count_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.processes.values():
            counts[self.kind(entry)] = counts.get(self.kind(entry), 0) + 1
        return counts

    def cpu_by_kind(self, until: float) -> dict[str, float]:
        spent: dict[str, float] = {}
        for entry in self.processes.values():
            used = [cpu for at, cpu in entry["cpu"] if at <= until]
            if used:
                kind = self.kind(entry)
                spent[kind] = spent.get(kind, 0.0) + used[-1]
        return spent

    @staticmethod
    def kind(entry: dict[str, Any]) -> str:
        """A worker is what it became (its last title: `ray::Host`); any other process what it was first."""
        titles = sorted(entry["titles"], key=entry["titles"].get)
        actors = [kind_of(title) for title in titles if title.startswith("ray::") and title != "ray::IDLE"]
        return actors[-1] if actors else (kind_of(titles[0]) if titles[0].startswith("ray::") else titles[0])


def timeline(trace: TreeTrace, timing: dict[str, float]) -> dict[str, float]:
    """Seconds from launch to each landmark of the start-up: the first process of a kind to reach it, or for the
    actors' readiness the last."""
    firsts: dict[str, float] = {}
    lasts: dict[str, float] = {}
    for entry in trace.processes.values():
        kind, titles = trace.kind(entry), entry["titles"]
        if kind == "preparing":
            firsts["preparing: started"] = entry["first"]
            lasts["preparing: done (its process gone)"] = entry["last"]
        elif kind in ("ray gcs_server", "ray raylet"):
            firsts[f"cluster: {kind.removeprefix('ray ')} started"] = entry["first"]
        elif kind in ("ray::Host", "ray::Driver"):
            name = kind.removeprefix("ray::").lower()
            began = titles.get(f"{kind}.__init__")
            ready = [at for title, at in titles.items() if title.startswith(kind) and not title.endswith("__init__")]
            for landmark, at in ((f"{name}: worker process started", entry["first"]),
                                 (f"{name}: actor began (__init__)", began)):
                if at is not None:
                    firsts[landmark] = min(firsts.get(landmark, at), at)
            if ready:
                landmark = f"{name}: actor ready (the last one)"
                lasts[landmark] = max(lasts.get(landmark, min(ready)), min(ready))
    marks = {**firsts, **lasts, "runner: hosts ready": timing["hosts_ready"],
             "runner: first training (run started)": timing["run_started"]}
    return dict(sorted(marks.items(), key=lambda item: item[1]))


def launch_once(config: Path, scratch: Path, rep: int, tree: Path) -> dict[str, Any]:
    out = scratch / f"run-{rep}"
    command = [sys.executable, "-m", "msfusion_ray", "run", str(config), "--no-plots", "--set", f"output_dir={out}",
               "--set", "rounds=1"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load_before = load()
    with open(scratch / f"run-{rep}.log", "w") as log:
        launched = time.time()
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        with TreeTrace(process.pid, launched) as trace:
            code = process.wait(timeout=900)
    if code != 0:
        raise RuntimeError(f"the run exited with {code}: {(scratch / f'run-{rep}.log').read_text()[-800:]}")
    summary = json.loads((next(out.iterdir()) / "summary.json").read_text())
    timing = {k: v - launched for k, v in summary["timing"].items() if isinstance(v, float)}
    first = timing["run_started"]
    cpu = trace.cpu_by_kind(first)
    return {"launch_to_first_training_s": first, "timeline_s": timeline(trace, timing), "cpu_s_by_process": cpu,
            "processes": trace.count_by_kind(),
            "cpu_s_total": sum(cpu.values()), "load_before": load_before, "load_after": load()}


PHASES_SCRIPT = r'''
import functools, json, sys, time
clock = time.process_time
spent, marks = {}, [("start", clock())]
def mark(name): marks.append((name, clock()))
def timed(module, name, label):
    original = getattr(module, name)
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        began = clock()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + clock() - began
    setattr(module, name, wrapper)
import torch
mark("import torch")
from msfusion_ray.app import preparation
from msfusion_ray.app.request import RunRequest
import msfusion_ray.experiment.prepare as prepare, msfusion_ray.costs.footprint as footprint
import msfusion_ray.costs.flops as flops
mark("import the package (the strategies, the preparing)")
timed(prepare, "load_data", "prepare: the data (read, subset)")
timed(footprint, "plan_footprint", "prepare: footprint planning (forward and backward passes)")
timed(flops, "count_flops", "prepare: FLOP counting")
checked = preparation.check_whole(RunRequest.from_file(sys.argv[1]))
mark("the config checked whole")
experiment = preparation.prepare_checked(checked)
mark("prepare")
from msfusion_ray.experiment.shipment import Shipment
mark("import Ray (the child's pickler)")
Shipment.packed(experiment)
mark("packing for the launcher")
phases = {name: at - before for (_, before), (name, at) in zip(marks, marks[1:])}
phases["prepare: the rest (fleet, partition, model, strategy, checks)"] = phases.pop("prepare") - sum(spent.values())
phases.update(spent)
print(json.dumps(phases))
'''


def preparing_phases(config: Path, tree: Path) -> dict[str, float]:
    """CPU seconds of the launcher's preparing, by part, in a fresh interpreter as the launcher's child is."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", PHASES_SCRIPT, str(config)], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="a config to start (default: benchmarks/flower.py's workload)")
    parser.add_argument("--model", help="the workload's network by import path (as benchmarks/flower.py --model)")
    parser.add_argument("--momentum", type=float, help="the workload's SGD momentum (default: msfusion_ray's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose package runs (default: this)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    repetitions = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        config = args.config.resolve() if args.config else workload(args, scratch)
        for rep in range(args.repeats):
            repetitions.append(launch_once(config, scratch, rep, tree))
            print(f"repetition {rep + 1}: {json.dumps(repetitions[-1])}", file=sys.stderr, flush=True)
        phases = preparing_phases(config, tree)
    landmarks = sorted({k for r in repetitions for k in r["timeline_s"]},
                       key=lambda k: median([r["timeline_s"][k] for r in repetitions if k in r["timeline_s"]]))
    kinds = sorted({k for r in repetitions for k in r["cpu_s_by_process"]},
                   key=lambda k: -median([r["cpu_s_by_process"].get(k, 0.0) for r in repetitions]))
    tables = {
        "launch to the first training, seconds from launch (median)": [
            {"landmark": k, "s": median([r["timeline_s"][k] for r in repetitions if k in r["timeline_s"]])}
            for k in landmarks],
        "CPU seconds by process up to the first training (median)": [
            {"process": k, "CPU s": median([r["cpu_s_by_process"].get(k, 0.0) for r in repetitions]),
             "processes": max(r["processes"].get(k, 0) for r in repetitions)} for k in kinds]
        + [{"process": "all", "CPU s": median([r["cpu_s_total"] for r in repetitions]), "processes": ""}],
        "the launcher's preparing by part, CPU seconds (one run)": [
            {"part": k, "CPU s": v} for k, v in phases.items()],
    }
    loads = [v for r in repetitions for v in (r["load_before"], r["load_after"])]
    report("startup", {"config": str(config), "tree": str(tree), "repetitions": repetitions,
                       "preparing_phases": phases, "tables": tables}, tables,
           footer=f"load {min(loads):.1f}-{max(loads):.1f}; ")


def workload(args: argparse.Namespace, scratch: Path) -> Path:
    """benchmarks/flower.py's workload as a config in `scratch`."""
    from benchmarks.flower import write_workload

    settings = argparse.Namespace(rounds=1, participants=10, samples=600, batch_size=32, model=args.model, lr=None,
                                  momentum=args.momentum, seed=0)
    write_workload(settings, scratch)
    return scratch / "workload.yaml"


if __name__ == "__main__":
    main()
