"""Every package the code imports is declared in pyproject.toml (a clean `pip install .` can run every command),
and requirements.txt pins each of them, with torch at the CPU build's version."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _imported_top_level_modules() -> set[str]:
    modules: set[str] = set()
    for package in ("msfusion_ray", "analysis"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"msfusion_ray", "analysis"}


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for module in sorted(_imported_top_level_modules()):
        names = {_name(d) for d in distributions.get(module, [])}
        if names & required:
            continue
        if module in extras or names & {_name(r) for reqs in extras.values() for r in reqs}:
            continue  # an optional extra named for it (the trackers: mlflow, tensorboard)
        undeclared.append(f"{module} ({', '.join(sorted(names)) or 'not installed'})")
    assert not undeclared, undeclared


def test_the_lock_pins_every_declared_package_and_the_cpu_torch():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    pins = dict(line.lower().split("==", 1) for line in lines if "==" in line)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    assert [name for name in declared if name not in pins] == []
    assert pins["torch"] == "2.13.0"  # resolved to the local CPU wheel (find-links), never a CUDA build
    assert not [name for name in pins if name.startswith("nvidia-") and name != "nvidia-ml-py"]
    assert all(line.startswith(("-", "--")) or "==" in line for line in lines if line)  # every one pinned
