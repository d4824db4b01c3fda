"""What a participant is asked to do (`WorkOrder`): which sub-model, by which local procedure and objective, from
which global model version. Strategies and engines write orders; a participant's procedure (msfusion_ray.procedures)
carries them out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class NoParams:
    """The parameters of a plug-in that has none."""


@dataclass(frozen=True)
class ObjectiveSpec:
    """A local objective by registered name, with its parameters (see msfusion_ray.training.objective)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcedureSpec:
    """A local training procedure by registered name, with its parameters (see msfusion_ray.procedures.base):
    how a participant turns the weights it receives into the update it sends."""

    name: str = "standard"
    params: Mapping[str, Any] = field(default_factory=dict)


STANDARD = ProcedureSpec()


@dataclass(frozen=True)
class WorkOrder:
    """What a participant is asked to do: which sub-model (a width selection, a depth cut, or within a rate the
    participant chooses itself), by which local procedure and objective, from which global model version.

    The engine fills in the bookkeeping fields (`task`, `base_version`, `state_from`, `vt_start`, the prediction
    and the wall-clock anchor); strategies set the rest.
    """

    participant: int
    selection: Mapping[str, np.ndarray] | None = None  # width units kept per group; None: the whole width
    objective: ObjectiveSpec | None = None
    rate: float = 1.0  # the rate this work was planned at (for the records; a procedure may read it)
    depth: int | None = None  # blocks kept from the input side (families with depth cuts); None: all
    procedure: ProcedureSpec = STANDARD
    extras: Mapping[str, Any] = field(default_factory=dict)  # open: whatever the procedure needs besides
    task: int = -1  # the run's sequence number of this order
    seed_key: tuple[int, ...] = ()  # with the run's seed and the participant: what the task's random draws derive from
    base_version: int = 0  # the global model version handed over
    state_from: int = -1  # the task whose resulting participant state this one starts from (-1: none)
    vt_start: float = 0.0  # virtual time at which the participant is handed the model
    predicted_device_s: float | None = None  # device time known before it runs (None: not predictable)
    wall_anchor: tuple[float, float] | None = None  # (wall time, virtual time) pair for `clock: real` pacing
