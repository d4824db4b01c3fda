"""The lifecycle's whole check and its prepare step: the config checked with the strategy's parameters, then the
experiment prepared (the expensive part: data, fleet, footprint planning) and, for a resumed run, its checkpoint
checked against its records and config.

This module imports the strategies and so torch: the command line runs it in a process of its own
(msfusion_ray.app.apart), which `note`s the checked config first so that the cluster starts beside the expensive
part and not before the check; the Python API and sweeps run it in their own process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from msfusion_ray.app.request import CheckedRun, RunRequest, check_request, checked_config
from msfusion_ray.experiment.checks import check_module
from msfusion_ray.experiment.config_check import config_from_dict
from msfusion_ray.experiment.prepare import Experiment, prepare
from msfusion_ray.models import ModuleFamily
from msfusion_ray.models.module import check_sub_model
from msfusion_ray.runtime.checkpoint import check_resume


def check_whole(request: RunRequest) -> CheckedRun:
    """The check step in full: every field, the strategy's parameters by its class."""
    return check_request(request, config_from_dict)


def prepare_checked(checked: CheckedRun) -> Experiment:
    """The prepare step: the experiment, and a resumed run's checkpoint checked against it."""
    experiment = prepare(checked.config)
    if checked.resumed is not None:
        check_resume(checked.resumed, experiment)
    return experiment


def check_then_prepare(request: RunRequest, note: Callable[[Any], None]) -> Experiment:
    """Check, `note` the checked run (the launcher may start the cluster now), then prepare."""
    checked = check_whole(request)
    note(checked)
    return prepare_checked(checked)


@dataclass(frozen=True)
class Validation:
    """What `validate` found: the experiment prepared, and for the user's own width-tagged model the widths of a
    random sub-model that was cut, loaded and run forward (None for other models)."""

    experiment: Experiment
    sub_model_widths: dict[str, int] | None


def validate(request: RunRequest) -> Validation:
    """Check and prepare without running: the config, its fleet and data, and the user's model against its
    scheme."""
    experiment = prepare_checked(CheckedRun(checked_config(request, config_from_dict)))
    widths = None
    if isinstance(experiment.family, ModuleFamily):
        check_module(experiment.family, experiment.strategy, experiment.strategy.objective() is not None)
        if experiment.family.spec.groups:
            widths = check_sub_model(experiment.family)
    return Validation(experiment, widths)
