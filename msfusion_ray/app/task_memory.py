"""What a training task really holds in a host's process, against the planner's footprint: `calibrate`'s memory
measurement, and the fidelity benchmark's verdicts.

An enforced host's memory limit judges its process (what it holds above its baseline, as the kernel charges it),
the planner counts tensors. Each case runs in a fresh interpreter, as a host does: it imports what a host imports,
joins a control group of its own (devices.enforcement.HostLimits, the plan's memory guard `kernel`: the planner
refuses nothing) and runs whole tasks of a participant (runtime.participant.ParticipantWorker: the planner's pass,
then the payload loaded into a module, an epoch of training with its first step measured, the update made) on
synthetic data of the workload's shape, under the limit a host sets for a participant of the given cap. The
group's peak over what it held at each task's start (`TaskLimits.peak_bytes`) is the task's need.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from msfusion_ray.devices import cgroups
from msfusion_ray.devices.calibration import GPT, SHAPES, VIT, Workload
from msfusion_ray.devices.enforcement import EnforcementPlan, HostLimits, hierarchy_base
from msfusion_ray.devices.memory_need import MemoryNeed, fit_need
from msfusion_ray.devices.time_model import ComputeTiming

UNLIMITED = 2**50  # a cap no task reaches
# What the measured tasks do not show: on this project's machine the same work needed up to 15 % more from one task
# to the next, and other batch sizes and rates of a family up to 1.2 times its fitted line (docs/emulation.md).
HEADROOM = 1.25


@dataclass(frozen=True)
class TaskCase:
    """A workload at a splitting rate, trained for `samples` samples per task (an epoch), `tasks` tasks in a row,
    with the limit judging the process (`memory: process`) or its tensors (`tensors`: runtime.enforce_memory)."""

    workload: Workload
    rate: float = 1.0
    samples: int = 640
    tasks: int = 2
    memory: str = "process"

    @property
    def label(self) -> str:
        return f"{self.workload.label} r{self.rate:g}"


# What `calibrate` measures: every built-in family at a whole and a narrow rate, at batch sizes and rates the fidelity
# benchmark's grid does not use, so that the benchmark's verdicts are predictions, not the fit's residuals.
MEMORY_WORKLOADS = [Workload("mlp", 16, 0.5), Workload("cnn", 16), Workload("fedavg_cnn", 16),
                    Workload("resnet18", 16, 0.375, "image32"), Workload("vgg", 16, 0.25, "image32"),
                    Workload("vit", 16, 1.0, "image32", VIT), Workload("transformer", 4, 1.0, "text64", GPT)]
MEMORY_CASES = [TaskCase(workload, rate) for workload in MEMORY_WORKLOADS for rate in (1.0, 0.4)]
QUICK_MEMORY_CASES = [TaskCase(Workload("mlp", 16, 0.5), samples=64), TaskCase(Workload("cnn", 16, 0.5), samples=64)]


def synthetic_data(shape_name: str, samples: int, seed: int = 0) -> Any:  # noqa: ANN401 (a DataBundle)
    """A data set of `samples` random samples stored as the project stores the real ones (uint8 images, token
    ids), so that batches are gathered and converted as in a participant's training."""
    from msfusion_ray.data.arrays import ArrayDataset, DataBundle

    shape, rng = SHAPES[shape_name], np.random.default_rng(seed)
    if shape.task == "language_model":
        x = rng.integers(0, shape.num_outputs, (samples, *shape.input_shape), dtype=np.int64)
        split = ArrayDataset(x, np.roll(x, -1, axis=1))
        return DataBundle(shape_name, split, split, shape, tokens_per_sample=shape.input_shape[0])
    split = ArrayDataset(rng.integers(0, 256, (samples, *shape.input_shape), dtype=np.uint8),
                         rng.integers(0, shape.num_outputs, samples))
    return DataBundle(shape_name, split, split, shape, mean=(0.29,), std=(0.35,))


def _plan(run_dirs: Sequence[str], version: int, memory: str) -> EnforcementPlan:
    """An enforcement plan with no CPU quota (the device is the node) whose memory limit alone decides."""
    timing = ComputeTiming(reference_gflops=1.0, conv_gflops=1.0, matmul_gflops=1.0, attention_gflops=1.0,
                           memory_gbps=1.0, op_us=0.0, view_us=0.0)
    return EnforcementPlan(version, tuple(run_dirs), 1.0, timing, 1.0, 1, memory_guard="kernel", memory=memory)


def run_case(case: TaskCase, run_dirs: Sequence[str], version: int, index: int, threads: int = 1,
             cap_bytes: int = UNLIMITED) -> dict[str, Any]:
    """In this (fresh) process: join the group, run the case's tasks under a participant's cap, and say what each
    needed (where the kernel kills the process, nothing is said)."""
    import ray  # noqa: F401  (a host has Ray loaded before it joins its group)
    import torch

    from msfusion_ray.config import TrainingConfig
    from msfusion_ray.costs.flops import StepCostCache
    from msfusion_ray.devices.profile import DeviceProfile
    from msfusion_ray.models.module import build_family
    from msfusion_ray.models.weights import to_weights
    from msfusion_ray.procedures.orders import WorkOrder
    from msfusion_ray.runtime.participant import ParticipantWorker
    from msfusion_ray.runtime.settings import ParticipantSpec, WorkerSettings
    from msfusion_ray.splitting.index_map import prefix_selection, widths_of

    torch.set_num_threads(threads)
    limits = HostLimits(_plan(run_dirs, version, case.memory), index, 0)  # after the imports, as a host
    workload = case.workload
    data = synthetic_data(workload.shape, case.samples)
    family = build_family(workload.family, data.shape, workload.width, workload.options)
    training = TrainingConfig(batch_size=workload.batch_size, local_epochs=1, momentum=0.9, lr=0.01)
    device = DeviceProfile("node", "", memory_mib=cap_bytes / 2**20, train_gflops=1.0, uplink_mbps=1, downlink_mbps=1)
    spec = ParticipantSpec(0, device, cap_bytes, np.arange(case.samples))
    settings = WorkerSettings(run_id="memory", host=index, seed=0, training=training, enforcement=limits.plan)
    worker = ParticipantWorker(spec, family, data, settings, StepCostCache(), limits=limits)
    selection = prefix_selection(family.spec, case.rate) if case.rate < 1 else None
    widths = widths_of(family.spec, selection)
    payload = to_weights(family.build(widths))  # made before: a host's arrives in the object store, shared
    tasks = []
    for task in range(case.tasks):
        order = WorkOrder(0, selection=selection, rate=case.rate, task=task, seed_key=(task,), state_from=task - 1)
        row, _, _ = worker.run(order, lambda: payload, 0.01)
        if row.status != "ok":
            raise RuntimeError(f"{case.label}: task {task} {row.status}: {row.message}")
        tasks.append({"need": row.mem_peak_group_bytes, "tensors": row.mem_peak_tensor_bytes, "steps": row.steps})
    footprint = worker.planners.planner(None).footprint(widths, workload.batch_size)
    return {"case": case.label, "family": workload.family, "planned": footprint.total, "parts": asdict(footprint),
            "payload": sum(a.nbytes for a in payload.values()), "tasks": tasks}


def in_fresh_process(case: TaskCase, run: cgroups.Group, index: int, threads: int = 1, cap_bytes: int = UNLIMITED,
                     timeout_s: float = 600) -> tuple[str, dict[str, Any] | None]:
    """`run_case` in a fresh interpreter whose group is `run`'s `host-<index>.0`: how it ended ("ran", "killed"
    by the kernel at its limit, or "failed ...") and, where it ran, what it measured."""
    spec = {"case": {**asdict(case), "workload": asdict(case.workload)}, "run_dirs": [str(d) for d in run.dirs],
            "version": run.version, "index": index, "threads": threads, "cap": cap_bytes}
    done = subprocess.run([sys.executable, "-m", "msfusion_ray.app.task_memory", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONPATH": _package_root()})
    if run.child(f"host-{index}.0").oom_kills():
        return "killed", None
    if done.returncode != 0:
        return f"failed {done.returncode}: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}", None
    return "ran", json.loads(done.stdout.strip().splitlines()[-1])


def fitted_need(cases: Sequence[TaskCase], threads: int = 1) -> tuple[MemoryNeed | None, list[dict[str, Any]]]:
    """The need line over the cases' largest tasks (None: no case ran), and what each case measured (a case that
    did not run: its label and how it ended). Raises CgroupError where groups cannot be made."""
    run = cgroups.run_group(hierarchy_base(), "calibrate-memory").make()
    rows = []
    try:
        for index, case in enumerate(cases):
            ended, measured = in_fresh_process(case, run, index, threads)
            rows.append(measured if measured is not None else {"case": case.label, "error": ended})
    finally:
        run.remove(wait_s=5)
    ran = [row for row in rows if "error" not in row]
    if not ran:
        return None, rows
    needs = [max(task["need"] for task in row["tasks"]) for row in ran]
    fitted = fit_need([row["planned"] for row in ran], needs, [row["family"] for row in ran])
    return replace(fitted, headroom=HEADROOM), rows


def _package_root() -> str:
    """This package's checkout first on the child's path (an editable install elsewhere would shadow it)."""
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])


def _child(argument: str) -> None:
    spec = json.loads(argument)
    case = TaskCase(**{**spec["case"], "workload": Workload(**spec["case"]["workload"])})
    measured = run_case(case, spec["run_dirs"], spec["version"], spec["index"], spec["threads"], spec["cap"])
    print(json.dumps(measured), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
