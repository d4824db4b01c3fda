"""Per-device breakdown and utilisation against values worked out by hand from the fixture records."""

import pytest

from analysis.breakdown import device_table, exit_table, markdown, utilisation
from tests.analysis.fixtures import make_run, participant, three_runs


def test_device_rows_average_each_class_over_the_seeds_that_have_it():
    a, b, c = three_runs()
    table = device_table([a, b, c]).set_index(["group", "device"])
    pi = table.loc[("fedavg, size=2", "pi")]
    # seed 0: two Pis, three trained tasks, 300 FLOPs; seed 1: one Pi, two tasks, 250 FLOPs
    assert pi["participants"] == pytest.approx(1.5) and pi["ok"] == pytest.approx(2.5) and pi["oom"] == 0
    assert pi["gflop_per_participant"] == pytest.approx((300 / 2 + 250 / 1) / 2 / 1e9)
    assert pi["mb_per_participant"] == pytest.approx(((20 + 40) / 2 + 30 / 1) / 2 / 1e6)
    phone = table.loc[("fedavg, size=2", "phone")]  # only seed 1 has a phone: refused once, then trained
    assert (phone["ok"], phone["oom"]) == (1, 1)
    assert phone["planned_mib"] == pytest.approx(300 / 2**20) and phone["cap_mib"] == pytest.approx(400 / 2**20)
    assert "| fedavg, size=2 | pi |" in markdown(device_table([a]))


def test_utilisation_is_the_mean_over_steps_then_seeds():
    runs = [make_run("cos2p", seed, 2, [dict(device_utilisation=u, device_time_s=1.0) for u in values],
                     [participant(1, 0)]) for seed, values in ((0, (0.5, 1.0)), (1, (0.25, 0.25)))]
    table = utilisation(runs).set_index("group")
    assert table.loc[runs[0].label, "utilisation"] == pytest.approx((0.75 + 0.25) / 2)
    assert table.loc[runs[0].label, "virtual_s"] == pytest.approx(2.0)


def test_each_exit_is_read_from_the_last_evaluated_round_and_averaged_over_seeds():
    def run(seed, last):
        return make_run("cos2p", seed, 2, [
            dict(test_loss=2.0, eval_metrics={"test_exit1_perplexity": 30.0, "test_exit2_perplexity": 40.0}),
            dict(test_loss=1.0, eval_metrics={"test_exit1_perplexity": 12.0, "test_exit2_perplexity": last}),
            dict(),  # not evaluated
        ], [participant(1, 0)])
    table = exit_table([run(0, 70.0), run(1, 50.0)]).set_index("group")
    row = table.iloc[0]
    assert row["exit1_perplexity"] == pytest.approx(12.0) and row["exit2_perplexity"] == pytest.approx(60.0)
