"""The run directory and its summary.json, owned by one object in the launcher's process.

A run directory holds the resolved config (config.yaml), the data set's artifacts, the run's log (run.log), its
records and checkpoints (written by the driver actor: msfusion_ray.runtime) and summary.json, which only this
module writes: the status (`starting`, `running`, `complete`, `failed` or `interrupted`, with the reason for the last
two), the history so far as the driver reports it, and what produced the run (msfusion_ray.app.provenance).
Every write replaces the file whole. Nothing is created before every check passed (msfusion_ray.app.lifecycle).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from msfusion_ray.app.provenance import provenance
from msfusion_ray.config import ExperimentConfig
from msfusion_ray.errors import UserInputError, writing
from msfusion_ray.files import write_text_atomic
from msfusion_ray.inputs import load_json
from msfusion_ray.runtime.run_log import RUN_LOG, run_log_handler

CONFIG = "config.yaml"
SUMMARY = "summary.json"


def check_output_dir(path: str | Path, where: str) -> None:
    """Refuse an output directory that cannot be written, before anything starts: `path`, or the nearest part of
    it that exists, must be a directory in which a directory can be made (tried, and removed at once)."""
    probe = Path(path)
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserInputError(where, f"{probe} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=probe))
    except OSError as err:
        raise UserInputError(where, f"cannot write in {probe} ({err.strerror})") from None


def check_run_dir(path: str | Path) -> Path:
    """A run directory given by the user (to resume, plot or report): it must hold its config, and a summary
    (where it has one) that reads as one."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise UserInputError(str(path), f"not a run directory (no {CONFIG})")
    if (path / SUMMARY).is_file() and not isinstance(load_json(path / SUMMARY).get("history", []), list):
        raise UserInputError(str(path / SUMMARY), "'history' must be a list")
    return path


def new_run_id(config: ExperimentConfig) -> str:
    return f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class RunDirectory:
    """One run's directory: made once every check passed (`create`), or a run's that continues (`existing`)."""

    def __init__(self, path: Path, run_id: str):
        self.path = Path(path)
        self.run_id = run_id

    @classmethod
    def create(cls, path: Path, run_id: str, config: ExperimentConfig, strategy: str,
               artifacts: dict[str, str]) -> "RunDirectory":
        """Make `path` (a new directory) hold the resolved config, the data set's artifacts and a first
        summary."""
        run_dir = cls(path, run_id)
        run_dir.path.mkdir(parents=True)
        with writing(run_dir.path, partial=(run_dir.path,)):  # a full disk leaves no half-made run directory
            run_dir.write_config(config)
            for name, text in artifacts.items():
                write_text_atomic(run_dir.path / name, text)
            run_dir.write_summary(run_dir.base_summary(config, strategy, "starting"))
        return run_dir

    @classmethod
    def existing(cls, path: Path, run_id: str | None = None) -> "RunDirectory":
        return cls(path, run_id or Path(path).name)

    @property
    def log_path(self) -> Path:
        return self.path / RUN_LOG

    def base_summary(self, config: ExperimentConfig, strategy: str, status: str) -> dict[str, Any]:
        """The summary's header, and what it says before the driver reports a round."""
        return {"run_id": self.run_id, "name": config.name, "strategy": strategy, "rounds": config.rounds,
                "status": status, "rounds_completed": 0, "history": []}

    def write_config(self, config: ExperimentConfig) -> None:
        write_text_atomic(self.path / CONFIG, config.to_yaml())

    def write_enforcement(self, description: dict[str, Any]) -> None:
        """enforcement.json: how a run under `runtime.enforce: cgroups` ran its hosts (msfusion_ray.devices)."""
        write_text_atomic(self.path / "enforcement.json", json.dumps(description, indent=2))

    def log_handler(self) -> logging.Handler:
        return run_log_handler(self.path)

    def summary(self) -> dict[str, Any] | None:
        """summary.json as it is (None where it is missing or unreadable)."""
        try:
            summary = json.loads((self.path / SUMMARY).read_text())
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Replace summary.json with `summary` (NaN, which JSON lacks, as null), and what produced the run."""
        whole = {**_nan_to_none(summary), "environment": provenance()}
        write_text_atomic(self.path / SUMMARY, json.dumps(whole, indent=2, allow_nan=False))

    def set_status(self, status: str, reason: str, base: dict[str, Any]) -> None:
        """Set the summary's status and its reason (a run that failed or was stopped says why); `base` where the
        summary is missing."""
        summary = self.summary() or {**base, "rounds_completed": 0, "history": []}
        summary.update(status=status, reason=reason)
        self.write_summary(summary)


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: rounds without an evaluation are written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
