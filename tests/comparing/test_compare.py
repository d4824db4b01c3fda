"""The compare command: bad input stops it before anything is written or started; the protocol tunes every scheme
alike, stops hopeless tuning runs at the rung, runs the winners on the seeds, records a failed run without
stopping, and a second sitting runs nothing twice. The runs themselves are faked here (records written by hand);
test_compare_ray.py runs a real one."""

import contextlib
import copy
import json
import types

import pytest
import yaml

from msfusion_ray.cli import main
from msfusion_ray.app import compare as protocol
from msfusion_ray.records import ParticipantRoundRow, RecordWriter, RoundRow
from tests.conftest import SMALL_CONFIG


def _config(tmp_path, **changes):
    data = copy.deepcopy(SMALL_CONFIG)
    data.update(rounds=4, output_dir=str(tmp_path / "runs"))
    data["data"]["validation_samples"] = 100
    data["runtime"]["eval_every"] = 1
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        (data[section] if section else data)[name] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray fails the test."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.mark.parametrize("argv, expect", [
    (["--target", "1.5"], "--target: an accuracy must be in (0, 1] (got 1.5)"),
    (["--target", "0"], "--target: an accuracy must be in (0, 1] (got 0)"),
    (["--schemes", "heterofl,magic"], "--schemes: unknown scheme 'magic'"),
    (["--seeds", "0"], "--seeds: must be >= 1 (got 0)"),
    (["--budget", "0"], "--budget: must be >= 1 (got 0)"),
    (["--set", "fleet.memory_scale=0.00001"], "no scheme can train this model on this fleet"),
])
def test_bad_input_is_one_line_exit_2_nothing_written_no_ray(tmp_path, capsys, no_ray, argv, expect):
    path = _config(tmp_path)
    out = tmp_path / "out"
    assert main(["compare", str(path), "--output-dir", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expect in err
    assert not out.exists() and not (tmp_path / "runs").exists()


def _accuracy(config, round_idx):
    """A toy learning curve: best at lr 0.05, HeteroFL above small-model FedAvg, seed 2 harder."""
    lr, scheme = config.training.lr, config.strategy.name
    base = 0.5 + (0.1 if scheme == "heterofl" else 0.0) - 2 * abs(lr - 0.05) - 0.02 * (config.seed == 2)
    if config.strategy.params.get("weighting") == "count":
        base += 0.01
    return round(base + 0.05 * round_idx, 4)


def _write_rounds(run_dir, config, first, last):
    writer = RecordWriter(run_dir)
    for round_idx in range(first, last + 1):
        rows = [ParticipantRoundRow("r", round_idx, pid, device, 0, "ok", flops=1000, bytes_down=10, bytes_up=10,
                                    device_time_s=1.0 + pid, mem_cap_bytes=1000, mem_peak_tensor_bytes=400)
                for pid, device in enumerate(["raspberry-pi-4", "raspberry-pi-4", "phone-midrange"])]
        accuracy = _accuracy(config, round_idx)
        writer.write_round(rows, RoundRow("r", round_idx, config.strategy.name, flops_total=3000, bytes_down_total=30,
                                          bytes_up_total=30, device_time_s=3.0, vt_start=3.0 * (round_idx - 1),
                                          vt_end=3.0 * round_idx, test_accuracy=accuracy, val_accuracy=accuracy))


class FakeSweeps:
    """Stands in for the sweep runner: each cell it is asked to run gets records up to its config's rounds
    (continuing where a copied run stopped), or fails if its setting is doomed."""

    def __init__(self, doomed=lambda cell: False):
        self.ran, self.doomed = [], doomed

    def run_sweep(self, plan, prepared, status, todo, *args, **kwargs):
        by_id = {c.id: c for c in plan.cells}
        for cell_id in todo:
            cell, run_dir = by_id[cell_id], plan.directory / "cells" / cell_id
            self.ran.append(f"{plan.directory.name}/{cell_id}")
            if self.doomed(cell):
                status.set(cell_id, status="failed", error="RunFailed: the driver actor died")
                continue
            done = 0
            if (run_dir / "config.yaml").is_file():  # a copy of the run stopped at its rung
                done = len(list((run_dir / "records" / "rounds").glob("*.parquet")))
            else:
                run_dir.mkdir(parents=True)
                (run_dir / "config.yaml").write_text(cell.config.to_yaml())
            _write_rounds(run_dir, cell.config, done + 1, cell.config.rounds)
            (run_dir / "summary.json").write_text(json.dumps({"strategy": cell.config.strategy.name,
                                                              "participants": 3, "status": "complete"}))
            status.set(cell_id, status="complete", rounds_completed=cell.config.rounds)
        return status


@pytest.fixture
def fake(monkeypatch):
    sweeps = FakeSweeps()
    monkeypatch.setattr(protocol, "run_sweep", sweeps.run_sweep)
    monkeypatch.setattr(protocol, "prepare_cells", lambda plan, todo, cache: {cell: None for cell in todo})
    monkeypatch.setattr(protocol, "Launcher", FakeLauncher)
    return sweeps


class FakeLauncher(contextlib.AbstractContextManager):
    """No cluster: the faked sweeps run nothing on one."""

    lines = types.SimpleNamespace(to=lambda handler: None)

    def __exit__(self, *exc):
        return None

    def start_cluster(self, runtime, configs):
        pass


def _compare(tmp_path, *argv):
    return main(["compare", str(_config(tmp_path)), "--schemes", "heterofl,small_fedavg", "--seeds", "2",
                 "--output-dir", str(tmp_path / "out"), *argv])


def test_tuning_stops_hopeless_runs_at_the_rung_and_a_second_sitting_runs_nothing(tmp_path, fake, capsys):
    assert _compare(tmp_path, "--target", "0.7") == 0
    directory = tmp_path / "out" / "test-compare"
    record = json.loads((directory / "compare.json").read_text())
    hetero, small = record["schemes"]["HeteroFL"], record["schemes"]["small-model FedAvg"]
    # three tuning runs each, first to their rung (2 of 4 rounds): the one below its scheme's median stops there
    assert [t["values"]["training.lr"] for t in small["trials"]] == [0.01, 0.025, 0.05]
    assert [t["stopped"] for t in small["trials"]] == [True, False, False]
    assert [t["rung_score"] for t in small["trials"]] == [0.52, 0.55, 0.6]
    assert small["trials"][0]["cell"].startswith("tune/") and small["trials"][2]["cell"].startswith("tune-rest/")
    assert small["winner"] == {"training.lr": 0.05} and small["winner_score"] == 0.7
    assert hetero["winner"]["training.lr"] == 0.05
    ran = list(fake.ran)
    assert sum(r.startswith("tune/") for r in ran) == 6 and sum(r.startswith("tune-rest/") for r in ran) == 4
    assert sum(r.startswith("final/") for r in ran) == 4
    # a continued run went on from its rung: rounds 1-2 copied, 3-4 its own
    rest = directory / "tune-rest" / "cells"
    assert all(len(list((d / "records" / "rounds").glob("*.parquet"))) == 4 for d in rest.iterdir())
    assert (directory / "decision.md").read_text().splitlines()[2] == (
        "**Recommendation: HeteroFL. It ends most accurate (0.790), ahead of every other scheme beyond the spread "
        "between seeds.**")
    out = capsys.readouterr().out
    assert "Recommendation: HeteroFL." in out and "report: " in out
    html = (directory / "report" / "report.html").read_text()
    first_screen = html[:html.index("<figure")]  # the decision comes before any figure
    assert "<h2>Recommendation: HeteroFL. It ends most accurate" in first_screen
    assert "Final test accuracy: HeteroFL ends most accurate" in first_screen

    fake.ran.clear()
    assert _compare(tmp_path, "--target", "0.7", "--no-report") == 0
    assert fake.ran == []  # every cell of every stage finished: nothing runs twice


def test_a_failed_final_run_is_recorded_and_the_decision_names_it(tmp_path, fake, capsys):
    fake.doomed = lambda cell: cell.config.seed == 2 and cell.config.strategy.name == "small_fedavg"
    assert _compare(tmp_path, "--budget", "1", "--no-report") == 1  # decision.md is written; exit 1: a run failed
    directory = tmp_path / "out" / "test-compare"
    assert not (directory / "tune").exists()  # one setting per scheme: no tuning runs
    text = (directory / "decision.md").read_text()
    assert ("- small-model FedAvg: seed 2 failed (RunFailed: the driver actor died); its figures are over seed 1."
            in text)
    assert "--retry-failed" in capsys.readouterr().err
    assert main(["report", str(directory)]) == 0  # `report DIR` draws the decision from the records
    first_screen = (directory / "report" / "report.html").read_text().split("<figure", 1)[0]
    assert "small-model FedAvg: seed 2 failed (RunFailed: the driver actor died)" in first_screen
    assert {p.name for p in (directory / "report").glob("decision_*.png")} == {
        "decision_pareto.png", "decision_time_to_target.png", "decision_device_classes.png"}
    fake.doomed = lambda cell: False
    fake.ran.clear()
    assert _compare(tmp_path, "--budget", "1", "--retry-failed", "--no-report") == 0
    assert fake.ran == ["final/003-name=small_fedavg_params=-_seed=2"]


def test_early_stopping_can_be_turned_off(tmp_path, fake):
    assert _compare(tmp_path, "--no-early-stop", "--no-report") == 0
    directory = tmp_path / "out" / "test-compare"
    assert not (directory / "tune-rest").exists()
    assert all(len(list((d / "records" / "rounds").glob("*.parquet"))) == 4
               for d in (directory / "tune" / "cells").iterdir())
    record = json.loads((directory / "compare.json").read_text())
    assert record["early_stop"]["on"] is False and "Off with --no-early-stop" in record["early_stop"]["rule"]


def test_a_cell_that_fails_its_checks_stops_the_comparison_before_anything_is_written(tmp_path, fake, monkeypatch,
                                                                                     capsys):
    from msfusion_ray.errors import UserInputError

    def refuse(plan, todo, cache):
        raise UserInputError(f"{plan.source}: cell {todo[0]}: fleet", "20 participants need at least 160 samples")

    monkeypatch.setattr(protocol, "prepare_cells", refuse)
    assert _compare(tmp_path, "--budget", "1", "--no-report") == 2
    assert "need at least 160 samples" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and fake.ran == []


def test_every_scheme_is_handed_the_same_participant_tasks_and_quick_sizes_the_runs_down(tmp_path):
    from msfusion_ray.app.compare_plan import CompareOptions, budget_keys, plan_compare
    from msfusion_ray.experiment.config_check import load_config

    config = load_config(_config(tmp_path, rounds=10, **{"runtime.eval_every": 2}))
    plan = plan_compare(config, CompareOptions(schemes=["heterofl", "fedbuff", "fedasync"]), "exp.yaml")
    assert plan.sync_tasks() == 3 and plan.tuning.config.space == {"training.lr": [0.01, 0.025, 0.05]}
    cases = {s.name: s.set for s in plan.tuning.config.schemes}
    assert budget_keys(plan, cases["HeteroFL"]) == cases["HeteroFL"]  # 10 rounds of 3 tasks
    assert cases["FedBuff"]["strategy.params"] == {"width": "fit"}  # prefix slices: the model has width tags
    fedbuff = budget_keys(plan, {**cases["FedBuff"], "strategy.params.buffer_size": 4})
    assert (fedbuff["rounds"], fedbuff["runtime.eval_every"]) == (8, 2)  # round(30 / 4) aggregations of 4
    fedasync = budget_keys(plan, cases["FedAsync"])
    assert (fedasync["rounds"], fedasync["runtime.eval_every"]) == (30, 6)  # one update each
    quick = plan_compare(config, CompareOptions(quick=True), "exp.yaml")
    assert (quick.config.rounds, quick.config.data.train_samples, quick.config.data.validation_samples) == (4, 600, 100)
    assert quick.tuning.config.budget == 1 and quick.tuning.config.seeds == [1, 2, 3]
    assert {len([t for t in quick.tuning.trials if t.scheme == s.name]) for s in quick.tuning.config.schemes} == {1}
    assert quick.directory.name == "test-compare-quick"


def test_a_perplexity_target_is_at_least_one():
    from msfusion_ray.app.compare_plan import check_target
    from msfusion_ray.errors import UserInputError

    check_target(8.0, "perplexity")
    check_target(1.0, "accuracy")
    with pytest.raises(UserInputError, match="a perplexity is at least 1"):
        check_target(0.5, "perplexity")
