"""The contract every model family follows: build the network at given widths, and say how it splits.

A family knows its full widths (units per width group at the configured width multiplier) and can build the
network with any subset of those units per group; the split spec is read off the full model's width tags, so the
shapes of every sub-model follow from one declaration in the model's constructor.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from msfusion_ray.registry import Registry
from msfusion_ray.splitting.spec import SplitSpec


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about its data: input shape per sample, number of outputs, and the task."""

    input_shape: tuple[int, ...]
    num_outputs: int
    task: str = "classification"  # or "language_model"
    input_dtype: str = "float"  # or "int": token ids (language models' always are)


@dataclass(frozen=True)
class NoOptions:
    pass


class ModelFamily(ABC):
    name: str
    Options: ClassVar[type] = NoOptions  # the family's own typed settings (config: model.options)

    def __init__(self, data: DataShape, width: float = 1.0, options: Any = None):
        self.data = data
        self.width = width
        self.options = options if options is not None else self.Options()
        self._widths: dict[str, int] | None = None

    @abstractmethod
    def default_widths(self) -> dict[str, int]:
        """Units per width group at the configured width multiplier."""

    def full_widths(self) -> dict[str, int]:
        """Units per width group of the global model."""
        return dict(self._widths) if self._widths is not None else self.default_widths()

    def narrowed(self, widths: Mapping[str, int]) -> "ModelFamily":
        """The same family with a smaller global model (units per group); sub-models are then slices of it."""
        narrow = copy.copy(self)
        narrow.__dict__.pop("spec", None)
        narrow._widths = {**self.full_widths(), **widths}
        return narrow

    def shape_key(self, widths: Mapping[str, int]) -> tuple:
        """A hashable name for the architecture at these widths (caches of footprints and FLOPs use it)."""
        return (self.name, self.data, repr(self.options), tuple(sorted({**self.full_widths(), **widths}.items())))

    @abstractmethod
    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        """The network with `widths` units per group (every group present)."""

    def build(self, widths: Mapping[str, int] | None = None) -> nn.Module:
        full = self.full_widths()
        merged = dict(full) if widths is None else {**full, **widths}
        return self._build(merged)

    @cached_property
    def spec(self) -> SplitSpec:
        return SplitSpec.of(self.build())

    def example_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """An input batch of the right shape (for footprints and FLOP counts; values do not matter)."""
        if self.data.task == "language_model":
            tokens = torch.zeros((batch_size, *self.data.input_shape), dtype=torch.long)
            return tokens, tokens.clone()
        dtype = torch.long if self.data.input_dtype == "int" else torch.float32
        return torch.zeros((batch_size, *self.data.input_shape), dtype=dtype), torch.zeros(batch_size, dtype=torch.long)


def scaled(base: int, width: float) -> int:
    return max(1, round(base * width))


# A registered model is a function returning the full, width-tagged network (see msfusion_ray.models.module), or a
# ModelFamily subclass that builds its sub-models itself.
MODELS: Registry[Callable[..., Any]] = Registry("model", "model.name", ("msfusion_ray.models",))
register = MODELS.register


def family_names() -> list[str]:
    return MODELS.names()
