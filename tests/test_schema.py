"""Configs are checked by pydantic models derived from their dataclasses: strict, one line naming the dotted field,
strategy params in the same pass; `schema` prints the JSON Schema, which accepts every ready config."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from msfusion_ray.cli import main
from msfusion_ray.config import checked_structure
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.config_check import config_from_dict
from tests.conftest import SMALL_CONFIG

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def _problem(*overrides):
    with pytest.raises(UserInputError) as err:
        config_from_dict(SMALL_CONFIG, list(overrides))
    return str(err.value)


@pytest.mark.parametrize("override, expect", [
    ("training.learning_rate=0.1", "training.learning_rate: unknown field (known: batch_size, local_epochs,"),
    ("rounds=true", "rounds: must be an integer (got True)"),
    ("seed=1.5", "seed: must be an integer (got 1.5)"),
    ("training.lr=.nan", "training.lr: must be finite (got nan)"),
    ("training.lr=.inf", "training.lr: must be finite (got inf)"),
    ("training.lr=0", "training.lr: must be > 0 (got 0.0)"),
    ("data.partition=rows", "data.partition: must be one of iid, dirichlet, play, speaker, sampled (got 'rows')"),
    ("fleet.devices.phone-midrange=1.5", "fleet.devices.phone-midrange: must be an integer (got 1.5)"),
    ("data=[1]", "data: must be a mapping (got list)"),
    ("strategy.name=magic", "strategy.name: unknown strategy 'magic' (known: "),
])
def test_a_bad_field_is_one_line_naming_it(override, expect):
    assert _problem(override).startswith(expect)


def test_the_unknown_strategy_message_lists_every_registered_scheme():
    known = _problem("strategy.name=magic").split("(known: ")[1].rstrip(")").split(", ")
    assert {"fedavg", "heterofl", "msfusion", "fedbuff", "cos2p", "mpsl"} <= set(known) and known == sorted(known)


def test_strategy_params_are_checked_in_the_same_pass_by_the_strategy_named():
    assert _problem("strategy.name=msfusion", "strategy.params.overlap=3") == \
        "strategy.params.overlap: must be in [0, 1] (got 3.0)"
    assert _problem("strategy.name=msfusion", "strategy.params.rate_levels=[0.5, x]") == \
        "strategy.params.rate_levels[1]: must be a number (got 'x')"
    assert _problem("strategy.params.overlap=0.5").startswith("strategy.params.overlap: unknown field")  # fedavg's
    config = config_from_dict(SMALL_CONFIG, ["strategy.name=msfusion", "strategy.params.overlap=0.5"])
    assert config.strategy.params == {"overlap": 0.5}  # what the user set, typed
    assert config_from_dict(SMALL_CONFIG, ["strategy={}"]).strategy.name == "fedavg"


def test_a_valid_config_comes_back_as_the_frozen_dataclasses():
    config = config_from_dict(SMALL_CONFIG, ["training.lr=1"])
    assert config.training.lr == 1.0 and isinstance(config.training.lr, float)
    assert config.data.alpha == 0.5 and config.fleet.devices == {"raspberry-pi-4": 2, "phone-midrange": 1}
    with pytest.raises(Exception):
        config.training.lr = 2.0  # frozen


def test_schema_is_valid_json_schema_accepting_every_ready_config_and_rejecting_a_wrong_one(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert len(CONFIGS) >= 8
    for path in CONFIGS:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, f"{path}: {errors[0].message[:300]}"
    quickstart = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/quickstart.yaml").read_text())
    for key, section, value in [("lr", "training", -1.0), ("learning_rate", "training", 0.1),
                                ("overlap", "strategy", {"overlap": 2.0})]:
        wrong = json.loads(json.dumps(quickstart))
        if section == "strategy":
            wrong["strategy"]["params"] = value
        else:
            wrong[section][key] = value
        assert not validator.is_valid(wrong), (section, key)
    assert not validator.is_valid({**quickstart, "rounds": "eight"})
    assert math.isfinite(schema["$defs"]["TrainingConfig"]["properties"]["lr"]["exclusiveMinimum"])


def test_the_structure_check_is_the_whole_one_but_the_strategy_params(tmp_path):
    """What the command line checks before any other process starts (msfusion_ray.config.checked_structure): the
    same config as the whole check, the strategy's parameters left to its class."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.py").write_text("")
    data = {**SMALL_CONFIG, "model": {"name": "models/mine.py:Net"}}
    overrides = ["runtime.num_cpus=2", "runtime.object_store_mib=300"]
    quick = checked_structure(data, overrides, config_dir=tmp_path)
    assert quick == config_from_dict(data, overrides, config_dir=tmp_path) and quick.runtime.num_cpus == 2
    assert quick.model.name.startswith(str(tmp_path))  # anchored alike
    with pytest.raises(UserInputError, match="runtime.num_cpus: must be > 0"):
        checked_structure(data, ["runtime.num_cpus=-1"])
    params = ["strategy.name=msfusion", "strategy.params.overlap=3"]
    assert checked_structure(SMALL_CONFIG, params).strategy.params == {"overlap": 3}  # the class's to check
    with pytest.raises(UserInputError, match="strategy.params.overlap: must be in"):
        config_from_dict(SMALL_CONFIG, params)


def test_the_structure_check_needs_no_strategy_and_no_torch():
    code = ("import json, sys\nfrom msfusion_ray.config import checked_structure\n"
            "checked_structure(json.loads(sys.argv[1]))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray') or 'strateg' in m))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(SMALL_CONFIG)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
