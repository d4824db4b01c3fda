"""Sweeps: the grid, validation before anything is written, and a real 2x2 sweep on the shared Ray cluster that
records a cell failing at run time, is resumed without re-running finished cells, and retries the failed ones."""

import copy
import dataclasses
import json
import shutil

import pytest
import yaml

from msfusion_ray.app.sweep import DataCache, auto_parallel, prepare_cells, run_sweep
from msfusion_ray.app.sweep_plan import cell_name, check_directory, grid_points, load_sweep, load_sweep_dir
from msfusion_ray.app.sweep_status import SweepStatus, create_directory
from msfusion_ray.cli import main
from msfusion_ray.devices.profile import default_profiles_dir
from msfusion_ray.errors import UserInputError
from tests.conftest import SMALL_CONFIG


def _sweep_file(tmp_path, grid, base=None, **extra):
    data = {"name": "grid", "output_dir": str(tmp_path / "sweeps"), "base": base or copy.deepcopy(SMALL_CONFIG),
            "grid": grid, **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_grid_points_are_the_product_first_key_slowest():
    points = grid_points({"strategy.name": ["a", "b"], "seed": [0, 1, 2]})
    assert len(points) == 6
    assert points[:4] == [{"strategy.name": "a", "seed": 0}, {"strategy.name": "a", "seed": 1},
                          {"strategy.name": "a", "seed": 2}, {"strategy.name": "b", "seed": 0}]
    assert cell_name(7, {"fleet.file": "device_profiles/fleets/quickstart.yaml", "training.lr": 0.01}) == (
        "007-file=quickstart_lr=0.01")


def test_cells_get_their_values_and_share_one_output_tree(tmp_path):
    plan = load_sweep(_sweep_file(tmp_path, {"strategy.name": ["fedavg", "small_fedavg"], "training.lr": [0.1, 0.2]}),
                      ["rounds=3"])
    assert [c.id for c in plan.cells] == ["000-name=fedavg_lr=0.1", "001-name=fedavg_lr=0.2",
                                          "002-name=small_fedavg_lr=0.1", "003-name=small_fedavg_lr=0.2"]
    last = plan.cells[3].config
    assert (last.strategy.name, last.training.lr, last.rounds) == ("small_fedavg", 0.2, 3)
    assert plan.directory == tmp_path / "sweeps" / "grid"
    assert {c.config.output_dir for c in plan.cells} == {str(tmp_path / "sweeps" / "grid" / "cells")}


def test_cases_are_crossed_with_the_grid(tmp_path):
    cases = [{"strategy.name": "small_fedavg"},
             {"strategy.name": "fedavg", "fleet.memory_scale": 1.0}]
    plan = load_sweep(_sweep_file(tmp_path, {"seed": [0, 1]}, cases=cases))
    assert [(c.config.strategy.name, c.config.fleet.memory_scale, c.config.seed) for c in plan.cells] == [
        ("small_fedavg", 0.001, 0), ("small_fedavg", 0.001, 1), ("fedavg", 1.0, 0), ("fedavg", 1.0, 1)]
    with pytest.raises(UserInputError, match="also in the grid"):
        load_sweep(_sweep_file(tmp_path, {"seed": [0]}, cases=[{"seed": 3}]))


def test_a_base_config_given_by_path(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(SMALL_CONFIG))
    plan = load_sweep(_sweep_file(tmp_path, {"seed": [1, 2]}, base="base.yaml"))
    assert [c.config.seed for c in plan.cells] == [1, 2] and plan.config.base["name"] == "test"


@pytest.mark.parametrize("grid, field", [
    ({"training.learning_rate": [0.1]}, "training.learning_rate"),
    ({"training.lr": [0.1, -1.0]}, "training.lr"),
    ({"runtime.num_cpus": [1, 2]}, "grid.runtime.num_cpus"),
    ({"seed": []}, "grid.seed"),
    ({"seed": [1, 1]}, "grid.seed"),
    ({"strategy.name": ["fedavg", "magic"]}, "strategy.name"),
    ({"fleet.devices.toaster": [1]}, "fleet.devices.toaster"),
])
def test_bad_input_names_the_field_exits_2_and_writes_nothing(tmp_path, capsys, grid, field):
    code = main(["sweep", str(_sweep_file(tmp_path, grid))])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and field in err
    assert not (tmp_path / "sweeps").exists()


def test_an_unknown_sweep_field_and_a_missing_base_are_named(tmp_path, capsys):
    assert main(["sweep", str(_sweep_file(tmp_path, {"seed": [0]}, max_paralel=2))]) == 2
    assert "max_paralel" in capsys.readouterr().err
    assert main(["sweep", str(_sweep_file(tmp_path, {"seed": [0]}, base="nowhere.yaml"))]) == 2
    assert "nowhere.yaml" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def test_a_directory_holding_another_sweep_is_not_reused(tmp_path):
    plan = load_sweep(_sweep_file(tmp_path, {"seed": [0, 1]}))
    create_directory(plan)
    check_directory(load_sweep(_sweep_file(tmp_path, {"seed": [0, 1]}, max_parallel=1)))  # same sweep
    with pytest.raises(UserInputError, match="different sweep"):
        check_directory(load_sweep(_sweep_file(tmp_path, {"seed": [0, 2]})))


def test_parallel_cells_are_bounded_by_cpus_and_memory():
    gib = 2**30
    assert auto_parallel(cpus=2, memory_bytes=16 * gib, actors_per_cell=3) == 2
    assert auto_parallel(cpus=16, memory_bytes=16 * gib, actors_per_cell=9) == 2  # 12.8 GiB / 4.4 GiB a cell
    assert auto_parallel(cpus=2, memory_bytes=gib, actors_per_cell=9) == 1


def _status(plan):
    return json.loads((plan.directory / "status.json").read_text())["cells"]


def _run(plan, retry_failed=False, before_running=lambda prepared: None):
    """What the sweep command does, with a hook between validation and running (given the prepared cells)."""
    todo = SweepStatus.load_or_new(plan).to_run(retry_failed)
    prepared = prepare_cells(plan, todo, DataCache())
    status = create_directory(plan)
    before_running(prepared)
    run_sweep(plan, prepared, status, todo, max_parallel=2, show_progress=False)
    return todo


def _doom(prepared, marker):
    """Cells whose profile directory is `marker` get a model for other inputs than their data's (3x32x32 images
    instead of 1x28x28): they pass validation and fail at run time, when the hosts train and evaluate it."""
    from msfusion_ray.models import DataShape, build_family

    for cell_id, cell in list(prepared.items()):
        if cell.config.fleet.profiles_dir == marker:
            wrong = build_family(cell.config.model.name, DataShape((3, 32, 32), 10), cell.config.model.width)
            prepared[cell_id] = dataclasses.replace(cell, family=wrong)


def test_sweep_runs_records_a_failed_cell_and_resumes_without_rerunning(ray_session, tmp_path):
    doomed = tmp_path / "profiles"
    shutil.copytree(default_profiles_dir(), doomed)
    base = copy.deepcopy(SMALL_CONFIG)
    base["runtime"]["hosts"] = 1  # fewer actors to start and fewer rounds: the test is about the sweep
    base["rounds"] = 1
    path = _sweep_file(tmp_path, {"strategy.name": ["fedavg", "small_fedavg"],
                                  "fleet.profiles_dir": [str(default_profiles_dir()), str(doomed)]}, base=base)
    plan = load_sweep(path)
    assert len(_run(plan, before_running=lambda prepared: _doom(prepared, str(doomed)))) == 4
    cells = _status(plan)
    complete = [k for k, c in cells.items() if c["status"] == "complete"]
    failed = [k for k, c in cells.items() if c["status"] == "failed"]
    assert complete == ["000-name=fedavg_profiles_dir=device_profiles", "002-name=small_fedavg_profiles_dir="
                        "device_profiles"]
    assert len(failed) == 2
    for cell_id in failed:
        error = cells[cell_id]["error"]
        assert "the driver actor raised" in error and "\n" not in error
    for cell_id in complete:
        summary = json.loads((plan.directory / "cells" / cell_id / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["rounds_completed"] == 1
        assert cells[cell_id]["rounds_completed"] == 1 and cells[cell_id]["final_accuracy"] is not None
    stamps = {k: (plan.directory / "cells" / k / "summary.json").stat().st_mtime_ns for k in complete}

    # running the same sweep again: nothing to do (finished cells stay, failed ones wait for --retry-failed)
    again = load_sweep_dir(plan.directory)
    assert _run(again) == []
    assert sorted(_run(again, retry_failed=True)) == sorted(failed)  # prepared anew: the right model this time
    assert all(c["status"] == "complete" and c["error"] is None for c in _status(plan).values())
    assert {k: (plan.directory / "cells" / k / "summary.json").stat().st_mtime_ns for k in complete} == stamps


def test_a_finished_cell_keeps_its_last_accuracy_or_perplexity():
    from msfusion_ray.app.sweep_status import cell_summary

    history = [{"round": 1, "perplexity": 9.0}, {"round": 2, "perplexity": 7.5},
               {"round": 3, "perplexity": float("nan")}]
    kept = cell_summary({"rounds_completed": 3, "final_accuracy": None, "wall_s": 2.0, "history": history})
    assert kept["final_perplexity"] == 7.5 and kept["final_accuracy"] is None and kept["rounds_completed"] == 3
    assert cell_summary({"final_accuracy": 0.5, "history": [{"perplexity": None}]})["final_perplexity"] is None
