"""What a training task's process needs on a device, against the planner's footprint (a profile's `memory_need`).

The planner counts tensors (costs/footprint.py); a device's memory limit judges a process. Beyond its tensors a
PyTorch process on glibc holds what its allocator keeps of freed activations (glibc serves blocks below its mmap
threshold, which rises to the largest block freed so far, from a heap that freed memory fragments), and whatever
the kernels allocate outside torch's tensors. `python -m msfusion_ray calibrate` measures that on a node (whole
tasks, each workload in a fresh process as a host runs it: msfusion_ray/app/task_memory.py) and writes the line
that bounds every measured task from above:

    need = scale x footprint + fixed_mib MiB

and, since the allocator's overhead depends on the model (on this project's machine a whole task of the small CNN
needed 2 to 2.4 times its footprint, the ViT and the transformer 1.1 to 1.4), each built-in family's own scale over
the same fixed part (`families`); a network calibrate did not run (a user's own) gets the line over every family.
The planner then compares the need, not the footprint, with a participant's memory cap: it refuses work whose
need exceeds the cap, and a strategy's rates are searched under the cap a need model leaves for the footprint
(`plannable_bytes`). A profile without the block plans on the footprint alone (every hand-written profile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from msfusion_ray.validation import checked, non_negative, positive

MIB = 1024**2


def _scales(value: dict[str, float]) -> str | None:
    bad = [name for name, scale in value.items() if not scale > 0]
    return f"scales must be > 0 (got {bad[0]}: {value[bad[0]]})" if bad else None


def _at_least_one(value: float) -> str | None:
    return None if value >= 1 else f"must be >= 1 (got {value})"


@dataclass(frozen=True)
class MemoryNeed:
    """need = headroom x (scale x footprint + fixed_mib MiB) (a profile's `memory_need` block); `families`: the
    scale of each model family calibrate measured (by name), where the family decides it (`scale` covers every
    other); `headroom`: what the measured tasks did not show (the same work needs more or less from one task to
    the next, and other batch sizes and rates of a family than the ones measured)."""

    scale: float = checked(check=positive)
    fixed_mib: float = checked(0.0, check=non_negative)
    families: dict[str, float] = checked({}, check=_scales)
    headroom: float = checked(1.0, check=_at_least_one)

    def of(self, family: str | None) -> "MemoryNeed":
        """The need of a model family: its own scale where measured, else the line over every family."""
        if family is None:
            return self
        return MemoryNeed(self.families.get(family, self.scale), self.fixed_mib, headroom=self.headroom)

    def need_bytes(self, footprint_bytes: int) -> int:
        return math.ceil(self.headroom * (self.scale * footprint_bytes + self.fixed_mib * MIB))

    def plannable_bytes(self, cap_bytes: int) -> int:
        """The largest footprint whose need fits `cap_bytes` (0: none)."""
        return int(_plannable(cap_bytes, self.headroom, self.fixed_mib * MIB, self.scale))


def plannable_bytes(cap_bytes: int, need: MemoryNeed | None, family: str | None = None) -> int:
    """The footprint a participant of this cap may plan for a model family: the cap itself where its device has no
    need model."""
    return cap_bytes if need is None else need.of(family).plannable_bytes(cap_bytes)


def plannable_caps(needs: Sequence[MemoryNeed | None], profile_of: np.ndarray, caps: np.ndarray,
                   family: str | None = None) -> np.ndarray:
    """`plannable_bytes` of every participant (`needs` per device class, `profile_of` each one's class)."""
    if all(need is None for need in needs):
        return caps
    needs = [need.of(family) if need is not None else None for need in needs]
    scale = np.array([need.scale if need is not None else 1.0 for need in needs])[profile_of]
    fixed = np.array([need.fixed_mib * MIB if need is not None else 0.0 for need in needs])[profile_of]
    headroom = np.array([need.headroom if need is not None else 1.0 for need in needs])[profile_of]
    return _plannable(caps, headroom, fixed, scale).astype(np.int64)


def _plannable(caps, headroom, fixed_bytes, scale):  # noqa: ANN001, ANN202 (numbers or arrays of them)
    """need(footprint) <= cap, solved for the footprint: one formula for one participant and for a fleet."""
    return np.maximum(0, np.floor((caps / headroom - fixed_bytes) / scale))


def _round_up(value: float, places: int) -> float:
    return math.ceil(value * 10**places - 1e-6) / 10**places


def fit_need(footprints: Sequence[float], needs: Sequence[float], families: Sequence[str] = ()) -> MemoryNeed:
    """The lines above every measured (footprint, need), closest to them in relative terms: one fixed part for
    all, and per model family (`families`, each point's) the smallest scale that holds its points; `scale`, the
    smallest that holds every point, is for networks not measured. The fixed part is the one of the candidates
    (none, and each line through two points of a family) whose lines' summed need / measured is smallest."""
    groups = list(families) if families else [""] * len(footprints)
    points = list(zip(groups, footprints, needs))

    def scales(fixed: float) -> dict[str, float]:
        own: dict[str, float] = {}
        for group, f, n in points:
            own[group] = max(own.get(group, 0.0), (n - fixed) / f)
        return own

    def excess(fixed: float) -> float:
        own = scales(fixed)
        return sum((own[group] * f + fixed) / n for group, f, n in points)

    candidates = [0.0] + [(n0 * f1 - n1 * f0) / (f1 - f0) for g0, f0, n0 in points for g1, f1, n1 in points
                          if g0 == g1 and f1 > f0]
    fixed = min((b for b in candidates if 0 <= b < min(needs)), key=excess)
    fixed_mib = _round_up(fixed / MIB, 2)
    own = {group: _round_up(scale, 4) for group, scale in scales(fixed_mib * MIB).items()}
    overall = max(own.values())
    return MemoryNeed(scale=overall, fixed_mib=fixed_mib, families=own if families else {})
