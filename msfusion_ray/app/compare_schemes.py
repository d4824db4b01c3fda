"""The schemes `compare` knows: each strategy's label, what it needs of the model and the fleet, the space of its
own parameters it is tuned over, and how many participant tasks one of its steps (a `round`) hands out.

The spaces are those of the fair comparison in docs/results.md (configs/tuning/fmnist_width.yaml); every scheme is
also tuned over the learning rate (LR_FACTORS times the config's). Every scheme is given the same number of
participant tasks: the config's rounds times the participants a synchronous round asks; a scheme whose step
aggregates fewer updates (FedBuff's buffer, FedAsync's one update, Co-S2P's share of the fleet) runs
proportionally more steps, and evaluates at the same points in tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

# What a scheme needs: width tags (width splitting), width tags to narrow by (small), the whole model on some
# device (whole), width tags or the whole model on some device (async: prefix slices where there are tags), blocks
# with early exits (depth), layers and compute nodes (pipeline).
Need = Literal["width", "small", "whole", "async", "depth", "pipeline"]
LR_FACTORS = (0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Scheme:
    strategy: str  # its registered name (strategy.name)
    label: str
    needs: Need
    space: dict[str, list[Any]] = field(default_factory=dict)  # its own parameters (dotted keys) -> values
    features: bool = False  # trains with a loss on the penultimate features (forward_features)

    def tasks_per_step(self, params: Any, participants: int) -> int:
        """Participant tasks one step aggregates, from the strategy's typed params: a round's participants,
        FedBuff's buffer, FedAsync's one update, Co-S2P's share of the fleet."""
        if self.strategy == "fedbuff":
            return params.buffer_size or participants
        if self.strategy == "fedasync":
            return 1
        if self.strategy == "cos2p" and not params.synchronous:
            return max(1, math.ceil(params.buffer_fraction * participants))
        return participants


WEIGHTING = {"strategy.params.weighting": ["count", "samples"]}
SCHEMES: dict[str, Scheme] = {s.strategy: s for s in (
    Scheme("msfusion", "MSfusion", "width", {
        "strategy.params.contrastive_weight": [0.1, 1.0], "strategy.params.temperature": [0.2, 0.5],
        "strategy.params.contrastive_negatives": ["previous", "batch"], "strategy.params.overlap_max": [0.5, 1.0]},
        features=True),
    Scheme("heterofl", "HeteroFL", "width", WEIGHTING),
    Scheme("fedrolex", "FedRolex", "width", WEIGHTING),
    Scheme("fed_dropout", "Federated Dropout", "width", WEIGHTING),
    Scheme("small_fedavg", "small-model FedAvg", "small"),
    Scheme("fedavg", "FedAvg", "whole"),
    Scheme("fedbuff", "FedBuff", "async", {"strategy.params.buffer_size": [4, 10]}),
    Scheme("fedasync", "FedAsync", "async", {"strategy.params.alpha": [0.3, 0.6]}),
    Scheme("cos2p", "Co-S2P", "depth"),
    Scheme("mpsl", "MP-SL", "pipeline"),
)}

