"""How long each device waits after its work, as the engines record it (the idle part of its energy)."""

import pytest

from tests.runtime.fake_hosts import engine_for


def test_the_round_records_how_long_each_device_waited_for_its_slowest(profiles_dir):
    engine = engine_for(profiles_dir, "fedavg", {}, {0: 1.0, 1: 3.0, 2: 2.0}, rounds=1)
    (step,) = list(engine.steps(1))
    assert [r.device_wait_s for r in step.rows] == [2.0, 0.0, 1.0]  # the round ends at 3 s


@pytest.mark.parametrize("buffer_size,waits", [(None, [2.0, 1.0, 0.0]), (2, [0.0, 0.0])])
def test_asynchronous_devices_wait_only_for_a_barrier(profiles_dir, buffer_size, waits):
    """With a buffer a device that delivered is free at once; without one (rounds) it waits for the aggregation."""
    engine = engine_for(profiles_dir, "fedbuff", {"buffer_size": buffer_size}, {0: 1.0, 1: 2.0, 2: 3.0}, rounds=1)
    (step,) = list(engine.steps(1))
    assert [r.device_wait_s for r in sorted(step.rows, key=lambda r: r.participant)] == waits
