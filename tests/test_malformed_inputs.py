"""Every kind of malformed input, through the CLI: one line naming the field or file, exit code 2, nothing written.

Each case builds its bad input under tmp_path, then runs the command; the whole of tmp_path is compared before and
after, so a case that wrote anything (a run directory, a half file) fails.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from msfusion_ray.cli import main
from tests.conftest import FASHION_MNIST_DIR, SMALL_CONFIG

PROJECT = Path(__file__).resolve().parents[1]
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _config(tmp: Path, **changes) -> dict:
    data = yaml.safe_load(yaml.safe_dump(SMALL_CONFIG))
    data["output_dir"] = str(tmp / "runs")
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return data


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _config_file(tmp: Path, **changes) -> str:
    return str(_write(tmp / "exp.yaml", yaml.safe_dump(_config(tmp, **changes))))


def _profiles(tmp: Path, name: str, content: str | bytes) -> Path:
    directory = tmp / "profiles"
    shutil.copytree(PROJECT / "device_profiles", directory, ignore=shutil.ignore_patterns("fleets"))
    _write(directory / f"{name}.yaml", content)
    return directory


def _fmnist_dir(tmp: Path, make: Callable[[str, bytes], bytes]) -> Path:
    directory = tmp / "fmnist"
    for stem in FMNIST_FILES:
        raw = gzip.decompress((FASHION_MNIST_DIR / f"{stem}.gz").read_bytes())
        _write(directory / f"{stem}.gz", make(stem, raw))
    return directory


def _cut(data: bytes) -> bytes:
    return data[: len(data) * 9 // 10]


def _cifar_dir(tmp: Path, batch: bytes) -> Path:
    for name in CIFAR_FILES:
        _write(tmp / "cifar" / "cifar-10-batches-py" / name, batch)
    return tmp / "cifar"


def _cifar_run(tmp: Path, batch: bytes) -> list[str]:
    return ["run", _config_file(tmp, **{"data.dataset": "cifar10", "data.data_dir": str(_cifar_dir(tmp, batch))})]


def _pi_profile(memory_mib: str) -> str:
    return (f"name: raspberry-pi-4\ndescription: x\nmemory_mib: {memory_mib}\ntrain_gflops: 5\nuplink_mbps: 20\n"
            f"downlink_mbps: 100\n")


def _run_dir_with_config(tmp: Path, content: bytes) -> str:
    _write(tmp / "runs" / "old-run" / "config.yaml", content)
    return str(tmp / "runs" / "old-run")


@dataclass
class Case:
    kind: str
    argv: Callable[[Path], list[str]]
    expect: str  # in the one line


CASES = [
    Case("config not UTF-8", lambda t: ["run", str(_write(t / "exp.yaml", b"name: caf\xe9\nrounds: 2\n"))],
         "exp.yaml:1: not UTF-8 text"),
    Case("profile not UTF-8", lambda t: ["run", _config_file(t, **{"fleet.profiles_dir": str(
        _profiles(t, "raspberry-pi-4", b"name: raspberry-pi-4\ndescription: \xff\xfe\n"))})],
         "raspberry-pi-4.yaml:2: not UTF-8 text"),
    Case("fleet not UTF-8", lambda t: ["run", _config_file(t, **{"fleet.devices": None, "fleet.file": str(
        _write(t / "fleet.yaml", b"\x80name: x\n"))})], "fleet.yaml:1: not UTF-8 text"),
    Case("sweep file not UTF-8", lambda t: ["sweep", str(_write(t / "sweep.yaml", b"name: s\xc3\n"))],
         "sweep.yaml:1: not UTF-8 text"),
    Case("a run's config.yaml not UTF-8", lambda t: ["run", "--resume", _run_dir_with_config(t, b"\xffname: x\n")],
         "config.yaml:1: not UTF-8 text"),
    Case("a NUL byte in a config", lambda t: ["run", str(_write(t / "exp.yaml", "name: a\x00b\n"))],
         "exp.yaml:1: malformed YAML (unacceptable character #x0000)"),
    Case("duplicate key", lambda t: ["run", str(_write(t / "exp.yaml", yaml.safe_dump(_config(t)) + "rounds: 5\n"))],
         "duplicate key 'rounds'"),
    Case("duplicate key in a nested mapping", lambda t: ["run", str(_write(
        t / "exp.yaml", "name: x\nrounds: 2\ntraining:\n  lr: 0.1\n  lr: 0.2\n"))], "exp.yaml:5: duplicate key 'lr'"),
    Case("float that becomes infinite", lambda t: ["run", str(_write(
        t / "exp.yaml", "name: x\nrounds: 2\ntraining:\n  lr: 1.0e+400\n"))], "exp.yaml:4: number 1.0e+400 is too large"),
    Case("integer beyond a float's range", lambda t: ["run", _config_file(t), "--set", "training.lr=" + "9" * 400],
         "--set training.lr"),
    Case("profile value infinite once converted", lambda t: ["run", _config_file(t, **{"fleet.profiles_dir": str(
        _profiles(t, "raspberry-pi-4", _pi_profile("1.7e+308")))})], "raspberry-pi-4.yaml.memory_mib: is too large"),
    Case("memory scale making caps infinite", lambda t: ["run", _config_file(t, **{"fleet.memory_scale": 1e308})],
         "fleet.memory_scale: is too large"),
    Case("data file not gzip", lambda t: ["run", _config_file(t), "--data-dir", str(
        _fmnist_dir(t, lambda stem, raw: b"not gzip at all"))], "cannot read the gzip file (BadGzipFile"),
    Case("gzip cut short", lambda t: ["run", _config_file(t), "--data-dir", str(
        _fmnist_dir(t, lambda stem, raw: _cut(gzip.compress(raw))))], "cannot read the gzip file (EOFError"),
    Case("IDX data cut short", lambda t: ["run", _config_file(t), "--data-dir", str(
        _fmnist_dir(t, lambda stem, raw: gzip.compress(raw[:-100])))], "truncated IDX file"),
    Case("IDX header with impossible dimensions", lambda t: ["run", _config_file(t), "--data-dir", str(
        _fmnist_dir(t, lambda stem, raw: gzip.compress(bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") * 3)))],
         "IDX header claims 2147483648x2147483648x2147483648"),
    Case("IDX labels of images' shape", lambda t: ["run", _config_file(t), "--data-dir", str(_fmnist_dir(
        t, lambda stem, raw: gzip.compress(raw if "images" in stem else bytes([0, 0, 8, 2]) + (
            len(raw) - 8).to_bytes(4, "big") + (1).to_bytes(4, "big") + raw[8:])))], "do not match"),
    Case("CIFAR pickle with labels not a list", lambda t: _cifar_run(t, pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8), b"labels": 5})), "'labels' must be a list of 4 integers"),
    Case("CIFAR pickle of float data", lambda t: _cifar_run(t, pickle.dumps(
        {b"data": np.zeros((4, 3072)), b"labels": [1, 2, 3, 4]})), "'data' must be an N x 3072 uint8 array"),
    Case("CIFAR pickle with text labels", lambda t: _cifar_run(t, pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": ["cat", "dog"]})), "'labels' must be integers"),
    Case("CIFAR pickle with labels out of range", lambda t: _cifar_run(t, pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 12]})), "labels must be 0 to 9"),
    Case("CIFAR pickle cut short", lambda t: _cifar_run(t, pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8), b"labels": [1, 2, 3, 4]})[:-20]), "not a safe CIFAR-10 python batch"),
    Case("CIFAR pickle of a class that breaks its own reconstruction", lambda t: _cifar_run(
        t, b"\x80\x04cnumpy\ndtype\n)R."), "not a safe CIFAR-10 python batch (TypeError"),
    Case("run name leaving output_dir", lambda t: ["run", _config_file(t, name="../../escaped")], "name: must be"),
    Case("run name with a slash", lambda t: ["run", _config_file(t, name="a/b")], "name: must be"),
    Case("output_dir is a file", lambda t: ["run", _config_file(t, output_dir=str(_write(t / "afile", "x")))],
         "output_dir: "),
    Case("output_dir under a file", lambda t: ["run", _config_file(t, output_dir=str(_write(t / "afile", "x") / "runs"))],
         "is not a directory"),
    Case("seed beyond 64 bits", lambda t: ["run", _config_file(t, seed=2**70)], "seed: must be in [0, 4294967295]"),
    Case("negative seed", lambda t: ["run", _config_file(t), "--set", "seed=-1"], "seed: must be in"),
    Case("model width far beyond the machine", lambda t: ["run", _config_file(t), "--set", "model.width=300"],
         "model.width: training the global model needs"),
    Case("model width too large to build", lambda t: ["run", _config_file(t), "--set", "model.width=1.0e+300"],
         "model.width: "),
    Case("batch far beyond the machine", lambda t: ["run", _config_file(t), "--set", "training.batch_size=100000000"],
         "training.batch_size: training the global model on batches of 100000000 needs"),
    Case("object store beyond the machine", lambda t: ["run", _config_file(t), "--set",
                                                        "runtime.object_store_mib=100000000"],
         "runtime.object_store_mib"),
    Case("fleet of ten million devices", lambda t: ["run", _config_file(t), "--set", "fleet.size=10000000"],
         "10000000 participants need at least"),
    Case("sweep status.json malformed", lambda t: ["sweep", "--resume", str(_sweep_dir_with_status(t))],
         "status.json:1: malformed JSON"),
    Case("distribution with a negative median", lambda t: ["run", _config_file(t, **{"fleet.profiles_dir": str(
        _profiles(t, "raspberry-pi-4", _pi_profile("3000").replace(
            "train_gflops: 5", "train_gflops: {lognormal: {median: -5, sigma: 0.3}}")))})],
         "raspberry-pi-4.yaml.train_gflops.lognormal.median: must be > 0"),
    Case("distribution with a negative sigma", lambda t: ["run", _config_file(t, **{"fleet.profiles_dir": str(
        _profiles(t, "raspberry-pi-4", _pi_profile("3000").replace(
            "uplink_mbps: 20", "uplink_mbps: {lognormal: {median: 20, sigma: -1}}")))})],
         "raspberry-pi-4.yaml.uplink_mbps.lognormal.sigma: must be >= 0"),
    Case("unknown distribution", lambda t: ["run", _config_file(t, **{"fleet.profiles_dir": str(
        _profiles(t, "raspberry-pi-4", _pi_profile("3000").replace(
            "train_gflops: 5", "train_gflops: {pareto: {alpha: 2}}")))})],
         "raspberry-pi-4.yaml.train_gflops.pareto: unknown distribution"),
    Case("device list without a column", lambda t: ["run", _config_file(t, **{"fleet.devices": None,
        "fleet.device_list": str(_write(t / "devices.csv", "name,memory_mib,train_gflops,uplink_mbps,downlink_mbps\n"
                                                           "a,500,5,10,50\n"))})],
         "devices.csv: a device list needs the column(s) latency_ms"),
    Case("device list with a value that is not a number", lambda t: ["run", _config_file(t, **{"fleet.devices": None,
        "fleet.device_list": str(_write(t / "devices.csv", "name,memory_mib,train_gflops,uplink_mbps,downlink_mbps,"
                                                           "latency_ms\na,500,5,10,50,40\nb,500,five,10,50,40\n"))})],
         "devices.csv:3.train_gflops: must be a number (got 'five')"),
    Case("sample larger than its list without replacement", lambda t: ["run", _config_file(t, **{
        "fleet.devices": None, "fleet.sample": {"source": "phones", "size": 400, "replace": False}})],
         "fleet.sample.size: 400 devices drawn without replacement from a list of 333"),
]


def _sweep_dir_with_status(tmp: Path) -> Path:
    directory = tmp / "sweeps" / "s"
    sweep = {"name": "s", "base": _config(tmp), "grid": {"seed": [0]}}
    _write(directory / "sweep.yaml", yaml.safe_dump(sweep))
    _write(directory / "status.json", "{not json")
    return directory


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_malformed_input_is_refused_in_one_line_with_nothing_written(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = case.argv(tmp_path)
    before = _tree(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert case.expect in err
    assert _tree(tmp_path) == before


def test_a_fleet_too_large_for_its_data_is_refused_before_it_is_built(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the fleet was built before the sample count was checked")

    monkeypatch.setattr("msfusion_ray.experiment.prepare.make_fleet", never)
    assert main(["validate", _config_file(tmp_path), "--set", "fleet.size=10000000"]) == 2
    assert "participants need at least" in capsys.readouterr().err


def test_merge_keys_may_be_overridden_without_a_duplicate_key_error(tmp_path):
    from msfusion_ray.inputs import load_yaml

    path = _write(tmp_path / "a.yaml", "base: &b {lr: 0.1, momentum: 0.9}\ntraining:\n  <<: *b\n  lr: 0.2\n")
    assert load_yaml(path)["training"] == {"lr": 0.2, "momentum": 0.9}


def test_written_infinity_is_left_to_the_field_checks(tmp_path, capsys):
    assert main(["validate", _config_file(tmp_path), "--set", "training.lr=.inf"]) == 2
    assert "training.lr: must be finite" in capsys.readouterr().err


EXITING_CLI = """
import sys
from msfusion_ray.cli import main
code = main(sys.argv[1:], exiting=True)
assert "ray" not in sys.modules and "torch" not in sys.modules, "Ray or torch imported for a config's own error"
sys.exit(code)
"""


@pytest.mark.parametrize("content, expect", [
    ("name: x\nrounds: .nan\nfleet:\n  devices: {raspberry-pi-4: 2}\n",
     "exp.yaml: rounds: must be an integer (got nan)"),
    ("name: x\nrounds: 2\ndata: fashion_mnist\nfleet:\n  devices: {raspberry-pi-4: 2}\n",
     "exp.yaml: data: must be a mapping (got str)"),
    ("name: x\nrounds: 2\nrounds: 3\n", "exp.yaml:3: duplicate key 'rounds'"),
    ("name: x\nrounds: 2\ntraining: {learning_rate: 0.1}\nfleet:\n  devices: {raspberry-pi-4: 2}\n",
     "exp.yaml: training.learning_rate: unknown field"),
])
def test_the_commands_own_process_refuses_a_configs_own_error_before_ray_or_torch(content, expect, tmp_path):
    """The command line as a user runs it (the process ends after the command: `exiting`, where a run is prepared
    in a child process and the cluster may start beside it): a config's own error is found in the command's own
    process, before any child, cluster or torch: one line, exit code 2, nothing written."""
    path = _write(tmp_path / "exp.yaml", content)
    before = _tree(tmp_path)
    done = subprocess.run([sys.executable, "-c", EXITING_CLI, "run", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and expect in done.stderr, done.stderr
    assert _tree(tmp_path) == before
