"""MSfusion (Xie & Li, arXiv 2407.03622), as formulated here: the paper's equations are not public, so every rule
below is our reading of its abstract; docs/algorithms.md states them with their defaults.

- Rates: each participant trains the largest width slice whose footprint (including the contrastive loss's frozen
  reference models: two, or one with in-batch negatives) fits its memory.
- Double shifting: in every width group the participants' windows are laid around the group as a ring, each
  starting at (1 - overlap) x its tiled offset (spatial shift), and the whole arrangement advances `step` units per
  round (temporal shift; default: the smallest window of the round).
- Adaptive overlap: after each round the model shift s = (variance of the participants' updates on the entries
  two or more of them shared) / (mean squared update there), a number in [0, 1], sets next round's overlap:
  overlap <- (1 - beta) overlap + beta (overlap_min + (overlap_max - overlap_min) s). Participants that disagree
  get more common parameters to fuse on; participants that agree spread out and cover more of the model.
- Contrastive loss (MOON-style, on the penultimate representation z of the local sub-model): positive is the
  representation of the sub-model as received this round, negative that of the participant's previous local
  model realigned to this round's window (units both windows hold in place, the others in order: the previous
  network itself, its units permuted); loss = CE + mu x -log(e^{cos(z,z+)/tau} / (e^{cos(z,z+)/tau} +
  e^{cos(z,z-)/tau})). A participant with no previous model (its first task) takes the batch's other samples
  as negatives. The cheaper variant (`contrastive_negatives: batch`) always does: the negatives of a sample are
  the received model's representations of the batch's other samples (InfoNCE), so one frozen copy and one extra
  forward pass instead of two. The frozen copies normalise with the batch's own statistics, as the trained
  sub-model does (the global running statistics are averages over other windows and widths).
- Model shift: measured over the trainable parameters (BatchNorm running statistics left out).
- Aggregation on common parameters: scatter-average of the updates over the participants holding each entry,
  weighted by sample count. Peer-to-peer bytes: what each participant would send its peers, i.e. the entries of its
  update that each other participant also holds.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.weights import Weights, load_weights, to_weights
from msfusion_ray.splitting import schedules
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.index_map import Selection, extract, realign, shared_entries, units_at_rate
from msfusion_ray.strategies import register
from msfusion_ray.strategies.base import Capacity, ObjectiveSpec, ParticipantInfo, TrainTask, Update
from msfusion_ray.strategies.width import SMALLEST_RATE, WidthParams, WidthSplitting
from msfusion_ray.training.objective import LocalObjective, ObjectiveContext, register_objective
from msfusion_ray.validation import checked, fraction, positive, probability

BYTES_PER_ENTRY = 4  # float32
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class MSfusionParams(WidthParams):
    overlap: float = checked(0.0, check=probability)  # the first round's overlap (fixed without adaptation)
    adaptive_overlap: bool = True
    overlap_min: float = checked(0.0, check=probability)
    overlap_max: float = checked(1.0, check=probability)
    overlap_smoothing: float = checked(0.5, check=fraction)  # beta: weight of the newest measurement
    temporal_step: float | None = checked(None, check=fraction)  # share of a group moved per round
    # Train only as much as needed: rates are lowered (water-filling under each device's cap) until they sum to
    # this many copies of the model per round. None: every participant trains the largest slice it can hold.
    target_multiplicity: float | None = checked(None, check=positive)
    contrastive: bool = True
    contrastive_weight: float = checked(1.0, check=positive)  # mu
    temperature: float = checked(0.5, check=positive)  # tau
    # previous: the negative is the participant's previous local model (two frozen copies); batch: the negatives
    # are the received model's representations of the batch's other samples (one frozen copy)
    contrastive_negatives: Literal["previous", "batch"] = "previous"


@register("msfusion")
class MSfusion(WidthSplitting):
    Params = MSfusionParams

    def __init__(self, params: MSfusionParams, family: ModelFamily, seed: int):
        super().__init__(params, family, seed)
        self.overlap = params.overlap
        self._round_stats: dict[str, float] = {}

    def objective(self) -> ObjectiveSpec | None:
        if not self.params.contrastive:
            return None
        return ObjectiveSpec("msfusion_contrastive", {"weight": self.params.contrastive_weight,
                                                       "temperature": self.params.temperature,
                                                       "negatives": self.params.contrastive_negatives})

    def rates(self, participants: Sequence[ParticipantInfo], capacity: Capacity) -> dict[int, float]:
        largest = super().rates(participants, capacity)
        target = self.params.target_multiplicity
        if target is None or sum(largest.values()) <= target:
            return largest
        level = water_level(list(largest.values()), target)
        return {pid: max(SMALLEST_RATE, min(rate, level)) for pid, rate in largest.items()}

    def select(self, round_idx: int, participants: list[ParticipantInfo],
               rates: dict[int, float]) -> dict[int, Selection]:
        ring = sorted(participants, key=lambda p: p.id)
        selections: dict[int, dict[str, np.ndarray]] = {p.id: {} for p in ring}
        covered = total = 0
        for group, units in self.spec.groups.items():
            lengths = [units_at_rate(units, rates[p.id]) for p in ring]
            step = units_at_rate(units, self.params.temporal_step) if self.params.temporal_step else min(lengths)
            starts = schedules.double_shift_starts(lengths, units, self.overlap, round_idx - 1, step)
            hit = np.zeros(units, dtype=bool)
            for p, start, length in zip(ring, starts, lengths):
                selections[p.id][group] = schedules.window(units, start, length)
                hit[selections[p.id][group]] = True
            covered += int(hit.sum())
            total += units
        self._round_stats = {"overlap": self.overlap, "coverage": covered / total if total else 1.0}
        return selections

    def new_accumulator(self, global_weights: Weights) -> ScatterAccumulator:
        return ScatterAccumulator(global_weights, track_dispersion=True)

    def fold(self, accumulator: ScatterAccumulator, task: TrainTask, update: Update, global_weights: Weights) -> None:
        imap = self.index_map(task)
        weight = float(update.samples) if self.params.weighting == "samples" else 1.0
        accumulator.add(update.weights, imap, weight=weight, reference=extract(global_weights, imap))

    def combine(self, round_idx: int, global_weights: Weights,
                accumulator: ScatterAccumulator) -> tuple[Weights, dict[str, float]]:
        # Over the trainable parameters only: BatchNorm's running statistics are few entries but move far more
        # than any weight in a round, and would set the shift by themselves.
        variance, energy = accumulator.shared_dispersion(global_weights, self.spec.trainable())
        shift = variance / energy if energy > 0 else 0.0
        if self.params.adaptive_overlap and energy > 0:
            target = self.params.overlap_min + (self.params.overlap_max - self.params.overlap_min) * shift
            beta = self.params.overlap_smoothing
            self.overlap = (1 - beta) * self.overlap + beta * target
        metrics = {**self._round_stats, "model_shift": shift, "next_overlap": self.overlap}
        return accumulator.result(global_weights), metrics

    def peer_bytes(self, task: TrainTask, round_tasks: Sequence[TrainTask], weights: Weights) -> int:
        return BYTES_PER_ENTRY * sum(shared_entries(self.spec, task.selection, other.selection)
                                     for other in round_tasks if other.participant != task.participant)

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"overlap": self.overlap}, {}

    def load_state_dict(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.overlap = float(values["overlap"])


def water_level(caps: list[float], total: float) -> float:
    """The level L with sum(min(cap, L)) = total (caps summing to more than total): everyone gets the same rate
    unless its device caps it lower."""
    low, high = 0.0, max(caps)
    for _ in range(50):
        middle = (low + high) / 2
        if sum(min(cap, middle) for cap in caps) < total:
            low = middle
        else:
            high = middle
    return high


@dataclass(frozen=True)
class ContrastiveParams:
    weight: float = checked(1.0, check=positive)
    temperature: float = checked(0.5, check=positive)
    negatives: Literal["previous", "batch"] = "previous"


def _model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


@register_objective("msfusion_contrastive")
class SubModelContrastive(LocalObjective):
    """Keeps the local sub-model's representation of each sample near the received sub-model's and away from a
    negative: its own previous local model's, realigned to this round's window (`negatives: previous`, two frozen
    copies of the sub-model; in a participant's first task, before there is a previous model, the batch's other
    samples), or the received sub-model's representations of the batch's other samples (`negatives: batch`, one
    frozen copy). The copies and their passes are counted in the participant's footprint and FLOPs."""

    Params = ContrastiveParams

    @property
    def copies(self) -> int:
        return 2 if self.params.negatives == "previous" else 1

    def extra_bytes(self, model: nn.Module, batch: Any) -> int:
        """The frozen copies of the sub-model and the representations kept from their passes; with in-batch
        negatives (always with `batch`, in a first task with `previous`, in place of the second copy) the
        similarity matrix of the batch's representations and its softmax (kept for backward). The passes run
        before the trained model's forward (`before_forward`), when its saved activations are not yet alive, and
        a no-grad pass holds less than a training forward keeps, so their transient memory adds nothing to the
        peak."""
        was_training = model.training
        with torch.no_grad():
            kept = model.eval().forward_features(batch[0])[0]  # eval: BatchNorm's running statistics stay as they are
        model.train(was_training)
        representation = kept.numel() * kept.element_size()
        copy_bytes = _model_bytes(model) + representation
        rows = kept.numel() // kept.shape[-1]
        similarities = 2 * rows * rows * kept.element_size()
        if self.params.negatives == "batch":
            return copy_bytes + similarities
        return copy_bytes + max(copy_bytes, similarities)

    def begin(self, model: nn.Module, context: ObjectiveContext) -> None:
        self._positive = _frozen_copy(model, context.received)
        self._negative = None
        previous = context.state.get("previous") if self.params.negatives == "previous" else None
        if previous is not None:
            realigned = realign(context.family.spec, context.received, context.selection, previous["weights"],
                                previous["selection"])
            self._negative = _frozen_copy(model, realigned)

    def before_forward(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            positive = self._positive.forward_features(x)[0]
            negative = self._negative.forward_features(x)[0] if self._negative is not None else None
        self._targets = (positive, negative)

    def loss(self, x: torch.Tensor, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        positive, negative = self._targets
        z = features.reshape(-1, features.shape[-1])
        if negative is None:  # in-batch: sample i's positive against every other sample's
            similarities = F.normalize(z, dim=-1) @ F.normalize(positive.reshape(z.shape), dim=-1).T
            target = torch.arange(len(z), device=z.device)
        else:
            similarities = torch.stack([
                F.cosine_similarity(z, positive.reshape(z.shape), dim=-1),
                F.cosine_similarity(z, negative.reshape(z.shape), dim=-1),
            ], dim=-1)
            target = torch.zeros(len(z), dtype=torch.long, device=z.device)
        return self.params.weight * F.cross_entropy(similarities / self.params.temperature, target)

    def end(self, model: nn.Module, context: ObjectiveContext) -> None:
        if self.params.negatives != "previous":
            context.state.pop("previous", None)
            return
        selection = {g: np.asarray(u) for g, u in (context.selection or {}).items()}
        context.state["previous"] = {"weights": to_weights(model), "selection": selection}


def _frozen_copy(model: nn.Module, weights: Weights) -> nn.Module:
    """A frozen copy of `model` holding `weights`, in eval mode (no dropout) except its BatchNorm layers, which
    normalise with each batch's own statistics as the trained model does in training and leave the running
    statistics they were given untouched."""
    frozen = copy.deepcopy(model)
    load_weights(frozen, weights)
    frozen.eval()
    for module in frozen.modules():
        if isinstance(module, BATCH_NORMS):
            module.train()
            module.track_running_stats = False  # batch statistics; running ones neither read nor updated
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen
