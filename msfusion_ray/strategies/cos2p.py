"""Co-S2P (Li et al., arXiv 2410.08457, "Unity is Power"), from its authors' code (lee355/Co-S2P, NVFlare):
semi-asynchronous training of depth-cut, data-aware structurally pruned sub-models with early exits.

- Rates (the code's `utils.py` reads a tier table off the board: 0.75 / 0.5 / 0.25; here the memory the
  participant has, through the capacity oracle): the largest r whose sub-model fits both the training phase
  (the first floor(r x depth) blocks, ending at an exit, at ceil(r x units) heads and MLP units per block, trained
  with every exit) and the mask phase (the same blocks at full width, frozen, with a score per unit).
  `rate_levels` snaps r down to fixed levels (the code's table: [0.25, 0.5, 0.75, 1.0]).
- Sub-models: a participant's depth cut, and in its first `mask_rounds` tasks a mask it learns itself on its
  own data (procedures/cos2p.py); later it is sent the pruned network of its kept mask. The global model is the
  configured one cut after the deepest exit any participant holds (blocks no one holds would never train).
- Local training: every exit the participant holds, with the cross-block distillation toward the deepest from
  global version `kd_start_round` on.
- Aggregation (splitting/cos2p_aggregation.py): each delta weighted by importance ||Delta||_1 / r over drift
  ||w^(t) - w^(tau)||_1 + 1, normalised; w <- w + sum gamma_i Delta_i; updates staler than `max_staleness`
  versions are not aggregated. `normalisation: entries` normalises per entry instead (a departure: blocks only
  stale participants hold barely move under the code's rule); `drift: mean` divides the drift by the parameter
  count. The engine aggregates once ceil(`buffer_fraction` x participants) updates are in (or a virtual
  `deadline_s` has passed); as in the code's server a participant has one task and is idle again only after the
  aggregation that takes its update (`dispatch: after_aggregation`; `on_arrival`: at once); `synchronous: true`
  waits for every participant instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.exits import deepest_exit_at_or_below
from msfusion_ray.models.weights import Weights
from msfusion_ray.procedures.cos2p import mask_footprint, rate_widths, training_footprint
from msfusion_ray.pruning.masks import MaskTrains
from msfusion_ray.splitting.cos2p_aggregation import WeightedDeltaSum, drift, importance, raw_weight
from msfusion_ray.splitting.index_map import IndexMap, Selection, index_map, selection_fraction
from msfusion_ray.strategies import register
from msfusion_ray.strategies.base import (AsyncSchedule, AsyncStrategy, Capacity, ModelHistory, ParticipantInfo,
                                          ProcedureSpec, Update, WorkOrder)
from msfusion_ray.strategies.width import check_levels, snap_to_levels
from msfusion_ray.training.losses import KLReduction
from msfusion_ray.validation import checked, fraction, non_negative, positive, probability


@dataclass(frozen=True)
class Cos2pParams:
    rate_levels: list[float] | None = checked(None, check=check_levels)  # None: the largest rate that fits
    prune: bool = True  # False: depth cut only, no mask (ablation)
    distill: bool = True  # False: every exit on cross-entropy only (ablation)
    synchronous: bool = False  # True: aggregate once every participant has reported (ablation)
    mask_rounds: int = checked(2, check=non_negative)  # a participant's first tasks that learn its mask (code: 0, 1)
    mask_epochs: int = checked(20, check=positive)
    mask_steps: int | None = checked(None, check=positive)  # if set, replaces mask_epochs (as local_steps does)
    mask_lr: float | None = checked(None, check=positive)  # None: training.lr (the code uses one optimizer)
    sparsity_weight: float = checked(1.0, check=positive)  # lambda1
    mask_round_ratio: float = checked(0.5, check=probability)  # share of the local work the mask phase replaces
    kd_start_round: int = checked(10, check=non_negative)  # first global version whose tasks distil
    gamma: float = checked(0.5, check=non_negative)
    temperature: float = checked(3.0, check=positive)
    kd_reduction: KLReduction = "mean"  # the code's nn.KLDivLoss(): averaged over classes too; batchmean: not
    mask_trains: MaskTrains = "code"  # the mask phase also trains class token, positions, LayerNorms, exit head
    max_staleness: int = checked(10, check=non_negative)  # the code's stale_ths
    buffer_fraction: float = checked(0.5, check=fraction)  # aggregate once this share of participants reported
    # after_aggregation (the code): one task per participant, handed out again once the aggregation that takes
    # its update is done; on_arrival: as soon as its update arrives (a fast device may fill the buffer twice)
    dispatch: Literal["after_aggregation", "on_arrival"] = "after_aggregation"
    concurrency: int | None = checked(None, check=positive)  # participants training at once (None: all)
    deadline_s: float | None = checked(None, check=positive)  # ... or this much virtual time since the last one
    exit_heads: Literal["shared", "local"] = "shared"  # local: never sent back (the code as released)
    # gamma normalised over the aggregated updates (the code), or per entry over the updates that hold it
    normalisation: Literal["updates", "entries"] = "updates"
    # the drift ||w^(t) - w^(tau)||_1 as the code sums it (`sum`), or divided by the parameter count (`mean`)
    drift: Literal["sum", "mean"] = "sum"


@dataclass
class Cos2pBuffer:
    """The folded deltas of one aggregation and what the records show of them."""

    deltas: WeightedDeltaSum
    staleness: list[int]
    raw_weights: list[float]
    drifts: list[float]


@register("cos2p")
class Cos2p(AsyncStrategy):
    Params = Cos2pParams

    def __init__(self, params: Cos2pParams, family: ModelFamily, seed: int):
        super().__init__(params, family, seed)
        if family.n_blocks is None or len(family.exit_depths()) < 2:
            raise UserInputError("model.name", f"Co-S2P needs a model of blocks with early exits (vit, or "
                                               f"transformer with early_exits: true), not '{family.name}'")
        self.rates = np.zeros(0)  # per participant (set by `configure`)
        self.depths = np.zeros(0, dtype=np.int64)
        self.masks: dict[int, Selection] = {}  # each participant's kept mask, from its folded updates
        self.masks_learnt: dict[int, int] = {}  # mask tasks folded per participant
        self.participants = 0

    # --- rates and the global model -------------------------------------------------------------------------

    def depth_at(self, rate: float) -> int:
        """floor(r x depth) blocks, down to the exit at or below (blocks above the last exit get no gradient);
        the first exit at least."""
        exits = self.base_family.exit_depths()
        blocks = math.floor(rate * self.base_family.n_blocks + 1e-9)
        return deepest_exit_at_or_below(exits, blocks) or exits[0]

    def training_shape(self, rate: float) -> tuple[dict[str, int], int]:
        depth = self.depth_at(rate)
        return rate_widths(self.base_family.groups_at(depth), rate, self.params.prune), depth

    def mask_shape(self, rate: float) -> tuple[dict[str, int], int]:
        depth = self.depth_at(rate)
        return self.base_family.groups_at(depth), depth

    def largest_rate(self, participant: int, capacity: Capacity) -> float | None:
        """The largest rate whose training phase, and mask phase where there is one, fit the participant."""
        training = capacity.under("cos2p-training", **training_footprint(self.base_family.data.task))
        rate = training.largest_rate(participant, self.training_shape)
        if self.params.prune and self.params.mask_rounds > 0 and rate is not None:
            mask = capacity.under(f"cos2p-mask-{self.params.mask_trains}",
                                  **mask_footprint(self.base_family, self.params.mask_trains))
            mask_rate = mask.largest_rate(participant, self.mask_shape)
            rate = None if mask_rate is None else min(rate, mask_rate)
        return rate

    def configure(self, capacity: Capacity, participants: Sequence[ParticipantInfo]) -> ModelFamily:
        """Every participant's rate and depth, as arrays (worked out once per kind of participant the capacity
        tells apart: a million registered participants are a few searches)."""
        self.participants = len(participants)
        self.rates, self.depths = np.zeros(len(participants)), np.zeros(len(participants), dtype=np.int64)
        by_kind: dict = {}
        for p in participants:
            kind = capacity.alike(p.id)
            if kind not in by_kind:
                rate = snap_to_levels(self.largest_rate(p.id, capacity), self.params.rate_levels)
                by_kind[kind] = rate, self.depth_at(rate)
            self.rates[p.id], self.depths[p.id] = by_kind[kind]
        deepest = int(self.depths.max())
        self.family = self.base_family if deepest == self.base_family.n_blocks else self.base_family.cut(deepest)
        return self.family

    def largest_trainable_rate(self, participant: int, capacity: Capacity) -> float | None:
        """Its rate for depth and width, both phases fitting (the global model's width-only rate would miss the
        depth cut that lets the small devices in)."""
        return float(self.rates[participant]) if participant < len(self.rates) else None

    # --- work -------------------------------------------------------------------------------------------------

    def schedule(self) -> AsyncSchedule:
        if self.params.synchronous:
            return AsyncSchedule(concurrency=None, buffer_size=None, max_staleness=self.params.max_staleness)
        buffer = max(1, math.ceil(self.params.buffer_fraction * max(self.participants, 1)))
        return AsyncSchedule(concurrency=self.params.concurrency, buffer_size=buffer, deadline_s=self.params.deadline_s,
                             max_staleness=self.params.max_staleness, dispatch=self.params.dispatch)

    def learns_mask(self, participant: int) -> bool:
        return self.params.prune and self.masks_learnt.get(participant, 0) < self.params.mask_rounds

    def order(self, participant: ParticipantInfo, version: int, capacity: Capacity) -> WorkOrder:
        pid, params = participant.id, self.params
        learn = self.learns_mask(pid)
        selection = self.masks.get(pid) if params.prune and not learn else None
        local = {"learn_mask": learn, "prune": params.prune, "mask_epochs": params.mask_epochs,
                 "mask_steps": params.mask_steps,
                 "mask_lr": params.mask_lr, "sparsity_weight": params.sparsity_weight,
                 "mask_round_ratio": params.mask_round_ratio, "mask_trains": params.mask_trains,
                 "distill": params.distill and version >= params.kd_start_round, "kd_reduction": params.kd_reduction,
                 "gamma": params.gamma, "temperature": params.temperature, "exit_heads": params.exit_heads}
        return WorkOrder(pid, selection=selection, depth=int(self.depths[pid]), rate=float(self.rates[pid]),
                         procedure=ProcedureSpec("cos2p", local))

    def history_depth(self) -> int:
        return self.params.max_staleness

    def imap_of(self, selection: Selection | None, depth: int | None) -> IndexMap:
        return index_map(self.spec, selection, self.family.depth_keys(depth))

    def index_map(self, task: WorkOrder) -> IndexMap | None:
        return self.imap_of(task.selection, task.depth)

    def param_fraction(self, task: WorkOrder) -> float:
        return selection_fraction(self.spec, task.selection, self.family.depth_keys(task.depth))

    # --- aggregation ------------------------------------------------------------------------------------------

    def new_buffer(self, global_weights: Weights) -> Cos2pBuffer:
        return Cos2pBuffer(WeightedDeltaSum(global_weights, per_entry=self.params.normalisation == "entries"),
                           [], [], [])

    def fold(self, buffer: Cos2pBuffer, task: WorkOrder, update: Update, staleness: int,
             history: ModelHistory) -> None:
        selection = update.trained.get("selection", task.selection)
        if update.trained.get("learnt"):
            self.masks[task.participant] = {g: np.asarray(u, dtype=np.int64) for g, u in selection.items()}
            self.masks_learnt[task.participant] = self.masks_learnt.get(task.participant, 0) + 1
        moved = drift(history[update.base_version + staleness], history[update.base_version],
                      per_parameter=self.params.drift == "mean")
        weight = raw_weight(importance(update.weights, task.rate), moved)
        buffer.deltas.add(update.weights, self.imap_of(selection, task.depth), weight)
        buffer.staleness.append(staleness)
        buffer.raw_weights.append(weight)
        buffer.drifts.append(moved)

    def aggregate(self, version: int, global_weights: Weights, buffer: Cos2pBuffer,
                  history: ModelHistory) -> tuple[Weights, dict[str, float]]:
        weights = np.asarray(buffer.raw_weights)
        gammas = weights / weights.sum() if weights.sum() > 0 else weights
        metrics = {"updates": float(buffer.deltas.updates),
                   "staleness_mean": float(np.mean(buffer.staleness)) if buffer.staleness else 0.0,
                   "staleness_max": float(max(buffer.staleness, default=0)),
                   "drift_mean": float(np.mean(buffer.drifts)) if buffer.drifts else 0.0,
                   "gamma_max": float(gammas.max()) if len(gammas) else 0.0,
                   "masks_learnt": float(sum(1 for n in self.masks_learnt.values() if n >= self.params.mask_rounds))}
        return buffer.deltas.result(global_weights), metrics

    # --- checkpoints ------------------------------------------------------------------------------------------

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {f"mask/{pid}/{group}": units for pid, mask in self.masks.items() for group, units in mask.items()}
        return {"masks_learnt": {str(k): v for k, v in self.masks_learnt.items()}}, arrays

    def load_state_dict(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.masks_learnt = {int(k): int(v) for k, v in values["masks_learnt"].items()}
        self.masks = {}
        for name, units in arrays.items():
            _, pid, group = name.split("/", 2)
            self.masks.setdefault(int(pid), {})[group] = np.asarray(units, dtype=np.int64)
