"""Co-S2P's staleness- and importance-weighted aggregation of sub-model deltas, as pure numpy
(lee355/Co-S2P, `fed_server.py::compute_staleness` and `aggregate_gradients`).

Participant i sends Delta_i = w_local - w_received on the entries of its sub-model (its mask and depth cut; zero
elsewhere) and the version tau_i of the global model it trained from. At aggregation t:

    importance_i = ||Delta_i||_1 / r_i                      (an update per unit of the model it held)
    drift_i      = ||w^(t) - w^(tau_i)||_1                  (how far the global model moved since it left)
    gamma_i      = importance_i / (drift_i + 1),  normalised so that sum_i gamma_i = 1
    w^(t+1)      = w^(t) + sum_i gamma_i Delta_i

An entry only one participant holds moves by that participant's gamma_i times its delta (no per-entry averaging,
as in the code). The engine keeps the global models a stale update may refer to (the strategy's history depth,
`max_staleness` versions back). `WeightedDeltaSum` folds updates in as they arrive: the normalisation is one
scalar, so sum_i gamma_i Delta_i = (sum_i g_i Delta_i) / (sum_i g_i) with the raw g_i.

Per entry instead (`per_entry`, a departure from the code): gamma normalised over the updates that hold the entry,

    w^(t+1)[k] = w^(t)[k] + sum_{i holds k} g_i Delta_i[k] / sum_{i holds k} g_i

so an entry moves by the weighted mean of the deltas that reach it. Why: drift is an unscaled L1 norm over the
whole model (1400 to 1900 on average for the 1.6 M-parameter transformer), so a stale update's g_i is about a
thousandth of a fresh one's, and under the code's rule the blocks only slow devices hold barely move
(docs/results.md, Co-S2P on the transformer).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from msfusion_ray.splitting.index_map import IndexMap, Weights, outer_index


def l1_norm(weights: Mapping[str, np.ndarray]) -> float:
    return float(sum(np.abs(np.asarray(v, dtype=np.float64)).sum() for v in weights.values()))


def delta(trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray]) -> Weights:
    """w_local - w_received, key by key, in the sub-model's coordinates (so only on its mask)."""
    return {k: np.asarray(trained[k], dtype=np.float32) - np.asarray(received[k], dtype=np.float32)
            for k in trained}


def importance(update: Mapping[str, np.ndarray], rate: float) -> float:
    """||Delta||_1 / r."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 (got {rate})")
    return l1_norm(update) / rate


def drift(current: Mapping[str, np.ndarray], past: Mapping[str, np.ndarray], per_parameter: bool = False) -> float:
    """||w^(t) - w^(tau)||_1 over the global model's keys; with `per_parameter`, divided by their entries (a mean
    absolute change, whatever the model's size)."""
    total = float(sum(np.abs(np.asarray(current[k], np.float64) - np.asarray(past[k], np.float64)).sum()
                      for k in past))
    return total / max(1, sum(np.size(v) for v in past.values())) if per_parameter else total


def raw_weight(importance_value: float, drift_value: float) -> float:
    """importance / (drift + 1), before normalisation."""
    return importance_value / (drift_value + 1.0)


class WeightedDeltaSum:
    """Streams sum_i g_i Delta_i (scattered into the global shape) and sum_i g_i, over all updates or (`per_entry`)
    per entry; `result` applies the normalised sum to the global model."""

    def __init__(self, template: Mapping[str, np.ndarray], per_entry: bool = False):
        self._shapes = {k: np.shape(v) for k, v in template.items()}
        self._sums = {k: np.zeros(s, dtype=np.float64) for k, s in self._shapes.items()}
        self._entry_weights = {k: np.zeros(s, dtype=np.float64) for k, s in self._shapes.items()} if per_entry else None
        self.total_weight = 0.0
        self.updates = 0

    def add(self, update: Mapping[str, np.ndarray], imap: IndexMap | None, weight: float) -> None:
        for key, value in update.items():
            index = imap[key] if imap is not None else (None,) * len(self._shapes[key])
            where = outer_index(index, self._shapes[key]) if any(i is not None for i in index) else ...
            self._sums[key][where] += weight * np.asarray(value, dtype=np.float64)
            if self._entry_weights is not None:
                self._entry_weights[key][where] += weight
        self.total_weight += weight
        self.updates += 1

    def result(self, current: Mapping[str, np.ndarray]) -> Weights:
        return {k: self._moved(k, v) if k in self._sums else np.array(v, dtype=np.float32) for k, v in current.items()}

    def _moved(self, key: str, value: np.ndarray) -> np.ndarray:
        if self._entry_weights is None:
            scale = 1.0 / self.total_weight if self.total_weight > 0 else 0.0
            return (np.asarray(value, np.float64) + scale * self._sums[key]).astype(np.float32)
        weights = self._entry_weights[key]
        covered = weights > 0
        moved = np.array(value, dtype=np.float64)
        moved[covered] += self._sums[key][covered] / weights[covered]
        return moved.astype(np.float32)

