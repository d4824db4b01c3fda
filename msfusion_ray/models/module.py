"""A model family made of one function that returns the full network: bring your own model.

The function (`model.name: "my_package.nets:make_net"`, `"./nets.py:make_net"`, or a built-in's registered name)
takes the data's shape and `model.options` and returns an `nn.Module`:

    def make_net(shape: DataShape, options: dict) -> nn.Module

`options` is the plain mapping from the config, or, where the function annotates it with a dataclass, that
dataclass built strictly from it. A function that also takes `width` gets `model.width` and builds its network at
that width; otherwise the global model at `model.width` < 1 is the full network cut to that share of every width
group. For width-splitting schemes the network's layers carry width tags (`width_axes`), and the package builds
every sub-model from the full module itself (msfusion_ray.splitting.resize): the user writes no constructor that
takes widths. Full-model schemes train any module.

For penultimate-layer objectives (MSfusion's contrastive loss) the module also defines
`forward_features(x) -> (features, logits)`; a module without it trains on `forward(x)` as its logits.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from msfusion_ray.code_refs import is_code_ref, load_ref
from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import MODELS, DataShape, ModelFamily, scaled
from msfusion_ray.models.weights import load_weights, to_weights
from msfusion_ray.splitting.index_map import extract, index_map, widths_of
from msfusion_ray.splitting.resize import narrow_module
from msfusion_ray.splitting.spec import SplitSpec
from msfusion_ray.validation import build

Factory = Callable[..., nn.Module]


def resolve_model(source: str) -> Any:
    """What `model.name` names, by one rule for the built-ins and the user's code: a registered name stands for
    the built-in it registers, anything with a ':' is an import path. Either a function returning the full network
    or a ModelFamily subclass (a family that builds its own sub-models, cut by width, by depth or into layers)."""
    return load_ref(source, "model.name") if is_code_ref(source) else MODELS.get(source)


def resolve_factory(source: str) -> Factory:
    """The function a model source names."""
    factory = resolve_model(source)
    if not callable(factory) or is_family_class(factory):
        raise UserInputError("model.name", f"'{source}' is not a function")
    return factory


def is_family_class(entry: Any) -> bool:
    return isinstance(entry, type) and issubclass(entry, ModelFamily)


def options_type(factory: Factory) -> type | None:
    """The dataclass the factory's `options` parameter is annotated with, if any."""
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # noqa: BLE001  (annotations naming what this process cannot import: no typed options)
        return None
    hint = hints.get("options")
    return hint if dataclasses.is_dataclass(hint) else None


def takes_width(factory: Factory) -> bool:
    return "width" in inspect.signature(factory).parameters


def takes_widths(factory: Factory) -> bool:
    return "widths" in inspect.signature(factory).parameters


class ModuleFamily(ModelFamily):
    """Sub-models cut from the full module a factory returns. The full module (the template) is built once per
    process, seeded, so every process holds the same one; it is never sent between processes (the source text
    is, and each process resolves it)."""

    def __init__(self, source: str, data: DataShape, width: float = 1.0, options: Mapping[str, Any] | None = None,
                 seed: int = 0, factory: Factory | None = None):
        self.source = source
        self.name = source
        self.seed = seed
        self._raw_options = dict(options or {})
        self._factory = factory
        factory = self.factory
        typed = options_type(factory)
        if not takes_width(factory) and width > 1:
            raise UserInputError("model.width", f"{source} builds its network at width 1; model.width can only "
                                                f"narrow it (got {width})")
        super().__init__(data, width, build(typed, self._raw_options, "model.options") if typed else self._raw_options)
        self._template: nn.Module | None = None
        self._template_spec: SplitSpec | None = None
        self._template_widths: dict[str, int] | None = None  # a narrowed family's, for a factory taking widths
        self.template_spec()  # the network's own checks and its width tags, where the config is being checked

    @property
    def factory(self) -> Factory:
        if self._factory is None:
            self._factory = resolve_factory(self.source)
        return self._factory

    def template(self) -> nn.Module:
        """The full network: the factory's module, built with the RNG seeded by the run's seed."""
        if self._template is None:
            kwargs = {"width": self.width} if takes_width(self.factory) else {}
            if self._template_widths is not None:
                kwargs["widths"] = dict(self._template_widths)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                try:
                    net = self.factory(self.data, self.options, **kwargs)
                except UserInputError:
                    raise
                except Exception as err:  # noqa: BLE001  (the user's function failed: one line, not a trace)
                    raise UserInputError("model.name", f"{self.source} failed to build the network: "
                                                       f"{type(err).__name__}: {err}") from None
            if not isinstance(net, nn.Module):
                raise UserInputError("model.name", f"{self.source} returned {type(net).__name__}, not an nn.Module")
            self._template = net
        return self._template

    def template_spec(self) -> SplitSpec:
        if self._template_spec is None:
            try:
                self._template_spec = SplitSpec.of(self.template())
            except ValueError as err:  # an unsupported or inconsistent width tag: names the layer
                raise UserInputError("model.name", f"{self.source}: {err}") from None
        return self._template_spec

    def default_widths(self) -> dict[str, int]:
        groups = dict(self.template_spec().groups)
        if takes_width(self.factory):
            return groups
        return {group: min(units, scaled(units, self.width)) for group, units in groups.items()}

    def _build(self, widths: Mapping[str, int]) -> nn.Module:
        return narrow_module(self.template(), self.template_spec(), widths)

    def narrowed(self, widths: Mapping[str, int]) -> "ModuleFamily":
        """A smaller global model: cut from the full network, or, where the factory takes `widths`, built by it at
        those widths (a network whose initialisation depends on its size then starts as one of that size would)."""
        narrow = super().narrowed(widths)
        if takes_widths(self.factory):
            narrow._template_widths = narrow.full_widths()
            narrow._template = narrow._template_spec = None
        return narrow

    @property
    def has_features(self) -> bool:
        return hasattr(self.template(), "forward_features")  # the template, not a fresh copy

    def __copy__(self) -> "ModuleFamily":
        """In this process a copy shares the factory and the network (only pickling leaves them behind)."""
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__)
        return copied

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_factory=None, _template=None, _template_spec=None, options=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        typed = options_type(self.factory)
        self.options = build(typed, self._raw_options, "model.options") if typed else self._raw_options


def build_family(name: str, data: DataShape, width: float = 1.0, options: Mapping[str, Any] | None = None,
                 seed: int = 0, memory_format: str = "auto") -> ModelFamily:
    """The family `model.name` names (registered, or by import path): a function returning the full network,
    or a ModelFamily subclass. A family class found by import path is named by that path, so that caches keyed by
    the family's name never mix it with the built-in it may derive from."""
    entry = resolve_model(name)
    if is_family_class(entry):
        family = entry(data, width, build(entry.Options, dict(options or {}), "model.options"))
        if is_code_ref(name):
            family.name = name
    elif callable(entry):
        family = ModuleFamily(name, data, width, options, seed, factory=entry)
    else:
        raise UserInputError("model.name", f"'{name}' is neither a function nor a ModelFamily subclass")
    family.use_memory_format(memory_format)
    return family


def random_selection(spec: SplitSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random, non-empty, proper subset of units in every group that has more than one."""
    return {group: np.sort(rng.choice(units, int(rng.integers(1, units)), replace=False))
            for group, units in spec.groups.items() if units > 1}


def check_sub_model(family: ModelFamily, seed: int = 0) -> dict[str, int]:
    """Extraction and the built sub-model agree for a random selection: the weights the index maps cut out of the
    global model load into the model built at those widths, and it runs forward to outputs of the full model's
    shape. Returns the widths checked; a disagreement is a one-line `UserInputError` naming the key or the error."""
    spec = family.spec
    selection = random_selection(spec, np.random.default_rng(seed))
    widths = widths_of(spec, selection)
    weights = extract(to_weights(family.build()), index_map(spec, selection))
    sub = family.build(widths)
    where = f"{family.name}: the sub-model at widths {widths}"
    try:
        load_weights(sub, weights)
    except ValueError as err:
        raise UserInputError("model.name", f"{where} does not match what extraction cuts: {err}") from None
    x, _ = family.example_batch(2)
    full = family.build().eval()
    try:
        with torch.no_grad():
            out, expected = sub.eval()(x), full(x)
    except Exception as err:  # noqa: BLE001  (e.g. a size saved in __init__ and used in forward)
        message = str(err).splitlines()[0] if str(err) else ""
        raise UserInputError("model.name", f"{where} fails its forward pass ({type(err).__name__}: {message}); "
                                           "take sizes from the input or the layers, not from __init__") from None
    if tuple(out.shape) != tuple(expected.shape):
        raise UserInputError("model.name", f"{where} outputs shape {tuple(out.shape)}, the full model "
                                           f"{tuple(expected.shape)}")
    return widths
