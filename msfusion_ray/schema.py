"""Strict, typed loading of YAML into dataclasses.

Every file the user writes (experiment configs, device profiles, fleets, strategy parameters) goes through
`build`, so that a typo, a wrong type or an out-of-range value is reported the same way: one line naming the
file and the dotted field, raised as `UserInputError`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar, Union

from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import parse_yaml, read_text

T = TypeVar("T")
Check = Callable[[Any], "str | None"]


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0 (got {value})"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0 (got {value})"


def fraction(value: Any) -> str | None:
    """A share of something: 0 < value <= 1."""
    return None if 0 < value <= 1 else f"must be in (0, 1] (got {value})"


def probability(value: Any) -> str | None:
    return None if 0 <= value <= 1 else f"must be in [0, 1] (got {value})"


def checked(default: Any = dataclasses.MISSING, check: Check | None = None, **kwargs: Any) -> Any:
    """A dataclass field whose value must pass `check` (a function returning an error text or None)."""
    if isinstance(default, (dict, list)):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"check": check}, **kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable, non-UTF-8 or malformed file (a duplicate key, a number too large
    to hold) is a one-line `UserInputError`."""
    path = Path(path)
    data = parse_yaml(read_text(path), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserInputError(str(path), f"must be a YAML mapping, not {type(data).__name__}")
    return data


def build(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown fields, wrong types and failed checks."""
    if not isinstance(data, dict):
        raise UserInputError(where, f"must be a mapping, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserInputError(f"{where}.{unknown[0]}" if where else unknown[0],
                             f"unknown field (known: {', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise UserInputError(path, "required field is missing")
            continue
        value = coerce(hints[name], data[name], path)
        check = field.metadata.get("check")
        problem = check(value) if check is not None and value is not None else None
        if problem:
            raise UserInputError(path, problem)
        values[name] = value
    return cls(**values)


def coerce(hint: Any, value: Any, path: str) -> Any:
    """Check `value` against type `hint`, converting only where it loses nothing (int -> float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(option, value, path)
            except UserInputError as err:
                errors.append(err.message)
        raise UserInputError(path, errors[0] if len(errors) == 1 else " or ".join(errors))
    if origin is Literal:
        if value not in args:
            raise UserInputError(path, f"must be one of {', '.join(map(str, args))} (got {value!r})")
        return value
    if origin is dict:
        key_type, value_type = args
        if not isinstance(value, dict):
            raise UserInputError(path, f"must be a mapping (got {type(value).__name__})")
        return {coerce(key_type, k, path): coerce(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserInputError(path, f"must be a list (got {type(value).__name__})")
        item_type = args[0] if args else Any
        return origin(coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    return _coerce_scalar(hint, value, path)


def _coerce_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserInputError(path, f"must be true or false (got {value!r})")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserInputError(path, f"must be an integer (got {value!r})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(path, f"must be a number (got {value!r})")
        if not math.isfinite(value):
            raise UserInputError(path, f"must be finite (got {value!r})")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserInputError(path, f"must be a string (got {value!r})")
        return value
    raise TypeError(f"schema: unsupported type {hint!r} at {path}")


def to_dict(obj: Any) -> Any:
    """The plain-data form of a built dataclass (what `build` takes back)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one `--set a.b.c=value` override to nested plain data."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise UserInputError(f"--set {dotted}", f"'{key}' is not a section")
        node = child
    node[keys[-1]] = value
