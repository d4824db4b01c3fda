"""The contract every model family follows: build the network at given widths, and say how it splits.

A family knows its full widths (units per width group at the configured width multiplier) and can build the
network with any subset of those units per group; the split spec is read off the full model's width tags, so the
shapes of every sub-model follow from one declaration in the model's constructor.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from msfusion_ray.errors import UserInputError
from msfusion_ray.models.exits import check_depth
from msfusion_ray.registry import Registry
from msfusion_ray.splitting.spec import SplitSpec

if TYPE_CHECKING:
    from msfusion_ray.models.layers import Layer


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


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def has_spatial_convolution(network: nn.Module) -> bool:
    """`model.memory_format: auto`'s rule, one for every network, built-in or the user's: channels last where the
    network has a 2-d convolution whose windows overlap (a kernel larger than its stride). Each such network
    measured here trained and evaluated faster channels last on CPU (one thread, training step and evaluation of
    batch 128, 2026-12-07): the FedAvg CNN 17 % and 2.1x, the small CNN 28-37 % and 2-2.9x, ResNet-18 and -101
    (width 0.25) 9-18 % and 1.15-1.3x, VGG 8 % and 1.3x. A network without convolutions, or whose only ones tile
    the image into patches (the ViT's patch embedding: kernel = stride; 4-5 % slower channels last), stays in
    torch's layout."""
    return any(isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
               and any(kernel > stride for kernel, stride in zip(module.kernel_size, module.stride))
               for module in network.modules())


class ModelFamily(ABC):
    """Networks of one architecture at any widths (and depth cuts), and how they split.

    Networks are built in the family's memory layout (`channels_last`: under `model.memory_format: auto`, what
    `has_spatial_convolution` says of the global model): channels last, oneDNN's CPU convolutions and
    max-pooling run without reordering every call. The same arithmetic in another order: results agree to
    rounding, not bit for bit, with `model.memory_format: contiguous`."""

    name: str
    Options: ClassVar[type] = NoOptions  # the family's own typed settings (config: model.options)

    def __init__(self, data: DataShape, width: float = 1.0, options: Any = None):
        self.data = data
        self.width = width
        self.options = options if options is not None else self.Options()
        self._widths: dict[str, int] | None = None
        self._depth: int | None = None  # a depth cut of the global model (families with blocks)

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
        narrow.__dict__.pop("_keys_by_depth", None)
        narrow._widths = {**self.full_widths(), **widths}
        return narrow

    def shape_key(self, widths: Mapping[str, int], depth: int | None = None) -> tuple:
        """A hashable name for the architecture at these widths (caches of footprints and FLOPs use it)."""
        key = (self.name, self.data, repr(self.options), tuple(sorted({**self.full_widths(), **widths}.items())))
        depth = self.depth if depth is None else depth
        return key if depth == self.n_blocks else (*key, ("depth", depth))

    # Depth: families built of a stack of blocks with early exits (models/exits.py) override these three.
    @property
    def n_blocks(self) -> int | None:
        """Blocks of the uncut model; None for families without depth blocks."""
        return None

    def exit_depths(self) -> tuple[int, ...]:
        """Block counts after which an exit head reads the stream, shallow to deep."""
        return ()

    def _build_cut(self, widths: Mapping[str, int], depth: int) -> nn.Module:
        """The first `depth` blocks and the exits at or below them."""
        raise ValueError(f"model '{self.name}' has no depth blocks to cut")

    @property
    def depth(self) -> int | None:
        """Blocks of this family's global model (a cut, or all of them)."""
        return self._depth if self._depth is not None else self.n_blocks

    def cut(self, depth: int) -> "ModelFamily":
        """The same family with a depth-cut global model; sub-models are then cuts and slices of it."""
        if self.n_blocks is None:
            raise ValueError(f"model '{self.name}' has no depth blocks to cut")
        check_depth(self.exit_depths(), depth, self.n_blocks)
        shallow = copy.copy(self)
        shallow.__dict__.pop("spec", None)
        shallow.__dict__.pop("_keys_by_depth", None)
        shallow._depth = depth
        return shallow

    def depth_keys(self, depth: int | None) -> frozenset[str]:
        """The state-dict keys (floating point) a cut at `depth` blocks has; every key at None."""
        cache = self.__dict__.setdefault("_keys_by_depth", {})
        if depth not in cache:
            state = self.build(depth=depth).state_dict()
            cache[depth] = frozenset(k for k, v in state.items() if v.is_floating_point())
        return cache[depth]

    def groups_at(self, depth: int | None) -> dict[str, int]:
        """Width groups (units at full width) of the parameters a cut at `depth` blocks holds."""
        keys = self.depth_keys(depth)
        held = {axis.group for key in keys for axis in self.spec.params[key] if axis is not None}
        return {g: n for g, n in self.spec.groups.items() if g in held}

    @abstractmethod
    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        """The network with `widths` units per group (every group present)."""

    def build(self, widths: Mapping[str, int] | None = None, depth: int | None = None) -> nn.Module:
        """The network at `widths` (groups omitted: whole) and, for families with blocks, cut at `depth` blocks
        (None: the global model's depth), in the family's memory layout."""
        full = self.full_widths()
        merged = dict(full) if widths is None else {**full, **widths}
        depth = self.depth if depth is None else depth
        whole = depth is None or depth == self.n_blocks
        model = self._build(merged) if whole else self._build_cut(merged, depth)
        if whole and merged == full and "channels_last" not in self.__dict__:
            self.channels_last = has_spatial_convolution(model)  # the global model, decided without a build of its own
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @cached_property
    def channels_last(self) -> bool:
        """Whether the networks are built channels last: `model.memory_format`, under `auto` (the default) what
        `has_spatial_convolution` says of the global model, decided once (by its first build, which every process
        that prepares a run makes) and kept by narrowed and cut copies and by the pickled family each host gets."""
        with torch.random.fork_rng(devices=[]):  # deciding takes no draws a run would see
            return has_spatial_convolution(self._build(self.full_widths()))

    def use_memory_format(self, memory_format: str) -> None:
        """`model.memory_format`: auto (decided from the network, `has_spatial_convolution`), channels_last or
        contiguous."""
        if memory_format not in MEMORY_FORMATS:
            raise UserInputError("model.memory_format", f"must be one of {', '.join(MEMORY_FORMATS)} "
                                                        f"(got {memory_format!r})")
        self.__dict__.pop("channels_last", None)
        if memory_format != "auto":
            self.channels_last = memory_format == "channels_last"

    def layers(self, widths: Mapping[str, int] | None = None) -> list["Layer"]:
        """The model cut by depth: its layers in forward order, each buildable alone (see models/layers.py), in
        the family's memory format as `build` makes the whole."""
        layers = self._layers(widths)
        if not self.channels_last:
            return layers
        return [replace(layer, build=lambda build=layer.build: build().to(memory_format=torch.channels_last))
                for layer in layers]

    def _layers(self, widths: Mapping[str, int] | None = None) -> list["Layer"]:
        """Families that pipeline split learning can cut override this."""
        raise UserInputError("model.name", f"the {self.name} model cannot be cut into layers")

    @cached_property
    def spec(self) -> SplitSpec:
        return SplitSpec.of(self.build())

    @property
    def has_features(self) -> bool:
        """Whether the network gives its penultimate features (`forward_features`), as contrastive losses need."""
        return hasattr(self.build(), "forward_features")

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
# ModelFamily subclass that builds its sub-models itself; an import path in `model.name` names either kind the same
# way (msfusion_ray.models.module.resolve_model).
MODELS: Registry[Callable[..., Any]] = Registry("model", "model.name", ("msfusion_ray.models",))
register = MODELS.register


def family_names() -> list[str]:
    return MODELS.names()
