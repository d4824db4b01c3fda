"""The fair tuning protocol on a toy objective: equal budgets, the best validation setting wins, winners run on
fresh seeds; and the protocol's file is checked like every other input."""

import copy
import json

import pytest
import yaml

from msfusion_ray.app.tuning import read_tuning, run_protocol, scheme_settings
from msfusion_ray.errors import UserInputError
from tests.conftest import SMALL_CONFIG


def _tuning_file(tmp_path, **extra):
    data = {
        "name": "toy", "output_dir": str(tmp_path / "sweeps"), "base": copy.deepcopy(SMALL_CONFIG), "budget": 3,
        "space": {"training.lr": [0.01, 0.05, 0.1, 0.2]},
        "schemes": [
            {"name": "plain", "set": {"strategy.name": "fedavg"}},
            {"name": "narrow", "set": {"strategy.name": "small_fedavg"},
             "space": {"strategy.params.rate": [0.25, 0.5, 1.0]}},
        ],
        "seeds": [7, 8], **extra,
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def toy_validation(config):
    """A toy objective peaked at lr 0.05 and (for the narrow scheme) rate 0.5."""
    rate = config.strategy.params.get("rate", 0.5)
    return 0.9 - (config.training.lr - 0.05) ** 2 - (rate - 0.5) ** 2


class ToyRunner:
    def __init__(self, metric="accuracy", sign=1.0):
        self.metric, self.sign, self.stages = metric, sign, []

    def __call__(self, plan, select):
        self.stages.append(plan)
        return {c.id: self.sign * toy_validation(c.config) for c in plan.cells}, self.metric


def test_every_scheme_gets_the_same_budget_and_its_best_validation_setting_wins(tmp_path):
    plan = read_tuning(_tuning_file(tmp_path))
    runner = ToyRunner()
    result = run_protocol(plan, runner)
    tune, final = runner.stages
    assert all(c.config.seed == 0 for c in tune.cells)  # tuned on the tuning seed only
    by_scheme = result["schemes"]
    assert by_scheme["plain"]["tuning_runs"] == by_scheme["narrow"]["tuning_runs"] == 3
    for name, scheme in by_scheme.items():
        best = max(scheme["trials"], key=lambda t: t["score"])
        assert scheme["winner"] == best["values"] and scheme["winner_score"] == best["score"]
    assert by_scheme["plain"]["winner"] == {"training.lr": 0.05} or 0.05 not in [
        t["values"]["training.lr"] for t in by_scheme["plain"]["trials"]]
    # the winners, and only they, run on every fresh seed
    assert sorted((c.config.strategy.name, c.config.seed) for c in final.cells) == [
        ("fedavg", 7), ("fedavg", 8), ("small_fedavg", 7), ("small_fedavg", 8)]
    for cell in final.cells:
        scheme = "plain" if cell.config.strategy.name == "fedavg" else "narrow"
        assert cell.config.training.lr == by_scheme[scheme]["winner"]["training.lr"]
        assert cell.id in by_scheme[scheme]["final_cells"]
    assert json.loads((tmp_path / "sweeps" / "toy" / "tuning.json").read_text()) == result


def test_a_budget_above_the_space_tries_all_of_it_and_draws_are_seeded(tmp_path):
    plan = read_tuning(_tuning_file(tmp_path, budget=5))
    assert len(scheme_settings(plan.config, 0)) == 4  # the whole lr space: 4 settings
    narrow = scheme_settings(plan.config, 1)
    assert len(narrow) == 5  # 5 of the 12 (lr x rate), every learning rate among them
    assert {s["training.lr"] for s in narrow} == {0.01, 0.05, 0.1, 0.2}
    assert len({tuple(s.items()) for s in narrow}) == 5
    again = read_tuning(_tuning_file(tmp_path, budget=5))
    assert [t.values for t in again.trials] == [t.values for t in plan.trials]


def test_perplexity_is_picked_from_below(tmp_path):
    plan = read_tuning(_tuning_file(tmp_path, budget=12))
    result = run_protocol(plan, ToyRunner("perplexity", sign=-1.0))
    assert result["schemes"]["narrow"]["winner"] == {"training.lr": 0.05, "strategy.params.rate": 0.5}
    assert result["metric_direction"] == "lower"


def test_trials_without_a_validation_value_rank_last(tmp_path):
    plan = read_tuning(_tuning_file(tmp_path, budget=4))

    def runner(sweep, select):
        scores = {c.id: toy_validation(c.config) for c in sweep.cells}
        scores.update({c.id: None for c in sweep.cells if c.config.training.lr == 0.05})  # the best ones have no value
        return scores, "accuracy"

    assert run_protocol(plan, runner)["schemes"]["plain"]["winner"] == {"training.lr": 0.01}  # next best


def test_bad_protocols_are_one_line_errors(tmp_path):
    with pytest.raises(UserInputError, match="budget"):
        read_tuning(_tuning_file(tmp_path, budget=0))
    with pytest.raises(UserInputError, match="seed"):
        read_tuning(_tuning_file(tmp_path, space={"seed": [1, 2]}))
    with pytest.raises(UserInputError, match="repeated"):
        read_tuning(_tuning_file(tmp_path, schemes=[{"name": "a"}, {"name": "a"}]))


def test_the_tune_command_runs_both_stages_and_reports_the_winners(ray_session, tmp_path, capsys):
    """A real protocol on the shared cluster: two learning rates for one scheme, the winner on one fresh seed."""
    from analysis.tuning import tuning_report
    from msfusion_ray.cli import main

    base = copy.deepcopy(SMALL_CONFIG)
    base["data"]["validation_samples"] = 100
    path = _tuning_file(tmp_path, base=base, budget=2, space={"training.lr": [0.01, 0.1]}, seeds=[5],
                        schemes=[{"name": "small", "set": {"strategy.name": "small_fedavg"}}])
    assert main(["tune", str(path), "--max-parallel", "2"]) == 0
    record = json.loads((tmp_path / "sweeps" / "toy" / "tuning.json").read_text())
    scheme = record["schemes"]["small"]
    assert scheme["tuning_runs"] == 2 and all(0 <= t["score"] <= 1 for t in scheme["trials"])
    assert scheme["winner_score"] == max(t["score"] for t in scheme["trials"])
    report = tuning_report(tmp_path / "sweeps" / "toy")
    assert "| small | 2 |" in report and "| small | 1 |" in report  # the winners table, then the final table
    assert "final runs (seeds 5)" in capsys.readouterr().out


def test_a_stage_with_a_failed_cell_stops_before_any_winner(tmp_path, monkeypatch):
    """A cell the machine killed says nothing about its setting: the protocol stops and asks for --retry-failed."""
    from msfusion_ray.app import sweep as sweeps
    from msfusion_ray.app.tuning import StageFailed, sweep_stage_runner

    def fake_run_sweep(plan, prepared, status, todo, *args, **kwargs):
        for index, cell_id in enumerate(todo):
            status.set(cell_id, status="failed" if index == 0 else "complete")
        return status

    monkeypatch.setattr(sweeps, "run_sweep", fake_run_sweep)
    plan = read_tuning(_tuning_file(tmp_path, budget=2))
    with pytest.raises(StageFailed, match="--retry-failed"):
        run_protocol(plan, sweep_stage_runner(show_progress=False))
    assert not (tmp_path / "sweeps" / "toy" / "tuning.json").exists()
