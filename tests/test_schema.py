"""Configs are checked by pydantic models derived from their dataclasses: strict, one line naming the dotted field,
strategy params in the same pass; `schema` prints the JSON Schema, which accepts every ready config."""

import json
import math
from pathlib import Path

import jsonschema
import pytest
import yaml

from msfusion_ray.cli import main
from msfusion_ray.config import config_from_dict, runtime_ahead
from msfusion_ray.errors import UserInputError
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
    ("data.partition=rows", "data.partition: must be one of iid, dirichlet, play, speaker (got 'rows')"),
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


def test_the_runtime_section_read_ahead_is_the_whole_checks(tmp_path):
    """What the command line starts the cluster with before the whole config is checked (`runtime_ahead`)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.py").write_text("")
    data = {**SMALL_CONFIG, "model": {"name": "models/mine.py:Net"}}
    overrides = ["runtime.num_cpus=2", "runtime.object_store_mib=300"]
    runtime, code = runtime_ahead(data, overrides, config_dir=tmp_path)
    whole = config_from_dict(data, overrides, config_dir=tmp_path)
    assert runtime == whole.runtime and runtime.num_cpus == 2
    assert code == [whole.model.name, whole.data.dataset] and code[0].startswith(str(tmp_path))
    assert runtime_ahead(data, ["runtime.num_cpus=-1"]) is None  # the whole check says why
