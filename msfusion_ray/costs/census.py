"""What a training step computes, operation by operation: the input to the roofline time model.

A step's FLOPs alone do not say how long it takes: a convolution with one input channel, a matrix product of a
few rows, a ViT's hundreds of layer norms and GELUs each run far from the processor's peak, and an elementwise op
costs the bytes it moves and a fixed dispatch cost, not FLOPs. So the first step of each shape is also watched by
`OpCensus` (a TorchDispatchMode, beside torch's FLOP counter): every aten operation is sorted into a kind
(convolution, matrix product, attention, view, other), with its FLOPs (torch's own formulas, the ones
FlopCounterMode uses, so the kinds add up to the step's counted FLOPs) and the bytes of the tensors it reads and
writes. Operations of the same kind, FLOPs and bytes are kept as one row with a count, so a census is small (a
ViT step: a few hundred rows) and depends only on shapes, as the FLOPs do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from msfusion_ray.costs.attention import register_cpu_attention_flops
from msfusion_ray.costs.eager import call_directly, dispatch_of

register_cpu_attention_flops()

KINDS = ("conv", "matmul", "attention", "other", "view")
_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "_scaled_mm"}


def kind_of(func: Any) -> str:
    """The kind of an aten operation: what decides which throughput it runs at."""
    name = func._overloadpacket.__name__
    if "convolution" in name:
        return "conv"
    if "attention" in name:
        return "attention"
    if name in _MATMUL:
        return "matmul"
    return "view" if func.is_view else "other"


@dataclass(frozen=True)
class OpGroup:
    """Operations of one kind with the same FLOPs and bytes, `count` of them in the step."""

    kind: str
    flops: int
    bytes: int
    count: int


@dataclass(frozen=True)
class WorkCensus:
    """One training step's operations."""

    groups: tuple[OpGroup, ...]

    @property
    def flops(self) -> int:
        return sum(g.flops * g.count for g in self.groups)

    @property
    def bytes(self) -> int:
        return sum(g.bytes * g.count for g in self.groups)

    @property
    def ops(self) -> int:
        return sum(g.count for g in self.groups)

    def by_kind(self) -> dict[str, tuple[int, int, int]]:
        """(FLOPs, bytes, operations) per kind."""
        totals = {kind: [0, 0, 0] for kind in KINDS}
        for g in self.groups:
            total = totals[g.kind]
            total[0] += g.flops * g.count
            total[1] += g.bytes * g.count
            total[2] += g.count
        return {kind: (t[0], t[1], t[2]) for kind, t in totals.items()}


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class OpCensus(TorchDispatchMode):
    """Counts what each operation run under it computes and moves (see the module's docstring). A view moves
    nothing (it shares its input's storage): its bytes are 0, its dispatch cost remains."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: Counter[tuple[str, int, int]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = kind_of(func)
        flops = 0
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
        moved = 0
        if kind != "view":
            leaves = [x for x in tree_leaves((args, kwargs, out)) if isinstance(x, torch.Tensor)]
            moved = _bytes(leaves)
        self._counts[(kind, flops, moved)] += 1
        return out

    def census(self) -> WorkCensus:
        return WorkCensus(tuple(OpGroup(kind, flops, moved, count)
                                for (kind, flops, moved), count in sorted(self._counts.items())))


call_directly(dispatch_of(OpCensus))
