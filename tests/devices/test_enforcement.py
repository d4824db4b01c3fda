"""Planning enforced devices: quotas from the node's calibration, the slowdown that fits a device faster than the
node, throttling compensated, and every impossible set-up refused with one line naming what."""

import pytest

from msfusion_ray.config import RuntimeConfig
from msfusion_ray.devices.enforcement import HostLimits, plan_enforcement, throttle_factor
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.errors import UserInputError

NODE = ("name: node\ndescription: x\nmemory_mib: 1000\ntrain_gflops: 40\nuplink_mbps: 1\ndownlink_mbps: 1\n"
        "timing:\n  reference_gflops: 40\n  conv_gflops: 50\n  matmul_gflops: 80\n  attention_gflops: 20\n"
        "  memory_gbps: 10\n  op_us: 5\n  view_us: 1\n  threads: {threads}\n  throttle: {{0.125: 1.4, 0.5: 1.1}}\n")


def _profile(name, gflops, **extra):
    return DeviceProfile(name=name, description="", memory_mib=100, train_gflops=gflops, uplink_mbps=1,
                         downlink_mbps=1, **extra)


@pytest.fixture
def node(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(NODE.format(threads=1))
    return path


def _runtime(node, **values):
    return RuntimeConfig(enforce="cgroups", node_profile=str(node), **values)


def test_quota_is_the_device_share_raised_by_the_measured_throttling(node):
    plan = plan_enforcement(_runtime(node), [_profile("pi", 5), _profile("board", 20)])
    assert plan.slowdown == 1.0
    assert plan.share(_profile("pi", 5)) == 0.125
    assert plan.quota(_profile("pi", 5)) == pytest.approx(0.125 * 1.4)
    assert plan.quota(_profile("board", 20)) == pytest.approx(0.5 * 1.1)
    assert plan.quota(_profile("node-like", 40)) == 1.0


def test_throttle_factor_interpolates_in_log_quota_and_never_speeds_up():
    measured = {0.125: 1.4, 0.5: 1.1, 0.25: 0.9}
    assert throttle_factor(measured, 0.125) == 1.4
    assert throttle_factor(measured, 0.05) == 1.4  # below the smallest measured: its figure
    assert throttle_factor(measured, 0.25) == 1.0  # a figure below 1 (a loaded machine) counts as 1
    assert throttle_factor(measured, 0.5) == 1.1
    assert throttle_factor(measured, 0.5**0.5) == pytest.approx(1.05)  # toward 1 at a whole core
    assert throttle_factor(measured, 1.0) == throttle_factor(measured, 2.0) == 1.0
    assert throttle_factor(measured, 0.125 * 2**0.5) == pytest.approx(1.2)  # halfway in log quota
    assert throttle_factor({}, 0.1) == 1.0


def test_a_device_faster_than_the_node_slows_the_run_down_or_is_refused(node):
    fast = [_profile("laptop", 100), _profile("pi", 5)]
    plan = plan_enforcement(_runtime(node), fast)
    assert plan.slowdown == 2.5 and plan.quota(fast[0]) == 1.0
    with pytest.raises(UserInputError, match="at least 2.50") as err:
        plan_enforcement(_runtime(node, enforce_slowdown=1.0), fast)
    assert err.value.where == "profile laptop"


def test_impossible_set_ups_are_named(node, tmp_path):
    with pytest.raises(UserInputError) as err:
        plan_enforcement(_runtime(tmp_path / "none.yaml"), [_profile("pi", 5)])
    assert err.value.where == "runtime.node_profile"
    with pytest.raises(UserInputError) as err:
        plan_enforcement(_runtime(node, threads_per_host=2), [_profile("pi", 5)])
    assert err.value.where == "runtime.threads_per_host"
    with pytest.raises(UserInputError, match="smallest quota") as err:
        plan_enforcement(_runtime(node), [_profile("abacus", 0.01)])
    assert err.value.where == "profile abacus"
    with pytest.raises(UserInputError, match="native") as err:
        plan_enforcement(_runtime(node), [_profile("cluster", 5, native=True)])
    with pytest.raises(UserInputError, match="more than the 0.5") as err:
        plan_enforcement(_runtime(node), [_profile("board", 30)], cores=0.5)
    assert err.value.where == "profile board"
    uncalibrated = tmp_path / "plain.yaml"
    uncalibrated.write_text("name: plain\ndescription: x\nmemory_mib: 1\ntrain_gflops: 1\nuplink_mbps: 1\n"
                            "downlink_mbps: 1\n")
    with pytest.raises(UserInputError, match="not written by calibrate"):
        plan_enforcement(_runtime(uncalibrated), [_profile("pi", 5)])


def test_uncalibrated_devices_are_predicted_as_the_node_runs_them(node):
    plan = plan_enforcement(_runtime(node), [_profile("pi", 5)])
    assert plan.timed_like_node(_profile("pi", 5)).timing == plan.node_timing
    own = _profile("calibrated", 5, timing=plan.node_timing)
    assert plan.timed_like_node(own) is own


def _fake_v2_host(tmp_path, node):
    """A host's limits on a directory tree made to look like v2, with what the kernel's files would say."""
    root = tmp_path / "unified"
    run = root / "msfusion_ray.1.run"
    run.mkdir(parents=True)
    for directory in (root, run):
        (directory / "cgroup.subtree_control").write_text("")
    plan = plan_enforcement(_runtime(node), [_profile("d", 40)], (str(run),), 2)
    limits = HostLimits(plan, 0, 0, pid=12345)
    files = {"memory.current": "1000\n", "memory.stat": "anon 1000\nfile 0\n", "cpu.stat": "throttled_usec 0\n",
             "memory.peak": "1000\n", "cpu.max": "max 100000\n", "memory.max": "max\n"}
    for name, text in files.items():
        (limits.group.dirs[0] / name).write_text(text)
    return limits


def test_a_task_records_its_groups_peak_over_its_start(tmp_path, node):
    limits = _fake_v2_host(tmp_path, node)
    peak = limits.group.dirs[0] / "memory.peak"
    with limits.task(_profile("d", 40), 10**6) as task:
        assert peak.read_text() == "0"  # reset as the task starts
        peak.write_text("6000\n")  # the kernel's figure once the task allocated
    assert task.peak_bytes == 5000 and task.baseline_bytes == 1000 and task.memory_limit_bytes == 1000 + 10**6


def test_a_peak_the_kernel_cannot_reset_or_read_costs_the_figure_not_the_task(tmp_path, node):
    limits = _fake_v2_host(tmp_path, node)
    peak = limits.group.dirs[0] / "memory.peak"
    peak.unlink()
    peak.mkdir()  # neither written nor read, as on v2 kernels before 5.19
    with limits.task(_profile("d", 40), 10**6) as task:
        pass
    assert task.peak_bytes == 0 and task.baseline_bytes == 1000
