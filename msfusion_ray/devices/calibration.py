"""Measuring a node: training steps of the model families, timed and censused, and the roofline fitted to them.

A workload is a model family at a width and a batch size on synthetic data of the shape the project trains it on
(`SHAPES`). Its step is what a participant's step does (training.local: gather a batch, forward, loss, backward,
the project's SGD with momentum), the first one measured for FLOPs and operation census through the same
`StepCostCache` the hosts use, the next ones timed. `fit_timing` then finds the roofline (devices/time_model.py)
whose step times come closest to the measured ones in relative terms (least squares on log time).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from msfusion_ray.costs.census import KINDS, WorkCensus
from msfusion_ray.costs.flops import StepCostCache
from msfusion_ray.devices import cgroups
from msfusion_ray.devices.time_model import ComputeTiming, step_seconds
from msfusion_ray.models.base import DataShape
from msfusion_ray.models.module import build_family
from msfusion_ray.training.losses import loss_of
from msfusion_ray.training.optimizers import SGD

SHAPES = {
    "image28": DataShape((1, 28, 28), 10),  # Fashion-MNIST
    "image32": DataShape((1, 32, 32), 10),  # Fashion-MNIST padded to 32 (the ResNet, VGG and ViT configs)
    "text64": DataShape((64,), 80, "language_model", "int"),  # Shakespeare, 64 characters of context
}
VIT = {"d_model": 128, "n_heads": 4, "n_layers": 8, "mlp_ratio": 2.0, "patch": 8}  # configs/cos2p/vit_fmnist_hetero8
GPT = {"d_model": 256, "n_heads": 8, "n_layers": 2}  # configs/lm/shakespeare_hetero8


@dataclass(frozen=True)
class Workload:
    family: str
    batch_size: int
    width: float = 1.0
    shape: str = "image28"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        width = f" w{self.width:g}" if self.width != 1.0 else ""
        return f"{self.family}{width} b{self.batch_size}"


def suite(batches: Sequence[int], text_batches: Sequence[int], resnet_widths: Sequence[float]) -> list[Workload]:
    """Every built-in family (and the MLP) at the given batch sizes (`text_batches` for the language model, whose
    samples are 64 tokens each)."""
    cases = []
    for batch in batches:
        cases += [Workload("cnn", batch), Workload("fedavg_cnn", batch), Workload("mlp", batch),
                  Workload("vgg", batch, 0.25, "image32"), Workload("vit", batch, 1.0, "image32", VIT)]
        cases += [Workload("resnet18", batch, width, "image32") for width in resnet_widths]
    cases += [Workload("transformer", batch, 1.0, "text64", GPT) for batch in text_batches]
    return cases


# What `calibrate` runs: batch sizes and a ResNet width the fidelity benchmark does not, so that its errors are
# predictions, not a fit's residuals.
CALIBRATION = suite((8, 32), (2, 8), (0.375,))
QUICK = [Workload("mlp", 8, 0.25), Workload("mlp", 32, 0.25), Workload("cnn", 4, 0.25), Workload("cnn", 16, 0.25)]


@dataclass(frozen=True)
class Measured:
    workload: Workload
    census: WorkCensus
    flops: int
    step_s: float  # median over timed windows
    steps: int  # timed

    @property
    def gflops(self) -> float:
        return self.flops / self.step_s / 1e9


def training_step(workload: Workload, seed: int = 0) -> tuple[Callable[[], float], list[torch.Tensor]]:
    """A participant's training step on synthetic data, and the tensors alive before it (the model's)."""
    torch.manual_seed(seed)
    shape = SHAPES[workload.shape]
    family = build_family(workload.family, shape, workload.width, workload.options)
    model = family.build().train()
    pool = 4 * workload.batch_size
    if shape.input_dtype == "int":
        xs = torch.randint(0, shape.num_outputs, (pool, *shape.input_shape))
        ys = torch.randint(0, shape.num_outputs, (pool, *shape.input_shape))
    else:
        xs, ys = torch.randn(pool, *shape.input_shape), torch.randint(0, shape.num_outputs, (pool,))
    loss = loss_of(shape.task)
    optimizer = SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    rng = np.random.default_rng(seed)

    def step() -> float:
        chosen = torch.from_numpy(rng.choice(pool, workload.batch_size, replace=False))
        batch = (xs[chosen], ys[chosen])
        optimizer.zero_grad(set_to_none=True)
        value = loss(model, batch)
        value.backward()
        optimizer.step()
        return float(value.detach())

    return step, [*model.parameters(), *model.buffers()]


def measure(workload: Workload, seconds: float = 1.0, windows: int = 3,
            clock: Callable[[], float] = time.perf_counter) -> Measured:
    """Census and FLOPs of the first step (as hosts measure it), then the median step time over `windows`
    windows of about `seconds` / `windows` each, after one step to warm up. `clock`: wall time (what a device
    takes); the process's CPU time tells the same on a loaded machine, for a look before a quiet one."""
    step, resident = training_step(workload)
    costs = StepCostCache()
    _, cost = costs.run("step", step, resident)
    step()
    times, total = [], 0
    for _ in range(windows):
        started, count = clock(), 0
        while count < 2 or clock() - started < seconds / windows:
            step()
            count += 1
        times.append((clock() - started) / count)
        total += count
    return Measured(workload, cost.census, cost.flops, statistics.median(times), total)


def reference_gflops(measured: Sequence[Measured]) -> float:
    """The node's one FLOP/s figure (a profile's train_gflops): the median of the workloads' training FLOP/s."""
    return statistics.median(m.gflops for m in measured)


# Roofline parameters in the order `fit_timing` solves for them (log scale).
_PARAMETERS = ("conv_gflops", "matmul_gflops", "attention_gflops", "memory_gbps", "op_us", "view_us")


def _timing(values: np.ndarray, reference: float, threads: int) -> ComputeTiming:
    return ComputeTiming(reference_gflops=reference, threads=threads,
                         **{name: float(v) for name, v in zip(_PARAMETERS, np.exp(values))})


def fit_timing(measured: Sequence[Measured], threads: int, bandwidth_gbps: float) -> ComputeTiming:
    """The roofline closest to the measured steps in relative terms. A kind of operation no workload has (the
    quick calibration has no attention) takes the matrix products' throughput."""
    from scipy.optimize import least_squares

    reference = reference_gflops(measured)
    present = {kind for m in measured for kind, (flops, _, _) in m.census.by_kind().items() if flops}
    start = np.log([reference * 2, reference * 2, reference * 2, bandwidth_gbps, 5.0, 1.0])
    tied = [i for i, kind in enumerate(("conv", "matmul", "attention")) if kind not in present and kind != "matmul"]

    def untied(values: np.ndarray) -> np.ndarray:
        values = values.copy()
        values[tied] = values[1]
        return values

    def residuals(values: np.ndarray) -> np.ndarray:
        timing = _timing(untied(values), reference, threads)
        return np.array([np.log(step_seconds(timing, m.census) / m.step_s) for m in measured])

    fitted = least_squares(residuals, start, bounds=(np.log([0.05, 0.05, 0.05, 0.05, 1e-3, 1e-4]),
                                                      np.log([1e5, 1e5, 1e5, 1e4, 1e4, 1e4])))
    return _timing(untied(fitted.x), reference, threads)


def stream_gbps(megabytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth as a copy of a large array measures it (bytes read and written per second, best of
    `repeats`), at the current thread count."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * 4 / best / 1e9


def kinds_used(measured: Sequence[Measured]) -> dict[str, float]:
    """Share of the workloads' FLOPs per kind of operation (what the fit could learn from)."""
    totals = {kind: 0 for kind in KINDS}
    for m in measured:
        for kind, (flops, _, _) in m.census.by_kind().items():
            totals[kind] += flops
    everything = sum(totals.values()) or 1
    return {kind: flops / everything for kind, flops in totals.items() if flops}


def timed_steps(step: Callable[[], float], seconds: float) -> float:
    """Mean seconds per step over a window of at least `seconds` (and two steps)."""
    started, count = time.perf_counter(), 0
    while count < 2 or time.perf_counter() - started < seconds:
        step()
        count += 1
    return (time.perf_counter() - started) / count


def measure_throttle(workloads: Sequence[Workload], quotas: Sequence[float] = (0.5, 0.25, 0.125),
                     seconds: float = 3.0) -> dict[float, float]:
    """How much slower than 1 / q a step runs under a CPU quota of q cores: this process is moved into a group of
    its own and each workload timed at each quota between two unlimited windows (a ratio taken in one sitting);
    the median over workloads per quota. The process goes back to its group, and the group is removed, whatever
    happens. Raises CgroupError where groups cannot be made."""
    hierarchy = cgroups.detect()
    home = cgroups.current_group(hierarchy)
    group = cgroups.run_group(cgroups.base_group(hierarchy), "calibrate").make()
    factors: dict[float, list[float]] = {q: [] for q in quotas}
    try:
        group.add(os.getpid())
        for workload in workloads:
            step, _ = training_step(workload)
            step()
            for quota in quotas:
                free = timed_steps(step, seconds / 4)
                group.set_cpu(quota)
                limited = timed_steps(step, seconds)
                group.set_cpu(None)
                free = (free + timed_steps(step, seconds / 4)) / 2
                factors[quota].append(limited * quota / free)
    finally:
        home.add(os.getpid())
        group.remove(wait_s=0.0, kill=False)
    return {quota: round(statistics.median(values), 4) for quota, values in factors.items()}
