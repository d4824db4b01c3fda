"""An installed package works outside the checkout, as a new user would install it: `pip install .` with the lock
(`-c requirements.txt`) into a truly clean virtual environment (its own pip, no shared site-packages: every
dependency comes from the package index, so a dependency the code imports but pyproject.toml does not declare
fails here) gives a `msfusion-ray` that lists the bundled profiles and runs the ready quick start and a one-round
MP-SL run from an empty directory; the wheel carries the configs and device profiles as package data.

Marked `install` (minutes: the dependencies are downloaded, or taken from pip's cache; `pytest -m install`).
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install


def _run(argv, cwd, timeout=600, env=None):
    """`argv` in `cwd`; the installed package is found by the environment itself, never on a PYTHONPATH."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONPATH"}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=venv)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    registry = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # the tests' dead proxy: not pip's
    _run([venv / "bin/python", "-m", "pip", "install", "-q", "--no-warn-script-location", "-c",
          str(ROOT / "requirements.txt"), str(ROOT)], cwd=venv, timeout=1800, env=registry)
    return venv


def test_the_wheel_carries_the_configs_and_device_profiles(tmp_path):
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
         cwd=tmp_path)
    names = zipfile.ZipFile(next(tmp_path.glob("msfusion_ray-*.whl"))).namelist()
    bundled = {n.removeprefix("msfusion_ray/bundled/") for n in names if n.startswith("msfusion_ray/bundled/")}
    for source in [*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("device_profiles/**/*.yaml")]:
        assert source.relative_to(ROOT).as_posix() in bundled
    assert "analysis/plots.py" in names and "msfusion_ray/cli.py" in names


def test_a_fresh_install_runs_the_quick_start_from_an_empty_directory(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run([installed / "bin/python", "-c", "import msfusion_ray; print(msfusion_ray.__file__)"], cwd=empty)
    assert Path(where.strip()).is_relative_to(installed)  # the installed package, not the checkout
    assert "raspberry-pi-4" in _run([installed / "bin/msfusion-ray", "profiles"], cwd=empty)
    out = _run([installed / "bin/msfusion-ray", "run", "quickstart", "--set", "rounds=1"], cwd=empty)
    run_dir = empty / next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("records: "))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["fleet"]["file"] == "device_profiles/fleets/quickstart.yaml"  # the bundled one, by its name
    assert sorted(p.name for p in (run_dir / "records" / "rounds").iterdir()) == ["round-000001.parquet"]
    assert [p.name for p in empty.iterdir()] == ["runs"]
    environment = json.loads((run_dir / "summary.json").read_text())["environment"]
    locked = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    assert environment["packages"]["ray"] == locked["ray"] and environment["packages"]["torch"].startswith("2.13.0")
    assert environment["git_commit"] is None and environment["cpu_cores"] >= 1  # installed: no checkout


def test_a_fresh_install_runs_a_one_round_mpsl_run_from_an_empty_directory(installed, tmp_path):
    """MP-SL imports scipy (its split's integer program): a clean install lacking it failed here."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _run([installed / "bin/msfusion-ray", "run", "smoke/mpsl", "--set", "rounds=1", "--no-plots"], cwd=empty)
    assert "run smoke-mpsl" in out or "1 rounds" in out
    (run_dir,) = (empty / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["strategy"] == "mpsl" and summary["rounds_completed"] == 1
