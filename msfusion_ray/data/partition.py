"""Splitting a training set across participants: IID, label skew drawn from a Dirichlet distribution, or whole
natural groups (the plays or speakers of a text corpus).

All are seeded: the same seed, labels (or groups) and participant count give the same partition.
"""

from __future__ import annotations

import numpy as np

from msfusion_ray.errors import UserInputError


def partition_iid(n_samples: int, n_parts: int, seed: int) -> list[np.ndarray]:
    """A random permutation cut into `n_parts` near-equal shares."""
    if n_parts > n_samples:
        raise UserInputError("fleet", f"{n_parts} participants but only {n_samples} training samples")
    order = np.random.default_rng([seed, 0x11D]).permutation(n_samples)
    return [np.sort(part) for part in np.array_split(order, n_parts)]


def partition_dirichlet(labels: np.ndarray, n_parts: int, alpha: float, seed: int,
                        min_samples: int = 1) -> list[np.ndarray]:
    """Label skew: for every class, its samples are shared out with proportions drawn from Dirichlet(alpha).

    Small alpha gives each participant few classes; large alpha approaches IID. Participants the draw leaves under
    `min_samples` are topped up with samples taken at random from the largest shares (redrawing instead could
    take thousands of draws, or never succeed, with hundreds of participants and a few dozen samples each).
    """
    labels = np.asarray(labels)
    if n_parts * min_samples > len(labels):
        raise UserInputError("fleet", f"{n_parts} participants need {n_parts * min_samples} training samples "
                                      f"(data.min_samples_per_participant={min_samples}) but only {len(labels)} exist")
    rng = np.random.default_rng([seed, 0xD1C])
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
    for indices in by_class:
        shares = rng.dirichlet(np.full(n_parts, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
        for part, chunk in zip(parts, np.split(indices, cuts)):
            part.append(chunk)
    return top_up([np.sort(np.concatenate(p)) for p in parts], min_samples, rng)


def top_up(parts: list[np.ndarray], min_samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Move randomly chosen samples from the largest parts to every part under `min_samples` (possible whenever
    the parts hold n_parts * min_samples samples in all)."""
    parts = list(parts)
    sizes = np.array([len(p) for p in parts])
    for needy in np.flatnonzero(sizes < min_samples):
        while sizes[needy] < min_samples:
            donor = int(np.argmax(sizes))
            take = int(min(min_samples - sizes[needy], sizes[donor] - min_samples))
            moved = rng.choice(sizes[donor], take, replace=False)
            kept = np.ones(sizes[donor], dtype=bool)
            kept[moved] = False
            parts[needy] = np.sort(np.concatenate([parts[needy], parts[donor][moved]]))
            parts[donor] = parts[donor][kept]
            sizes[needy] += take
            sizes[donor] -= take
    return parts


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Participants x classes counts (for records and tests)."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def partition_groups(keys: np.ndarray, n_parts: int, seed: int, min_samples: int = 1,
                     what: str = "group") -> list[np.ndarray]:
    """Natural non-IID split: every group (a play, a speaker) goes whole to one participant.

    Groups are dealt largest first to the participant holding the fewest samples so far (balanced by size; ties
    in a seeded order), then the resulting shares are handed to participants in a seeded order, so the seed
    decides which device gets which plays.
    """
    names, inverse, sizes = np.unique(np.asarray(keys), return_inverse=True, return_counts=True)
    if n_parts > len(names):
        raise UserInputError("fleet", f"{n_parts} participants but the training split has only {len(names)} "
                                      f"{what} groups; use fewer participants or another data.partition")
    rng = np.random.default_rng([seed, 0x6E0])
    order = rng.permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]
    loads = np.zeros(n_parts, dtype=np.int64)
    owner = np.empty(len(names), dtype=np.int64)
    for group in order:
        owner[group] = np.argmin(loads)
        loads[owner[group]] += sizes[group]
    owner = rng.permutation(n_parts)[owner]
    parts = [np.flatnonzero(owner[inverse] == p) for p in range(n_parts)]
    smallest = min(len(p) for p in parts)
    if smallest < min_samples:
        raise UserInputError("data.partition", f"by {what}, the smallest of {n_parts} shares has {smallest} "
                                               f"samples (< data.min_samples_per_participant = {min_samples})")
    return parts
