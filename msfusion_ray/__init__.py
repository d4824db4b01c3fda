"""msfusion_ray: compare collaborative-training schemes on emulated heterogeneous fleets, on Ray and PyTorch.

The Python API (msfusion_ray.api): `run(config_or_path, **overrides) -> Run`, `sweep(sweep_or_path, ...) -> Sweep`,
`compare(config_or_path, ...) -> Comparison`, `load(config_or_path, **overrides) -> ExperimentConfig`. Imported on
first use, so that importing a part of the package does not import all of it.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Comparison", "Run", "RunFailed", "RunInterrupted", "Sweep", "UserInputError", "compare", "load", "run",
           "sweep"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from msfusion_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'msfusion_ray' has no attribute {name!r}")
