"""The comparison table against values worked out by hand from the fixture records."""

import math

import pytest

from analysis.comparison import comparison_table, cost_to_target, markdown
from tests.analysis.fixtures import three_runs


def test_cost_to_target_is_the_cumulative_device_time_at_the_first_hit():
    a, b, _ = three_runs()
    assert cost_to_target(a, "accuracy", 0.6) == pytest.approx(2.0 + 3.0)  # reached in round 2
    assert cost_to_target(b, "accuracy", 0.3) == pytest.approx(1.0)  # reached in round 1
    assert math.isnan(cost_to_target(a, "accuracy", 0.9))


def test_comparison_groups_seeds_and_averages_per_participant_costs():
    a, b, c = three_runs()
    table = comparison_table([a, b, c], target=0.75).set_index("group")
    fedavg = table.loc["fedavg, size=2"]
    assert fedavg["seeds"] == 2
    assert fedavg["final"] == pytest.approx((0.7 + 0.8) / 2)
    assert (fedavg["final_min"], fedavg["final_max"]) == (0.7, 0.8)
    # FLOPs per participant: (100 + 200) / 2 and (100 + 300) / 2, averaged over the seeds
    assert fedavg["flops_per_participant"] == pytest.approx((150 + 200) / 2)
    assert fedavg["bytes_per_participant"] == pytest.approx(((60 / 2) + (40 / 2)) / 2)
    assert fedavg["oom"] == 1
    assert fedavg["reached"] == 1 and fedavg["device_s_to_target"] == pytest.approx(2.0)  # only seed 1, round 2
    assert fedavg["peak_over_cap"] == pytest.approx(0.625)  # the phone: 250 of 400 bytes
    text = markdown(comparison_table([a, b, c], target=0.75))
    assert "| fedavg, size=2 | 2 | 0.750 (0.700-0.800)" in text and "(1/2)" in text
