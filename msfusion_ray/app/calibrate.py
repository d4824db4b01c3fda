"""`python -m msfusion_ray calibrate`: measure a node and write its device profile.

The profile's `train_gflops` is the node's training FLOP/s (the median over the workloads), its `timing` block the
roofline fitted to every workload's measured step (devices/calibration.py), with, where control groups can be
written, how much CPU quotas cost beyond their share (`timing.throttle`, which enforced runs compensate). Its
`memory_mib` is the memory available when it ran. Comments in the file say how and when each figure was measured.
A profile written here loads as any other (a fleet may name it); on the node it measured, a copy is also kept
where enforced runs look for this node's calibration (devices.enforcement.node_cache_path).
With `--address` and `--resource` the measurement runs as a Ray task on a node of that cluster that has the
resource; the file is written here.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from msfusion_ray.errors import UserInputError
from msfusion_ray.files import write_text_atomic

PLACEHOLDER_LINK = {"uplink_mbps": 1000.0, "downlink_mbps": 1000.0, "latency_ms": 1.0}


def check_out(out: str | Path) -> Path:
    """The profile's path, refused before anything is measured where it cannot be written or named."""
    path = Path(out).expanduser()
    if path.suffix != ".yaml":
        raise UserInputError("--out", f"{path}: a device profile is a .yaml file")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", path.stem):
        raise UserInputError("--out", f"{path}: the file name is the profile's name: letters, digits, - _ .")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserInputError("--out", f"{parent}: no such directory")
    if path.is_dir() or (path.exists() and not os.access(path, os.W_OK)) or not os.access(parent, os.W_OK):
        raise UserInputError("--out", f"{path}: cannot be written")
    return path


def measure_node(quick: bool, threads: int, seconds: float, throttle: bool, memory: bool = True) -> dict[str, Any]:
    """Everything a profile of this node holds, measured here (in a Ray task where the node is remote)."""
    import psutil
    import torch

    from msfusion_ray.app import task_memory
    from msfusion_ray.devices import calibration
    from msfusion_ray.devices.cgroups import CgroupError

    torch.set_num_threads(threads)
    started, load_before = time.time(), os.getloadavg()[0]
    workloads = calibration.QUICK if quick else calibration.CALIBRATION
    measured = [calibration.measure(w, seconds) for w in workloads]
    stream_mb = 64 if quick else 256
    bandwidth = calibration.stream_gbps(stream_mb)
    timing = calibration.fit_timing(measured, threads, bandwidth)
    factors, why_not = {}, ""
    if throttle:
        try:
            factors = calibration.measure_throttle(workloads[:2], seconds=1.0 if quick else 3.0)
        except CgroupError as err:
            why_not = str(err)
    else:
        why_not = "not asked (--no-throttle)"
    timing = replace(timing, throttle=factors)
    need, tasks, no_need = None, [], "not asked (--no-memory)"
    if memory:
        try:
            need, tasks = task_memory.fitted_need(task_memory.QUICK_MEMORY_CASES if quick else
                                                  task_memory.MEMORY_CASES, threads)
        except CgroupError as err:
            no_need = str(err)
    predicted = {m.workload.label: calibration.step_seconds(timing, m.census) for m in measured}
    return {
        "host": socket.gethostname(), "cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)), "took_s": time.time() - started,
        "load": (load_before, os.getloadavg()[0]), "threads": threads, "quick": quick,
        "memory_mib": psutil.virtual_memory().available / 2**20, "stream_gbps": bandwidth, "stream_mb": stream_mb,
        "timing": timing,
        "train_gflops": timing.reference_gflops, "throttle_note": why_not,
        "cases": [(m.workload.label, m.step_s, m.gflops, predicted[m.workload.label], m.steps) for m in measured],
        "kinds": calibration.kinds_used(measured),
        "memory_need": need, "memory_tasks": tasks, "memory_note": no_need,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def number(value: float) -> str:
    """Four significant digits as YAML reads a float back (PyYAML wants a dot in 1.0e-05)."""
    text = repr(float(f"{value:.4g}"))
    return text.replace("e", ".0e") if "e" in text and "." not in text else text


def profile_text(node: dict[str, Any], name: str) -> str:
    """The profile as YAML, each figure with how it was measured."""
    timing, cases = node["timing"], node["cases"]
    lines = [
        f"# Calibrated by `python -m msfusion_ray calibrate` on {node['host']} ({node['cpu']}, {node['cores']} cores)",
        f"# at {node['started']}, in {node['took_s']:.0f} s, torch {node['torch']}, {node['threads']} thread(s);",
        f"# load average {node['load'][0]:.2f} before, {node['load'][1]:.2f} after (above the core count: the "
        "figures are low).",
        f"name: {name}",
        f"description: {node['host']} as measured by calibrate ({node['threads']} thread(s))",
        "# Memory available to processes when calibrate ran (psutil's `available`), not a limit it tried.",
        f"memory_mib: {round(node['memory_mib'])}",
        "# Training FLOP/s: the median over the workloads below of counted FLOPs / measured step time.",
        f"train_gflops: {number(node['train_gflops'])}",
        "# The link is not measured: placeholders, to be set to the device's own.",
        *(f"{key}: {value:g}" for key, value in PLACEHOLDER_LINK.items()),
        "# The roofline fitted to every workload's step (least squares on log time): per operation, the longer of",
        "# its FLOPs over its kind's throughput and its bytes over memory_gbps, plus op_us (view_us for views).",
        f"# A copy of {node['stream_mb']} MB measured {node['stream_gbps']:.1f} GB/s (read + write) at these threads.",
        f"# Share of the workloads' FLOPs per kind: "
        + ", ".join(f"{kind} {share:.0%}" for kind, share in node["kinds"].items()) + ".",
        "timing:",
        f"  reference_gflops: {number(timing.reference_gflops)}",
        f"  conv_gflops: {number(timing.conv_gflops)}",
        f"  matmul_gflops: {number(timing.matmul_gflops)}",
        f"  attention_gflops: {number(timing.attention_gflops)}",
        f"  memory_gbps: {number(timing.memory_gbps)}",
        f"  op_us: {number(timing.op_us)}",
        f"  view_us: {number(timing.view_us)}",
        f"  threads: {timing.threads}",
    ]
    if timing.throttle:
        lines.append("  # CPU quota -> how much slower than 1 / quota a step ran under it (median of two workloads,")
        lines.append("  # each between two unlimited windows); enforced runs raise their quotas by it.")
        pairs = ", ".join(f"{number(quota)}: {number(factor)}" for quota, factor in sorted(timing.throttle.items()))
        lines.append("  throttle: {" + pairs + "}")
    else:
        lines.append(f"  # throttle not measured: {node['throttle_note']}")
    lines.append("# Workloads (family, width, batch): measured step ms, GFLOP/s, roofline ms, steps timed:")
    lines += [f"#   {label:<24} {step * 1e3:9.2f} {gflops:7.2f} {fit * 1e3:9.2f} {steps:5d}"
              for label, step, gflops, fit, steps in cases]
    return "\n".join(lines + memory_lines(node)) + "\n"


def memory_lines(node: dict[str, Any]) -> list[str]:
    """The memory_need block (devices/memory_need.py) with the tasks it was fitted to, or why there is none."""
    need = node.get("memory_need")
    if need is None:
        return [f"# memory_need not measured: {node.get('memory_note', 'not asked')}"]
    lines = ["# What a training task's process needs against the planner's footprint: whole tasks (an epoch, two in",
             "# a row), each workload in a fresh process that joined a control group as a host does; a task's need",
             "# is its group's peak over what the group held at its start. need = headroom x (scale x footprint +",
             "# fixed_mib MiB): one fixed part, and per family the smallest scale above its own tasks (the pair",
             "# closest to them in relative terms); `scale`, above every task, for a network not listed. `headroom`",
             "# is for what two tasks per family do not show (docs/emulation.md). The planner refuses work whose",
             "# need exceeds a memory cap.",
             "memory_need:", f"  scale: {need.scale:g}", f"  fixed_mib: {need.fixed_mib:g}",
             "  families: {" + ", ".join(f"{name}: {scale:g}" for name, scale in need.families.items()) + "}",
             f"  headroom: {need.headroom:g}",
             "# Workloads (family, width, batch, rate): footprint MiB, need MiB (largest task), need / its family's",
             "# line (without the headroom):"]
    for task in node["memory_tasks"]:
        if "error" in task:
            lines.append(f"#   {task['case']:<28} failed: {task['error'][:80]}")
            continue
        footprint, largest = task["planned"], max(t["need"] for t in task["tasks"])
        lines.append(f"#   {task['case']:<28} {footprint / 2**20:8.2f} {largest / 2**20:8.2f} "
                     f"{largest * need.headroom / need.of(task['family']).need_bytes(footprint):6.3f}")
    return lines


def remote_measure(address: str, resource: str, quick: bool, threads: int, seconds: float, throttle: bool,
                   memory: bool) -> dict[str, Any]:
    """`measure_node` as a Ray task on a node of the cluster at `address` that has `resource`."""
    import ray

    from msfusion_ray.runtime.cluster import apply_offline_env

    apply_offline_env()
    ray.init(address=address, log_to_driver=False)
    try:
        if resource not in ray.cluster_resources():
            raise UserInputError("--resource", f"no node of the cluster at {address} has resource '{resource}'")
        task = ray.remote(measure_node).options(num_cpus=threads, resources={resource: 0.001})
        return ray.get(task.remote(quick, threads, seconds, throttle, memory), timeout=3600)
    finally:
        ray.shutdown()


def calibrate(out: str | None, threads: int = 1, quick: bool = False, address: str | None = None,
              resource: str | None = None, seconds: float | None = None, throttle: bool = True,
              memory: bool = True) -> list[Path]:
    """Measure the node, write its profile to `out` (default: <host>.yaml here); the paths written."""
    if threads < 1:
        raise UserInputError("--threads", f"must be >= 1 (got {threads})")
    if (address is None) != (resource is None):
        raise UserInputError("--resource" if address else "--address", "give --address and --resource together")
    path = check_out(out or f"{socket.gethostname()}.yaml")
    seconds = seconds if seconds is not None else (0.3 if quick else 1.5)
    if address is not None:
        node = remote_measure(address, resource, quick, threads, seconds, throttle, memory)
    else:
        node = measure_node(quick, threads, seconds, throttle, memory)
    write_text_atomic(path, profile_text(node, path.stem))
    written = [path]
    if address is None:  # this node's calibration, where enforced runs that name none find it
        # Imported here: the command line imports this module, and numpy would cost every command 0.3 s.
        from msfusion_ray.devices.enforcement import node_cache_path

        cache = node_cache_path()
        write_text_atomic(cache, profile_text(node, cache.stem))
        written.append(cache)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="the profile to write (default: HOSTNAME.yaml here); its name is the file's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as runtime.threads_per_host (1)")
    parser.add_argument("--quick", action="store_true", help="a few tiny workloads (seconds; for trying it out)")
    parser.add_argument("--seconds", type=float, help="timing per workload (default 1.5; 0.3 with --quick)")
    parser.add_argument("--no-throttle", action="store_true", help="do not measure CPU quotas' cost (needs root)")
    parser.add_argument("--no-memory", action="store_true",
                        help="do not measure what a task's process needs beyond its footprint (needs root)")
    parser.add_argument("--address", help="a Ray cluster: measure one of its nodes (with --resource)")
    parser.add_argument("--resource", help="a custom resource only the node to measure has")


def command(args: argparse.Namespace) -> int:
    """The `calibrate` command (msfusion_ray.cli)."""
    written = calibrate(args.out, args.threads, args.quick, args.address, args.resource, args.seconds,
                        not args.no_throttle, not args.no_memory)
    print(f"profile: {written[0]}")
    for path in written[1:]:
        print(f"this node's calibration for enforced runs: {path}")
    return 0
