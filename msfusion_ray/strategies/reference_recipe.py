"""The training recipe of the baselines' reference code, as options of HeteroFL, FedRolex and Federated Dropout.

HeteroFL's code (github.com/diaoenmao/HeteroFL-...) trains every participant with three tricks, on by default in
its config (`norm: bn`, `scale: 1`, `mask: 1`); FedRolex's code (github.com/AIoT-MLSys-Lab/FedRolex) copies the
models and the aggregation, for its rolling and its random (Federated-Dropout-style) sub-models alike. Here each
trick is one flag of `strategy.params`, off by default (the baselines as they ran before):

- `static_bn`: BatchNorm normalises with each batch's own statistics in training and keeps no running
  statistics (`nn.BatchNorm2d(..., momentum=None, track_running_stats=track)` with track False for the
  participants' models: HeteroFL src/models/resnet.py and src/models/conv.py, FedRolex models/resnet.py). The
  global model's statistics are computed on training data before every evaluation
  (`runtime.bn_calibration_samples`), as the reference's `stats()` does (HeteroFL src/train_classifier_fed.py).
- `scaler`: in training, the output of every layer whose output side is a width group is divided by the
  participant's rate; evaluation leaves it alone (`Scaler`, HeteroFL src/modules/modules.py: `input / self.rate
  if self.training else input`, placed after every hidden conv in conv.py and before every norm in resnet.py).
- `label_mask`: the logits of the classes the participant holds no sample of are set to 0 before the
  cross-entropy (`out.masked_fill(label_mask == 0, 0)` in the models' forward), and in aggregation the
  classifier's rows of those classes are left out of its update, so each row is averaged over the participants
  that hold its class (`Federation.combine`, HeteroFL src/fed.py; `combine`, FedRolex resnet_server.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from msfusion_ray.models.weights import Weights
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.strategies.base import ObjectiveSpec, ParticipantInfo, TrainTask, Update
from msfusion_ray.strategies.width import WidthParams, WidthSplitting
from msfusion_ray.training.objective import LocalObjective, ObjectiveContext, register_objective
from msfusion_ray.validation import checked, fraction

RECIPE = "reference_recipe"


@dataclass(frozen=True)
class BaselineParams(WidthParams):
    static_bn: bool = False  # BatchNorm on batch statistics only, no running statistics, in training
    scaler: bool = False  # width-group outputs divided by the rate in training
    label_mask: bool = False  # only the classes a participant holds: in its loss and in aggregation


@dataclass(frozen=True)
class CountAveragedParams(BaselineParams):
    """HeteroFL's and FedRolex's reference code average each entry over its holders, counted equally."""

    weighting: Literal["samples", "count"] = "count"


class BaselineSplitting(WidthSplitting):
    """A width-splitting baseline whose participants may train with the reference recipe."""

    Params = BaselineParams

    def _uses_recipe(self) -> bool:
        return self.params.static_bn or self.params.scaler or self.params.label_mask

    def reads_labels(self) -> bool:
        return self.params.label_mask

    def objective(self) -> ObjectiveSpec | None:
        return ObjectiveSpec(RECIPE, {"static_bn": self.params.static_bn}) if self._uses_recipe() else None

    def task_objective(self, participant: ParticipantInfo, rate: float) -> ObjectiveSpec | None:
        if not self._uses_recipe():
            return None
        classes = list(participant.labels) if self.params.label_mask and participant.labels is not None else None
        return ObjectiveSpec(RECIPE, {"static_bn": self.params.static_bn,
                                      "scaler_rate": rate if self.params.scaler else None, "classes": classes})

    def kept_class_rows(self, task: TrainTask) -> dict[str, tuple[int, np.ndarray]] | None:
        """Per key of the classifier, the rows of the classes this participant holds (None: every row)."""
        classes = task.objective.params.get("classes") if task.objective is not None else None
        if classes is None:
            return None
        return {key: (dim, np.isin(np.arange(self.spec.shapes[key][dim]), classes))
                for key, dim in self.spec.class_axes.items()}

    def fold(self, accumulator: ScatterAccumulator, task: TrainTask, update: Update, global_weights: Weights) -> None:
        weight = float(update.samples) if self.params.weighting == "samples" else 1.0
        accumulator.add(update.weights, self.index_map(task), weight=weight, kept_rows=self.kept_class_rows(task))


@dataclass(frozen=True)
class RecipeParams:
    static_bn: bool = False
    scaler_rate: float | None = checked(None, check=fraction)  # None: no Scaler
    classes: list[int] | None = None  # the classes the participant holds; None: no mask


def scaled_layers(model: nn.Module) -> list[nn.Module]:
    """The layers a Scaler follows: convolutions and linear layers whose output side is a width group."""
    return [m for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "width_out", None) is not None]


@register_objective(RECIPE)
class ReferenceRecipe(LocalObjective):
    """The reference code's static BatchNorm, Scaler and label mask, applied to the participant's sub-model for the
    duration of its training (the global model is evaluated without them). Adds no loss term and holds nothing."""

    Params = RecipeParams

    def begin(self, model: nn.Module, context: ObjectiveContext) -> None:
        self._norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if self.params.static_bn:
            for norm in self._norms:
                norm.track_running_stats = False  # training then normalises by the batch and updates nothing
        self._hooks = []
        rate = self.params.scaler_rate
        if rate is not None:
            def scale(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
                return output / rate if module.training else output

            self._hooks = [layer.register_forward_hook(scale) for layer in scaled_layers(model)]
        self._mask: torch.Tensor | None = None

    def task_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.params.classes is None:
            return logits
        if self._mask is None or len(self._mask) != logits.shape[-1]:
            self._mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
            self._mask[self.params.classes] = True
        return logits.masked_fill(~self._mask, 0)

    def loss(self, x: torch.Tensor, features: torch.Tensor, logits: torch.Tensor) -> None:
        return None

    def end(self, model: nn.Module, context: ObjectiveContext) -> None:
        for hook in self._hooks:
            hook.remove()
        for norm in self._norms:
            norm.track_running_stats = True
