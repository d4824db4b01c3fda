"""The global model's evaluation cut into pieces that any host computes, and put back together exactly.

A chunk is one evaluation batch of one split (a fixed range of its samples), so what a chunk gives does not depend
on which host computed it or how many hosts share the work. Put back together in chunk order, the figures are
those of `evaluate` over each whole split (the same batches, the same sums in the same order): a run is the same
with any number of hosts.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from msfusion_ray.data.arrays import ArrayDataset, DataBundle
from msfusion_ray.models.base import ModelFamily
from msfusion_ray.models.weights import Weights, load_weights
from msfusion_ray.training.evaluate import evaluate, recalibrate_batchnorm

Chunk = tuple[str, int, int]  # split name, first sample, end


def evaluation_splits(data: DataBundle) -> dict[str, ArrayDataset]:
    """The splits the global model is evaluated on: test, and validation where the data set has one."""
    return {name: split for name, split in (("test", data.test), ("val", data.validation)) if split is not None}


def plan_chunks(sizes: Mapping[str, int], batch_size: int, hosts: int) -> list[list[Chunk]]:
    """Every split's batches, shared out in order as `hosts` contiguous runs of nearly equal length (a host may
    get none when there are fewer batches than hosts)."""
    chunks = [(name, start, min(start + batch_size, size)) for name, size in sizes.items()
              for start in range(0, size, batch_size)]
    return [chunks[h * len(chunks) // hosts:(h + 1) * len(chunks) // hosts] for h in range(hosts)]


def evaluate_chunks(family: ModelFamily, data: DataBundle, weights: Weights, chunks: list[Chunk],
                    calibration: np.ndarray, batch_size: int, calibration_batch_size: int,
                    device: torch.device | None = None) -> list[dict[str, float]]:
    """The global model's figures on each chunk, after recomputing its BatchNorm statistics on the training
    samples `calibration` in batches of `calibration_batch_size` (every host computes the same statistics), on
    `device` (default: the CPU)."""
    model = family.build()
    load_weights(model, weights)
    if device is not None:
        model.to(device)
    recalibrate_batchnorm(model, data, data.train.subset(calibration), calibration_batch_size)
    splits = evaluation_splits(data)
    return [evaluate(model, data, ArrayDataset(splits[name].x[start:end], splits[name].y[start:end]), batch_size)
            for name, start, end in chunks]


def combine_chunks(chunks: list[Chunk], parts: list[dict[str, float]],
                   label_elements: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Per split, the figures over its chunks: means weighted by each chunk's labels (`label_elements`: label
    entries per sample, e.g. a language model's tokens), accuracies from their whole counts of correct labels,
    perplexities (the last exit's and each exit's) from the combined losses."""
    totals: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for (name, start, end), part in zip(chunks, parts):
        weight = (end - start) * label_elements[name]
        sums = totals.setdefault(name, {})
        for key, value in part.items():
            if not key.endswith("perplexity"):
                sums[key] = sums.get(key, 0.0) + (round(value * weight) if key.endswith("accuracy") else
                                                  value * weight)
        counts[name] = counts.get(name, 0) + weight
    metrics = {}
    for name, sums in totals.items():
        metrics[name] = {key: value / max(counts[name], 1) for key, value in sums.items()}
        perplexities = {key for (split, _, _), part in zip(chunks, parts) if split == name
                        for key in part if key.endswith("perplexity")}
        for key in sorted(perplexities):  # "perplexity" from "loss", "exit2_perplexity" from "exit2_loss"
            metrics[name][key] = math.exp(min(metrics[name][key.removesuffix("perplexity") + "loss"], 50.0))
    return metrics


def label_elements(data: DataBundle) -> dict[str, int]:
    """Label entries per sample of each evaluation split (1 for a class label, the context for a text window)."""
    return {name: int(np.prod(split.y.shape[1:], dtype=np.int64)) for name, split in evaluation_splits(data).items()}
