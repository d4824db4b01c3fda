"""FedAsync (Xie, Koyejo and Gupta, 2019, "Asynchronous Federated Optimization"): every update is mixed into the
global model as soon as it arrives,

    w <- (1 - alpha_t) * w + alpha_t * w_i,     alpha_t = alpha * s(t - tau),

with s the staleness function: polynomial (1 + s)^-a by default (the paper's a = 0.5), or hinge. With prefix
slices (`width: fit`) only the entries the participant holds are mixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from msfusion_ray.models.weights import Weights
from msfusion_ray.splitting.index_map import IndexMap, outer_index
from msfusion_ray.strategies import register
from msfusion_ray.strategies.asynchronous import AsyncParams, BufferedAsync, staleness_weight
from msfusion_ray.strategies.base import ModelHistory, Update, WorkOrder
from msfusion_ray.validation import checked, fraction, non_negative


@dataclass(frozen=True)
class FedAsyncParams(AsyncParams):
    alpha: float = checked(0.6, check=fraction)  # the paper's mixing weight
    staleness: Literal["polynomial", "hinge", "constant"] = "polynomial"
    staleness_a: float = checked(0.5, check=non_negative)
    staleness_b: float = checked(4.0, check=non_negative)


@dataclass
class Pending:
    """The one update an aggregation mixes in."""

    updates: list[tuple[Weights, IndexMap | None, float]] = field(default_factory=list)


@register("fedasync")
class FedAsync(BufferedAsync):
    Params = FedAsyncParams

    def new_buffer(self, global_weights: Weights) -> Pending:
        return Pending()

    def fold(self, buffer: Pending, task: WorkOrder, update: Update, staleness: int, history: ModelHistory) -> None:
        p = self.params
        mix = p.alpha * staleness_weight(staleness, p.staleness, p.staleness_a, p.staleness_b)
        buffer.updates.append((update.weights, self.index_map(task), mix))

    def aggregate(self, version: int, global_weights: Weights, buffer: Pending,
                  history: ModelHistory) -> tuple[Weights, dict[str, float]]:
        merged = {key: np.array(value, dtype=np.float32) for key, value in global_weights.items()}
        for weights, imap, mix in buffer.updates:
            for key, value in weights.items():
                index = imap[key] if imap is not None else (None,) * value.ndim
                where = outer_index(index, merged[key].shape) if any(i is not None for i in index) else ...
                merged[key][where] = ((1 - mix) * merged[key][where] + mix * np.asarray(value)).astype(np.float32)
        mixes = [mix for _, _, mix in buffer.updates]
        return merged, {"alpha_t": float(np.mean(mixes)) if mixes else 0.0}
