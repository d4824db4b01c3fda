"""Control groups for enforced devices: finding the hierarchy, what is written for v1 and v2 (on directories made
to look like each), and the real thing where this runs as root (CI does): a process moved into a group with a
quota and a limit, killed by the kernel past the limit, and no group left behind."""

import os
import subprocess
import sys
import time

import pytest

from msfusion_ray.devices import cgroups
from msfusion_ray.devices.cgroups import CgroupError, Group

V1_MOUNTS = ("cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
             "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n")


def _mounts(tmp_path, text):
    path = tmp_path / "mounts"
    path.write_text(text)
    return path


def _v2_root(tmp_path, controllers):
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers)
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_v2_is_used_only_where_it_offers_cpu_and_memory(tmp_path):
    bare = _v2_root(tmp_path, "hugetlb\n")  # this project's machines: v2 mounted, cpu and memory on v1
    mounts = _mounts(tmp_path, V1_MOUNTS + f"cgroup2 {bare} cgroup2 rw 0 0\n")
    assert cgroups.detect(mounts) == cgroups.Hierarchy(1, cgroups.Path("/sys/fs/cgroup/cpu"),
                                                       cgroups.Path("/sys/fs/cgroup/memory"))
    (bare / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert cgroups.detect(mounts) == cgroups.Hierarchy(2, bare, bare)


def test_no_usable_hierarchy_is_named(tmp_path):
    bare = _v2_root(tmp_path, "hugetlb\n")
    mounts = _mounts(tmp_path, "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n" + f"cgroup2 {bare} cgroup2 rw 0 0\n")
    with pytest.raises(CgroupError, match="v1 lacks memory; v2 at .* offers hugetlb") as err:
        cgroups.detect(mounts)
    assert err.value.path == str(mounts)


def test_what_v2_writes(tmp_path):
    root = _v2_root(tmp_path, "cpu memory\n")
    run = Group(2, (root / "msfusion_ray.1.run",))
    run.dirs[0].mkdir()
    (run.dirs[0] / "cgroup.subtree_control").write_text("")
    host = run.child("host-0.0").make()
    assert (run.dirs[0] / "cgroup.subtree_control").read_text() == "+cpu +memory"  # children may use both
    assert (host.dirs[0] / "memory.swap.max").exists() is False  # only where the kernel has it
    host.set_cpu(0.25)
    assert (host.dirs[0] / "cpu.max").read_text() == "25000 100000"
    assert host.cpu_quota() == 0.25
    host.set_cpu(None)
    assert (host.dirs[0] / "cpu.max").read_text() == "max 100000" and host.cpu_quota() is None
    host.set_memory(300 * 2**20)
    assert host.memory_limit() == 300 * 2**20
    host.set_memory(None)
    assert host.memory_limit() is None
    (host.dirs[0] / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (host.dirs[0] / "memory.current").write_text("5000\n")
    (host.dirs[0] / "memory.stat").write_text("anon 3000\nfile 2000\n")
    assert host.oom_kills() == 1 and host.memory_bytes() == 5000 and host.file_bytes() == 2000


def test_what_v1_writes(tmp_path):
    cpu, memory = tmp_path / "cpu", tmp_path / "memory"
    group = Group(1, (cpu / "g", memory / "g"))
    cpu.mkdir(), memory.mkdir()
    group.make()
    group.set_cpu(0.5, period_us=50_000)
    assert (cpu / "g" / "cpu.cfs_quota_us").read_text() == "25000"
    assert (cpu / "g" / "cpu.cfs_period_us").read_text() == "50000"
    group.set_cpu(None)
    assert (cpu / "g" / "cpu.cfs_quota_us").read_text() == "-1"
    group.set_memory(None)
    assert (memory / "g" / "memory.limit_in_bytes").read_text() == "-1"
    (memory / "g" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert group.oom_kills() == 2


def _real_base():
    if os.geteuid() != 0:
        pytest.skip("control groups need root")
    try:
        base = cgroups.base_group(cgroups.detect())
        cgroups.check_writable(base)
    except CgroupError as err:
        pytest.skip(f"no writable cgroup hierarchy here: {err}")
    return base


def test_a_process_in_a_real_group_gets_its_quota_and_dies_at_its_limit():
    base = _real_base()
    run = cgroups.run_group(base, "test").make()
    try:
        host = run.child("host-0.0").make()
        # a process that allocates 400 MB (and touches it) once told to, under a limit of 200 MB more than it holds
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline(); "
                                  "b = bytearray(400 * 2**20); print('survived', flush=True)"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        host.add(child.pid)
        assert host.pids() == {child.pid}
        assert all(f"/{d.parent.name}/{d.name}\n" in open(f"/proc/{child.pid}/cgroup").read() for d in host.dirs)
        host.set_cpu(0.25)
        assert host.cpu_quota() == 0.25
        host.set_memory(host.memory_bytes() + 200 * 2**20)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == -9 and child.stdout.read() == ""  # SIGKILL, nothing printed
        assert host.oom_kills() == 1
    finally:
        run.remove(wait_s=5)
    assert not run.exists()
    assert not [g for g in cgroups.ours(base) if g.dirs[0].name.startswith(f"msfusion_ray.{os.getpid()}.")]


def test_stale_groups_of_a_dead_launcher_are_removed_and_others_kept():
    base = _real_base()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = cgroups.run_group(base, "stale", pid=dead.pid).make()
    stale.child("host-0.0").make()
    mine = cgroups.run_group(base, "mine").make()
    try:
        removed = cgroups.remove_stale(base)
        assert stale in removed and not stale.exists() and mine.exists()
    finally:
        for group in (stale, mine):
            if group.exists():
                group.remove(wait_s=0)


def test_removing_a_group_kills_what_is_left_in_it():
    base = _real_base()
    run = cgroups.run_group(base, "leftover").make()
    sleeper = subprocess.Popen(["sleep", "60"])
    run.child("host-0.0").make().add(sleeper.pid)
    started = time.monotonic()
    run.remove(wait_s=0.2)
    assert sleeper.wait(timeout=10) == -9 and not run.exists() and time.monotonic() - started < 10
