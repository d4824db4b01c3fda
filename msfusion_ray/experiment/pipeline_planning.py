"""From an experiment config to a pipeline planner: the model, the fleet's roles, each owner's batches.

Planning needs no training data where the data set's shape is known without reading it and
`strategy.params.batches_per_owner` is given (e.g. VGG-19 on CIFAR-10 shapes, as in the paper); otherwise the data
is read and partitioned as a run would, and each owner's batches follow from its samples.
"""

from __future__ import annotations

from msfusion_ray.config import ExperimentConfig
from msfusion_ray.data import load_data, partition, planned_shape
from msfusion_ray.errors import UserInputError
from msfusion_ray.experiment.prepare import resolve_fleet
from msfusion_ray.models import build_family
from msfusion_ray.pipeline.plan import PipelineParams, PipelinePlanner, owner_batches
from msfusion_ray.strategies import STRATEGIES
from msfusion_ray.strategies.base import PipelineStrategy
from msfusion_ray.validation import build

def pipeline_strategies() -> list[str]:
    """The registered strategies that run on the pipeline engine."""
    return [name for name, cls in STRATEGIES.items() if issubclass(cls, PipelineStrategy)]


def pipeline_params(config: ExperimentConfig) -> PipelineParams:
    cls = STRATEGIES.get(config.strategy.name)
    if not issubclass(cls, PipelineStrategy):
        raise UserInputError("strategy.name", f"'{config.strategy.name}' is not pipeline split learning "
                                              f"(plan one of: {', '.join(pipeline_strategies())})")
    return build(cls.Params, config.strategy.params, "strategy.params")


def planner_for(config: ExperimentConfig) -> PipelinePlanner:
    params = pipeline_params(config)
    fleet = resolve_fleet(config)
    shape = planned_shape(config.data)
    if params.batches_per_owner is not None and shape is not None:
        batches = [params.batches_per_owner * _epochs(config)] * len(fleet)
    else:
        data = load_data(config.data, config.seed)
        shape = data.shape
        parts = partition(data, config.data, len(fleet), config.seed)
        batches = [owner_batches(len(p), config.training) for p in parts]
        if params.batches_per_owner is not None:
            batches = [params.batches_per_owner * _epochs(config)] * len(fleet)
    family = build_family(config.model.name, shape, config.model.width, config.model.options,
                          memory_format=config.model.memory_format)
    return PipelinePlanner(family, fleet, config.training, params, batches)


def _epochs(config: ExperimentConfig) -> int:
    """Local epochs r of the time model (one when training.local_steps fixes the batches instead)."""
    return 1 if config.training.local_steps is not None else config.training.local_epochs
