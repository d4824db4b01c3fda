"""Bad input: one line naming the field or file, exit code 2, and nothing written under runs/."""

import subprocess
import sys

import pytest
import yaml

from msfusion_ray.cli import main


def _config_file(tmp_path, data):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _fails_cleanly(capsys, tmp_path, argv, expect):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert expect in err
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    return err


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nrounds: [1, 2\n")
    _fails_cleanly(capsys, tmp_path, ["run", str(path)], "broken.yaml:")


def test_unknown_field_is_named(tmp_path, capsys, small_config_dict):
    small_config_dict["training"]["learning_rate"] = 0.1
    err = _fails_cleanly(capsys, tmp_path, ["run", str(_config_file(tmp_path, small_config_dict))],
                         "training.learning_rate")
    assert "unknown field" in err


def test_unknown_strategy_and_profile_are_named(tmp_path, capsys, small_config_dict):
    path = _config_file(tmp_path, small_config_dict)
    _fails_cleanly(capsys, tmp_path, ["run", str(path), "--set", "strategy.name=magic"], "strategy.name")
    _fails_cleanly(capsys, tmp_path, ["run", str(path), "--set", "fleet.devices.toaster=2"], "fleet.devices.toaster")


def test_non_positive_values_are_named(tmp_path, capsys, small_config_dict):
    path = _config_file(tmp_path, small_config_dict)
    _fails_cleanly(capsys, tmp_path, ["run", str(path), "--set", "training.lr=0"], "training.lr")
    _fails_cleanly(capsys, tmp_path, ["run", str(path), "--set", "fleet.memory_scale=-1"], "fleet.memory_scale")


def test_non_positive_profile_memory_names_the_profile_field(tmp_path, capsys, small_config_dict):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "raspberry-pi-4.yaml").write_text(
        "name: raspberry-pi-4\ndescription: x\nmemory_mib: 0\ntrain_gflops: 1\nuplink_mbps: 1\ndownlink_mbps: 1\n")
    path = _config_file(tmp_path, small_config_dict)
    _fails_cleanly(capsys, tmp_path, ["run", str(path), "--set", f"fleet.profiles_dir={profiles}"],
                   "raspberry-pi-4.yaml.memory_mib")


def test_more_participants_than_samples(tmp_path, capsys, small_config_dict):
    path = _config_file(tmp_path, small_config_dict)
    _fails_cleanly(capsys, tmp_path, ["run", str(path), "--set", "data.train_samples=10"], "participants")


def test_missing_data_directory_says_how_to_install(tmp_path, capsys, small_config_dict):
    path = _config_file(tmp_path, small_config_dict)
    err = _fails_cleanly(capsys, tmp_path, ["run", str(path), "--data-dir", str(tmp_path / "none")], "data.data_dir")
    assert "apt-get install dataset-fashion-mnist" in err


def test_a_fleet_that_cannot_train_anything_is_rejected(tmp_path, capsys, small_config_dict):
    path = _config_file(tmp_path, small_config_dict)
    _fails_cleanly(capsys, tmp_path, ["run", str(path), "--set", "fleet.memory_scale=0.00001"], "fleet:")


def test_validate_reports_the_fleet(tmp_path, capsys, small_config_dict):
    assert main(["validate", str(_config_file(tmp_path, small_config_dict))]) == 0
    out = capsys.readouterr().out
    assert "config ok" in out and "raspberry-pi-4" in out and "phone-midrange" in out


def test_validate_shows_the_rates_the_scheme_trains_at(capsys):
    """Co-S2P's rates cover depth as well as width: the phones and Nanos that cannot hold the global model's
    narrowest width-only slice still train its first blocks, and validate says so (it showed 'none')."""
    from msfusion_ray.experiment.config_check import load_config
    from msfusion_ray.experiment.prepare import prepare

    assert main(["validate", "configs/smoke/cos2p.yaml"]) == 0
    shown = {}
    for line in capsys.readouterr().out.splitlines():
        cells = line.split()
        if len(cells) == 5 and cells[0].isdigit():
            shown[int(cells[0])] = cells[4]
    prepared = prepare(load_config("configs/smoke/cos2p.yaml"))
    assert shown == {pid: f"{rate:.3f}" for pid, rate in enumerate(prepared.strategy.rates)}
    assert "none" not in shown.values()


def test_profiles_lists_every_device_class(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in ("raspberry-pi-4", "jetson-nano", "jetson-xavier-nx", "phone-midrange", "laptop-cpu"):
        assert name in out


def test_the_installed_entry_point_exits_2_on_bad_input(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(": : :\n")
    done = subprocess.run([sys.executable, "-m", "msfusion_ray", "validate", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_the_command_line_imports_neither_numpy_torch_nor_ray():
    """Every command starts by importing the command line; what it imports, each command pays (numpy: 0.3 s)."""
    code = "import sys, msfusion_ray.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'ray'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"

