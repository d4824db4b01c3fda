"""Co-S2P's local procedure: what a participant does with the depth cut it is sent (lee355/Co-S2P,
`fed_client.py::train_local`, `model.py`).

In its first `mask_rounds` tasks (the strategy says which: `learn_mask`) the participant receives its depth cut
at full width and learns which heads and MLP units to keep (pruning/masks.py): `mask_epochs` epochs of the
score training (or `mask_steps` batches), continuing from the scores of its previous mask task, in which, as in the
code's mask model, the class token, positions, LayerNorms and exit head train too (`mask_trains: code`); then one
binary mask is drawn and the real pruned network built from it, with what the mask phase trained. It then trains
that network's weights for what is left of its local work (the code's local_ep - floor(mask_round_ratio x
local_ep)). In later tasks it is sent the pruned network of its kept mask directly and trains it for the whole
local work.

Weights are trained with every exit the cut holds, CE on each and, once `distill` is on (global version >=
kd_start_round), the cross-block distillation of the shallower exits toward the deepest
(training/losses.py::exit_distillation_loss; the KL averaged over classes too, as the code's `nn.KLDivLoss()`, by
default). The participant sends Delta = w_local - w_received on its sub-model (the mask phase's training
included) and reports the mask (`trained["selection"]`). Its scores and mask stay in its state; with
`exit_heads: local` its exit heads do too and are never sent (the code as released).

Memory: the mask phase (frozen pruned layers, the scores and the few parameters that train with them, the
activations their gradients need) and the training phase (the pruned network at the rate's widths) are each
checked against the participant's cap before anything starts. A drawn mask that keeps more units in a group than
the rate's ceil(r x units) keeps its highest-scoring ones, so the network trained never exceeds what was checked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

import numpy as np
import torch

from msfusion_ray.config import TrainingConfig
from msfusion_ray.costs.flops import TrainingStepFlops, count_flops
from msfusion_ray.costs.payload import payload_bytes
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.exits import exit_head_keys
from msfusion_ray.models.weights import Weights, load_weights, to_weights
from msfusion_ray.procedures.base import (LocalProcedure, MemoryContext, MemoryPhase, ProcedureContext,
                                          ProcedureResult, register_procedure, selection_bytes)
from msfusion_ray.procedures.orders import WorkOrder
from msfusion_ray.pruning.masks import (MaskedNetwork, MaskTrains, SparsityParams, SparsityPenalty, draw_selection,
                                        selection_kept_fraction)
from msfusion_ray.splitting.cos2p_aggregation import delta
from msfusion_ray.splitting.index_map import Selection, extract, index_map, units_at_rate, widths_of
from msfusion_ray.training.local import train_local
from msfusion_ray.training.losses import KLReduction, exit_distillation_forward, exit_distillation_loss_of, loss_of
from msfusion_ray.validation import checked, non_negative, positive, probability

MASK_SEED = 0x3A5  # the mask draws' stream, apart from training's


@dataclass(frozen=True)
class Cos2pLocalParams:
    learn_mask: bool = False  # this task runs the mask phase first (a mask round)
    prune: bool = True  # False: the depth cut at full width, no mask (ablation)
    mask_epochs: int = checked(20, check=positive)
    mask_steps: int | None = checked(None, check=positive)  # if set, replaces mask_epochs (as local_steps does)
    mask_lr: float | None = checked(None, check=positive)  # None: the weights' learning rate (as the code)
    sparsity_weight: float = checked(1.0, check=positive)  # lambda1
    mask_round_ratio: float = checked(0.5, check=probability)
    distill: bool = False  # the KL terms of the cross-block transfer (from kd_start_round)
    gamma: float = checked(0.5, check=non_negative)
    temperature: float = checked(3.0, check=positive)
    kd_reduction: KLReduction = "mean"  # the code's nn.KLDivLoss() default; batchmean: the formula's KL
    mask_trains: MaskTrains = "code"  # code: also the class token, positions, LayerNorms, exit head; scores: only
    exit_heads: Literal["shared", "local"] = "shared"


def training_footprint(task: str) -> dict[str, Any]:
    """What footprints of training with every exit and the distillation terms change in the planner (the
    strategy sizes rates with the same, so a planned rate is never refused)."""
    return {"loss_of": exit_distillation_loss_of(task, 0.5, 3.0, True)}


def mask_footprint(family: ModelFamily, trains: MaskTrains = "code") -> dict[str, Any]:
    """... and footprints of the mask phase: the depth cut at full width, its pruned layers frozen, with a score
    per unit."""

    def build(widths: Mapping[str, int], depth: int | None = None) -> MaskedNetwork:
        return MaskedNetwork(family.build(widths, depth=depth), family.groups_at(depth), trains=trains)

    return {"build": build, "loss_of": loss_of(family.data.task)}


def rate_widths(groups: Mapping[str, int], rate: float, prune: bool) -> dict[str, int]:
    """Units per held group at rate r: ceil(r x units) when pruning, all of them for a depth cut alone."""
    return {g: units_at_rate(n, rate) if prune else n for g, n in groups.items()}


def cap_to_rate(selection: Selection, scores: Mapping[str, np.ndarray], groups: Mapping[str, int],
                rate: float) -> Selection:
    """Each group's drawn units, at most ceil(r x units) of them: the highest-scoring where the draw kept more."""
    capped = {}
    for group, kept in selection.items():
        limit = units_at_rate(groups[group], rate)
        if len(kept) > limit:
            kept = np.sort(kept[np.argsort(-np.asarray(scores[group])[kept], kind="stable")[:limit]])
        capped[group] = np.asarray(kept, dtype=np.int64)
    return capped


def shortened(training: TrainingConfig, ratio: float) -> TrainingConfig:
    """The local work left after the mask phase: n - floor(ratio x n) epochs (or steps), at least one."""
    if training.local_steps is not None:
        return replace(training, local_steps=max(1, training.local_steps - math.floor(ratio * training.local_steps)))
    return replace(training, local_epochs=max(1, training.local_epochs - math.floor(ratio * training.local_epochs)))


_STEP_FLOPS: dict[tuple, int] = {}  # FLOPs of one training step, by (sub-model shape, batch size)


def exit_step_flops(family: ModelFamily, widths: Mapping[str, int], depth: int | None, batch_size: int) -> int:
    """FLOPs of one step of training every exit of a sub-model: what `run` counts on its first step of that shape
    (the distillation terms are elementwise: they count zero either way)."""
    key = (family.shape_key(widths, depth), batch_size)
    if key not in _STEP_FLOPS:
        model = family.build(widths, depth=depth).train()
        loss = exit_distillation_loss_of(family.data.task, 0.5, 3.0, True)
        batch = family.example_batch(batch_size)
        _STEP_FLOPS[key] = count_flops(lambda: loss(model, batch).backward())[1]
    return _STEP_FLOPS[key]


@register_procedure("cos2p")
class Cos2pProcedure(LocalProcedure):
    Params = Cos2pLocalParams

    def predict_flops(self, family: ModelFamily, order: WorkOrder, batch_sizes: list[int],
                      step_flops: TrainingStepFlops) -> int | None:
        """Known for a task that trains a mask it already has; a mask task's pruned network is drawn as it runs,
        and with local exit heads the upload is smaller than the download the engine's prediction assumes."""
        if self.params.learn_mask or self.params.exit_heads == "local":
            return None
        widths = widths_of(family.spec, order.selection)
        return sum(exit_step_flops(family, widths, order.depth, size) for size in batch_sizes)

    def memory_phases(self, context: MemoryContext) -> list[MemoryPhase]:
        order, family, batch = context.order, context.family, context.training.batch_size
        groups = family.groups_at(order.depth)
        phases = []
        if self.params.learn_mask:
            mask = context.planner(None).variant(f"cos2p-mask-{self.params.mask_trains}",
                                                 **mask_footprint(family, self.params.mask_trains))
            phases.append(MemoryPhase("mask phase", mask.footprint(groups, batch, order.depth).total))
            widths = rate_widths(groups, order.rate, self.params.prune)
        else:
            widths = {g: n for g, n in widths_of(family.spec, order.selection).items() if g in groups}
        train = context.planner(None).variant("cos2p-training", **training_footprint(family.data.task))
        phases.append(MemoryPhase("training", train.footprint(widths, batch, order.depth).total))
        return phases

    def run(self, context: ProcedureContext) -> ProcedureResult:
        started = time.perf_counter()
        order, family, params = context.order, context.family, self.params
        received = context.fetch()
        keys = family.depth_keys(order.depth)
        metrics: dict[str, float] = {"depth": float(order.depth or family.depth), "mask_learnt": 0.0}
        flops = steps = peak = 0
        mask_s = measuring_s = 0.0  # the mask phase is training too: its wall time counts in wall_train_s
        if params.learn_mask:
            mask_started = time.perf_counter()
            selection, mask_cost, learnt = self._learn_mask(context, received)
            mask_s, measuring_s = time.perf_counter() - mask_started, mask_cost["measuring_s"]
            start = extract(learnt, index_map(family.spec, selection, keys))  # what the mask phase trained, kept
            flops, steps, peak = mask_cost["flops"], mask_cost["steps"], mask_cost["peak"]
            metrics.update(mask_learnt=1.0, mask_steps=float(mask_cost["steps"]), mask_flops=float(mask_cost["flops"]),
                           mask_loss=mask_cost["loss"], mask_penalty=mask_cost["penalty"])
            training = shortened(context.training, params.mask_round_ratio)
        else:
            selection, start, training = order.selection, received, context.training
        setup_done = time.perf_counter()

        widths = widths_of(family.spec, selection)
        model = family.build(widths, depth=order.depth)
        heads = exit_head_keys(model) if params.exit_heads == "local" else frozenset()
        load_weights(model, {**start, **({} if params.learn_mask else self._local_heads(context, heads))})
        local = train_local(model, context.data, context.indices, training, context.lr,
                            np.random.default_rng(context.seed), context.step_costs,
                            (*family.shape_key(widths, order.depth), "all exits"), None, context.check_deadline,
                            forward_loss=exit_distillation_forward(family.data.task, params.gamma,
                                                                   params.temperature, params.distill,
                                                                   params.kd_reduction))
        train_done = time.perf_counter()
        trained = to_weights(model)
        # against what it received, on its sub-model: the mask phase's training is part of the update (the code)
        sent = received if not params.learn_mask else extract(received, index_map(family.spec, selection, keys))
        payload = {k: v for k, v in delta(trained, sent).items() if k not in heads}
        context.state["selection"] = selection
        if heads:
            context.state["exit_heads"] = {k: trained[k] for k in heads}
        held = family.groups_at(order.depth)
        metrics.update(exits=float(len(model.exit_after)),
                       kept_fraction=selection_kept_fraction(held, selection) if selection else 1.0,
                       distill=float(params.distill))
        return ProcedureResult(
            payload=payload, samples=local.samples, steps=steps + local.steps, flops=flops + local.flops,
            bytes_down=payload_bytes(received) + selection_bytes(order.selection),
            peak_tensor_bytes=max(peak, local.peak_tensor_bytes), task_loss=local.task_loss,
            extra_loss=local.extra_loss, wall_setup_s=setup_done - started - mask_s,
            wall_train_s=train_done - setup_done + mask_s, wall_serialize_s=time.perf_counter() - train_done,
            wall_measuring_s=measuring_s + local.wall_measuring_s,
            trained={"selection": selection, "learnt": params.learn_mask} if selection is not None else {},
            metrics=metrics)

    @staticmethod
    def _local_heads(context: ProcedureContext, heads: frozenset[str]) -> Weights:
        """The exit heads the participant kept (`exit_heads: local`) among `heads`."""
        kept = context.state.get("exit_heads", {})
        return {k: kept[k] for k in heads if k in kept}

    def _learn_mask(self, context: ProcedureContext, received: Weights) -> tuple[Selection, dict[str, float], Weights]:
        """The mask phase on the participant's data: the drawn mask, capped to the rate, as a selection, its costs,
        and the full-width weights after it (the code's mask model trains more than the scores: `mask_trains`)."""
        order, family, params = context.order, context.family, self.params
        generator = torch.Generator().manual_seed(int(np.random.default_rng([*context.seed, MASK_SEED])
                                                      .integers(2**31)))
        groups = family.groups_at(order.depth)
        network = family.build(depth=order.depth)
        heads = exit_head_keys(network) if params.exit_heads == "local" else frozenset()
        load_weights(network, {**received, **self._local_heads(context, heads)})
        masked = MaskedNetwork(network, groups, generator, params.mask_trains)
        if "scores" in context.state:  # the previous mask round's scores (the code reloads them)
            masked.load_scores(context.state["scores"])
        penalty = SparsityPenalty(SparsityParams(rate=order.rate, weight=params.sparsity_weight))
        penalty.begin(masked)
        training = replace(context.training, local_epochs=params.mask_epochs, local_steps=params.mask_steps)
        lr = params.mask_lr if params.mask_lr is not None else context.lr
        result = train_local(masked, context.data, context.indices, training, lr,
                             np.random.default_rng([*context.seed, MASK_SEED]), context.step_costs,
                             (*family.shape_key(family.full_widths(), order.depth), "mask phase"), penalty,
                             context.check_deadline)
        scores = masked.score_arrays()
        context.state["scores"] = scores
        selection = cap_to_rate(draw_selection(scores, generator), scores, groups, order.rate)
        return selection, {"flops": result.flops, "steps": result.steps, "peak": result.peak_tensor_bytes,
                           "loss": result.task_loss, "penalty": result.extra_loss,
                           "measuring_s": result.wall_measuring_s}, to_weights(network)
