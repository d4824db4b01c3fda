"""Real data sets, read offline, and their partitioning across participants."""

from __future__ import annotations

from typing import Callable

import numpy as np

from msfusion_ray.config import DataConfig
from msfusion_ray.data.arrays import ArrayDataset, DataBundle, channel_stats, pad_images
from msfusion_ray.data.partition import partition_dirichlet, partition_groups, partition_iid
from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import DataShape


def _image_bundle(name: str, arrays: dict[str, np.ndarray], config: DataConfig, seed: int) -> DataBundle:
    if config.options:
        raise UserInputError(f"data.options.{next(iter(config.options))}", f"unknown option for {name}")
    train_x, test_x = arrays["train_x"], arrays["test_x"]
    if config.pad_to is not None:
        try:
            train_x, test_x = pad_images(train_x, config.pad_to), pad_images(test_x, config.pad_to)
        except ValueError as err:
            raise UserInputError("data.pad_to", str(err)) from None
    train, validation = hold_out(ArrayDataset(train_x, arrays["train_y"]), config.validation_samples, seed)
    train = _subset(train, config.train_samples, seed, "train")
    test = _subset(ArrayDataset(test_x, arrays["test_y"]), config.eval_samples, seed, "eval")
    mean, std = channel_stats(train.x[:10000]) if config.normalize else ((), ())
    num_classes = int(max(arrays["train_y"].max(), arrays["test_y"].max())) + 1
    return DataBundle(name, train, test, DataShape(tuple(train.x.shape[1:]), num_classes), mean, std,
                      validation=validation)


def hold_out(train: ArrayDataset, size: int | None, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(the rest of the training split, a seeded hold-out of `size` samples as the validation split): tuning on it
    never sees the test split, and training never sees it. None: no validation split."""
    if size is None:
        return train, None
    if size >= len(train):
        raise UserInputError("data.validation_samples", f"{size} leaves nothing of the {len(train)} training "
                                                        f"samples to train on")
    held = subset_indices(len(train), size, seed, "validation")
    return train.subset(np.setdiff1d(np.arange(len(train)), held)), train.subset(held)


def subset_indices(n_samples: int, size: int | None, seed: int, which: str) -> np.ndarray | None:
    """A seeded, sorted sample of `size` of `n_samples` indices (None: keep them all), the cap that
    data.train_samples and data.eval_samples put on a split."""
    if size is None or size >= n_samples:
        return None
    return np.sort(np.random.default_rng([seed, 0x5B5E7, len(which)]).choice(n_samples, size, replace=False))


def _subset(split: ArrayDataset, size: int | None, seed: int, which: str) -> ArrayDataset:
    chosen = subset_indices(len(split), size, seed, which)
    return split if chosen is None else split.subset(chosen)


def _fashion_mnist(config: DataConfig, seed: int) -> DataBundle:
    from msfusion_ray.data.fashion_mnist import load_fashion_mnist

    return _image_bundle("fashion_mnist", load_fashion_mnist(config.data_dir), config, seed)


def _cifar10(config: DataConfig, seed: int) -> DataBundle:
    from msfusion_ray.data.cifar10 import load_cifar10

    return _image_bundle("cifar10", load_cifar10(config.data_dir), config, seed)


def _shakespeare(config: DataConfig, seed: int) -> DataBundle:
    from msfusion_ray.data.shakespeare import load_shakespeare

    return load_shakespeare(config, seed)


LOADERS: dict[str, Callable[[DataConfig, int], DataBundle]] = {
    "fashion_mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "shakespeare": _shakespeare,
}


IMAGE_SHAPES = {"fashion_mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}  # per sample, classes


def planned_shape(config: DataConfig) -> DataShape | None:
    """An image data set's shape without reading it (planning, e.g. `split`); None where the data must be read."""
    if config.dataset not in IMAGE_SHAPES:
        return None
    (channels, height, width), classes = IMAGE_SHAPES[config.dataset]
    if config.pad_to is not None:
        if config.pad_to < max(height, width):
            raise UserInputError("data.pad_to", f"cannot pad {height}x{width} images to {config.pad_to} pixels")
        height = width = config.pad_to
    return DataShape((channels, height, width), classes)


def load_data(config: DataConfig, seed: int) -> DataBundle:
    if config.dataset not in LOADERS:
        raise UserInputError("data.dataset", f"unknown data set '{config.dataset}' (known: {', '.join(LOADERS)})")
    return LOADERS[config.dataset](config, seed)


def check_enough_samples(bundle: DataBundle, config: DataConfig, n_parts: int) -> None:
    """Every participant must get data.min_samples_per_participant training samples (a cheap check, made before
    the fleet is built)."""
    if n_parts * config.min_samples_per_participant > len(bundle.train):
        raise UserInputError("fleet", f"{n_parts} participants need at least "
                                      f"{n_parts * config.min_samples_per_participant} training samples "
                                      f"({config.min_samples_per_participant} each) but the training split has "
                                      f"{len(bundle.train)}")


def partition(bundle: DataBundle, config: DataConfig, n_parts: int, seed: int) -> list[np.ndarray]:
    """Each participant's sample indices into the training split: IID, Dirichlet label skew (classification), or
    whole natural groups of the data set (e.g. shakespeare's plays or speakers)."""
    check_enough_samples(bundle, config, n_parts)
    if config.partition == "iid":
        return partition_iid(len(bundle.train), n_parts, seed)
    known = ["iid", *(["dirichlet"] if bundle.shape.task == "classification" else []), *bundle.groups]
    if config.partition not in known:
        raise UserInputError("data.partition", f"{bundle.name} cannot be partitioned by '{config.partition}' "
                                               f"(it can: {', '.join(known)})")
    if config.partition == "dirichlet":
        return partition_dirichlet(bundle.train.y, n_parts, config.alpha, seed, config.min_samples_per_participant)
    return partition_groups(bundle.groups[config.partition], n_parts, seed, config.min_samples_per_participant,
                            what=config.partition)
