"""The package's layers, as pyproject.toml declares them for import-linter: every import points down (entry points ->
lifecycle -> analysis -> runtime -> experiment -> strategies -> the parts -> foundations), and no package or module
imports one that imports it back, however indirectly. A deliberate upward import in a copy of the package breaks
the contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LAYERS_MODULES = ("msfusion_ray", "analysis")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                                                 "lint_imports_command()", "--no-cache"],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=300)


def test_the_declared_layers_hold():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in done.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    for package in ("msfusion_ray", "analysis"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "bundled"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    config = tmp_path / "msfusion_ray" / "config.py"
    config.write_text(config.read_text() + "\nfrom msfusion_ray.app import lifecycle  # deliberately upward\n")
    done = _lint(tmp_path)
    assert done.returncode == 1, done.stdout[-4000:]
    assert "msfusion_ray.config -> msfusion_ray.app.lifecycle" in done.stdout
    assert "is not allowed to import msfusion_ray.app" in done.stdout


def test_no_module_imports_itself_through_others():
    """Module by module, not only package by package: the strongly connected parts of the import graph are single
    modules (an import placed inside a function counts as much as one at the top)."""
    graph = grimp.build_graph("msfusion_ray", "analysis", cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append((module, imported))
    assert not cycles, cycles[:10]


def test_ray_private_modules_are_used_in_one_adapter_only():
    """Ray's private modules change without notice between releases: the package names them in
    msfusion_ray/runtime/ray_private.py alone, where each use says why and the Ray versions it was checked against."""
    users = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "msfusion_ray").rglob("*.py")
                   if "ray._private" in path.read_text() or "ray._raylet" in path.read_text())
    assert users == ["msfusion_ray/runtime/ray_private.py"]
    from msfusion_ray.runtime import ray_private

    import ray
    assert ray.__version__ in ray_private.CHECKED_RAY_VERSIONS, "check each use in ray_private.py, then add it"
