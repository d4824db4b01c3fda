"""FedBuff (Nguyen et al., AISTATS 2022, "Federated Learning with Buffered Asynchronous Aggregation"): participants
train asynchronously; the server keeps a buffer of their deltas and, once it holds K of them, applies

    w <- w + eta_g * (1/K) * sum_i s(tau_i) * Delta_i,     Delta_i = w_i - w^(v_i),   s(tau) = 1/sqrt(1 + tau)

where v_i is the version participant i trained from and tau_i its staleness. Each entry is averaged over the
updates that hold it (all K for the whole model; fewer where participants train prefix slices, `width: fit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from msfusion_ray.models.weights import Weights
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.index_map import extract
from msfusion_ray.strategies import register
from msfusion_ray.strategies.asynchronous import AsyncParams, BufferedAsync, staleness_weight
from msfusion_ray.strategies.base import ModelHistory, Update, WorkOrder
from msfusion_ray.validation import checked, non_negative, positive


@dataclass(frozen=True)
class FedBuffParams(AsyncParams):
    buffer_size: int | None = checked(10, check=positive)  # K (the paper's default); None: every task back
    server_lr: float = checked(1.0, check=positive)  # eta_g
    staleness: Literal["polynomial", "hinge", "constant"] = "polynomial"
    staleness_a: float = checked(0.5, check=non_negative)  # polynomial exponent: 0.5 is 1/sqrt(1 + tau)
    staleness_b: float = checked(4.0, check=non_negative)  # hinge: full weight up to this staleness


@register("fedbuff")
class FedBuff(BufferedAsync):
    Params = FedBuffParams

    def buffer_size(self) -> int | None:
        return self.params.buffer_size

    def new_buffer(self, global_weights: Weights) -> ScatterAccumulator:
        return ScatterAccumulator(global_weights)

    def fold(self, buffer: ScatterAccumulator, task: WorkOrder, update: Update, staleness: int,
             history: ModelHistory) -> None:
        imap = self.index_map(task)
        base = extract(history[update.base_version], imap)
        scale = staleness_weight(staleness, self.params.staleness, self.params.staleness_a, self.params.staleness_b)
        delta = {key: scale * (np.asarray(value, dtype=np.float64) - base[key]) for key, value in update.weights.items()}
        buffer.add(delta, imap, weight=1.0)

    def aggregate(self, version: int, global_weights: Weights, buffer: ScatterAccumulator,
                  history: ModelHistory) -> tuple[Weights, dict[str, float]]:
        if buffer.updates == 0:
            return global_weights, {"updates": 0.0}
        mean_delta = buffer.result({key: np.zeros_like(value) for key, value in global_weights.items()})
        lr = self.params.server_lr
        return ({key: (value + lr * mean_delta[key]).astype(np.float32) for key, value in global_weights.items()},
                {"updates": float(buffer.updates)})
