"""The decision on hand-made records: each case with the exact sentence it must produce."""

import math

import pytest

from analysis.decision import decide, decision_markdown, default_target
from analysis.decision_stats import SeedOutcome, interval, judge, objective_stats, quality_objective, seed_table
from tests.analysis.fixtures import make_run, participant

PHONE, LAPTOP = 1000, 4000


def scheme_run(strategy, seed, accuracies, round_s=10.0, flops=1e9, nbytes=1e6, status="ok", peak=500, energy=None):
    """Two participants (a phone, a laptop), every round the same cost; test accuracy per round as given."""
    rounds = [dict(flops_total=flops, bytes_down_total=nbytes / 2, bytes_up_total=nbytes / 2, device_time_s=round_s,
                   test_accuracy=a) for a in accuracies]
    rows = []
    for r in range(1, len(accuracies) + 1):
        for pid, device, cap, share in ((0, "phone", PHONE, 1.0), (1, "laptop", LAPTOP, 0.5)):
            rows.append(participant(r, pid, status=status, device=device, flops=int(flops / 2) if status == "ok" else 0,
                                    bytes_down=int(nbytes / 4), bytes_up=int(nbytes / 4),
                                    device_time_s=round_s * share, mem_cap_bytes=cap,
                                    mem_planned_bytes=2 * cap if status == "oom" else peak,
                                    mem_peak_tensor_bytes=peak if status == "ok" else 0))
    run = make_run(strategy, seed, 2, rounds, rows)
    if energy is not None:
        run.participants["energy_j"] = [energy * (1.0 if d == "phone" else 2.0) for d in run.participants["device"]]
    return run


def outcomes(table):
    """{label: [accuracies per seed]} (or a dict of scheme_run keywords per seed) -> SeedOutcomes on seeds 1.."""
    found = []
    for label, per_seed in table.items():
        for seed, spec in enumerate(per_seed, start=1):
            spec = spec if isinstance(spec, dict) else {"accuracies": spec}
            found.append(SeedOutcome(label, seed, scheme_run(label.lower(), seed, **spec)))
    return found


def lines(decision):
    return {v.objective.key: line for v, line in zip(decision.verdicts, decision.lines)}


def test_a_clear_winner_is_named_with_its_margin_and_separable():
    decision = decide(outcomes({
        "HeteroFL": [[0.6, 0.80], [0.6, 0.82], [0.6, 0.81]],
        "FedRolex": [[0.5, 0.70], [0.5, 0.71], [0.5, 0.69]],
    }), target=0.75)
    said = lines(decision)
    assert said["final"] == ("Final test accuracy: HeteroFL ends most accurate, 0.810 against FedRolex's 0.700 "
                             "(0.110 higher); separable over 3 seeds (paired 95 % interval of its lead 0.085 to "
                             "0.135).")
    assert decision.recommendation == ("Recommendation: HeteroFL. It ends most accurate (0.810), ahead of every other "
                                       "scheme beyond the spread between seeds.")
    row = decision.frame().set_index("key").loc["final"]
    assert (row["winner"], row["runner_up"], bool(row["separable"])) == ("HeteroFL", "FedRolex", True)
    assert row["lead"] == pytest.approx(0.11)


def test_two_schemes_within_the_seed_spread_have_no_separable_winner():
    decision = decide(outcomes({
        "FedBuff": [{"accuracies": [0.82, 0.83], "round_s": 10.0}, {"accuracies": [0.70, 0.80], "round_s": 10.0},
                    {"accuracies": [0.81, 0.81], "round_s": 10.0}],
        "HeteroFL": [{"accuracies": [0.70, 0.80], "round_s": 8.0}, {"accuracies": [0.81, 0.82], "round_s": 8.0},
                     {"accuracies": [0.70, 0.81], "round_s": 8.0}],
    }), target=0.8)
    said = lines(decision)
    assert said["time_to_target"] == ("Device time to test accuracy 0.8: FedBuff leads, 13.3 s against HeteroFL's "
                                      "13.3 s, but FedBuff and HeteroFL reach 0.8 within each other's spread (paired "
                                      "95 % interval of the lead -25.8 to 25.8 s over 3 seeds): no separable winner.")
    assert "but FedBuff and HeteroFL end within each other's spread" in said["final"]
    assert said["final"].endswith(": no separable winner.")
    # both end most accurate within the spread: the cheaper in device time to 0.8 is recommended, with the caveat
    assert decision.recommendation == ("Recommendation: FedBuff. Of the schemes that end most accurate within each "
                                       "other's spread (FedBuff and HeteroFL), it has the least device time to test "
                                       "accuracy 0.8 (13.3 s), though HeteroFL is within its spread there too.")


def test_a_scheme_that_never_reaches_the_target_is_named_not_ranked():
    decision = decide(outcomes({
        "HeteroFL": [[0.76, 0.80], [0.70, 0.81], [0.78, 0.79]],
        "FedRolex": [[0.60, 0.70], [0.60, 0.71], [0.62, 0.69]],
        "MSfusion": [[0.60, 0.76], [0.60, 0.70], [0.60, 0.70]],
    }), target=0.75)
    assert lines(decision)["time_to_target"] == (
        "Device time to test accuracy 0.75: HeteroFL, 13.3 s, the only scheme ranked. Never reached: FedRolex. "
        "Reached on some seeds only: MSfusion (1 of 3 seeds).")
    assert decision.recommendation == (
        "Recommendation: HeteroFL. Of the schemes that end most accurate within each other's spread (HeteroFL and "
        "MSfusion), it is the only one that reached the target on every seed (device time to test accuracy 0.75: "
        "13.3 s).")
    stats = decision.statistics.set_index(["scheme", "objective"])
    assert stats.loc[("FedRolex", "time_to_target"), "with_value"] == 0
    assert decision.pareto["time_to_target"] == ["HeteroFL"]
    assert decision.pareto["device_s"] == ["HeteroFL"]  # FedRolex: as dear, less accurate


def test_a_scheme_refused_for_memory_on_every_device_trained_nothing_and_is_not_ranked():
    decision = decide(outcomes({
        "HeteroFL": [[0.6, 0.80], [0.6, 0.82], [0.6, 0.81]],
        "FedAvg": [{"accuracies": [0.1, 0.1], "status": "oom"}] * 3,
    }), target=0.75, excluded={"MP-SL": "the fleet has no compute nodes"})
    assert decision.notes == ["MP-SL: the fleet has no compute nodes",
                              "FedAvg: every device refused its work for memory on seeds 1, 2 and 3; it trained "
                              "nothing and is not ranked."]
    assert all(v.ranked == ["HeteroFL"] for v in decision.verdicts)
    assert lines(decision)["final"] == "Final test accuracy: HeteroFL, 0.810, the only scheme ranked."
    assert "FedAvg" not in set(decision.per_class["scheme"])


def test_a_failed_seed_is_left_out_and_named():
    found = outcomes({"HeteroFL": [[0.6, 0.80], [0.6, 0.82], [0.6, 0.81]],
                      "FedRolex": [[0.5, 0.70], [0.5, 0.60], [0.5, 0.71]]})
    found[4] = SeedOutcome("FedRolex", 2, None, "RunFailed: the driver actor died")
    decision = decide(found, target=0.75)
    assert decision.notes == ["FedRolex: seed 2 failed (RunFailed: the driver actor died); its figures are over seeds "
                              "1 and 3."]
    assert lines(decision)["final"] == ("Final test accuracy: HeteroFL ends most accurate, 0.810 against FedRolex's "
                                        "0.705 (0.105 higher); separable: the same lead on each of the 2 seeds.")
    assert decision.statistics.set_index(["scheme", "objective"]).loc[("FedRolex", "final"), "values"] == {
        1: 0.70, 3: 0.71}


def test_costs_ties_and_the_weakest_devices():
    decision = decide(outcomes({
        "small-model FedAvg": [{"accuracies": [0.7, 0.75], "round_s": 4.0, "flops": 1e8, "nbytes": 1e5}] * 3,
        "HeteroFL": [{"accuracies": [0.6, 0.80], "round_s": 10.0}, {"accuracies": [0.6, 0.82], "round_s": 10.0},
                     {"accuracies": [0.6, 0.81], "round_s": 10.0}],
        "FedRolex": [{"accuracies": [0.5, 0.70], "round_s": 10.0}] * 3,
    }), target=0.7)
    said = lines(decision)
    assert said["flops"] == ("FLOPs per participant: small-model FedAvg computes the least, 0.10 GFLOP against "
                             "HeteroFL's 1.00 GFLOP (90 % less); separable: the same lead on each of the 3 seeds.")
    assert said["memory_share"] == ("Largest share of a device's memory: small-model FedAvg, HeteroFL and FedRolex "
                                    "tie, 50 % of its cap on every seed.")
    assert decision.weakest == "phone"
    assert decision.class_verdicts[0].ranked[0] == "small-model FedAvg"
    phone = decision.per_class.set_index(["scheme", "device"]).loc[("HeteroFL", "phone")]
    assert phone["device_s"] == pytest.approx(20.0) and phone["memory_share"] == pytest.approx(0.5)
    assert decision.pareto["flops"] == ["small-model FedAvg", "HeteroFL"]  # FedRolex: dearer than small, less accurate


def test_energy_when_the_records_hold_it():
    decision = decide(outcomes({
        "HeteroFL": [{"accuracies": [0.6, 0.80], "energy": 3.0}] * 2,
        "FedRolex": [{"accuracies": [0.5, 0.70], "energy": 1.0}] * 2,
    }), target=0.75)
    assert decision.energy
    said = lines(decision)
    stats = decision.statistics.set_index(["scheme", "objective"])
    assert stats.loc[("HeteroFL", "energy"), "mean"] == pytest.approx((3 + 6) * 2 / 2)  # two rounds, fleet of 2
    assert stats.loc[("HeteroFL", "energy_to_target"), "mean"] == pytest.approx(9.0 * 2 / 2)
    assert said["energy"].startswith("Energy per participant: FedRolex uses the least energy, 3.00 J against "
                                     "HeteroFL's 9.00 J (67 % less)")


def test_the_separability_rule_and_the_default_target():
    assert interval([1.0]) == (1.0, pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True))
    mean, low, high = interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and high - mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert default_target(0.873, "accuracy") == 0.78 and default_target(7.2, "perplexity") == 8.0
    seeds = seed_table(outcomes({"A": [[0.5, 0.8]], "B": [[0.5, 0.7]]}), "accuracy", None)
    verdict = judge(objective_stats(seeds, [quality_objective("accuracy")]), quality_objective("accuracy"))
    assert not verdict.separable and verdict.paired_seeds == 1  # one seed: nothing is separable


def test_decision_markdown_puts_the_recommendation_first_and_states_the_rules():
    decision = decide(outcomes({"HeteroFL": [[0.6, 0.80], [0.6, 0.82]], "FedRolex": [[0.5, 0.70], [0.5, 0.71]]}))
    text = decision_markdown(decision, "Which scheme", ["Tuning: none."])
    assert text.splitlines()[2].startswith("**Recommendation: HeteroFL.")
    assert "Target: test accuracy 0.72 (not given: 90 % of the best final accuracy, rounded down to 0.01)." in text
    assert "95 % t-interval of its paired lead" in text and "- Tuning: none." in text
    assert "| HeteroFL | 2 | 0.810 [0.683, 0.937] (0.800, 0.820) |" in text


def test_the_final_metric_pair_by_pair():
    from analysis.decision_stats import pairwise

    decision = decide(outcomes({
        "HeteroFL": [[0.6, 0.80], [0.6, 0.82], [0.6, 0.81]],
        "MSfusion": [[0.6, 0.60], [0.6, 0.77], [0.6, 0.77]],
        "FedRolex": [[0.5, 0.70], [0.5, 0.71], [0.5, 0.69]],
    }), target=0.75)
    table = pairwise(decision.statistics, decision.verdicts[0].objective, decision.verdicts[0].ranked)
    rows = {(r.better, r.worse): r for r in table.itertuples()}
    assert set(rows) == {("HeteroFL", "MSfusion"), ("HeteroFL", "FedRolex"), ("MSfusion", "FedRolex")}
    ahead = rows[("HeteroFL", "MSfusion")]
    assert ahead.ahead_on == 3 and not ahead.separable  # ahead on every seed, but by 0.20, 0.05, 0.04
    assert rows[("HeteroFL", "FedRolex")].separable
    assert rows[("MSfusion", "FedRolex")].ahead_on == 2 and rows[("MSfusion", "FedRolex")].lead == pytest.approx(
        (0.60 + 0.77 + 0.77 - 0.70 - 0.71 - 0.69) / 3)
    assert "| HeteroFL | MSfusion | 0.097 | -0.126 to 0.319 | 3 of 3 | no |" in decision_markdown(decision, "x")
