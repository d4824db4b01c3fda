"""Linux control groups, v1 and v2: what physically enforced devices (`runtime.enforce: cgroups`) write.

Both versions offer what enforcement needs: a CPU quota per period (v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`,
v2 `cpu.max`), a memory limit past which the kernel kills the group's largest process (v1
`memory.limit_in_bytes`, v2 `memory.max`), how much memory the group holds, and how many processes the kernel
killed for it (v1 `oom_kill` in `memory.oom_control`, v2 in `memory.events`). `detect` finds which hierarchy has
both the cpu and the memory controller (a v2 mount may be there with neither: this project's machines mount v2 at
/sys/fs/cgroup/unified with hugetlb alone, and keep cpu and memory on v1).

Where groups go: v1 under the cgroup the calling process is in (per controller), so that a run's groups sit inside
whatever its launcher belongs to; v2 under the root of the unified hierarchy, the one place where a group may hold
processes and still hand controllers to its children ("no internal processes"). Every group this module makes is
named `msfusion_ray.<pid>.<tag>` (a run's) with its hosts' groups inside, so that groups left by a launcher that
was killed can be told from anyone else's and removed (`remove_stale`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PREFIX = "msfusion_ray."
MOUNTS = Path("/proc/self/mounts")
DEFAULT_PERIOD_US = 100_000
MIN_QUOTA_US = 1000  # the kernel's smallest CFS quota


class CgroupError(Exception):
    """A control group that cannot be found, made or written: `path` names it, `reason` says why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Hierarchy:
    """Where the cpu and memory controllers are mounted (the same directory under v2)."""

    version: int
    cpu: Path
    memory: Path

    def roots(self) -> tuple[Path, ...]:
        return (self.cpu,) if self.version == 2 else (self.cpu, self.memory)


def _mounts(mounts: Path) -> list[tuple[Path, str, set[str]]]:
    found = []
    for line in mounts.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            found.append((Path(parts[1]), parts[2], set(parts[3].split(","))))
    return found


def v2_controllers(root: Path) -> set[str]:
    try:
        return set((root / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def detect(mounts: Path | None = None) -> Hierarchy:
    """The hierarchy that has both the cpu and the memory controller: v2 where it offers both, else v1 where both
    are mounted (`mounts`: the mount table, default this process's). Raises CgroupError naming what is missing."""
    mounts = mounts if mounts is not None else MOUNTS
    try:
        found = _mounts(mounts)
    except OSError as err:
        raise CgroupError(mounts, f"cannot be read ({err.strerror})") from None
    v1 = {name: path for path, kind, options in found if kind == "cgroup" for name in ("cpu", "memory")
          if name in options}
    offered = {}
    for path, kind, _ in found:
        if kind == "cgroup2":
            offered[path] = v2_controllers(path)
            if {"cpu", "memory"} <= offered[path]:
                return Hierarchy(2, path, path)
    if "cpu" in v1 and "memory" in v1:
        return Hierarchy(1, v1["cpu"], v1["memory"])
    v2_text = "; ".join(f"v2 at {path} offers {', '.join(sorted(c)) or 'no controller'}" for path, c in offered.items())
    missing = ", ".join(name for name in ("cpu", "memory") if name not in v1)
    raise CgroupError(mounts, f"no cgroup hierarchy has both the cpu and the memory controller (v1 lacks {missing}"
                              f"{'; ' + v2_text if v2_text else '; no v2 mount'})")


def own_group(root: Path, controller: str, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path:
    """The v1 group of this process under `root` for `controller` (the root itself if it cannot tell)."""
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, relative = line.split(":", 2)
            if controller in controllers.split(","):
                return root / relative.lstrip("/")
    except (OSError, ValueError):
        pass
    return root


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:
        raise CgroupError(path, f"cannot be written ({err.strerror or err})") from None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise CgroupError(path, f"cannot be read ({err.strerror or err})") from None


def _field(text: str, name: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return int(parts[1])
    return 0


@dataclass(frozen=True)
class Group:
    """One control group: its directory under each controller it uses (one directory under v2)."""

    version: int
    dirs: tuple[Path, ...]  # v1: (cpu, memory); v2: (group,)

    @property
    def cpu_dir(self) -> Path:
        return self.dirs[0]

    @property
    def memory_dir(self) -> Path:
        return self.dirs[-1]

    def child(self, name: str) -> "Group":
        return Group(self.version, tuple(d / name for d in self.dirs))

    def make(self) -> "Group":
        """Create the group (where it is not there yet); under v2 also hand cpu and memory to its children."""
        for directory in self.dirs:
            try:
                directory.mkdir(exist_ok=True)
            except OSError as err:
                raise CgroupError(directory, f"cannot be made ({err.strerror or err})") from None
        if self.version == 2:
            enable_controllers(self.cpu_dir.parent)
        if self.version == 1 and (self.memory_dir / "memory.swappiness").exists():
            try:  # kill at the limit rather than swap (where there is swap; a cgroup may refuse it, v1 root)
                _write(self.memory_dir / "memory.swappiness", "0")
            except CgroupError:
                pass
        elif self.version == 2 and (self.memory_dir / "memory.swap.max").exists():
            _write(self.memory_dir / "memory.swap.max", "0")
        return self

    def set_cpu(self, cores: float | None, period_us: int = DEFAULT_PERIOD_US) -> None:
        """A CPU quota of `cores` (None: none) per period of `period_us`."""
        quota = None if cores is None else max(MIN_QUOTA_US, round(cores * period_us))
        if self.version == 2:
            _write(self.cpu_dir / "cpu.max", f"{'max' if quota is None else quota} {period_us}")
        else:
            _write(self.cpu_dir / "cpu.cfs_period_us", str(period_us))
            _write(self.cpu_dir / "cpu.cfs_quota_us", str(-1 if quota is None else quota))

    def cpu_quota(self) -> float | None:
        """The quota in cores (None: none)."""
        if self.version == 2:
            quota, period = _read(self.cpu_dir / "cpu.max").split()
            return None if quota == "max" else int(quota) / int(period)
        quota = int(_read(self.cpu_dir / "cpu.cfs_quota_us"))
        return None if quota < 0 else quota / int(_read(self.cpu_dir / "cpu.cfs_period_us"))

    def set_memory(self, limit_bytes: int | None) -> None:
        if self.version == 2:
            _write(self.memory_dir / "memory.max", "max" if limit_bytes is None else str(limit_bytes))
        else:
            _write(self.memory_dir / "memory.limit_in_bytes", str(-1 if limit_bytes is None else limit_bytes))

    def memory_limit(self) -> int | None:
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        text = _read(self.memory_dir / name).strip()
        return None if text == "max" or int(text) >= 2**62 else int(text)

    def memory_bytes(self) -> int:
        """What the group holds now (its processes' memory charged to it, page cache included)."""
        return int(_read(self.memory_dir / ("memory.current" if self.version == 2 else "memory.usage_in_bytes")))

    def peak_bytes(self) -> int:
        """The most the group held since it was made or `reset_peak` (v2: kernels from 5.19 on)."""
        return int(_read(self.memory_dir / ("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")))

    def reset_peak(self) -> None:
        _write(self.memory_dir / ("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"), "0")

    def file_bytes(self) -> int:
        """Of `memory_bytes`, the page cache (file pages), which the kernel takes back before it kills."""
        text = _read(self.memory_dir / "memory.stat")
        if self.version == 2:
            return _field(text, "file")
        return _field(text, "active_file") + _field(text, "inactive_file")

    def oom_kills(self) -> int:
        """Processes the kernel killed because the group reached its memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _field(_read(self.memory_dir / name), "oom_kill")

    def throttled_s(self) -> float:
        """Seconds its processes waited for their quota to come back, in all."""
        text = _read(self.cpu_dir / "cpu.stat")
        return _field(text, "throttled_usec") / 1e6 if self.version == 2 else _field(text, "throttled_time") / 1e9

    def add(self, pid: int) -> None:
        """Move a process, with all its threads, into the group."""
        for directory in self.dirs:
            _write(directory / "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.dirs:
            for group in [directory, *sorted(p for p in directory.rglob("*") if p.is_dir())]:
                try:
                    found.update(int(pid) for pid in (group / "cgroup.procs").read_text().split())
                except OSError:
                    continue
        return found

    def exists(self) -> bool:
        return any(directory.is_dir() for directory in self.dirs)

    def remove(self, wait_s: float = 10.0, kill: bool = True) -> None:
        """Remove the group and every group inside it. Processes still in them (this run's own hosts, which nothing
        else is ever put in) are given `wait_s` to end, then killed where `kill`. Raises CgroupError where a group
        stays."""
        deadline = time.monotonic() + wait_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        if kill:
            for pid in self.pids():
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            while self.pids() and time.monotonic() < deadline + 5:
                time.sleep(0.05)
        for directory in self.dirs:
            for group in _depth_first(directory):
                for attempt in range(50):
                    try:
                        group.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError as err:
                        if attempt == 49:
                            raise CgroupError(group, f"cannot be removed ({err.strerror or err})") from None
                        time.sleep(0.1)  # a process that just left is still being released


def _depth_first(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for child in sorted(p for p in directory.iterdir() if p.is_dir()):
        yield from _depth_first(child)
    yield directory


def enable_controllers(directory: Path) -> None:
    """v2: let `directory`'s children use cpu and memory (its cgroup.subtree_control)."""
    control = directory / "cgroup.subtree_control"
    enabled = set(_read(control).split())
    missing = [name for name in ("cpu", "memory") if name not in enabled]
    if missing:
        _write(control, " ".join(f"+{name}" for name in missing))


def current_group(hierarchy: Hierarchy, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Group:
    """The group this process is in (to come back to after a measurement in a group of its own)."""
    if hierarchy.version == 2:
        try:
            relative = next(line.split(":", 2)[2] for line in proc_cgroup.read_text().splitlines()
                            if line.startswith("0::"))
        except (OSError, StopIteration):
            relative = "/"
        return Group(2, (hierarchy.cpu / relative.lstrip("/"),))
    return Group(1, (own_group(hierarchy.cpu, "cpu", proc_cgroup), own_group(hierarchy.memory, "memory", proc_cgroup)))


def base_group(hierarchy: Hierarchy, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Group:
    """Where a run's groups go (see the module's docstring)."""
    return Group(2, (hierarchy.cpu,)) if hierarchy.version == 2 else current_group(hierarchy, proc_cgroup)


def run_group(base: Group, tag: str, pid: int | None = None) -> Group:
    return base.child(f"{PREFIX}{pid if pid is not None else os.getpid()}.{tag}")


def ours(base: Group) -> list[Group]:
    """Every group of this module's naming under `base`."""
    names = sorted({p.name for d in base.dirs if d.is_dir() for p in d.iterdir()
                    if p.is_dir() and p.name.startswith(PREFIX)})
    return [base.child(name) for name in names]


def remove_stale(base: Group) -> list[Group]:
    """Remove the groups of launchers that are gone (killed before they could clean up) and hold no process;
    returns those removed."""
    removed = []
    for group in ours(base):
        pid = group.dirs[0].name[len(PREFIX):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and not group.pids():
            group.remove(wait_s=0.0, kill=False)
            removed.append(group)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(base: Group, tag: str = "probe") -> None:
    """Make a group under `base`, give it a quota and a memory limit, and remove it: CgroupError naming the first
    path that failed."""
    probe = run_group(base, tag)
    try:
        probe.make()
        probe.set_cpu(0.5)
        probe.set_memory(2**30)
    finally:
        if probe.exists():
            probe.remove(wait_s=0.0, kill=False)
