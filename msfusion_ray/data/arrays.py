"""In-memory data sets as plain numpy arrays: what travels through Ray's object store without copies."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from msfusion_ray.models.base import DataShape


@dataclass(frozen=True)
class ArrayDataset:
    """Samples `x` (uint8 images N x C x H x W, float features, or int token windows) and integer labels `y`."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> "ArrayDataset":
        return ArrayDataset(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class DataBundle:
    """A data set ready for training: splits, shape, and how to turn stored samples into model inputs."""

    name: str
    train: ArrayDataset
    test: ArrayDataset
    shape: DataShape
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    validation: ArrayDataset | None = None  # evaluated beside the test split when present
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # per training sample: natural partition keys
    artifacts: dict[str, str] = field(default_factory=dict)  # file name -> text, saved in the run directory
    tokens_per_sample: int = 0  # language models: predicted tokens per sample (for tokens/s)

    def to_batch(self, x: np.ndarray, y: np.ndarray,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs from stored samples: uint8 images scaled to [0, 1] and, where the bundle has channel
        statistics (`data.normalize`, the default), standardised per channel; float features as they are, other
        integers as token ids (on the CPU, then moved to `device` where that is another)."""
        if device is not None and device.type != "cpu":
            return tuple(t.to(device) for t in self.to_batch(x, y))
        if self.shape.task == "language_model":
            return torch.from_numpy(np.asarray(x, dtype=np.int64)), torch.from_numpy(np.asarray(y, dtype=np.int64))
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
        if np.issubdtype(np.asarray(x).dtype, np.integer) and np.asarray(x).dtype != np.uint8:  # token ids
            return torch.from_numpy(np.asarray(x, dtype=np.int64)), labels
        if np.asarray(x).dtype != np.uint8:  # features, used as they are
            return torch.from_numpy(np.asarray(x, dtype=np.float32)), labels
        images = torch.from_numpy(np.asarray(x, dtype=np.float32)).div_(255.0)
        if self.mean:
            mean, std = channel_tensors(self.mean, self.std)
            images = images.sub_(mean).div_(std)
        return images, torch.from_numpy(np.asarray(y, dtype=np.int64))


@functools.lru_cache(maxsize=16)
def channel_tensors(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The channel statistics as tensors shaped for N x C x H x W batches, made once per data set rather than
    for every batch (only read: never changed in place; plain tensors even where first asked for under inference
    mode, which evaluation runs in)."""
    with torch.inference_mode(False):
        return (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))


def pad_images(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad N x C x H x W images to size x size (e.g. Fashion-MNIST 28 -> 32, CIFAR's shape)."""
    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x
    if height > size or width > size:
        raise ValueError(f"cannot pad {height}x{width} images to {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    padded = np.zeros((*x.shape[:-2], size, size), dtype=x.dtype)
    padded[..., top:top + height, left:left + width] = x
    return padded


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, on the [0, 1] scale."""
    scaled = x.astype(np.float32) / 255.0
    axes = (0, 2, 3)
    return tuple(float(v) for v in scaled.mean(axis=axes)), tuple(float(v) for v in scaled.std(axis=axes))
