"""Physically enforced devices (`runtime.enforce: cgroups`): each host actor in a control group of its own, its CPU
quota the participant's speed as a share of this node's, its memory limit the participant's memory on top of what
the host itself holds.

The node is known by its calibration (`python -m msfusion_ray calibrate`: `runtime.node_profile`, or the copy that
command keeps for this machine, `node_cache_path`). A device of F GFLOP/s on a node that trains at N GFLOP/s per
host (its `threads` threads) gets F / N of a core. A device faster than the node cannot be emulated by slowing
it: the run then goes `slowdown` times slower than the devices (every quota divided by it, every measured compute
time too; `runtime.enforce_slowdown`, by default the smallest factor that fits the fastest device in a host's
threads). Throttling costs time of its own (a process that waits for its quota every period comes back to cold
caches and a scheduler that hands out runtime in slices): `calibrate` measures how much slower than 1/q a step
runs at quota q, and each quota is raised by that factor, so that the wall time measured under it is the device's.

Everything here is plain data and file writes (devices/cgroups.py); the hosts call `HostLimits` around each task,
the pool of hosts `RunGroups`.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import socket
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from msfusion_ray.devices import cgroups
from msfusion_ray.devices.cgroups import CgroupError, Group
from msfusion_ray.devices.profile import DeviceProfile, load_profile
from msfusion_ray.devices.time_model import ComputeTiming
from msfusion_ray.errors import UserInputError


def node_cache_path() -> Path:
    """Where `calibrate` keeps this machine's calibration for enforced runs that name none."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "msfusion_ray" / f"node-{socket.gethostname()}.yaml"


def load_node(node_profile: str | None) -> DeviceProfile:
    """The node's calibration: the profile `node_profile` names, else this machine's cached one."""
    path = Path(node_profile).expanduser() if node_profile else node_cache_path()
    if not path.is_file():
        hint = "run `python -m msfusion_ray calibrate` on this node first" if not node_profile else "file not found"
        raise UserInputError("runtime.node_profile", f"{path}: {hint}")
    node = load_profile(path)
    if node.timing is None:
        raise UserInputError("runtime.node_profile", f"{path} has no timing block: it was not written by calibrate")
    return node


@dataclass(frozen=True)
class EnforcementPlan:
    """What every host and the pool need to enforce devices (plain data: it travels to the actors)."""

    version: int  # cgroup version
    run_dirs: tuple[str, ...]  # the run's group, one directory per controller (one under v2)
    node_gflops: float  # the node's training FLOP/s per host (its calibration's train_gflops)
    node_timing: ComputeTiming  # the node's roofline, for devices that have none of their own
    slowdown: float  # the run goes this many times slower than the devices
    threads: int  # per host
    period_us: int = cgroups.DEFAULT_PERIOD_US
    throttle: dict[float, float] = field(default_factory=dict)  # quota -> measured slowdown beyond 1 / quota
    memory_guard: str = "planner"  # or "kernel": the planner refuses nothing, the memory limit decides
    memory: str = "process"  # runtime.enforce_memory: "tensors" returns freed tensors to the kernel at once

    def share(self, profile: DeviceProfile) -> float:
        """The device's speed as a share of a host's (its quota before slowdown and throttle compensation)."""
        return profile.train_gflops / self.node_gflops

    def quota(self, profile: DeviceProfile) -> float:
        """CPU cores a host gets while it trains for a device of this profile."""
        wanted = self.share(profile) / self.slowdown
        return min(float(self.threads), wanted * throttle_factor(self.throttle, wanted))

    def as_run(self) -> Group:
        return Group(self.version, tuple(Path(d) for d in self.run_dirs))

    def host_group(self, host: int, generation: int) -> Group:
        return self.as_run().child(f"host-{host}.{generation}")

    def timed_like_node(self, profile: DeviceProfile) -> DeviceProfile:
        """The profile as its enforced device runs: the node's roofline at the profile's speed where it has none."""
        return profile if profile.timing is not None else replace(profile, timing=self.node_timing)


def throttle_factor(measured: dict[float, float], quota: float) -> float:
    """How much slower than 1 / quota a step runs at `quota`: interpolated in log quota between the measured
    quotas and 1 at a whole core (where nothing is throttled); below the smallest measured quota, its figure.
    Never below 1: a quota never lets a process run faster than its share (a figure below 1 was measured on a
    loaded machine)."""
    points = sorted({**{q: max(1.0, f) for q, f in measured.items() if q < 1}, 1.0: 1.0}.items())
    if quota >= 1.0:
        return 1.0
    if quota <= points[0][0]:
        return points[0][1]
    for (q0, f0), (q1, f1) in zip(points, points[1:]):
        if q0 <= quota <= q1:
            t = (math.log(quota) - math.log(q0)) / (math.log(q1) - math.log(q0))
            return f0 + t * (f1 - f0)
    return 1.0


def plan_enforcement(runtime, profiles: Iterable[DeviceProfile], run_dirs: tuple[str, ...] = (),  # noqa: ANN001
                     version: int = 0, cores: float | None = None) -> EnforcementPlan:
    """The plan for a run's devices, or one `UserInputError` naming what cannot be enforced: the node's
    calibration missing or made at another thread count, a device too fast for a host at the slowdown asked, too
    slow for the kernel's smallest quota, or needing more cores than the hosts have (`cores`, where known)."""
    node = load_node(runtime.node_profile)
    timing = node.timing
    if timing.threads != runtime.threads_per_host:
        raise UserInputError("runtime.threads_per_host", f"the node was calibrated at {timing.threads} thread(s) "
                                                         f"({runtime.node_profile or node_cache_path()}), hosts run "
                                                         f"{runtime.threads_per_host}: calibrate with --threads "
                                                         f"{runtime.threads_per_host}")
    profiles = list({p.name: p for p in profiles}.values())
    for profile in profiles:
        if profile.native:
            raise UserInputError(f"profile {profile.name}", "is native (the node is the device): enforce: cgroups "
                                                            "emulates devices on this node")
    fastest = max(profiles, key=lambda p: p.train_gflops)
    needed = fastest.train_gflops / node.train_gflops / runtime.threads_per_host
    slowdown = runtime.enforce_slowdown if runtime.enforce_slowdown is not None else max(1.0, needed)
    plan = EnforcementPlan(version, run_dirs, node.train_gflops, timing, slowdown, runtime.threads_per_host,
                           throttle=dict(timing.throttle), memory_guard=runtime.memory_guard,
                           memory=runtime.enforce_memory)
    if needed > slowdown * (1 + 1e-9):
        raise UserInputError(f"profile {fastest.name}", f"{fastest.train_gflops:g} GFLOP/s is {needed:.2f}x what a "
                                                        f"host of this node trains at ({node.train_gflops:g} GFLOP/s "
                                                        f"on {runtime.threads_per_host} thread(s)): set "
                                                        f"runtime.enforce_slowdown to at least {needed:.2f}")
    floor = cgroups.MIN_QUOTA_US / plan.period_us
    slowest = min(profiles, key=lambda p: p.train_gflops)
    if plan.quota(slowest) < floor:
        raise UserInputError(f"profile {slowest.name}", f"{slowest.train_gflops:g} GFLOP/s would get "
                                                        f"{plan.quota(slowest):.4f} of a core, less than the "
                                                        f"kernel's smallest quota ({floor:g}): lower "
                                                        "runtime.enforce_slowdown")
    if cores is not None and plan.quota(fastest) > cores:
        raise UserInputError(f"profile {fastest.name}", f"needs {plan.quota(fastest):.2f} cores, more than the "
                                                        f"{cores:g} the run's hosts may use (runtime.host_cpus)")
    return plan


def check_enforcement(runtime, profiles: Iterable[DeviceProfile], engine: str) -> None:  # noqa: ANN001
    """Everything `runtime.enforce` needs, checked before anything starts (one UserInputError naming the field,
    profile or path): the cgroups writable, the node calibrated, every device possible on it."""
    if runtime.enforce == "virtual":
        if runtime.memory_guard != "planner":
            raise UserInputError("runtime.memory_guard", "kernel needs runtime.enforce: cgroups (a memory limit)")
        return
    if engine == "pipeline":
        raise UserInputError("runtime.enforce", "pipeline split learning's stage actors are not enforced: use "
                                                "enforce: virtual")
    if runtime.device == "cuda":
        raise UserInputError("runtime.device", "enforce: cgroups emulates devices on CPU cores: set device: cpu")
    cores = None
    if runtime.address is None:  # the embedded cluster: its CPUs are known now
        cores = runtime.host_cpus if runtime.host_cpus is not None else 0.9 * (runtime.num_cpus or os.cpu_count())
    plan_enforcement(runtime, profiles, cores=cores)
    hierarchy_base()


def hierarchy_base() -> Group:
    """Where this process would put a run's groups; UserInputError naming the path that failed."""
    try:
        base = cgroups.base_group(cgroups.detect())
        cgroups.check_writable(base)
    except CgroupError as err:
        raise UserInputError(err.path, f"runtime.enforce: cgroups: {err.reason}") from None
    return base


class RunGroups:
    """The run's control groups, made by the pool of hosts: its own group, each host's inside it. Removed, whole,
    by `remove` (the processes still in them are this run's hosts; they are killed)."""

    def __init__(self, plan: EnforcementPlan):
        self.plan = plan
        self.note = ""  # how many hosts run at once, and why (the pool sets it)

    def describe(self) -> dict:
        """What the run's records say of its enforcement (enforcement.json in the run directory)."""
        plan = self.plan
        return {"cgroup_version": plan.version, "groups": list(plan.run_dirs), "node_gflops": plan.node_gflops,
                "threads_per_host": plan.threads, "slowdown": plan.slowdown, "period_us": plan.period_us,
                "throttle": {str(q): f for q, f in sorted(plan.throttle.items())},
                "memory_guard": plan.memory_guard, "memory": plan.memory, "hosts": self.note}

    @classmethod
    def create(cls, runtime, profiles: Iterable[DeviceProfile], tag: str,  # noqa: ANN001
               cores: float | None = None) -> "RunGroups":
        base = hierarchy_base()
        cgroups.remove_stale(base)
        group = cgroups.run_group(base, tag).make()
        try:
            plan = plan_enforcement(runtime, profiles, tuple(str(d) for d in group.dirs), group.version, cores)
        except BaseException:
            group.remove(wait_s=0.0, kill=False)
            raise
        return cls(plan)

    def oom_kills(self, host: int, generation: int) -> int:
        """Processes the kernel killed in that host's group for its memory limit (0 where it cannot tell)."""
        try:
            return self.plan.host_group(host, generation).oom_kills()
        except CgroupError:
            return 0

    def remove(self) -> None:
        self.plan.as_run().remove()


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    """Give the C heap's free pages back to the kernel: freed memory kept by the allocator would otherwise count
    as (or, charged before the host joined its group, hide) the device's memory."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
TENSOR_MMAP_BYTES = 128 * 1024


def return_freed_tensors() -> None:
    """`enforce_memory: tensors`: every allocation of 128 KiB or more gets pages of its own, given back to the
    kernel when freed. By default glibc raises that threshold to the largest block freed so far (up to 32 MiB), and
    the blocks below it, freed, stay in its heap: a training process then holds 1.1 to 2 times its live tensors
    (docs/emulation.md), which a fixed threshold brings to the tensors' own peak, at the cost of fresh pages (page
    faults) for every activation."""
    libc = _libc()
    if libc is None or not libc.mallopt(M_MMAP_THRESHOLD, TENSOR_MMAP_BYTES):
        raise CgroupError("mallopt", "runtime.enforce_memory: tensors needs glibc's mallopt")


@dataclass
class TaskLimits:
    """What a task ran under."""

    cpu_quota: float = math.nan  # cores
    memory_limit_bytes: int = 0
    baseline_bytes: int = 0  # what the host held before the task (its own memory, not the device's)
    throttled_s: float = 0.0  # how long the kernel held the host back for its quota during the task
    peak_bytes: int = 0  # the most the group held during the task over what it held at its start (its real need)


class HostLimits:
    """A host's own group: it joins it when it starts and sets its quota and memory limit around each task.
    Between tasks (planning, evaluation, Ray's own work) the group has no limit."""

    def __init__(self, plan: EnforcementPlan, host: int, generation: int, pid: int | None = None):
        self.plan = plan
        self.group = plan.host_group(host, generation).make()
        if plan.memory == "tensors" and pid is None:
            return_freed_tensors()
        pid = pid if pid is not None else os.getpid()
        _malloc_trim()
        self.group.add(pid)
        if pid not in self.group.pids():
            raise CgroupError(self.group.dirs[0], f"process {pid} is not in it after it was moved there")

    @contextmanager
    def task(self, profile: DeviceProfile, memory_cap_bytes: int) -> Iterator[TaskLimits]:
        gc.collect()
        _malloc_trim()
        baseline = self.group.memory_bytes() - self.group.file_bytes()  # page cache is given back on demand
        throttled = self.group.throttled_s()
        self.group.set_memory(baseline + memory_cap_bytes)
        held = self._reset_peak()
        quota = self.plan.quota(profile)  # a whole host's threads need no quota (Ray's own threads would eat it)
        self.group.set_cpu(quota if quota < self.plan.threads else None, self.plan.period_us)
        limits = TaskLimits(self.group.cpu_quota() or float(self.plan.threads), self.group.memory_limit(),
                            baseline)  # as the kernel has them
        try:
            yield limits
        finally:
            self.group.set_cpu(None, self.plan.period_us)
            limits.peak_bytes = self._peak_over(held)
            self.group.set_memory(None)
            limits.throttled_s = self.group.throttled_s() - throttled

    def _reset_peak(self) -> int:
        """What the group holds now, its peak reset to that where the kernel lets it (v2 resets it per open file
        from 6.12 on, and not before: there, the group's peak since it was made)."""
        with suppress(CgroupError):
            self.group.reset_peak()
        return self.group.memory_bytes()

    def _peak_over(self, held: int) -> int:
        try:
            return max(0, self.group.peak_bytes() - held)
        except CgroupError:  # v2 before 5.19 has no memory.peak
            return 0
