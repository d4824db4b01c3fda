"""The aggregates behind the plots and tables, against values worked out by hand from tests/analysis/fixtures.py."""

import math

import pytest

from analysis import metrics
from analysis.runs import cost_curves, group_names, load_run
from tests.analysis.fixtures import three_runs

FEDAVG = "fedavg, size=2"
SMALL = "small_fedavg, size=4"


@pytest.fixture
def runs():
    return three_runs()


def test_groups_name_the_factors_that_vary_except_the_seed(runs):
    assert [r.label for r in runs] == [FEDAVG, FEDAVG, SMALL]
    assert group_names(runs, besides=("fleet.size",)) == ["fedavg", "fedavg", "small_fedavg"]


def test_groups_name_only_the_factors_a_run_sets():
    full = {"strategy": {"name": "msfusion", "params": {}}, "seed": 0}
    ablated = {"strategy": {"name": "msfusion", "params": {"contrastive": False}}, "seed": 0}
    both = {"strategy": {"name": "msfusion", "params": {"contrastive": False, "adaptive_overlap": False}}, "seed": 1}
    runs = [type("Run", (), {"config": c, "strategy": "msfusion"})() for c in (full, ablated, both)]
    assert group_names(runs) == ["msfusion", "msfusion, contrastive=False",
                                 "msfusion, contrastive=False, adaptive_overlap=False"]


def test_cost_curves_are_cumulative_per_fleet_member(runs):
    curve = cost_curves(runs[0])
    assert curve["cum_flops_per_participant"].tolist() == [50.0, 150.0]  # (100, 100 + 200) / 2
    assert curve["cum_bytes_per_participant"].tolist() == [10.0, 30.0]  # (20, 20 + 40) / 2
    assert curve["cum_device_s"].tolist() == [2.0, 5.0]
    assert curve["cum_wall_s"].tolist() == [1.5, 4.0]  # round + evaluation


def test_seed_spread_gives_mean_min_and_max_over_seeds(runs):
    spread = metrics.seed_spread(runs, "cum_flops_per_participant", "accuracy").set_index(["group", "round"])
    first, second = spread.loc[(FEDAVG, 1)], spread.loc[(FEDAVG, 2)]
    assert (first["x"], first["mean"], first["min"], first["max"], first["runs"]) == pytest.approx(
        (50.0, 0.4, 0.3, 0.5, 2))
    assert (second["x"], second["mean"], second["min"], second["max"]) == pytest.approx((175.0, 0.75, 0.7, 0.8))
    assert spread.loc[(SMALL, 1), "runs"] == 1 and spread.loc[(SMALL, 1), "x"] == 20.0


def test_run_table_totals(runs):
    table = metrics.run_table(runs).set_index("run")
    a = table.iloc[0]
    assert (a["final accuracy"], a["best accuracy"], a["flops_total"], a["bytes_total"], a["wall_s"]) == (
        pytest.approx(0.7), pytest.approx(0.7), 300, 60, pytest.approx(4.0))
    assert table["rounds"].tolist() == [2, 2, 1]


def test_scalability_per_run_and_spread_over_seeds(runs):
    table = metrics.scalability(runs)
    a, b, c = (table.iloc[k] for k in range(3))
    assert a["flops_per_participant"] == pytest.approx(100.0)  # trained rows: 60, 40, 200
    assert a["bytes_per_participant"] == pytest.approx(20.0)  # 10, 10, 40
    assert (a["peak_tensor_bytes"], a["peak_rss_bytes"]) == (520, 700)
    assert (a["wall_round_s"], a["device_round_s"], a["cohort"]) == (1.5, 2.5, 2.0)
    assert b["flops_per_participant"] == pytest.approx(400 / 3) and b["cohort"] == 1.5
    assert (c["participants"], c["flops_per_participant"], c["device_round_s"]) == (4, 20.0, 5.0)
    spread = metrics.scalability_spread(table).set_index(["group", "participants"])
    fedavg = spread.loc[("fedavg", 2)]
    assert fedavg["runs"] == 2
    assert (fedavg["flops_per_participant_mean"], fedavg["flops_per_participant_min"],
            fedavg["flops_per_participant_max"]) == pytest.approx((350 / 3, 100.0, 400 / 3))
    assert spread.loc[("small_fedavg", 4), "wall_round_s_mean"] == 4.0


def test_device_timeline_waits_for_the_slowest(runs):
    timeline = metrics.device_timeline(runs[0], 1)
    assert timeline["participant"].tolist() == [0, 1]
    assert timeline["compute_s"].tolist() == [1.5, 0.5]
    assert timeline["communicate_s"].tolist() == [0.5, 0.5]
    assert timeline["wait_s"].tolist() == [0.0, 1.0]


def test_host_timeline_lays_participants_end_to_end_then_idles(runs):
    timeline = metrics.host_timeline(runs[0], 1)
    segments = [(r.participant, r.phase, round(r.start_s, 6), round(r.duration_s, 6)) for r in timeline.itertuples()]
    assert segments == [
        (0, "setup", 0.0, 0.1), (0, "train", 0.1, 0.3), (0, "serialise", 0.4, 0.05), (0, "other", 0.45, 0.05),
        (1, "setup", 0.5, 0.1), (1, "train", 0.6, 0.2), (1, "serialise", 0.8, 0.1), (1, "other", 0.9, 0.0),
        (-1, "idle", 0.9, 0.1),  # the driver closed the round at wall_round_s = 1.0
    ]
    assert set(metrics.host_timeline(runs[2], 1)["host"]) == {0, 1}
    assert metrics.last_trained_round(runs[0]) == 2


def test_memory_by_device_class(runs):
    table = metrics.memory_by_device(runs).set_index(["group", "device"])
    pi, phone = table.loc[(FEDAVG, "pi")], table.loc[(FEDAVG, "phone")]
    assert (pi["cap_bytes"], pi["planned_bytes"], pi["peak_tensor_bytes"], pi["peak_rss_bytes"]) == (
        1000, 600, 520, 700)
    assert (pi["trained"], pi["oom"]) == (5, 0)
    assert (phone["cap_bytes"], phone["planned_bytes"], phone["peak_tensor_bytes"], phone["trained"],
            phone["oom"]) == (400, 600, 250, 1, 1)
    assert table.loc[(SMALL, "pi"), "trained"] == 4


def test_outcomes_and_stragglers(runs):
    slow = metrics.stragglers(runs[2])
    assert slow["participant"].tolist() == [3] and slow["round_median_s"].tolist() == [1.0]
    assert metrics.stragglers(runs[0]).empty  # 2 s against a median of 1.5 s is not twice the median
    table = metrics.outcomes(runs).set_index("group")
    fedavg = table.loc[FEDAVG]
    assert (fedavg["runs"], fedavg["participant_rounds"], fedavg["ok"], fedavg["oom"], fedavg["unavailable"],
            fedavg["timeout"], fedavg["error"], fedavg["stragglers"]) == (2, 8, 6, 1, 1, 0, 0, 0)
    assert (table.loc[SMALL, "ok"], table.loc[SMALL, "stragglers"]) == (4, 1)
    assert metrics.outcomes(runs, straggler_factor=6.0).set_index("group").loc[SMALL, "stragglers"] == 0


def test_tokens_per_second_of_language_model_rows(runs):
    table = metrics.tokens_per_second(runs)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["group"], row["device"], row["tokens"]) == (SMALL, "pi", 1000)  # 100 + 200 + 300 + 400
    assert row["tokens_per_s"] == pytest.approx(100.0)  # over 1 + 2 + 3 + 4 s of training
    assert metrics.tokens_per_second(runs[:2]).empty


def test_records_written_to_disk_read_back_to_the_same_aggregates(tmp_path):
    on_disk = three_runs(tmp_path)
    loaded = load_run(tmp_path / "a")
    assert len(loaded.participants) == 4 and loaded.rounds["round"].tolist() == [1, 2]
    assert cost_curves(loaded).equals(cost_curves(on_disk[0]))
    assert metrics.metric_of(on_disk) == "accuracy"
    assert math.isnan(loaded.participants.loc[3, "train_loss"])


def test_energy_by_device_class_is_per_participant_of_the_class_and_averaged_over_seeds():
    from tests.analysis.fixtures import make_run, participant

    def run(seed, phone_j):
        rows = [participant(1, 0, device="phone", energy_compute_j=phone_j, energy_comm_j=1.0, energy_idle_j=0.0,
                            energy_j=phone_j + 1.0),
                participant(1, 1, device="phone", status="unavailable", energy_compute_j=0.0, energy_comm_j=0.0,
                            energy_idle_j=0.0, energy_j=0.0),
                participant(1, 2, device="laptop", energy_compute_j=10.0, energy_comm_j=2.0, energy_idle_j=1.0,
                            energy_j=13.0)]
        return make_run("fedavg", seed, 3, [dict(flops_total=1, test_accuracy=0.5)], rows)
    table = metrics.energy_by_device([run(0, 3.0), run(1, 5.0)]).set_index("device")
    assert table.loc["phone", "participants"] == 2
    assert table.loc["phone", "energy_j"] == pytest.approx(((3 + 1) / 2 + (5 + 1) / 2) / 2)
    assert table.loc["laptop", "energy_compute_j"] == 10.0 and table.loc["laptop", "energy_j"] == 13.0
    no_figures = make_run("fedavg", 0, 1, [dict(flops_total=1)], [participant(1, 0)])  # energy NaN: unknown
    assert math.isnan(metrics.energy_by_device([no_figures]).iloc[0]["energy_j"])
