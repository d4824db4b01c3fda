"""How typed settings are declared, and YAML read.

Every file the user writes (experiment configs, device profiles, fleets, strategy parameters) is declared as a
frozen dataclass whose fields may carry a check (`checked(1.0, check=positive)`), and goes through `build`
(msfusion_ray.validation: strict pydantic models derived from the dataclasses), so that a typo, a wrong type or an
out-of-range value is reported the same way: one line naming the file and the dotted field, raised as
`UserInputError`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import parse_yaml, read_text
from msfusion_ray.validation import build  # noqa: F401  (declarations and their checking, imported together)

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


# What each check means in JSON Schema terms, for editors (the check itself still runs on validation).
positive.json_schema = {"exclusiveMinimum": 0}
non_negative.json_schema = {"minimum": 0}
fraction.json_schema = {"exclusiveMinimum": 0, "maximum": 1}
probability.json_schema = {"minimum": 0, "maximum": 1}


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
