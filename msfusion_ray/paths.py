"""Where the files a config names are found: the user's first, then the ones that ship with the package.

A relative path in a config (a fleet file, a profile directory, a data directory, a model or data set file) is
looked up relative to the current directory, then to the config file's directory, then among the bundled files:
the project checkout's top-level device_profiles/ and configs/, which an installed package carries as package data
(msfusion_ray/bundled/). A user's file found this way is written back into the config as an absolute path, so that
every process of the run (the driver and host actors, in other directories) finds the same one; a bundled file
keeps the name it was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msfusion_ray.code_refs import is_code_ref, split_ref

# The config fields that name files or directories, and those that may name code in a file (`path.py:function`).
PATH_FIELDS = (("fleet", "file"), ("fleet", "profiles_dir"), ("fleet", "availability_trace"), ("data", "data_dir"),
               ("fleet", "device_list"), ("fleet.sample", "source"), ("runtime", "node_profile"))
CODE_FIELDS = (("model", "name"), ("data", "dataset"))


def bundled_root() -> Path:
    """The directory holding the bundled device_profiles/ and configs/: the installed package's data, or the
    project checkout the package is imported from."""
    package = Path(__file__).resolve().parent
    installed = package / "bundled"
    return installed if installed.is_dir() else package.parent


def default_profiles_dir() -> Path:
    return bundled_root() / "device_profiles"


def find(text: str | Path, config_dir: str | Path | None = None) -> Path:
    """The first of: `text` as given (absolute, or relative to the current directory), relative to the config's
    directory, among the bundled files. A path found nowhere comes back as given (the error then names it)."""
    given = Path(text).expanduser()
    if given.is_absolute() or given.exists():
        return given
    for base in ([Path(config_dir)] if config_dir is not None else []) + [bundled_root()]:
        candidate = base / given
        if candidate.exists():
            return candidate
    return given


def anchored(text: str, config_dir: str | Path | None) -> str:
    """`text` as the config should hold it: a user's file as an absolute path, a bundled one as given."""
    if Path(text).expanduser().is_absolute():
        return text
    found = find(text, config_dir)
    if not found.exists() or found.resolve() == (bundled_root() / text).resolve():
        return text
    return str(found.resolve())


def anchor_paths(data: dict[str, Any], config_dir: str | Path | None) -> dict[str, Any]:
    """The raw config with every relative file it names anchored (see `anchored`); code named by a dotted module
    path stays as it is."""
    for section, key in PATH_FIELDS + CODE_FIELDS:
        part = data
        for name in section.split("."):
            part = part.get(name) if isinstance(part, dict) else None
        value = part.get(key) if isinstance(part, dict) else None
        if not isinstance(value, str):
            continue
        if (section, key) in CODE_FIELDS:
            if not is_code_ref(value):
                continue
            target, attr = split_ref(value)
            if target.endswith(".py"):
                part[key] = f"{anchored(target, config_dir)}:{attr}"
        else:
            part[key] = anchored(value, config_dir)
    return data


def find_config(name: str) -> Path:
    """A config file by path, or a ready one by name (`quickstart`, `fmnist/resnet18_hetero8`, with or without
    .yaml): configs/ under the current directory first, then the bundled configs."""
    given = Path(name)
    if given.is_file():
        return given
    names = [given] if given.suffix in (".yaml", ".yml") else [given.with_name(given.name + ".yaml"), given]
    for base in (Path("configs"), bundled_root() / "configs"):
        for candidate in names:
            if (base / candidate).is_file():
                return base / candidate
    return given
