"""Code a config names by import path: `package.module:function`, or a file, `path/to/nets.py:function`.

Every process that needs the code finds it itself (the CLI, the driver actor, the host actors), from the text in
the config: a dotted module is imported (from sys.path, then from the current directory); a file is loaded from its
path, with its directory on sys.path for its own imports (the config loader has made a relative path absolute). On
a cluster whose nodes do not share the file system the code travels with the job: `ship_with_job` lists each named
file and each named package outside site-packages for Ray's runtime environment (`py_modules`), and a process that
cannot see the file imports the shipped copy by the file's name. Nothing is installed from the network.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from msfusion_ray.errors import UserInputError

FORM = "expected 'package.module:function' or 'path/to/file.py:function'"


def is_code_ref(text: Any) -> bool:
    return isinstance(text, str) and ":" in text


def split_ref(text: str) -> tuple[str, str]:
    target, _, attr = text.rpartition(":")
    return target, attr


def load_ref(text: str, field: str) -> Any:
    """The object `text` names; a one-line `UserInputError` on `field` if it cannot be had."""
    target, attr = split_ref(text)
    if not target or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise UserInputError(field, f"'{text}': {FORM}")
    module = _load_file(Path(target), field) if target.endswith(".py") else _import(target, field)
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise UserInputError(field, f"'{text}': {target} has no '{attr}'")
        value = getattr(value, part)
    return value


def _failed(field: str, what: str, err: BaseException) -> UserInputError:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return UserInputError(field, f"importing {what} failed: {type(err).__name__}: {lines[-1] if lines else ''}")


def _import(name: str, field: str) -> ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise UserInputError(field, f"'{name}' is not a module name; {FORM}")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        if err.name != name.split(".")[0] or here in sys.path:
            raise _failed(field, name, err) from None
    except Exception as err:  # noqa: BLE001  (the user's module failed while being imported)
        raise _failed(field, name, err) from None
    sys.path.append(here)  # a package in the current directory, as `python -m` would find it
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001
        raise _failed(field, name, err) from None


def _load_file(path: Path, field: str) -> ModuleType:
    """A Python file as a module (once per process), or the copy of it a job shipped to this node."""
    if not path.is_file():
        shipped = _shipped(path)
        if shipped is None:
            raise UserInputError(field, f"{path}: file not found")
        return shipped
    path = path.resolve()
    name = f"msfusion_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # the file's own imports of its neighbours
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001
        del sys.modules[name]
        raise _failed(field, str(path), err) from None
    _pickle_by_value(module)
    return module


def _shipped(path: Path) -> ModuleType | None:
    """The file as Ray's runtime environment shipped it (`py_modules`: importable by its stem)."""
    if not path.stem.isidentifier():
        return None
    try:
        module = importlib.import_module(path.stem)
    except ImportError:
        return None
    return module if Path(getattr(module, "__file__", "") or "").name == path.name else None


def _pickle_by_value(module: ModuleType) -> None:
    """Classes of a file loaded by path exist under a name only this process knows: if one travels to another
    process (a typed options object), it goes by value."""
    try:
        from ray import cloudpickle
    except ImportError:
        return
    cloudpickle.register_pickle_by_value(module)


def _installed_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[key]).resolve() for key in ("purelib", "platlib", "stdlib") if key in paths]


def ship_with_job(refs: Iterable[str]) -> list[str]:
    """Ray `py_modules` entries that carry the code `refs` name to other nodes: each named file, and the top-level
    package (or single-file module) of each dotted module that is not installed (nor msfusion_ray itself)."""
    shipped: list[str] = []
    installed = _installed_roots()
    for text in refs:
        if not is_code_ref(text):
            continue
        target, _ = split_ref(text)
        if target.endswith(".py"):
            path = Path(target)
            entry = str(path.resolve()) if path.is_file() else None
        else:
            top = target.split(".")[0]
            spec = importlib.util.find_spec(top) if top != "msfusion_ray" else None
            location = None
            if spec is not None and spec.submodule_search_locations:
                location = Path(list(spec.submodule_search_locations)[0])
            elif spec is not None and spec.origin and spec.origin.endswith(".py"):
                location = Path(spec.origin)
            inside = location is not None and any(location.resolve().is_relative_to(r) for r in installed)
            entry = str(location.resolve()) if location is not None and not inside else None
        if entry is not None and entry not in shipped:
            shipped.append(entry)
    return shipped


def job_runtime_env(refs: Iterable[str]) -> dict[str, Any] | None:
    """The Ray runtime environment of a job running code that `refs` name (None: nothing to ship)."""
    modules = ship_with_job(refs)
    return {"py_modules": modules} if modules else None
