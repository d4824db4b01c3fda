"""A data owner's epoch in pipeline split learning: its first and last parts, its data, and a link to the compute
nodes.

Per batch (as training.local.batch_indices draws them): forward through the first part, send the activation down
the pipeline, receive the last compute node's activation, forward the last part, take the loss against the labels
(which never leave the owner), backward through the last part, send that gradient back up, receive the gradient of
the first part's output and backward through the first part; then one optimizer step over both parts (a parameter
both hold, a transformer's tied embedding, is one tensor and gets both gradients first, as in the whole model).

The link is the engine's (runtime/pipeline_stage.py): this procedure sees numpy arrays in and out and no Ray. It
reports, per batch, the FLOPs of its three pieces of work and the bytes it sent and received, from which the engine
places every message on the virtual timeline.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from msfusion_ray.costs.flops import count_flops
from msfusion_ray.costs.memory import TensorPeakTracker
from msfusion_ray.costs.payload import payload_bytes
from msfusion_ray.models.layers import build_part, load_part_weights, part_weights, tie_shared
from msfusion_ray.procedures.base import (LocalProcedure, MemoryContext, MemoryPhase, ProcedureContext,
                                          ProcedureResult, register_procedure)
from msfusion_ray.training.local import batch_indices, make_optimizer
from msfusion_ray.training.losses import task_loss

T = TypeVar("T")


class PipelineLink(Protocol):
    """The owner's end of the pipeline: each call returns what comes back from the far end."""

    def forward(self, batch: int, activation: np.ndarray) -> np.ndarray:
        """The first part's output in, the last compute node's output back."""

    def backward(self, batch: int, gradient: np.ndarray) -> np.ndarray:
        """The gradient of the last part's input in, the gradient of the first part's output back."""


@register_procedure("pipeline_owner")
class PipelineOwner(LocalProcedure):
    """Order extras: `front` and `back` (layer ranges), `link` (a PipelineLink), `planned_bytes` (the owner's
    planned footprint, from the engine's plan)."""

    def memory_phases(self, context: MemoryContext) -> list[MemoryPhase]:
        return [MemoryPhase("first and last parts", int(context.order.extras["planned_bytes"]))]

    def run(self, context: ProcedureContext) -> ProcedureResult:
        started = time.perf_counter()
        extras, training = context.order.extras, context.training
        layers = context.family.layers()
        front, back = build_part(layers, *extras["front"]), build_part(layers, *extras["back"])
        received = context.fetch()
        load_part_weights(front, received)
        load_part_weights(back, received)
        tie_shared([front, back])
        both = nn.ModuleList([front, back]).train()
        optimizer = make_optimizer(both, training, context.lr)
        setup_done = time.perf_counter()
        log, flops_of, peak, loss_sum = [], {}, 0, 0.0
        data, link = context.data, extras["link"]
        for index, batch in enumerate(batch_indices(len(context.indices), training,
                                                    np.random.default_rng(context.seed))):
            context.check_deadline()
            chosen = context.indices[batch]
            x, y = data.to_batch(data.train.x[chosen], data.train.y[chosen])
            measure = len(chosen) not in flops_of
            tracker = TensorPeakTracker()
            if measure:
                tracker.track(list(both.parameters()) + list(both.buffers()))
            entry, loss = self._batch(index, x, y, front, back, link, context.data.shape.task, tracker, measure,
                                      flops_of)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            peak = max(peak, tracker.peak_bytes)
            log.append(entry)
            loss_sum += loss
        train_done = time.perf_counter()
        payload = {**part_weights(front), **part_weights(back)}
        exchanged = sum(e["received_bytes"] for e in log)
        return ProcedureResult(
            payload=payload, samples=sum(e["size"] for e in log), steps=len(log),
            flops=sum(e["front_forward_flops"] + e["back_flops"] + e["front_backward_flops"] for e in log),
            bytes_down=payload_bytes(received) + exchanged, peak_tensor_bytes=peak,
            task_loss=loss_sum / max(len(log), 1), wall_setup_s=setup_done - started,
            wall_train_s=train_done - setup_done, wall_serialize_s=time.perf_counter() - train_done,
            trained={"pipeline_batches": log}, metrics={"sent_bytes": float(sum(e["sent_bytes"] for e in log))})

    @staticmethod
    def _batch(index: int, x: torch.Tensor, y: torch.Tensor, front: nn.Module, back: nn.Module, link: PipelineLink,
               task: str, tracker: TensorPeakTracker, measure: bool, flops_of: dict) -> tuple[dict, float]:
        """One batch through the pipeline; FLOPs are counted on the first batch of each size (shapes fix them)."""

        def counted(name: str, work: Callable[[], T]) -> T:
            if not measure:
                return work()
            with tracker:
                result, flops = count_flops(work)
            flops_of.setdefault(len(x), {})[name] = flops
            return result

        hidden = counted("front_forward", lambda: front(x))
        sent = hidden.detach().numpy()
        returned = torch.from_numpy(np.array(link.forward(index, sent))).requires_grad_()
        loss = counted("back", lambda: _backward(task_loss(task, back(returned), y)))
        gradient = returned.grad.numpy()
        first_gradient = np.array(link.backward(index, gradient))
        counted("front_backward", lambda: hidden.backward(torch.from_numpy(first_gradient)))
        flops = flops_of[len(x)]
        entry = {"size": len(x), "front_forward_flops": flops["front_forward"], "back_flops": flops["back"],
                 "front_backward_flops": flops["front_backward"], "activation_bytes": sent.nbytes,
                 "returned_bytes": returned.numel() * returned.element_size(), "gradient_bytes": gradient.nbytes,
                 "first_gradient_bytes": first_gradient.nbytes}
        entry["sent_bytes"] = entry["activation_bytes"] + entry["gradient_bytes"]
        entry["received_bytes"] = entry["returned_bytes"] + entry["first_gradient_bytes"]
        return entry, loss


def _backward(loss: torch.Tensor) -> float:
    loss.backward()
    return float(loss.detach())
