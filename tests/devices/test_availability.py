"""Availability in virtual time: on/off processes, traces, and their errors."""

import math

import pytest

from msfusion_ray.devices.availability import Windows, make_availability, on_off_process, read_trace
from msfusion_ray.devices.fleet import FleetSpec, make_fleet
from msfusion_ray.devices.profile import DeviceProfile
from msfusion_ray.errors import UserInputError

PHONE = DeviceProfile(name="phone", description="", memory_mib=10, train_gflops=1, uplink_mbps=1, downlink_mbps=1,
                      on_mean_s=60.0, off_mean_s=20.0)
BOARD = DeviceProfile(name="board", description="", memory_mib=10, train_gflops=1, uplink_mbps=1, downlink_mbps=1)
FLEET = make_fleet(FleetSpec("f", {"phone": 2, "board": 1}), {"phone": PHONE, "board": BOARD})


def test_windows_answer_where_a_device_is_on():
    windows = Windows([(5.0, 7.0), (0.0, 2.0), (2.0, 3.0)])  # touching windows merge
    assert windows.starts == [0.0, 5.0] and windows.ends == [3.0, 7.0]
    assert windows.is_on(0.0) and windows.is_on(2.5) and not windows.is_on(3.0) and not windows.is_on(8.0)
    assert windows.window_end(1.0) == 3.0 and windows.next_on(4.0) == 5.0 and windows.next_on(8.0) == math.inf


def test_the_on_off_process_is_seeded_and_on_for_its_stationary_share():
    a, b = on_off_process(60.0, 20.0, [0, 1]), on_off_process(60.0, 20.0, [0, 1])
    points = [t * 7.3 for t in range(20_000)]
    on = [a.is_on(t) for t in points]
    assert on == [b.is_on(t) for t in points]
    assert sum(on) / len(on) == pytest.approx(0.75, abs=0.03)
    assert on != [on_off_process(60.0, 20.0, [0, 2]).is_on(t) for t in points]


def test_windows_mode_keeps_devices_without_means_always_on():
    availability = make_availability("windows", FLEET, seed=0)
    assert availability.windowed and all(availability.is_on(2, t) for t in (0.0, 1e3, 1e6))
    assert not all(availability.is_on(0, t) for t in range(0, 2000, 10))


def test_a_trace_gives_windows_per_participant_or_device_class(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("device,participant,start_s,end_s\nphone,,10,20\n,2,0,5\n")
    availability = read_trace(trace, FLEET)
    assert availability.is_on(0, 15) and availability.is_on(1, 15) and not availability.is_on(2, 15)
    assert availability.is_on(2, 1) and availability.next_on(0, 0) == 10


@pytest.mark.parametrize("text, problem", [
    ("start_s,end_s\n1,2\n", "columns"),
    ("participant,start_s,end_s\n0,5,2\n", "0 <= start_s < end_s"),
    ("participant,start_s,end_s\n0,a,2\n", "must be numbers"),
    ("participant,start_s,end_s\n9,0,2\n", "not in the fleet"),
    ("device,start_s,end_s\ntoaster,0,2\n", "not in the fleet"),
])
def test_a_malformed_trace_is_one_line_naming_the_row(tmp_path, text, problem):
    trace = tmp_path / "t.csv"
    trace.write_text(text)
    with pytest.raises(UserInputError) as err:
        read_trace(trace, FLEET)
    assert problem in str(err.value) and str(trace) in str(err.value) and "\n" not in str(err.value)
