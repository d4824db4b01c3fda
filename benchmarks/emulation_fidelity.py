"""Emulation fidelity: the time model's predictions and the planner's memory verdicts against what enforced devices
(control groups: runtime.enforce: cgroups) really do on this machine. Needs root and a quiet machine.

1. Calibrate the node once (`python -m msfusion_ray calibrate`'s measurement), or take `--profile`.
2. Time (`--part time`): every family of the suite (the small CNN, the FedAvg CNN, ResNet-18 at widths 0.25 and 0.5,
   VGG, the ViT, the GPT transformer, the MLP), each at two batch sizes none of which calibrate ran, at each quota
   (default 1.0 and 0.25 of a core): this process in a control group of its own through the enforcement code
   (devices.enforcement.HostLimits, the quota raised by the measured throttling cost), the step timed in wall
   time, against the FLOP/s model (the node's train_gflops) and the roofline (its timing block). `--raw` also times
   each quota below 1 without the throttling compensation: what throttling costs.
3. Memory (`--part memory`): for each (model, rate) and each `runtime.enforce_memory` (process: glibc as it is;
   tensors: freed tensors go back to the kernel), whole tasks as a host runs them (msfusion_ray/app/task_memory.py:
   a fresh process per run that joins its group after its imports, the planner's pass, then `--memory-tasks` tasks
   of `--memory-steps` steps each, the update made) first with no limit (the real need: the group's peak over what
   it held at a task's start), then under the limit an enforced host sets for caps at `--cap-factors` times the
   planner's threshold (the need the node's `memory_need` makes of the footprint under process; the footprint
   under tensors, or where the node has no model): the kernel's verdict (killed or not) against the planner's.
4. Overhead (`--part overhead`): the same small run under enforce: virtual and enforce: cgroups with every device
   at the node's speed (quota 1.0), alternating, `--repeats` times; the ratio of their wall times.

    sudo .venv/bin/python benchmarks/emulation_fidelity.py                    # all parts, ~15 minutes on 2 cores
    sudo .venv/bin/python benchmarks/emulation_fidelity.py --quick --seconds 0.5   # a smoke test, ~3 minutes
    sudo .venv/bin/python benchmarks/emulation_fidelity.py --profile node.yaml --part time --quotas 1 0.5 0.25
    .venv/bin/python benchmarks/emulation_fidelity.py --tables benchmarks/out/emulation_fidelity-*.json  # docs' tables
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, load, machine, markdown_table, write_results  # noqa: E402
from msfusion_ray.app.calibrate import measure_node, profile_text  # noqa: E402
from msfusion_ray.app.task_memory import TaskCase, in_fresh_process  # noqa: E402
from msfusion_ray.config import RuntimeConfig  # noqa: E402
from msfusion_ray.costs.flops import StepCostCache  # noqa: E402
from msfusion_ray.devices import calibration, cgroups  # noqa: E402
from msfusion_ray.devices.calibration import Workload  # noqa: E402
from msfusion_ray.devices.enforcement import HostLimits, hierarchy_base, plan_enforcement  # noqa: E402
from msfusion_ray.devices.profile import DeviceProfile, load_profile  # noqa: E402
from msfusion_ray.devices.time_model import step_seconds  # noqa: E402
from msfusion_ray.files import write_text_atomic  # noqa: E402

TIME_CASES = calibration.suite((16, 64), (4, 16), (0.25, 0.5))
QUICK_TIME = [Workload("mlp", 16), Workload("cnn", 16, 0.5), Workload("transformer", 4, 1.0, "text64", calibration.GPT)]
MEMORY_MODELS = [Workload("mlp", 4, 0.1), Workload("mlp", 32), Workload("cnn", 8, 0.5), Workload("cnn", 32),
                 Workload("fedavg_cnn", 32), Workload("resnet18", 32, 0.25, "image32"),
                 Workload("vgg", 32, 0.25, "image32"), Workload("vit", 32, 1.0, "image32", calibration.VIT),
                 Workload("transformer", 8, 1.0, "text64", calibration.GPT)]
QUICK_MEMORY = [Workload("mlp", 4, 0.1), Workload("mlp", 32), Workload("cnn", 32)]
MEMORY_RATES = (1.0, 0.5)
CAP_FACTORS = (0.65, 0.8, 1.0)  # caps as multiples of the planner's threshold: 35 % and 20 % under it, and at it
BIG_CAP = 16 * 2**30


def node_profile(args: argparse.Namespace, out: Path) -> Path:
    if args.profile:
        return Path(args.profile)
    node = measure_node(args.quick, 1, args.calibrate_seconds, throttle=True)
    path = out / "fidelity-node.yaml"
    write_text_atomic(path, profile_text(node, path.stem))
    return path


def at_share(node: DeviceProfile, share: float) -> DeviceProfile:
    """The node's calibration at `share` of its speed: the device an enforced host at that quota emulates."""
    return dataclasses.replace(node, name=f"share-{share:g}", train_gflops=node.train_gflops * share)


def runtime_for(node_path: Path, **values: Any) -> RuntimeConfig:
    return RuntimeConfig(enforce="cgroups", node_profile=str(node_path), threads_per_host=1, **values)


class OwnGroup:
    """This process in a control group of its own, through the enforcement code; back home and removed after."""

    def __init__(self, node_path: Path, shares: list[float]):
        self.node = load_profile(node_path)
        hierarchy = cgroups.detect()
        self.home = cgroups.current_group(hierarchy)
        self.run = cgroups.run_group(hierarchy_base(), "fidelity").make()
        self.plan = plan_enforcement(runtime_for(node_path), [at_share(self.node, s) for s in shares],
                                     tuple(str(d) for d in self.run.dirs), self.run.version)

    def __enter__(self) -> "OwnGroup":
        self.limits = HostLimits(self.plan, 0, 0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.home.add(os.getpid())
        self.run.remove(wait_s=5)


def time_part(args: argparse.Namespace, node_path: Path) -> list[dict[str, Any]]:
    rows = []
    with OwnGroup(node_path, args.quotas) as own:
        node, plan, timing = own.node, own.plan, own.node.timing
        for workload in QUICK_TIME if args.quick else TIME_CASES:
            step, resident = calibration.training_step(workload)
            _, cost = StepCostCache().run("step", step, resident)
            step()
            for quota in args.quotas:
                for compensated in (True, False) if args.raw and quota < 1 else (True,):
                    own.limits.plan = plan if compensated else dataclasses.replace(plan, throttle={})
                    window = max(args.seconds, 20 * plan.period_us / 1e6 if quota < 1 else 0.0)
                    with own.limits.task(at_share(node, quota), BIG_CAP) as limits:
                        measured = calibration.timed_steps(step, window)
                    new = step_seconds(timing, cost.census) / quota
                    old = cost.flops / (node.train_gflops * 1e9 * quota)
                    rows.append({"case": workload.label, "quota": quota, "compensated": compensated,
                                 "cpu_quota": limits.cpu_quota, "measured_ms": measured * 1e3,
                                 "old_ms": old * 1e3, "new_ms": new * 1e3, "old_err": old / measured - 1,
                                 "new_err": new / measured - 1, "load": load()})
                    print(json.dumps(rows[-1]), flush=True)
            own.limits.plan = plan
    return rows


def memory_part(args: argparse.Namespace, node_path: Path) -> list[dict[str, Any]]:
    """Per (model, rate) and memory mode: the real need of whole tasks with no limit, then the kernel's verdict at
    each cap around the planner's threshold (the need its node's model makes of the footprint; the footprint
    itself under `tensors`, or where the node has no model)."""
    model = load_profile(node_path).memory_need
    run = cgroups.run_group(hierarchy_base(), "fidelity-memory").make()
    rows, index = [], 0
    try:
        for workload in QUICK_MEMORY if args.quick else MEMORY_MODELS:
            for rate in MEMORY_RATES:
                for mode in args.modes:
                    case = TaskCase(workload, rate, args.memory_steps * workload.batch_size, args.memory_tasks, mode)
                    ended, free = in_fresh_process(case, run, index)
                    index += 1
                    if free is None:
                        print(f"{case.label} {mode}: no limit, and it {ended}", flush=True)
                        continue
                    footprint, need = free["planned"], max(t["need"] for t in free["tasks"])
                    planned = (model.of(workload.family).need_bytes(footprint) if model is not None and
                               mode == "process" else footprint)
                    for factor in args.cap_factors:
                        cap = int(planned * factor)
                        kernel, _ = in_fresh_process(case, run, index, cap_bytes=cap)
                        index += 1
                        rows.append({"case": workload.label, "rate": rate, "mode": mode,
                                     "footprint_mb": footprint / 1e6, "planned_mb": planned / 1e6,
                                     "need_mb": need / 1e6, "cap_mb": cap / 1e6, "factor": factor,
                                     "planner": "fits" if planned <= cap else "refuses", "kernel": kernel})
                        print(json.dumps(rows[-1]), flush=True)
    finally:
        run.remove(wait_s=5)
    return rows


def memory_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per memory mode and margin (the refused caps at one factor under the threshold, the caps at or over it that
    the planner says fit): the verdicts from the smallest footprint at which every verdict agrees upwards (below
    it the allocator's granularity decides), and the real need over the planner's threshold and footprint."""
    table = []
    for mode in ("process", "tensors"):
        for refuse in sorted({r["factor"] for r in rows if r["mode"] == mode and r["factor"] < 1}):
            chosen = [r for r in rows if r["mode"] == mode and (r["factor"] == refuse or r["factor"] >= 1)]
            table.append(_verdicts(chosen, mode, refuse))
    return table


def _verdicts(chosen: list[dict[str, Any]], mode: str, refuse: float) -> dict[str, Any]:
    agree = lambda r: (r["planner"] == "fits") == (r["kernel"] == "ran")  # noqa: E731
    sizes = sorted({r["footprint_mb"] for r in chosen})
    smallest = next((s for s in sizes if all(agree(r) for r in chosen if r["footprint_mb"] >= s)), None)
    counted = [r for r in chosen if smallest is not None and r["footprint_mb"] >= smallest]
    fits = [r for r in counted if r["planner"] == "fits"]
    refused = [r for r in counted if r["planner"] == "refuses"]
    cases = {(r["case"], r["rate"]): r for r in chosen}.values()
    over_plan = sorted(r["need_mb"] / r["planned_mb"] for r in cases)
    over_footprint = sorted(r["need_mb"] / r["footprint_mb"] for r in cases)
    return {"memory": mode, "refused at": refuse, "caps": len(chosen), "smallest deciding MB": smallest,
            "fits (killed)": f"{len(fits)} ({sum(r['kernel'] == 'killed' for r in fits)})",
            "refused (failed)": f"{len(refused)} ({sum(r['kernel'] != 'ran' for r in refused)})",
            "all fits killed": sum(r["kernel"] == "killed" for r in chosen if r["planner"] == "fits"),
            "all refused failed": f"{sum(r['kernel'] != 'ran' for r in chosen if r['planner'] == 'refuses')}"
                                  f" of {sum(r['planner'] == 'refuses' for r in chosen)}",
            "need / threshold median": statistics.median(over_plan), "min": over_plan[0], "max": over_plan[-1],
            "need / footprint median": statistics.median(over_footprint), "min ": over_footprint[0],
            "max ": over_footprint[-1]}


def overhead_part(args: argparse.Namespace, node_path: Path) -> list[dict[str, Any]]:
    from benchmarks.common import measured_run, ray_session
    from msfusion_ray.experiment.config_check import config_from_dict
    from msfusion_ray.experiment.prepare import prepare

    node = load_profile(node_path)
    folder = Path(tempfile.mkdtemp(prefix="fidelity-"))
    (folder / "profiles").mkdir()
    device = {"name": "node-speed", "description": "the node's speed (quota 1.0)", "memory_mib": 4000,
              "train_gflops": node.train_gflops, "uplink_mbps": 1000, "downlink_mbps": 1000, "latency_ms": 1}
    (folder / "profiles" / "node-speed.yaml").write_text(yaml.safe_dump(device))
    base = {"name": "overhead", "rounds": args.rounds, "seed": 0,
            "data": {"dataset": "fashion_mnist", "train_samples": 2000, "eval_samples": 500},
            "model": {"name": "cnn", "width": 0.5}, "strategy": {"name": "fedavg"},
            "fleet": {"devices": {"node-speed": 4}, "profiles_dir": str(folder / "profiles")},
            "training": {"local_steps": 20, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
            "output_dir": str(folder / "runs")}
    runtimes = {"virtual": {"hosts": 1, "device": "cpu"},
                "cgroups": {"hosts": 1, "device": "cpu", "enforce": "cgroups", "node_profile": str(node_path)}}
    rows = []
    with ray_session():
        for repeat in range(args.repeats):
            walls = {}
            for mode, runtime in runtimes.items():
                prepared = prepare(config_from_dict({**base, "runtime": runtime}))
                walls[mode] = measured_run(prepared)["run_wall_s"]
            rows.append({"repeat": repeat, "virtual_s": walls["virtual"], "cgroups_s": walls["cgroups"],
                         "ratio": walls["cgroups"] / walls["virtual"], "load": load()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per quota (compensated): the median and worst |relative error| of each model."""
    table = []
    for quota in sorted({r["quota"] for r in rows}, reverse=True):
        for compensated in (True, False):
            chosen = [r for r in rows if r["quota"] == quota and r["compensated"] == compensated]
            if not chosen:
                continue
            table.append({"quota": quota, "compensated": compensated, "cases": len(chosen),
                          "old median": statistics.median(abs(r["old_err"]) for r in chosen),
                          "old worst": max(abs(r["old_err"]) for r in chosen),
                          "new median": statistics.median(abs(r["new_err"]) for r in chosen),
                          "new worst": max(abs(r["new_err"]) for r in chosen),
                          "measured / (q=1 time / q)": statistics.median(
                              r["measured_ms"] / _full(rows, r["case"]) * quota for r in chosen)})
    return table


def _full(rows: list[dict[str, Any]], case: str) -> float:
    return next((r["measured_ms"] for r in rows if r["case"] == case and r["quota"] == 1.0), float("nan"))


def tables(results: dict[str, Any]) -> str:
    """The docs' tables (docs/emulation.md, docs/benchmarks.md) from a results file."""
    parts = []
    if results.get("time"):
        per_case = [{"case": r["case"], "quota": r["quota"], "measured ms": r["measured_ms"], "FLOP/s model ms":
                     r["old_ms"], "error": f"{r['old_err']:+.0%}", "roofline ms": r["new_ms"],
                     "error ": f"{r['new_err']:+.0%}"} for r in results["time"] if r["compensated"]]
        compensated = [r for r in results["time"] if r["compensated"]]
        everything = {"quota": "all", "compensated": True, "cases": len(compensated),
                      "old median": statistics.median(abs(r["old_err"]) for r in compensated),
                      "old worst": max(abs(r["old_err"]) for r in compensated),
                      "new median": statistics.median(abs(r["new_err"]) for r in compensated),
                      "new worst": max(abs(r["new_err"]) for r in compensated)}
        summaries = [{k: v for k, v in row.items() if k in everything} for row in results["time_summary"]]
        parts += ["time, per case (compensated quotas)", markdown_table(per_case),
                  "time, |relative error|", markdown_table([*summaries, everything])]
        raw = [row for row in results["time_summary"] if not row["compensated"] or row["quota"] < 1]
        if raw:
            parts += ["throttling: measured / (time at 1.0 / quota)", markdown_table(
                [{"quota": r["quota"], "compensated": r["compensated"], "ratio": r["measured / (q=1 time / q)"]}
                 for r in raw])]
    if results.get("memory"):
        needs: dict[tuple[str, float], dict[str, Any]] = {}
        for r in results["memory"]:
            row = needs.setdefault((r["case"], r["rate"]), {"case": r["case"], "rate": r["rate"],
                                                            "planned MB": r["footprint_mb"]})
            if r["mode"] == "process":
                row["process threshold MB"] = r["planned_mb"]
            row[f"{r['mode']} MB"] = r["need_mb"]
            row[f"{r['mode']} / planned"] = r["need_mb"] / r["footprint_mb"]
        parts += ["memory: whole tasks' need (the group's peak, no limit) against the planner's footprint",
                  markdown_table(list(needs.values())), "memory verdicts",
                  markdown_table(memory_verdicts(results["memory"]))]
    if results.get("overhead"):
        parts += ["overhead at quota 1.0", markdown_table(results["overhead"]),
                  f"median ratio {results['overhead_median_ratio']:.3f}"]
    throttle = (results.get("node", {}).get("timing") or {}).get("throttle")
    if throttle:
        parts.append(f"node throttle table: {throttle}")
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="the node's calibration (default: calibrate now)")
    parser.add_argument("--part", choices=("all", "time", "memory", "overhead"), default="all")
    parser.add_argument("--quotas", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--raw", action="store_true", help="also time quotas below 1 without compensation")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per case and quota")
    parser.add_argument("--calibrate-seconds", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3, help="overhead: alternating pairs of runs")
    parser.add_argument("--rounds", type=int, default=3, help="overhead: rounds of each run")
    parser.add_argument("--quick", action="store_true", help="a few small cases: a smoke test")
    parser.add_argument("--tables", help="print the docs' tables of a results file, and nothing else")
    parser.add_argument("--cap-factors", type=float, nargs="+", default=list(CAP_FACTORS),
                        help="memory: caps as multiples of the planner's threshold")
    parser.add_argument("--modes", nargs="+", choices=("process", "tensors"), default=["process", "tensors"],
                        help="memory: runtime.enforce_memory settings to judge")
    parser.add_argument("--memory-steps", type=int, default=20, help="memory: training steps per task (an epoch)")
    parser.add_argument("--memory-tasks", type=int, default=2, help="memory: tasks in a row per process")
    args = parser.parse_args()
    if args.tables:
        print(tables(json.loads(Path(args.tables).read_text())))
        return
    torch.set_num_threads(1)
    OUT_DIR.mkdir(exist_ok=True)
    started, load_before = time.time(), load()
    node_path = node_profile(args, OUT_DIR)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    results: dict[str, Any] = {"machine": machine(), "commit": commit, "load_before": load_before,
                               "node_profile": str(node_path),
                               "node": yaml.safe_load(node_path.read_text()), "args": vars(args)}
    if args.part in ("all", "memory"):
        results["memory"] = memory_part(args, node_path)
        results["memory_summary"] = memory_verdicts(results["memory"])
        print(markdown_table(results["memory_summary"]))
    if args.part in ("all", "time"):
        results["time"] = time_part(args, node_path)
        results["time_summary"] = summary(results["time"])
        print(markdown_table(results["time_summary"]))
    if args.part in ("all", "overhead"):
        results["overhead"] = overhead_part(args, node_path)
        ratios = [r["ratio"] for r in results["overhead"]]
        results["overhead_median_ratio"] = statistics.median(ratios)
        print(f"enforcement overhead at quota 1.0: median {statistics.median(ratios):.3f}x wall")
    results.update(load_after=load(), took_s=time.time() - started)
    print(f"results: {write_results('emulation_fidelity', results)}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
