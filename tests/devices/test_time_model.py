"""The time models: the roofline against a hand-computed step, the FLOP/s fallback, the lower bound engines order by,
and a calibrated profile's timing block loaded from YAML."""

import math

import pytest

from msfusion_ray.costs.census import OpGroup, WorkCensus
from msfusion_ray.devices.clock import device_time, earliest_device_time
from msfusion_ray.devices.profile import DeviceProfile, load_profile
from msfusion_ray.devices.time_model import ComputeTiming, compute_lower_bound, compute_seconds, step_seconds

TIMING = ComputeTiming(reference_gflops=10, conv_gflops=20, matmul_gflops=40, attention_gflops=8, memory_gbps=4,
                       op_us=5, view_us=1)
# One step of a tiny model: a conv (compute-bound), a matmul (bandwidth-bound), two elementwise ops, three views.
CENSUS = WorkCensus((OpGroup("conv", 2_000_000, 40_000, 1), OpGroup("matmul", 400_000, 80_000, 1),
                     OpGroup("other", 0, 8_000, 2), OpGroup("view", 0, 0, 3)))


def test_roofline_step_is_the_hand_computed_one():
    conv = max(2e6 / 20e9, 40e3 / 4e9) + 5e-6  # 100 us of FLOPs beat 10 us of bytes
    matmul = max(4e5 / 40e9, 80e3 / 4e9) + 5e-6  # 20 us of bytes beat 10 us of FLOPs
    other = 2 * (8e3 / 4e9 + 5e-6)
    views = 3 * 1e-6
    assert step_seconds(TIMING, CENSUS) == pytest.approx(conv + matmul + other + views, rel=1e-12)
    assert step_seconds(TIMING, CENSUS) == pytest.approx(147e-6, rel=1e-12)  # 105 + 25 + 14 + 3 us


def test_a_task_is_its_steps_at_the_profile_speed_and_unseen_flops_at_its_flop_rate():
    one = step_seconds(TIMING, CENSUS)
    # the profile is twice the calibrated device: every step takes half; 1e6 FLOPs no census saw run at 20 GFLOP/s
    flops = 5 * CENSUS.flops + 1_000_000
    seconds = compute_seconds(20, TIMING, flops, [(CENSUS, 5)])
    assert seconds == pytest.approx(5 * one / 2 + 1e6 / 20e9, rel=1e-12)
    assert compute_seconds(20, TIMING, flops, [(CENSUS, 5)], model="flops") == pytest.approx(flops / 20e9)
    assert compute_seconds(20, None, flops, [(CENSUS, 5)]) == pytest.approx(flops / 20e9)  # not calibrated


def test_the_lower_bound_never_exceeds_the_roofline():
    for gflops in (1, 10, 100):
        flops = 7 * CENSUS.flops
        bound = compute_lower_bound(gflops, TIMING, flops)
        assert 0 < bound <= compute_seconds(gflops, TIMING, flops, [(CENSUS, 7)])
    assert compute_lower_bound(10, None, 1e9) == compute_seconds(10, None, 1e9, []) == pytest.approx(0.1)


def test_device_time_reads_the_census_under_the_roofline():
    profile = DeviceProfile(name="d", description="", memory_mib=100, train_gflops=10, uplink_mbps=8,
                            downlink_mbps=8, latency_ms=0, timing=TIMING)
    spent = device_time(profile, CENSUS.flops, 0, 0, steps=[(CENSUS, 1)])
    assert spent.compute_s == pytest.approx(step_seconds(TIMING, CENSUS))
    assert earliest_device_time(profile, CENSUS.flops, 0, 0).compute_s <= spent.compute_s
    flat = device_time(profile, CENSUS.flops, 0, 0, steps=[(CENSUS, 1)], model="flops")
    assert flat.compute_s == pytest.approx(CENSUS.flops / 10e9)


def test_a_profile_with_a_timing_block_loads(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text("name: node\ndescription: x\nmemory_mib: 100\ntrain_gflops: 10\nuplink_mbps: 1\n"
                    "downlink_mbps: 1\ntiming:\n  reference_gflops: 10\n  conv_gflops: 20\n  matmul_gflops: 40\n"
                    "  attention_gflops: 8\n  memory_gbps: 4\n  op_us: 5\n  view_us: 1\n  throttle: {0.25: 1.3}\n")
    profile = load_profile(path)
    assert profile.timing == ComputeTiming(**{**TIMING.__dict__, "throttle": {0.25: 1.3}})
    assert math.isclose(profile.timing.peak_flops_per_s, 40e9)


def test_a_linear_layer_is_timed_as_computed_by_hand(one_thread):
    import torch

    from msfusion_ray.costs.census import OpCensus

    layer, x = torch.nn.Linear(3, 5), torch.randn(4, 3)
    census = OpCensus()
    with torch.no_grad(), census:
        layer(x)
    measured = census.census()
    # the weight's transpose (a view) and one addmm: 2 * 4 * 3 * 5 FLOPs; bias 5, input 12, weight 15, output 20
    assert sorted((g.kind, g.flops, g.bytes, g.count) for g in measured.groups) == [
        ("matmul", 120, (5 + 12 + 15 + 20) * 4, 1), ("view", 0, 0, 1)]
    by_hand = max(120 / 40e9, 208 / 4e9) + 5e-6 + 1e-6  # bandwidth-bound: 52 ns, then the two fixed costs
    assert step_seconds(TIMING, measured) == pytest.approx(by_hand, rel=1e-12)
    assert compute_seconds(5, TIMING, 120, [(measured, 1)]) == pytest.approx(2 * by_hand, rel=1e-12)  # half speed
