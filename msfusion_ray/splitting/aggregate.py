"""Streaming scatter-add aggregation of (sub-)model updates.

Each update is added into running weighted sums at the global positions its index map names, with per-entry
weights: sum_k w_k * x_k[i] and sum_k w_k over the updates that cover entry i. The result is their ratio where some
update covered the entry and the previous global value elsewhere. Memory is two arrays per parameter, whatever the
number of updates. Optionally it also keeps weighted sums of squares, from which the disagreement between
updates on shared entries (the model shift) is computed.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from msfusion_ray.splitting.index_map import IndexMap, Weights, outer_index


class ScatterAccumulator:
    def __init__(self, template: Mapping[str, np.ndarray], track_dispersion: bool = False):
        self._shapes = {k: v.shape for k, v in template.items()}
        self._sums = {k: np.zeros(s, dtype=np.float64) for k, s in self._shapes.items()}
        self._weights = {k: np.zeros(s, dtype=np.float64) for k, s in self._shapes.items()}
        # per key, while every update so far covered it whole at one weight: the weights' running sum, the same
        # float64 additions each entry would have made (a round of FedAvg adds no array of weights per update)
        self._whole: dict[str, float] = dict.fromkeys(self._shapes, 0.0)
        self._squares = ({k: np.zeros(s, dtype=np.float64) for k, s in self._shapes.items()}
                         if track_dispersion else None)
        self._counts = ({k: np.zeros(s, dtype=np.int32) for k, s in self._shapes.items()}
                        if track_dispersion else None)
        self.updates = 0

    def add(self, sub: Mapping[str, np.ndarray], imap: IndexMap | None, weight: float,
            reference: Mapping[str, np.ndarray] | None = None,
            kept_rows: Mapping[str, tuple[int, np.ndarray]] | None = None) -> None:
        """Fold one update in. With dispersion tracking, `reference` (the weights the participant started from,
        restricted like `sub`) turns the update into a delta before its square is kept. `kept_rows` (key ->
        (dimension, boolean mask along it)) leaves the masked-out slices of those keys out of this update: they
        count as not held (label-split aggregation keeps a classifier's rows to the participants with the class)."""
        if weight <= 0:
            return
        for key, value in sub.items():
            index = imap[key] if imap is not None else (None,) * np.ndim(value)
            where = outer_index(index, self._shapes[key]) if any(i is not None for i in index) else ...
            kept = kept_rows.get(key) if kept_rows else None
            if where is ... and kept is None and self._squares is None:
                self._sums[key] += np.multiply(value, weight, dtype=np.float64)  # in float64, not float32
                if key in self._whole:
                    self._whole[key] += weight
                else:
                    self._weights[key] += weight
                continue
            self._weights_of(key)
            value = np.asarray(value, dtype=np.float64)  # weight x float32 would round in float32
            entry_weight = _masked_weight(weight, value.shape, kept)
            self._sums[key][where] += entry_weight * value
            self._weights[key][where] += entry_weight
            if self._squares is not None:
                delta = value - reference[key] if reference is not None else value
                self._squares[key][where] += entry_weight * np.square(delta)
                self._counts[key][where] += np.asarray(entry_weight > 0, dtype=np.int32)
        self.updates += 1

    def _weights_of(self, key: str) -> np.ndarray:
        """The key's weights per entry, from now on kept entry by entry."""
        whole = self._whole.pop(key, None)
        if whole:
            self._weights[key] += whole  # entries were all 0: each now holds what its own additions made it
        return self._weights[key]

    def coverage(self) -> dict[str, np.ndarray]:
        """Per entry, the total weight of the updates that covered it (0: nobody trained it)."""
        return {key: self._weights_of(key) for key in self._shapes}

    def result(self, previous: Mapping[str, np.ndarray]) -> Weights:
        out = {}
        for key, prev in previous.items():
            weights = self._weights_of(key)
            covered = weights > 0
            merged = np.array(prev, dtype=np.float32)
            merged[covered] = (self._sums[key][covered] / weights[covered]).astype(np.float32)
            out[key] = merged
        return out

    def shared_dispersion(self, previous: Mapping[str, np.ndarray],
                          keys: Iterable[str] | None = None) -> tuple[float, float]:
        """(mean variance of the updates' deltas, mean squared delta) over entries of `keys` (default: every key)
        that two or more updates shared. Their ratio is a scale-free measure of how far the updates disagree where
        they overlap."""
        if self._squares is None:
            raise RuntimeError("ScatterAccumulator was built without track_dispersion")
        variance = energy = 0.0
        entries = 0
        for key in (previous if keys is None else keys):
            prev = previous[key]
            shared = self._counts[key] >= 2
            if not shared.any():
                continue
            w = self._weights_of(key)[shared]
            mean_delta = self._sums[key][shared] / w - prev[shared]
            mean_square = self._squares[key][shared] / w
            variance += float(np.maximum(mean_square - mean_delta**2, 0.0).sum())
            energy += float(mean_square.sum())
            entries += int(shared.sum())
        if entries == 0:
            return 0.0, 0.0
        return variance / entries, energy / entries


def _masked_weight(weight: float, shape: tuple[int, ...], kept: tuple[int, np.ndarray] | None) -> float | np.ndarray:
    """The update's weight per entry: `weight`, or 0 on the slices a (dimension, mask) pair leaves out."""
    if kept is None:
        return weight
    dim, mask = kept
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return np.broadcast_to(weight * np.asarray(mask, dtype=np.float64).reshape(view), shape)
