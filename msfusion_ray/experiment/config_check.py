"""The whole experiment config checked in one pass: its structure (msfusion_ray.config) and the strategy's
parameters, by the strategy that `strategy.name` names.

The pydantic model is built here from the strategy registry: a union of every registered strategy's section,
discriminated by its name, so that an unknown strategy lists the known ones and its parameters are checked with
the rest. msfusion_ray.config declares the config and knows no strategy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, Union

from pydantic import BaseModel, BeforeValidator, Field, create_model

from msfusion_ray.config import (ExperimentConfig, StrategyConfig, finished, read_config_file, resolved_dict)
from msfusion_ray.strategies import STRATEGIES
from msfusion_ray.validation import STRICT, model_of, to_dataclass, validate


def _with_default_strategy(value: Any) -> Any:
    return {"name": StrategyConfig.name, **value} if isinstance(value, dict) and "name" not in value else value


def strategy_model(name: str, params: type) -> type[BaseModel]:
    """strategy: {name: <name>, params: <its Params>} as one member of the union on strategy.name."""
    member = create_model(f"Strategy_{name}", __config__=STRICT,
                          name=(Literal[name], ...), params=(model_of(params), Field(default_factory=params)))
    member.__convert__ = lambda m: StrategyConfig(
        m.name, m.params.model_dump(exclude_unset=True) if not dataclasses.is_dataclass(m.params) else {})
    return member


_EXPERIMENT_MODELS: dict[tuple[str, ...], type[BaseModel]] = {}


def experiment_model() -> type[BaseModel]:
    """The pydantic model of an experiment config, with strategy params checked in the same pass: a union of
    every registered strategy's section, discriminated by strategy.name."""
    names = tuple(STRATEGIES.names())
    if names not in _EXPERIMENT_MODELS:
        members = tuple(strategy_model(name, cls.Params) for name, cls in STRATEGIES.items())
        union = Annotated[Union[members] if len(members) > 1 else members[0], Field(discriminator="name"),
                          BeforeValidator(_with_default_strategy)]
        _EXPERIMENT_MODELS[names] = create_model(
            "ExperimentConfig", __base__=model_of(ExperimentConfig), __doc__=ExperimentConfig.__doc__,
            strategy=(union, Field(default_factory=StrategyConfig)))
        _EXPERIMENT_MODELS[names].__dataclass__ = ExperimentConfig
    return _EXPERIMENT_MODELS[names]


def config_from_dict(data: dict[str, Any], overrides: Sequence[str] = (), where: str = "",
                     config_dir: str | Path | None = None) -> ExperimentConfig:
    """Override, anchor (msfusion_ray.config.resolved_dict) and check a whole config."""
    data = resolved_dict(data, overrides, config_dir)
    return finished(to_dataclass(validate(experiment_model(), data, where)), where)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read, override and check a whole experiment config; errors name the file and the field."""
    return read_config_file(path, overrides, config_from_dict)
