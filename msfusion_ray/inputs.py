"""Reading the files a user hands the tool (UTF-8 text, strict YAML, JSON) and applying `--set` overrides.

Every text file (configs, device profiles, fleets, sweep files, a run's config.yaml and summary, a sweep's status)
is read here, so that a file that is missing, unreadable, not UTF-8, or malformed is refused the same way: one
`UserInputError` naming the file (and the line, for YAML). The YAML reader is stricter than `yaml.safe_load`: a
key given twice in one mapping is an error naming the key (safe_load keeps the last one silently), and a number
too large to be represented (a float that would become infinite, an integer beyond a float's range) is an error
naming the line, not an OverflowError later.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from msfusion_ray.errors import UserInputError

_WRITTEN_INFINITY = re.compile(r"[-+]?\.(inf|Inf|INF)")


def read_text(path: str | Path) -> str:
    """The UTF-8 text of a file (a leading byte-order mark dropped)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserInputError(str(path), "file not found") from None
    except IsADirectoryError:
        raise UserInputError(str(path), "is a directory, not a file") from None
    except OSError as err:
        raise UserInputError(str(path), f"cannot read ({err.strerror})") from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise UserInputError(f"{path}:{line}", f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                                               f"{err.start})") from None


class StrictLoader(yaml.SafeLoader):
    """safe_load's loader, refusing duplicate keys and numbers that do not fit a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` entries are meant to be overridden by the keys beside them
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise ConstructorError("while reading a mapping", node.start_mark,
                                           f"duplicate key '{key}'", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if value in (float("inf"), float("-inf")) and not _WRITTEN_INFINITY.fullmatch(node.value):
            raise ConstructorError(None, None, f"number {node.value} is too large (it becomes infinite)",
                                   node.start_mark)
        return value

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = super().construct_yaml_int(node)
        if abs(value) > sys.float_info.max:
            raise ConstructorError(None, None, f"number {node.value[:20]}... is too large", node.start_mark)
        return value


StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text to plain data; an error names `where` (a file, or an option) and the line."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except yaml.YAMLError as err:
        if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow (a NUL byte, say)
            line = text.count("\n", 0, err.position) + 1
            raise UserInputError(f"{where}:{line}", f"malformed YAML (unacceptable character "
                                                    f"#x{err.character:04x})") from None
        mark = getattr(err, "problem_mark", None)
        place = f"{where}:{mark.line + 1}" if mark is not None else where
        problem = getattr(err, "problem", None)
        if isinstance(err, ConstructorError) and problem:  # well-formed YAML, refused content (a duplicate key)
            raise UserInputError(place, problem) from None
        raise UserInputError(place, f"malformed YAML ({problem or 'syntax error'})") from None


def load_json(path: str | Path, expect: type = dict) -> Any:
    """A JSON document of type `expect` (a mapping by default); anything else names the file."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}:{err.lineno}", f"malformed JSON ({err.msg})") from None
    if not isinstance(data, expect):
        raise UserInputError(str(path), f"must hold a JSON {expect.__name__}, not {type(data).__name__}")
    return data


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
