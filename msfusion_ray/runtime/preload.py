"""What every worker process of the embedded cluster imports as it starts (msfusion_ray.runtime.cluster sets it as
the workers' setup hook): torch and the modules the driver and host actors are built from. Ray prestarts the
workers while the cluster starts, before the run is prepared; so the imports (1.5 CPU s a process) are done by the
time the actors are placed on them, rather than one after the other once they are."""

from __future__ import annotations

import importlib
import os
import site
from pathlib import Path

ACTOR_MODULES = ("msfusion_ray.runtime.host", "msfusion_ray.runtime.driver")
HOOK = f"{__name__}.preload"  # as Ray names it: module.function


def preload() -> None:
    """Import the actors' modules; any failure is left for the actor's own import to report (a hook that raises
    would end the worker)."""
    for name in ACTOR_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112
            continue


def worker_pythonpath(current: str | None) -> str:
    """PYTHONPATH for the cluster's workers: the directory this package is imported from first, unless it is a
    site directory. The hook runs before a worker takes the driver's sys.path with its first task, so without it a
    worker would find another copy of the package (an installed one, another checkout's) or none, and a hook
    that cannot be imported ends the worker."""
    root = str(Path(__file__).resolve().parents[2])
    if root in {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}:
        return current or ""
    return os.pathsep.join([root, *([current] if current else [])])
