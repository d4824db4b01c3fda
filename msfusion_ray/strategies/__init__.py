"""One file per scheme, each registered by name (`@register("fedavg")`); `make_strategy` builds one from its config
section."""

from __future__ import annotations

from msfusion_ray.config import StrategyConfig
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.registry import Registry
from msfusion_ray.strategies.base import Strategy
from msfusion_ray.validation import build

STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "strategy.name", ("msfusion_ray.strategies",))
register = STRATEGIES.register


def strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


def make_strategy(config: StrategyConfig, family: ModelFamily, seed: int) -> Strategy:
    cls = strategy_class(config.name)
    return cls(build(cls.Params, config.params, "strategy.params"), family, seed)
