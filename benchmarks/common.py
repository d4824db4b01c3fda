"""What every benchmark needs: the machine and its load, one Ray cluster, the peak memory of the run's actors,
and a JSON file of the results (benchmarks/out/, ignored by git).

The machine may be shared while a benchmark runs, so each measurement carries the load average next to it.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psutil

OUT_DIR = Path(__file__).resolve().parent / "out"

# A device that is always reachable and never short of memory: every participant trains every round, on every
# side of a comparison.
BENCH_DEVICE = {"name": "bench-device", "description": "always available, ample memory (benchmarks)",
                "memory_mib": 100000, "train_gflops": 100, "uplink_mbps": 1000, "downlink_mbps": 1000,
                "latency_ms": 1, "availability": 1.0}


def machine() -> dict[str, Any]:
    """The machine as a reader of the results needs it: CPU, cores, memory, and software versions."""
    import ray
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "kernel": platform.release()}


def load() -> float:
    """The 1-minute load average (runnable processes; above the core count the machine is oversubscribed)."""
    return round(os.getloadavg()[0], 2)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _peak_rss_bytes(pid: int) -> int | None:
    """The process's resident-set high-water mark (VmHWM): its peak since it started, whenever it is read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class ActorMemory:
    """Peak resident memory of this process's own Ray actors by class (the driver actor, the host actors), read
    from VmHWM while they live. Only descendants of this process count: other Ray sessions on the machine (other
    people's tests) have processes of the same names."""

    def __init__(self, classes: tuple[str, ...] = ("Driver", "Host"), interval_s: float = 0.25):
        self.classes = classes
        self.interval_s = interval_s
        self.peaks: dict[int, tuple[str, int]] = {}  # pid -> (class, peak bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _class_of(self, process: psutil.Process) -> str | None:
        try:
            title = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        for name in self.classes:
            if title.startswith(f"ray::{name}"):
                return name
        return None

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for process in me.children(recursive=True):
                name = self._class_of(process)
                peak = _peak_rss_bytes(process.pid) if name else None
                if peak is not None:
                    self.peaks[process.pid] = (name, max(peak, self.peaks.get(process.pid, (name, 0))[1]))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ActorMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def peak(self, name: str) -> int:
        """The largest peak of any one actor of the class (0: none seen)."""
        return max((b for n, b in self.peaks.values() if n == name), default=0)

    def total(self, name: str) -> int:
        """The actors' peaks added up (an upper bound on their memory at once)."""
        return sum(b for n, b in self.peaks.values() if n == name)


def _pss_bytes(pid: int) -> int:
    """The process's proportional set size: its private pages plus its share of pages it shares."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory:
    """The memory of a process and all its descendants (a program and every process it starts: Ray's own, its
    workers), sampled while it runs: the peak of their resident sets added up (what the issue's figures are),
    every `interval_s`, and the peak of their proportional set sizes added up (shared pages counted once), every
    `pss_every` samples: reading a process's PSS walks its page tables (8 ms for a 400 MB process), so reading
    it every 0.2 s for a dozen processes took a tenth of a core from the programs measured. Also the CPU seconds
    they used (each process's last sample: what a process used in its last interval is missed), a figure a
    loaded machine changes much less than wall time."""

    def __init__(self, pid: int, interval_s: float = 0.2, pss_every: int = 5):
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.pss_every = pss_every
        self.peak_rss_bytes = 0
        self.peak_pss_bytes = 0
        self.most_processes = 0
        self._cpu_s: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        for sample in itertools.count():
            if self._stop.is_set():
                break
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            rss = pss = 0
            for process in processes:
                try:
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                self._cpu_s[process.pid] = times.user + times.system
                if sample % self.pss_every == 0:
                    pss += _pss_bytes(process.pid)
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
            self.most_processes = max(self.most_processes, len(processes))
            self._stop.wait(self.interval_s)

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu_s.values())

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@contextmanager
def ray_session() -> Iterator[None]:
    """One embedded Ray cluster (the runtime's own, on loopback only) for a whole benchmark."""
    from msfusion_ray.config import RuntimeConfig
    from msfusion_ray.runtime.cluster import ray_cluster

    with ray_cluster(RuntimeConfig()):
        yield


def measured_run(prepared: Any) -> dict[str, Any]:
    """Run a prepared experiment on the open cluster while watching its actors' memory; its run directory and
    summary, the whole run's wall time (host start-up included), peak memory (MB) and the load around it."""
    from msfusion_ray.app.launching import run_prepared

    load_before = load()
    started = time.perf_counter()
    with ActorMemory() as memory:
        finished = run_prepared(prepared, show_progress=False)
    return {"run_dir": finished.run_dir, "summary": finished.summary, "run_wall_s": time.perf_counter() - started,
            "driver_peak_mb": memory.peak("Driver") / 1e6, "host_peak_mb": memory.peak("Host") / 1e6,
            "hosts_total_mb": memory.total("Host") / 1e6, "load_before": load_before, "load_after": load()}


def write_results(name: str, results: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


def report(name: str, results: dict[str, Any], tables: list[dict[str, Any]] | dict[str, list[dict[str, Any]]],
           *, command: str | None = None, machine_info: dict[str, Any] | None = None, footer: str = "") -> Path:
    """Close a benchmark the one way every benchmark does: its results, under the command that produced them and
    the machine they ran on, written to benchmarks/out/, then its table(s) printed for docs/benchmarks.md and the
    file's path. `tables` is one table, or several by title."""
    path = write_results(name, {"command": command or " ".join(sys.argv), "machine": machine_info or machine(),
                                **results})
    if isinstance(tables, dict):
        for title, rows in tables.items():
            print(f"\n{title}\n")
            print(markdown_table(rows))
        print()
    elif tables:
        print(markdown_table(tables))
    print(f"{footer}results: {path}")
    return path


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table (for docs/benchmarks.md)."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
