"""FLOPs of training steps, counted by torch itself and measured once per shape.

`torch.utils.flop_counter.FlopCounterMode` counts matrix multiplications, convolutions and attention (2 FLOPs per
multiply-add), forward and backward; elementwise ops, normalisation and the optimizer step count zero. A step's
FLOPs depend only on the shapes involved, so the first step of each (sub-model shape, batch size) is counted and
the figure reused for every later step of that key. The same first step is watched by the operation census
(costs/census.py), which the roofline time model reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable, Iterable, Mapping, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

from msfusion_ray.costs import eager  # noqa: F401  (the FLOP counter without torch._dynamo)
from msfusion_ray.costs.attention import register_cpu_attention_flops
from msfusion_ray.costs.census import OpCensus, WorkCensus
from msfusion_ray.costs.memory import TensorPeakTracker
from msfusion_ray.costs.threads import one_thread

register_cpu_attention_flops()  # every count in this project sees CPU attention

T = TypeVar("T")


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """Run `fn` and return its result with the FLOPs torch counted while it ran."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, int(counter.get_total_flops())


@dataclass(frozen=True)
class StepCost:
    flops: int
    peak_tensor_bytes: int  # live-tensor peak of the measured step, including the model's own tensors
    census: WorkCensus | None = None  # what its operations compute and move
    measured: bool = False  # this very run of the step was the measured one (instrumented: slower than the others)


class StepCostCache:
    """Measures the first step of each key (FLOPs, live-tensor peak, operation census) and remembers it. It also
    counts the steps run under each census since `begin_tally`: a task's census, step by step."""

    def __init__(self) -> None:
        self._costs: dict[Hashable, StepCost] = {}
        self._tally: Counter[Hashable] = Counter()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._costs

    def run(self, key: Hashable, step: Callable[[], T], resident: Iterable[torch.Tensor]) -> tuple[T, StepCost]:
        """Run one step; measure it if `key` is new. `resident` are tensors alive before the step (the model)."""
        self._tally[key] += 1
        cost = self._costs.get(key)
        if cost is not None:
            return step(), cost
        tracker, census = TensorPeakTracker(), OpCensus()
        tracker.track(resident)
        with tracker, census:
            result, flops = count_flops(step)
        cost = self._costs[key] = StepCost(flops=flops, peak_tensor_bytes=tracker.peak_bytes,
                                           census=census.census())
        return result, replace(cost, measured=True)

    def begin_tally(self) -> None:
        self._tally.clear()

    def tally(self) -> list[tuple[WorkCensus, int]]:
        """(census, steps) of every step run since `begin_tally`."""
        return [(self._costs[key].census, steps) for key, steps in self._tally.items()
                if self._costs[key].census is not None]


class TrainingStepFlops:
    """FLOPs of one training step (forward, loss, backward) of a model at given widths and batch size, counted on
    an example batch: what a participant's first step of that shape counts, known before it runs (engines that
    order work on the virtual timeline predict device time from it)."""

    def __init__(self, build: Callable[..., torch.nn.Module], example_batch: Callable[[int], Any],
                 loss_of: Callable[[torch.nn.Module, Any], torch.Tensor]):
        self._build = build
        self._example_batch = example_batch
        self._loss_of = loss_of
        self._cache: dict[tuple, int] = {}

    def flops(self, widths: Mapping[str, int], batch_size: int) -> int:
        key = (tuple(sorted(widths.items())), batch_size)
        if key not in self._cache:
            model = self._build(widths)
            model.train()
            batch = self._example_batch(batch_size)
            with one_thread():
                self._cache[key] = count_flops(lambda: self._loss_of(model, batch).backward())[1]
        return self._cache[key]
