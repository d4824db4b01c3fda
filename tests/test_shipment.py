"""The launcher's view of a prepared experiment (msfusion_ray.experiment.shipment): packed parts open as they were,
their arrays out of band; the command line prepares in a process of its own and never imports torch itself."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from msfusion_ray.app.apart import PreparationProcess
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.shipment import Packed, opened

PROJECT = Path(__file__).resolve().parents[1]


def test_a_packed_object_opens_equal_with_its_arrays_out_of_band():
    value = {"images": np.arange(100_000, dtype=np.uint8).reshape(100, 1000), "labels": np.arange(100),
             "name": "x"}
    packed = Packed.of(value)
    assert len(packed.pickled) < 1000 and sum(b.nbytes for b in packed.buffers) == 100_000 + 800
    back = opened(packed)
    assert back["name"] == "x" and all(np.array_equal(back[k], value[k]) for k in ("images", "labels"))
    assert opened(value) is value  # anything else as it is


def notes_then_fails(value, note):
    note(("config", value))
    raise UserInputError("training.lr", "must be > 0")


def test_preparing_apart_passes_notes_and_raises_the_childs_bad_input_here():
    with PreparationProcess("tests.test_shipment:notes_then_fails", 1) as preparing:
        assert preparing.note() == ("config", 1)
        with pytest.raises(UserInputError, match="training.lr: must be > 0"):
            preparing.result()


BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("the command line imported torch")
sys.meta_path.insert(0, NoTorch())
from msfusion_ray.cli import main
code = main(sys.argv[1:], exiting=True)
assert "torch" not in sys.modules
sys.exit(code)
"""


def test_the_command_line_runs_an_experiment_without_importing_torch(tmp_path, small_config_dict):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**small_config_dict, "rounds": 1}))
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "run", str(config), "--no-plots"], cwd=PROJECT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "checkpoint").is_dir() and "1 rounds" in done.stdout
