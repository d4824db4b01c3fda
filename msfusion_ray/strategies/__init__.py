"""One file per scheme; `make_strategy` builds one from its config section."""

from __future__ import annotations

from typing import Callable

from msfusion_ray.config import StrategyConfig
from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.schema import build
from msfusion_ray.strategies.base import Strategy

_STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def add(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        _STRATEGIES[name] = cls
        return cls
    return add


def strategy_names() -> list[str]:
    _load_all()
    return sorted(_STRATEGIES)


def strategy_class(name: str) -> type[Strategy]:
    _load_all()
    if name not in _STRATEGIES:
        raise UserInputError("strategy.name", f"unknown strategy '{name}' (known: {', '.join(sorted(_STRATEGIES))})")
    return _STRATEGIES[name]


def make_strategy(config: StrategyConfig, family: ModelFamily, seed: int) -> Strategy:
    cls = strategy_class(config.name)
    return cls(build(cls.Params, config.params, "strategy.params"), family, seed)


def _load_all() -> None:
    from msfusion_ray.strategies import (  # noqa: F401  (registration side effect)
        cos2p, fed_dropout, fedasync, fedavg, fedbuff, fedrolex, heterofl, mpsl, msfusion, small_fedavg)
