"""How long a task's computation takes on a device: the time models.

`flops` (the model every table before 2026-12 used): compute seconds = counted FLOPs / the profile's FLOP/s.
One constant per device cannot tell a ViT from a ResNet: on this project's machine the families trained at 22 to
53 GFLOP/s on one thread, so any single constant mispredicts some model by a third or more.

`roofline`: each operation of a step (costs/census.py) takes the longer of its FLOPs over the device's throughput
for its kind (convolution, matrix product, attention) and its bytes over the device's memory bandwidth, plus a
fixed cost per operation (dispatch; smaller for views, which move nothing). The throughputs, the bandwidth and
the fixed costs are what `python -m msfusion_ray calibrate` fitted on the device (a profile's `timing` block).
A profile without one (a hand-written profile) is timed by its FLOP/s under either model. A profile's
`train_gflops` stays its speed: the timing block is scaled by train_gflops / timing.reference_gflops, so a
calibrated profile copied with half the FLOP/s is the same device at half the speed (fleets that draw speeds per
participant scale the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal

from msfusion_ray.validation import checked, positive

if TYPE_CHECKING:  # the launcher reads profiles without importing torch
    from msfusion_ray.costs.census import WorkCensus

TimeModelName = Literal["roofline", "flops"]


@dataclass(frozen=True)
class ComputeTiming:
    """What `calibrate` fitted on a device, at `threads` threads (a profile's `timing` block)."""

    reference_gflops: float = checked(check=positive)  # the profile's train_gflops when it was calibrated
    conv_gflops: float = checked(check=positive)  # convolutions, forward and backward
    matmul_gflops: float = checked(check=positive)  # matrix products (linear layers, attention projections)
    attention_gflops: float = checked(check=positive)  # fused attention kernels
    memory_gbps: float = checked(check=positive)  # bytes an operation reads and writes, per second
    op_us: float = checked(check=lambda v: None if v >= 0 else f"must be >= 0 (got {v})")  # per operation
    view_us: float = checked(check=lambda v: None if v >= 0 else f"must be >= 0 (got {v})")  # per view
    threads: int = checked(1, check=positive)
    # enforced devices on this node: quota -> how much slower than 1 / quota a step ran (devices/enforcement.py)
    throttle: dict[float, float] = checked({})

    def throughput(self, kind: str) -> float:
        """FLOP/s of a kind of operation (kinds without FLOPs: 0 FLOPs take 0 s whatever the figure)."""
        return {"conv": self.conv_gflops, "matmul": self.matmul_gflops,
                "attention": self.attention_gflops}.get(kind, self.matmul_gflops) * 1e9

    @property
    def peak_flops_per_s(self) -> float:
        return max(self.conv_gflops, self.matmul_gflops, self.attention_gflops) * 1e9


def step_seconds(timing: ComputeTiming, census: WorkCensus) -> float:
    """One step on the calibrated device (at its reference speed): per operation, the longer of its FLOPs over
    its kind's throughput and its bytes over the memory bandwidth, plus its fixed cost."""
    bandwidth = timing.memory_gbps * 1e9
    total = 0.0
    for group in census.groups:
        fixed = timing.view_us if group.kind == "view" else timing.op_us
        work = max(group.flops / timing.throughput(group.kind), group.bytes / bandwidth)
        total += group.count * (work + fixed * 1e-6)
    return total


def compute_seconds(train_gflops: float, timing: ComputeTiming | None, flops: float,
                    steps: Iterable[tuple[WorkCensus, int]], model: TimeModelName = "roofline") -> float:
    """Seconds a task's computation takes on a device of `train_gflops` (its profile's) and `timing` (None: not
    calibrated): `flops` counted in all, of which `steps` ((census, times run)) are the steps the census saw.
    Under the roofline model, FLOPs no census saw (work counted outside the training steps) run at train_gflops."""
    flops_per_s = train_gflops * 1e9
    if model == "flops" or timing is None:
        return flops / flops_per_s
    speed = train_gflops / timing.reference_gflops
    seen = seconds = 0.0
    for census, count in steps:
        seconds += count * step_seconds(timing, census)
        seen += count * census.flops
    return seconds / speed + max(0.0, flops - seen) / flops_per_s


def compute_lower_bound(train_gflops: float, timing: ComputeTiming | None, flops: float,
                        model: TimeModelName = "roofline") -> float:
    """A bound below `compute_seconds` known from the FLOPs alone (what an engine knows before a task runs): the
    same figure under the FLOP/s model, else every FLOP at the device's fastest throughput."""
    if model == "flops" or timing is None:
        return flops / (train_gflops * 1e9)
    speed = train_gflops / timing.reference_gflops
    return flops / max(train_gflops * 1e9, speed * timing.peak_flops_per_s)
