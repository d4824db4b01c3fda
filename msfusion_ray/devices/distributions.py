"""Devices that differ within a class: a profile's speed, bandwidth or latency given as a distribution.

A profile field may be a number or one of

    train_gflops: {lognormal: {median: 10, sigma: 0.5}}     # median * exp(sigma * z), z standard normal
    uplink_mbps: {uniform: {low: 2, high: 20}}              # low + (high - low) * u, u uniform in [0, 1)
    latency_ms: {choice: [30, 45, 80]}                      # one of the values, each equally likely

Each participant draws its own value once, from the run's seed: field f of participant i takes the i-th entry of
one standard normal vector and one uniform vector over the whole fleet, seeded by (seed, f). A participant's value
therefore depends on its id, the seed and its class's distribution, never on which host holds it, how many hosts
there are, or which other classes the fleet has. The profile itself keeps a nominal number (the median; the middle
of a uniform range; the median of the choices) for whatever needs one figure per class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import numpy as np

from msfusion_ray.errors import UserInputError
from msfusion_ray.validation import build, checked, non_negative

# The profile fields that may vary within a class, with the key their draws are seeded by (stable: records depend
# on it) and what a drawn value must satisfy.
VARYING = {"train_gflops": 1, "uplink_mbps": 2, "downlink_mbps": 3, "latency_ms": 4}
_POSITIVE = ("train_gflops", "uplink_mbps", "downlink_mbps")


def _finite_positive(value: float) -> str | None:
    return None if value > 0 and math.isfinite(value) else f"must be > 0 (got {value})"


@dataclass(frozen=True)
class LogNormal:
    median: float = checked(check=_finite_positive)
    sigma: float = checked(check=non_negative)

    def values(self, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.median * np.exp(self.sigma * z)

    def nominal(self) -> float:
        return self.median

    def describe(self) -> str:
        return f"lognormal(median {self.median:g}, sigma {self.sigma:g})"

    def support(self) -> tuple[float, float]:
        return (self.median, self.median) if self.sigma == 0 else (0.0, math.inf)


@dataclass(frozen=True)
class Uniform:
    low: float = checked(check=non_negative)
    high: float = checked(check=non_negative)

    def values(self, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.low + (self.high - self.low) * u

    def nominal(self) -> float:
        return (self.low + self.high) / 2

    def describe(self) -> str:
        return f"uniform({self.low:g} to {self.high:g})"

    def support(self) -> tuple[float, float]:
        return self.low, self.high


@dataclass(frozen=True)
class Choice:
    options: tuple[float, ...]

    def values(self, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        index = np.minimum((u * len(self.options)).astype(np.int64), len(self.options) - 1)
        return np.asarray(self.options, dtype=np.float64)[index]

    def nominal(self) -> float:
        return float(np.median(self.options))

    def describe(self) -> str:
        return f"choice({', '.join(f'{v:g}' for v in self.options)})"

    def support(self) -> tuple[float, float]:
        return min(self.options), max(self.options)


Distribution = Union[LogNormal, Uniform, Choice]
KINDS = {"lognormal": LogNormal, "uniform": Uniform, "choice": Choice}


def parse_distribution(value: Any, field: str, where: str) -> Distribution:
    """A distribution as a profile writes it (`{kind: parameters}`); every problem names `where`.`field`."""
    place = f"{where}.{field}"
    if not isinstance(value, Mapping) or len(value) != 1:
        raise UserInputError(place, f"must be a number or one distribution ({', '.join(KINDS)}), e.g. "
                                    "{lognormal: {median: 10, sigma: 0.5}}")
    (kind, params), = value.items()
    if kind not in KINDS:
        raise UserInputError(f"{place}.{kind}", f"unknown distribution (known: {', '.join(KINDS)})")
    if kind == "choice":
        return _choice(params, field, f"{place}.choice")
    distribution = build(KINDS[kind], params, f"{place}.{kind}")
    if isinstance(distribution, Uniform) and distribution.high < distribution.low:
        raise UserInputError(f"{place}.uniform.high", f"must be >= low ({distribution.low:g}; got "
                                                      f"{distribution.high:g})")
    low, _ = distribution.support()
    if field in _POSITIVE and isinstance(distribution, Uniform) and not low > 0:
        raise UserInputError(f"{place}.uniform.low", f"must be > 0 (got {low:g})")
    return distribution


def _choice(params: Any, field: str, place: str) -> Choice:
    if not isinstance(params, list) or not params:
        raise UserInputError(place, "must be a non-empty list of numbers")
    check: Callable[[float], str | None] = _finite_positive if field in _POSITIVE else non_negative
    for k, option in enumerate(params):
        if isinstance(option, bool) or not isinstance(option, (int, float)) or not math.isfinite(option):
            raise UserInputError(f"{place}[{k}]", f"must be a number (got {option!r})")
        problem = check(option)
        if problem:
            raise UserInputError(f"{place}[{k}]", problem)
    return Choice(tuple(float(v) for v in params))


def split_spread(data: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Distribution]]:
    """A profile's raw mapping with each distribution replaced by its nominal number, and the distributions by
    field. A distribution on a field that may not vary names that field."""
    plain, spread = dict(data), {}
    for field, value in data.items():
        if isinstance(value, Mapping):
            if field not in VARYING:
                continue  # the profile's own check says what this field takes
            spread[field] = parse_distribution(value, field, where)
            plain[field] = spread[field].nominal()
    return plain, spread


def field_draws(seed: int, field: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The standard normal and uniform vectors over a fleet of `size` that field `field` draws from."""
    rng = np.random.default_rng([seed, VARYING[field], 0xD157])
    return rng.standard_normal(size), rng.random(size)


def task_factors(seed: int, participant: int, task: int, sigma: float) -> tuple[float, float]:
    """Per-task jitter: factors exp(sigma * z) on a participant's FLOP/s and on its bandwidths (two independent
    standard normal draws, seeded by seed, participant and task: the same whatever host runs the task). 1, 1 where
    sigma is 0."""
    if sigma <= 0 or task < 0:
        return 1.0, 1.0
    z = np.random.default_rng([seed, participant, task, 0x717]).standard_normal(2)
    return float(math.exp(sigma * z[0])), float(math.exp(sigma * z[1]))
