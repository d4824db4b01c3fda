"""Files a config names are found in the current directory, then beside the config, then among the bundled ones;
a user's file is anchored to an absolute path for every process of the run, a bundled one keeps its name."""

import yaml

from msfusion_ray.cli import main
from msfusion_ray.experiment.config_check import load_config
from msfusion_ray.paths import bundled_root, find, find_config


def test_ready_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("quickstart") == bundled_root() / "configs" / "quickstart.yaml"
    assert find_config("fmnist/resnet18_hetero8.yaml") == bundled_root() / "configs/fmnist/resnet18_hetero8.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quickstart.yaml").write_text("name: mine\n")
    assert find_config("quickstart").resolve() == (tmp_path / "configs" / "quickstart.yaml").resolve()  # the user's first


def test_a_users_files_come_first_and_are_anchored_a_bundled_one_keeps_its_name(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "fleets").mkdir(parents=True)
    (project / "fleets" / "mine.yaml").write_text("name: mine\ndevices: {laptop-cpu: 2}\n")
    config = yaml.safe_load((bundled_root() / "configs" / "quickstart.yaml").read_text())
    config["fleet"] = {"file": "fleets/mine.yaml"}
    (project / "exp.yaml").write_text(yaml.safe_dump(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(project / "exp.yaml").fleet.file == str((project / "fleets" / "mine.yaml").resolve())
    (elsewhere / "fleets").mkdir()
    (elsewhere / "fleets" / "mine.yaml").write_text("name: here\ndevices: {laptop-cpu: 1}\n")
    assert load_config(project / "exp.yaml").fleet.file == str((elsewhere / "fleets" / "mine.yaml").resolve())
    bundled = load_config(find_config("quickstart"))
    assert bundled.fleet.file == "device_profiles/fleets/quickstart.yaml"
    assert find(bundled.fleet.file) == bundled_root() / "device_profiles/fleets/quickstart.yaml"


def test_validate_and_profiles_work_from_an_empty_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["profiles"]) == 0 and "jetson-nano" in capsys.readouterr().out
    assert main(["validate", "quickstart", "--set", "data.train_samples=600"]) == 0
    assert "config ok: quickstart" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
