"""The first steps of a run's lifecycle, load and check, as far as they go without the strategies' classes (and
so without torch): what the user asked for, read, and its config checked in every field but the strategy's
parameters, in a fraction of a second. msfusion_ray.app.preparation checks the rest and prepares.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from msfusion_ray.app.run_dir import check_output_dir, check_run_dir
from msfusion_ray.config import ExperimentConfig, checked_structure
from msfusion_ray.errors import UserInputError
from msfusion_ray.inputs import load_yaml, set_dotted
from msfusion_ray.paths import CODE_FIELDS, find_config

ConfigCheck = Callable[..., ExperimentConfig]  # (data, overrides, where=, config_dir=) -> the config, or one line


@dataclass(frozen=True)
class RunRequest:
    """What the user asked to run (the load step): a config as its raw mapping with where it came from and the
    `--set` texts to apply, or a run directory to resume (its recorded config, `overrides` changing it)."""

    data: dict[str, Any]
    overrides: tuple[str, ...] = ()
    where: str = ""  # what errors name: the config file, or the resumed run's directory
    config_dir: Path | None = None  # where files the config names relative to it are found
    resume: Path | None = None
    address: str | None = None  # an existing Ray cluster

    @classmethod
    def from_file(cls, name: str, overrides: Sequence[str] = (), address: str | None = None) -> "RunRequest":
        """A config file, or a ready config by name (msfusion_ray.paths.find_config)."""
        path = find_config(name)
        return cls(load_yaml(path), tuple(overrides), str(path), path.parent, address=address)

    @classmethod
    def resuming(cls, run_dir: str | Path, overrides: Sequence[str] = (), address: str | None = None
                 ) -> "RunRequest":
        """A stopped run to continue from its last checkpoint, with its recorded config."""
        resumed = check_run_dir(run_dir)
        return cls(load_yaml(resumed / "config.yaml"), tuple(overrides), str(resumed), resume=resumed,
                   address=address)

    @classmethod
    def of(cls, config: Any, values: Sequence[tuple[str, Any]] = (), address: str | None = None) -> "RunRequest":
        """A config from Python (the API): a file or a ready config by name, a mapping, or an ExperimentConfig;
        `values`: dotted keys set to Python values."""
        if isinstance(config, (str, Path)):
            request = cls.from_file(str(config), address=address)
        elif isinstance(config, ExperimentConfig):
            request = cls(config.to_dict(), address=address)
        elif isinstance(config, dict) or hasattr(config, "keys"):
            request = cls(copy.deepcopy(dict(config)), address=address)
        else:
            raise UserInputError("config", f"expected a config mapping, an ExperimentConfig or a file path, not "
                                           f"{type(config).__name__}")
        data = copy.deepcopy(request.data) if isinstance(request.data, dict) else request.data
        for key, value in values:
            set_dotted(data, key, copy.deepcopy(value))
        return dataclasses.replace(request, data=data)

    def config_data(self) -> dict[str, Any]:
        """The raw config, the cluster's address set."""
        if not self.address or not isinstance(self.data, dict):
            return self.data
        data = copy.deepcopy(self.data)
        set_dotted(data, "runtime.address", self.address)
        return data


@dataclass(frozen=True)
class CheckedRun:
    """A request whose config passed its check: the config, and the directory of the run it resumes."""

    config: ExperimentConfig
    resumed: Path | None = None


def check_request(request: RunRequest, check: ConfigCheck = checked_structure) -> CheckedRun:
    """The check step: the config checked by `check` (errors naming the file and the field), and where the run
    writes checked writable (its control groups too, for enforced devices). The default check leaves the
    strategy's parameters to the whole one (msfusion_ray.experiment.config_check.config_from_dict)."""
    config = checked_config(request, check)
    if request.resume is not None:
        check_output_dir(request.resume, str(request.resume))
    else:
        check_output_dir(config.output_dir, "output_dir")
    if config.runtime.enforce == "cgroups":
        # Imported here: the command line imports this module, and numpy would cost every command 0.3 s.
        from msfusion_ray.devices.enforcement import hierarchy_base

        hierarchy_base()
    return CheckedRun(config, request.resume)


def checked_config(request: RunRequest, check: ConfigCheck) -> ExperimentConfig:
    where = request.where if request.resume is not None else ""
    try:
        return check(request.config_data(), list(request.overrides), where=where, config_dir=request.config_dir)
    except UserInputError as err:
        if not request.where or err.where.startswith(request.where) or err.where.startswith("--set"):
            raise
        raise UserInputError(f"{request.where}: {err.where}", err.message) from None


def code_named(config: ExperimentConfig) -> list[str]:
    """The config fields that may name the user's code (shipped with the job to the cluster's nodes)."""
    return [getattr(getattr(config, section), key) for section, key in CODE_FIELDS]
