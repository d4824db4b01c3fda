"""The comparison table against values worked out by hand from the fixture records."""

import math

import pytest

from analysis.comparison import comparison_table, cost_to_target, markdown
from analysis.runs import label_runs
from tests.analysis.fixtures import make_run, participant, three_runs


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


def _language_model_runs():
    """Two seeds of one scheme, evaluated on the test and the validation split in rounds 1 and 2 (perplexity)."""
    def run(seed, val, test, device_s):
        rounds = [dict(flops_total=10, bytes_down_total=1, bytes_up_total=1, device_time_s=t, wall_round_s=1.0,
                       val_perplexity=v, test_perplexity=p) for v, p, t in zip(val, test, device_s)]
        return make_run("msfusion", seed, 2, rounds, [participant(1, 0, flops=10, device_time_s=1.0,
                                                                  mem_cap_bytes=100, mem_peak_tensor_bytes=50)])
    return label_runs([run(0, [12.0, 9.0], [13.0, 10.0], [2.0, 2.0]), run(1, [11.0, 11.5], [12.0, 12.5], [3.0, 3.0])])


def test_validation_columns_and_a_target_on_the_validation_split():
    runs = _language_model_runs()
    assert cost_to_target(runs[0], "val_perplexity", 10.0) == pytest.approx(4.0)  # lower is better: round 2
    assert cost_to_target(runs[0], "perplexity", 10.0) == pytest.approx(4.0)
    assert math.isnan(cost_to_target(runs[1], "val_perplexity", 10.0))
    row = comparison_table(runs, target=11.0, split="val").iloc[0]
    assert (row["val_final"], row["val_final_min"], row["val_final_max"]) == (pytest.approx(10.25), 9.0, 11.5)
    assert (row["val_best"], row["val_best_min"], row["val_best_max"]) == (pytest.approx(10.0), 9.0, 11.0)
    assert (row["final"], row["best"]) == (pytest.approx(11.25), pytest.approx(11.0))  # test split: 10 and 12
    assert row["reached"] == 2 and row["device_s_to_target"] == pytest.approx((4.0 + 3.0) / 2)
    text = markdown(comparison_table(runs, target=11.0, split="val"))
    assert "final val perplexity (min-max)" in text and "virtual s to val perplexity 11" in text
    assert "| msfusion | 2 | 11.250 (10.000-12.500) | 11.000 | 10.250 (9.000-11.500) | 10.000 (9.000-11.000) |" in text
    with pytest.raises(ValueError, match="split"):
        comparison_table(runs, split="train")


def test_energy_per_participant_and_to_the_target():
    """Joules of every task over the fleet size, in total and at the first evaluated round that reached the target
    (the same rounds as the virtual time to it)."""
    def run(seed, energies, accuracies):
        rounds = [dict(flops_total=10, bytes_down_total=1, bytes_up_total=1, device_time_s=1.0, wall_round_s=1.0,
                       energy_j_total=e, test_accuracy=a) for e, a in zip(energies, accuracies)]
        return make_run("heterofl", seed, 4, rounds, [participant(1, 0, energy_j=energies[0])])
    runs = label_runs([run(0, [8.0, 4.0, 12.0], [0.5, 0.8, 0.9]), run(1, [4.0, 4.0, 4.0], [0.5, 0.6, 0.7])])
    assert cost_to_target(runs[0], "accuracy", 0.75, "cum_energy_per_participant") == pytest.approx((8 + 4) / 4)
    row = comparison_table(runs, target=0.75).iloc[0]
    assert row["energy_per_participant"] == pytest.approx((24 / 4 + 12 / 4) / 2)
    assert row["reached"] == 1 and row["energy_to_target"] == pytest.approx(3.0)
    text = markdown(comparison_table(runs, target=0.75))
    assert "J / participant" in text and "| 4.5 |" in text and "J / participant to accuracy 0.75" in text
    assert text.rstrip().endswith("| 2 (1/2) | 3 |")


def test_records_without_energy_show_none():
    a, _, _ = three_runs()
    row = comparison_table([a]).iloc[0]
    assert math.isnan(row["energy_per_participant"])
    assert "| - |" in markdown(comparison_table([a]))
