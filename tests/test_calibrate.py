"""`calibrate`: it writes a profile that loads like any other and that a config's fleet may name (validate accepts
it), keeps this node's copy for enforced runs, and refuses an output it cannot write before measuring anything."""

import os

import pytest
import yaml

from msfusion_ray.cli import main
from msfusion_ray.devices.enforcement import node_cache_path
from msfusion_ray.devices.profile import load_profile


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # never this machine's own calibration
    return tmp_path / "cache"


def test_calibrate_writes_a_profile_that_a_fleet_can_name(tmp_path, cache, small_config_dict, capsys, one_thread):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    out = profiles / "my-node.yaml"
    assert main(["calibrate", "--quick", "--no-throttle", "--seconds", "0.05", "--out", str(out)]) == 0
    profile = load_profile(out)
    assert profile.name == "my-node" and profile.timing is not None and profile.timing.threads == 1
    assert profile.train_gflops == profile.timing.reference_gflops > 0
    text = out.read_text()
    assert "# Calibrated by `python -m msfusion_ray calibrate`" in text and "load average" in text
    assert "throttle not measured: not asked (--no-throttle)" in text
    if os.geteuid() == 0:  # whole tasks in control groups: what a task's process needs against its footprint
        assert profile.memory_need is not None and set(profile.memory_need.families) == {"mlp", "cnn"}
        assert profile.memory_need.headroom == 1.25 and "# Workloads (family, width, batch, rate)" in text
    assert load_profile(node_cache_path()).timing == profile.timing and str(cache) in str(node_cache_path())
    config = {**small_config_dict, "fleet": {"devices": {"my-node": 2}, "profiles_dir": str(profiles)}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["validate", str(path)]) == 0
    assert "my-node" in capsys.readouterr().out


@pytest.mark.parametrize("argv, named", [
    (["--out", "{tmp}/missing/node.yaml"], "--out"),
    (["--out", "{tmp}/node.txt"], "--out"),
    (["--out", "{tmp}/a node.yaml"], "--out"),
    (["--out", "{tmp}/node.yaml", "--threads", "0"], "--threads"),
    (["--out", "{tmp}/node.yaml", "--address", "127.0.0.1:1"], "--resource"),  # the one missing
])
def test_calibrate_refuses_what_it_cannot_do_before_measuring(tmp_path, cache, capsys, argv, named):
    code = main(["calibrate", "--quick", *[a.format(tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {named}")
    assert not list(tmp_path.glob("*.yaml")) and not cache.exists()
