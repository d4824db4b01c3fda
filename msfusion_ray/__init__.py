"""msfusion_ray: compare collaborative-training schemes on emulated heterogeneous fleets, on Ray and PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from msfusion_ray.config import ExperimentConfig

__version__ = "0.1.0"


def run(config: "str | Path | Mapping[str, Any] | ExperimentConfig | None" = None, overrides: Sequence[str] = (),
        *, resume: str | Path | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Run an experiment as `python -m msfusion_ray run` does: `config` is a YAML file, a mapping or an
    ExperimentConfig (`overrides`: "key=value" as with --set); or `resume` names a run directory to continue. Returns
    the run's summary with its `run_dir`. Bad input raises `UserInputError` before anything is written; a driver
    whose process dies is started again from the last checkpoint (runtime.max_driver_restarts times), then the run
    raises `RunFailed`; Ctrl-C or SIGTERM raise `RunInterrupted` (a KeyboardInterrupt)."""
    from msfusion_ray.config import ExperimentConfig, config_from_dict, load_config
    from msfusion_ray.errors import UserInputError
    from msfusion_ray.launch import execute, open_run

    if resume is not None:
        prepared, run_dir, run_id = open_run(None, resume, overrides)
    elif config is None:
        raise UserInputError("run", "give a config or resume=RUN_DIR")
    else:
        if isinstance(config, ExperimentConfig):
            config = config_from_dict(config.to_dict(), overrides)
        elif isinstance(config, Mapping):
            config = config_from_dict(dict(config), overrides)
        else:
            config = load_config(config, overrides)
        prepared, run_dir, run_id = open_run(config)
    summary = execute(prepared, run_dir, run_id, resume=resume is not None, show_progress=show_progress)
    return {**summary, "run_dir": str(run_dir)}
