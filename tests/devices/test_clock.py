import pytest

from msfusion_ray.devices.clock import device_time, pace_until
from msfusion_ray.devices.profile import DeviceProfile

PROFILE = DeviceProfile(name="d", description="", memory_mib=100, train_gflops=2.0, uplink_mbps=8.0,
                        downlink_mbps=16.0, latency_ms=50.0)


def test_device_time_follows_its_formula():
    spent = device_time(PROFILE, flops=4e9, bytes_down=4_000_000, bytes_up=1_000_000)
    assert spent.compute_s == pytest.approx(4e9 / 2e9)
    assert spent.download_s == pytest.approx(4_000_000 / (16e6 / 8))
    assert spent.upload_s == pytest.approx(1_000_000 / (8e6 / 8))
    assert spent.latency_s == pytest.approx(0.05)
    assert spent.total_s == pytest.approx(2.0 + 2.0 + 1.0 + 0.05)


def test_real_mode_sleeps_until_the_timeline_and_reports_a_slow_host():
    slept = []
    ahead = pace_until(103.0, now=lambda: 101.0, sleep=slept.append)
    assert slept == [pytest.approx(2.0)] and ahead.warning("d") is None
    behind = pace_until(101.0, now=lambda: 101.5, sleep=slept.append)
    assert len(slept) == 1 and behind.behind_s == pytest.approx(0.5)
    assert "slower than profile 'd'" in behind.warning("d")
