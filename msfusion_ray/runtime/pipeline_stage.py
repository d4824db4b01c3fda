"""Compute nodes of pipeline split learning as actors, and the owners' link to them.

A `Stage` holds one compute node's part: at the start of an epoch it checks that one copy per data owner (and one
batch in flight per owner) fits the node's memory, then builds the copies, each with its own optimizer. Messages
come straight from the previous actor: `forward(owner, batch, activation)` runs that owner's copy and hands the
output to the next stage by calling it (the reply is the next stage's reply, a Ray reference), or returns it to the
owner from the last stage; `backward` does the same upstream and steps that owner's copy. Stages therefore work on
different owners' batches at once, and activations never pass through the driver. At the end of the epoch the stage
averages its copies, weighted by the samples each owner trained on, and reports what it did: per message the
FLOPs it counted and the bytes it received and sent, and the memory it measured (live tensors, resident set).

Each owner's copy depends only on that owner's messages, so the result does not depend on the order in which a
stage serves owners; dropout in a stage draws from a generator seeded by (run seed, epoch, owner, batch, stage).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import numpy as np
import ray
import torch

from msfusion_ray.config import TrainingConfig
from msfusion_ray.costs.flops import count_flops
from msfusion_ray.costs.memory import TensorPeakTracker, rss_peak
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.layers import Part, build_part, load_part_weights, part_weights
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.training.local import make_optimizer
from msfusion_ray.training.optimizers import Optimizer

Send = Callable[[int, int, np.ndarray], Any]


class Stage:
    def __init__(self, position: int, family: ModelFamily, layer_range: tuple[int, int], training: TrainingConfig,
                 seed: int, memory_cap_bytes: int, native: bool, threads: int = 1):
        torch.set_num_threads(threads)
        self.position, self.range = position, tuple(layer_range)
        self.layers = family.layers()
        self.training, self.seed = training, seed
        self.memory_cap_bytes, self.native = memory_cap_bytes, native
        self.send_forward: Send | None = None  # to the next stage (None: back to the owner)
        self.send_backward: Send | None = None  # to the previous stage (None: back to the owner)
        self.copies: dict[int, tuple[Part, Optimizer]] = {}
        self.pending: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.flops_of: dict[tuple, int] = {}
        self.log: list[tuple[int, int, str, int, int, int]] = []  # owner, batch, kind, flops, bytes in, bytes out
        self.epoch = 0
        self.tracker = TensorPeakTracker()
        self._rss = contextlib.ExitStack()
        self._rss_result = None

    def ping(self) -> int:
        return self.position

    def connect(self, downstream: Any, upstream: Any) -> None:
        """The next and previous stage: Ray actor handles (in a run) or Stage objects (in-process)."""
        self.send_forward = _sender(downstream, "forward")
        self.send_backward = _sender(upstream, "backward")

    def begin_epoch(self, epoch: int, weights: Mapping[str, np.ndarray], owners: list[int], lr: float,
                    planned_bytes: int) -> dict[str, Any]:
        """Build one copy per owner, unless they do not fit: then nothing is built and the verdict says so."""
        self._rss.close()
        self.epoch, self.log, self.pending, self.copies, self._rss_result = epoch, [], {}, {}, None
        if planned_bytes > self.memory_cap_bytes and not self.native:
            return {"status": "oom", "planned_bytes": planned_bytes}
        self.tracker = TensorPeakTracker()
        self._rss = contextlib.ExitStack()
        self._rss_result = self._rss.enter_context(rss_peak())
        for owner in owners:
            part = build_part(self.layers, *self.range).train()
            load_part_weights(part, weights)
            self.tracker.track(list(part.parameters()) + list(part.buffers()))
            self.copies[owner] = (part, make_optimizer(part, self.training, lr))
        return {"status": "ok", "planned_bytes": planned_bytes}

    def _seed(self, owner: int, batch: int, kind: int) -> None:
        key = np.random.default_rng([self.seed, self.epoch, owner, batch, self.position, kind]).integers(2**31)
        torch.default_generator.manual_seed(int(key))

    def _counted(self, key: tuple, work: Callable[[], Any]) -> tuple[Any, int]:
        with self.tracker:
            if key in self.flops_of:
                return work(), self.flops_of[key]
            result, self.flops_of[key] = count_flops(work)
            return result, self.flops_of[key]

    def forward(self, owner: int, batch: int, activation: np.ndarray) -> Any:
        part, _ = self.copies[owner]
        self._seed(owner, batch, 0)
        inputs = torch.from_numpy(np.array(activation))
        inputs.requires_grad_(inputs.is_floating_point())
        self.tracker.track([inputs])
        output, flops = self._counted(("forward", tuple(inputs.shape)), lambda: part(inputs))
        self.pending[(owner, batch)] = (inputs, output)
        sent = output.detach().numpy()
        self.log.append((owner, batch, "forward", flops, activation.nbytes, sent.nbytes))
        return self.send_forward(owner, batch, sent) if self.send_forward is not None else sent

    def backward(self, owner: int, batch: int, gradient: np.ndarray) -> Any:
        part, optimizer = self.copies[owner]
        inputs, output = self.pending.pop((owner, batch))
        self._seed(owner, batch, 1)
        incoming = torch.from_numpy(np.array(gradient))
        self.tracker.track([incoming])

        def work() -> None:
            output.backward(incoming)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        _, flops = self._counted(("backward", tuple(incoming.shape)), work)
        sent = inputs.grad.numpy() if inputs.grad is not None else np.zeros(0, np.float32)
        self.log.append((owner, batch, "backward", flops, gradient.nbytes, sent.nbytes))
        return self.send_backward(owner, batch, sent) if self.send_backward is not None else sent

    def end_epoch(self, samples: Mapping[int, int]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The sample-weighted average of the copies of owners that trained, and the epoch's report."""
        self._rss.close()
        averaged: dict[str, np.ndarray] = {}
        trained = [(owner, n) for owner, n in sorted(samples.items()) if n > 0 and owner in self.copies]
        if trained:
            template = part_weights(self.copies[trained[0][0]][0])
            accumulator = ScatterAccumulator(template)
            for owner, n in trained:
                accumulator.add(part_weights(self.copies[owner][0]), None, weight=float(n))
            averaged = accumulator.result(template)
        report = {"log": self.log, "peak_tensor_bytes": self.tracker.peak_bytes,
                  "peak_rss_bytes": self._rss_result.delta_bytes if self._rss_result is not None else 0}
        self.copies, self.pending = {}, {}
        return averaged, report


def _sender(target: Any, method: str) -> Send | None:
    if target is None:
        return None
    if isinstance(target, Stage):
        return getattr(target, method)
    remote = getattr(target, method)
    return lambda owner, batch, array: remote.remote(owner, batch, array)


StageActor = ray.remote(max_restarts=0)(Stage)


def resolve(value: Any, timeout_s: float) -> np.ndarray:
    """Follow the chain of replies (each stage answers with the next stage's reply) to the far end's array."""
    while isinstance(value, ray.ObjectRef):
        value = ray.get(value, timeout=timeout_s)
    return value


class StageLink:
    """An owner's link to the pipeline: the first stage for activations, the last for gradients."""

    def __init__(self, owner: int, first: Any, last: Any, timeout_s: float):
        self.owner, self.first, self.last, self.timeout_s = owner, first, last, timeout_s

    def forward(self, batch: int, activation: np.ndarray) -> np.ndarray:
        return resolve(_sender(self.first, "forward")(self.owner, batch, activation), self.timeout_s)

    def backward(self, batch: int, gradient: np.ndarray) -> np.ndarray:
        return resolve(_sender(self.last, "backward")(self.owner, batch, gradient), self.timeout_s)
