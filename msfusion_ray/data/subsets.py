"""Seeded subsets of a data set's splits: the caps data.train_samples and data.eval_samples put on them, and the
validation hold-out (data.validation_samples)."""

from __future__ import annotations

import numpy as np

from msfusion_ray.data.arrays import ArrayDataset
from msfusion_ray.errors import UserInputError


def hold_out(n_samples: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the rest of the training split, a seeded hold-out of `size` samples as the validation split), as indices:
    tuning on the hold-out never sees the test split, and training never sees the hold-out."""
    if size >= n_samples:
        raise UserInputError("data.validation_samples", f"{size} leaves nothing of the {n_samples} training "
                                                        f"samples to train on")
    held = subset_indices(n_samples, size, seed, "validation")
    return np.setdiff1d(np.arange(n_samples), held), held


def subset_indices(n_samples: int, size: int | None, seed: int, which: str) -> np.ndarray | None:
    """A seeded, sorted sample of `size` of `n_samples` indices (None: keep them all), the cap that
    data.train_samples and data.eval_samples put on a split."""
    if size is None or size >= n_samples:
        return None
    return np.sort(np.random.default_rng([seed, 0x5B5E7, len(which)]).choice(n_samples, size, replace=False))


def subset(split: ArrayDataset, size: int | None, seed: int, which: str) -> ArrayDataset:
    chosen = subset_indices(len(split), size, seed, which)
    return split if chosen is None else split.subset(chosen)
