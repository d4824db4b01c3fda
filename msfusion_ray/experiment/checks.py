"""The checks `prepare` makes beyond each field's own: what this machine can hold (the global model and a batch,
the object store), the tracker the config asks for, and what the user's own model offers its scheme."""

from __future__ import annotations

import importlib.util

import torch

from msfusion_ray.config import ExperimentConfig, RuntimeConfig, TrainingConfig
from msfusion_ray.costs.footprint import tensor_bytes
from msfusion_ray.costs.memory import machine_memory_bytes
from msfusion_ray.devices.capacity import make_planner
from msfusion_ray.errors import UserInputError
from msfusion_ray.models import ModelFamily
from msfusion_ray.models.module import check_sub_model
from msfusion_ray.strategies.base import Strategy
from msfusion_ray.strategies.width import WidthSplitting

TRACKER_PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}  # runtime.tracking -> the package it needs


def check_tracking(runtime: RuntimeConfig) -> None:
    """The tracker the config asks for can be used here (before anything is started)."""
    if runtime.tracking is not None and importlib.util.find_spec(TRACKER_PACKAGES[runtime.tracking]) is None:
        raise UserInputError("runtime.tracking", f"{runtime.tracking} is not installed (pip install "
                                                 f"'msfusion_ray[{runtime.tracking}]')")


def check_fits_machine(family: ModelFamily, training: TrainingConfig) -> None:
    """Training the global model on one batch must fit this machine's memory: footprints are measured here by
    running the model, so a width or batch size far beyond the machine is refused before it is allocated. The
    weights, gradients and optimizer state are counted on torch's meta device (nothing allocated); the batch's
    share is extrapolated from batches of two and four."""
    machine = machine_memory_bytes()
    try:
        with torch.device("meta"):
            model = family.build()
    except (OverflowError, RuntimeError, TypeError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserInputError("model.width", f"the model cannot be built at width {family.width} ({first})") from None
    weights = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
    state = weights + tensor_bytes(p for p in model.parameters() if p.requires_grad) * (
        1 + training.optimizer_state_copies())
    if state > machine:
        raise UserInputError("model.width", f"training the global model needs {state / 2**30:.1f} GiB for its weights, "
                                            f"gradients and optimizer state alone, more than this machine's "
                                            f"{machine / 2**30:.1f} GiB")
    needed = make_planner(family, training).estimate(family.full_widths(), training.batch_size)
    if needed > machine:
        raise UserInputError("training.batch_size", f"training the global model on batches of {training.batch_size} "
                                                    f"needs about {needed / 2**30:.1f} GiB, more than this machine's "
                                                    f"{machine / 2**30:.1f} GiB")


def check_object_store(config: ExperimentConfig) -> None:
    """The embedded cluster's object store is memory of this machine: one larger than the machine is refused here,
    not by Ray's start-up."""
    machine = machine_memory_bytes()
    if config.runtime.address is None and config.runtime.object_store_mib * 2**20 > machine:
        raise UserInputError("runtime.object_store_mib", f"{config.runtime.object_store_mib} MiB is more than this "
                                                         f"machine's {machine / 2**20:.0f} MiB")


def check_module(family: ModelFamily, strategy: Strategy, needs_features: bool) -> None:
    """What the user's model (a function's network or a family class) must offer its scheme: width tags for a
    width-splitting scheme (checked by cutting a random sub-model), penultimate features for an objective that
    uses them."""
    if needs_features and not family.has_features:
        raise UserInputError("model.name", f"{strategy.name} trains with a loss on the penultimate features: give "
                                           f"the module of {family.name} a forward_features(x) returning "
                                           "(features, logits)")
    if family.spec.groups:
        check_sub_model(family, seed=0)
    elif isinstance(strategy, WidthSplitting):
        raise UserInputError("model.name", f"{strategy.name} splits the model by width, but {family.name} has "
                                           "no width tags (see width_axes in msfusion_ray.splitting.spec)")
