"""Which schemes can run on this model and fleet, and in one line why the others cannot.

The rules (`reason_not_applicable`) are pure: they read `Facts`, what the model offers (width tags, blocks with
early exits, layers, penultimate features) and what the fleet holds (whether any device can hold the whole model,
or its narrowest sub-model; compute nodes). `facts_of` gathers them from a config: it builds the model and the
fleet and plans training footprints (no data is read where the data set's shape is known, and nothing runs).
"""

from __future__ import annotations

from dataclasses import dataclass

from msfusion_ray.app.compare_schemes import SCHEMES, Scheme
from msfusion_ray.config import ExperimentConfig
from msfusion_ray.data import load_data, planned_shape
from msfusion_ray.devices.capacity import CapacityOracle, make_planner
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.prepare import resolve_fleet
from msfusion_ray.models import build_family
from msfusion_ray.strategies.width import SMALLEST_RATE

MIB = 2**20


@dataclass(frozen=True)
class Facts:
    model: str
    task: str  # classification, or language_model (judged by perplexity)
    width_tags: bool
    exits: bool  # blocks with at least two early exits (a depth cut ends at one)
    layers: bool  # can be cut into layers (pipeline split learning)
    features: bool  # gives its penultimate features (forward_features)
    whole_bytes: int  # training footprint of the whole model at the batch size
    narrowest_bytes: int  # ... of its narrowest width slice (the whole model without width tags)
    largest_cap_bytes: int  # the largest memory cap among the data owners
    compute_nodes: int
    participants: int

    @property
    def whole_fits(self) -> bool:
        return self.whole_bytes <= self.largest_cap_bytes

    @property
    def narrowest_fits(self) -> bool:
        return self.narrowest_bytes <= self.largest_cap_bytes


def _mib(value: int) -> str:
    return f"{value / MIB:.2f} MiB"


def reason_not_applicable(scheme: Scheme, facts: Facts) -> str | None:
    """Why the scheme cannot run on this model and fleet, in one line (None: it can)."""
    model = f"the {facts.model} model"
    no_whole = (f"no device can hold the whole {facts.model} model (training it needs {_mib(facts.whole_bytes)}; the "
                f"largest memory cap is {_mib(facts.largest_cap_bytes)})")
    no_narrowest = (f"no device can hold even the narrowest sub-model of {facts.model} (needs "
                    f"{_mib(facts.narrowest_bytes)}; the largest memory cap is {_mib(facts.largest_cap_bytes)})")
    needs = scheme.needs
    if needs in ("width", "small"):
        if not facts.width_tags:
            return f"{model} has no width tags to {'split' if needs == 'width' else 'narrow'} it by"
        if scheme.features and not facts.features:
            return f"{model} gives no penultimate features (forward_features) for its contrastive loss"
        return None if facts.narrowest_fits else no_narrowest
    if needs == "whole":
        return None if facts.whole_fits else no_whole
    if needs == "async":
        if facts.width_tags:
            return None if facts.narrowest_fits else no_narrowest
        return None if facts.whole_fits else f"{no_whole}, and it has no width tags to train slices of"
    if needs == "depth":
        return None if facts.exits else f"{model} cannot be cut by depth with early exits"
    if not facts.layers:
        return f"{model} cannot be cut into layers"
    return None if facts.compute_nodes else "the fleet has no compute nodes"


def applicable(facts: Facts, strategies: list[str]) -> tuple[list[str], dict[str, str]]:
    """The strategies that can run (in the order given), and the others' labels with why not."""
    runnable, excluded = [], {}
    for strategy in strategies:
        reason = reason_not_applicable(SCHEMES[strategy], facts)
        if reason is None:
            runnable.append(strategy)
        else:
            excluded[SCHEMES[strategy].label] = reason
    return runnable, excluded


def facts_of(config: ExperimentConfig) -> Facts:
    """What the config's model and fleet offer: the model built, the fleet expanded, two footprints planned."""
    shape = planned_shape(config.data) or load_data(config.data, config.seed).shape
    family = build_family(config.model.name, shape, config.model.width, config.model.options, config.seed,
                          config.model.memory_format)
    fleet = resolve_fleet(config)
    capacity = CapacityOracle(fleet, family, make_planner(family, config.training), config.training.batch_size)
    whole = capacity.footprint_bytes(family.full_widths())
    narrowest = capacity.footprint_bytes(capacity.rate_widths(SMALLEST_RATE)) if family.spec.groups else whole
    return Facts(model=config.model.name, task=family.data.task, width_tags=bool(family.spec.groups),
                 exits=family.n_blocks is not None and len(family.exit_depths()) >= 2, layers=_has_layers(family),
                 features=family.has_features, whole_bytes=whole, narrowest_bytes=narrowest,
                 largest_cap_bytes=int(fleet.memory_caps.max()),
                 compute_nodes=len(fleet.compute_nodes), participants=len(fleet))


def _has_layers(family) -> bool:  # noqa: ANN001 (ModelFamily)
    try:
        family.layers()
    except UserInputError:
        return False
    return True
