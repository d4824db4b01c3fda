"""Real data sets, read offline, and their partitioning across participants; or the user's own, by import path."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from msfusion_ray.code_refs import is_code_ref, load_ref, split_ref
from msfusion_ray.config import DataConfig
from msfusion_ray.data.arrays import ArrayDataset, DataBundle, channel_stats, pad_images
from msfusion_ray.data.cifar10 import load_cifar10
from msfusion_ray.data.fashion_mnist import load_fashion_mnist
from msfusion_ray.data.partition import partition_dirichlet, partition_groups, partition_iid
from msfusion_ray.data.shakespeare import load_shakespeare
from msfusion_ray.data.subsets import hold_out, subset, subset_indices
from msfusion_ray.errors import UserInputError
from msfusion_ray.models.base import DataShape
from msfusion_ray.shards import SampledShards, Shards


def _image_bundle(name: str, arrays: dict[str, np.ndarray], config: DataConfig, seed: int) -> DataBundle:
    if config.options:
        raise UserInputError(f"data.options.{next(iter(config.options))}", f"unknown option for {name}")
    return arrays_bundle(name, arrays, config, seed)


def arrays_bundle(name: str, arrays: Mapping[str, Any], config: DataConfig, seed: int) -> DataBundle:
    """A bundle from arrays in the documented form (see `_loaded`): images padded (data.pad_to) and standardised
    per channel when they are uint8 (unless data.normalize is false), a validation split held out of the training split (data.validation_samples)
    where the data set has none, the training split capped (data.train_samples), the test and a given validation
    split capped (data.eval_samples)."""
    task = arrays.get("task", "classification")
    splits = {}
    for split in ("train", "test", "val"):
        x, y = arrays.get(f"{split}_x"), arrays.get(f"{split}_y")
        if x is None:
            continue
        if config.pad_to is not None and np.asarray(x).ndim == 4:
            try:
                x = pad_images(x, config.pad_to)
            except ValueError as err:
                raise UserInputError("data.pad_to", str(err)) from None
        splits[split] = ArrayDataset(x, y) if split == "train" else subset(ArrayDataset(x, y), config.eval_samples,
                                                                            seed, "eval")
    kept = None  # the training samples kept, as indices into the given training split (None: all of them)
    if config.validation_samples is not None:
        if "val" in splits:
            raise UserInputError("data.validation_samples", f"{name} has a validation split of its own")
        kept, held = hold_out(len(splits["train"]), config.validation_samples, seed)
        splits["val"] = splits["train"].subset(held)
    chosen = subset_indices(len(splits["train"]) if kept is None else len(kept), config.train_samples, seed, "train")
    if chosen is not None:
        kept = chosen if kept is None else kept[chosen]
    train = splits["train"] if kept is None else splits["train"].subset(kept)
    test = splits["test"]
    images = train.x.dtype == np.uint8 and train.x.ndim == 4
    mean, std = channel_stats(train.x[:10000]) if images and config.normalize else ((), ())
    if "num_outputs" in arrays:
        outputs = int(arrays["num_outputs"])
    else:
        outputs = int(max(np.max(arrays[f"{split}_y"]) for split in ("train", "test", "val") if split in splits and
                          f"{split}_y" in arrays)) + 1
    groups = {key: np.asarray(value) for key, value in dict(arrays.get("groups") or {}).items()}
    if kept is not None:
        groups = {key: value[kept] for key, value in groups.items()}
    tokens = np.issubdtype(train.x.dtype, np.integer) and train.x.dtype != np.uint8
    shape = DataShape(tuple(train.x.shape[1:]), outputs, task, "int" if tokens else "float")
    return DataBundle(name, train, test, shape, mean, std,
                      validation=splits.get("val"), groups=groups,
                      tokens_per_sample=int(train.x.shape[1]) if task == "language_model" else 0)


def _fashion_mnist(config: DataConfig, seed: int) -> DataBundle:
    return _image_bundle("fashion_mnist", load_fashion_mnist(config.data_dir), config, seed)


def _cifar10(config: DataConfig, seed: int) -> DataBundle:
    return _image_bundle("cifar10", load_cifar10(config.data_dir), config, seed)


LOADERS: dict[str, Callable[[DataConfig, int], DataBundle]] = {
    "fashion_mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "shakespeare": load_shakespeare,
}


def _loaded(config: DataConfig, seed: int) -> DataBundle:
    """A data set from the user's function (`data.dataset: "pkg.mod:load"` or `"./data.py:load"`), called as
    `load(data_dir, options)` with data.data_dir and data.options. It returns a DataBundle, or a mapping of numpy
    arrays: `train_x`, `train_y`, `test_x`, `test_y` (and `val_x`, `val_y` for a validation split), where x is
    uint8 images N x C x H x W (scaled to [0, 1] and standardised per channel), float features of any shape (used as
    they are), or other integers as token ids (with `task: language_model`, x is N x T windows, y the next tokens
    and `num_outputs` the vocabulary size); y is int labels. Optional: `task`, `num_outputs` (default: the largest label + 1), and
    `groups` (name -> a key per training sample, for data.partition: name)."""
    load = load_ref(config.dataset, "data.dataset")
    try:
        loaded = load(config.data_dir, dict(config.options))
    except UserInputError:
        raise
    except Exception as err:  # noqa: BLE001  (the user's loader failed: one line)
        raise UserInputError("data.dataset", f"{config.dataset} failed: {type(err).__name__}: {err}") from None
    if isinstance(loaded, DataBundle):
        return loaded
    check_arrays(config.dataset, loaded)
    return arrays_bundle(split_ref(config.dataset)[1], loaded, config, seed)


def check_arrays(source: str, arrays: Any) -> None:
    """The documented form, or a one-line error on data.dataset naming what is wrong."""
    if not isinstance(arrays, Mapping):
        raise UserInputError("data.dataset", f"{source} returned {type(arrays).__name__}, not a mapping of arrays")
    task = arrays.get("task", "classification")
    if task not in ("classification", "language_model"):
        raise UserInputError("data.dataset", f"{source}: task must be classification or language_model (got {task!r})")
    for split in ("train", "test", "val"):
        required = split != "val"
        if not required and f"{split}_x" not in arrays:
            continue
        for part in ("x", "y"):
            value = arrays.get(f"{split}_{part}")
            if not isinstance(value, np.ndarray):
                raise UserInputError("data.dataset", f"{source}: {split}_{part} must be a numpy array "
                                                     f"(got {type(value).__name__})")
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if len(x) != len(y) or len(x) == 0:
            raise UserInputError("data.dataset", f"{source}: {split}_x and {split}_y must hold the same, non-zero "
                                                 f"number of samples (got {len(x)} and {len(y)})")
        if not np.issubdtype(y.dtype, np.integer):
            raise UserInputError("data.dataset", f"{source}: {split}_y must be integer labels (got {y.dtype})")
        if task == "language_model" and not np.issubdtype(x.dtype, np.integer):
            raise UserInputError("data.dataset", f"{source}: a language model's {split}_x must be int tokens")
    if task == "language_model" and "num_outputs" not in arrays:
        raise UserInputError("data.dataset", f"{source}: a language model's data needs num_outputs (the vocabulary)")


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
    if is_code_ref(config.dataset):
        return _loaded(config, seed)
    if config.dataset not in LOADERS:
        raise UserInputError("data.dataset", f"unknown data set '{config.dataset}' (known: {', '.join(LOADERS)})")
    return LOADERS[config.dataset](config, seed)


def check_enough_samples(bundle: DataBundle, config: DataConfig, n_parts: int) -> None:
    """Every participant must get data.min_samples_per_participant training samples (a cheap check, made before
    the fleet is built); drawn shares (`sampled`) need that many in the training split, whatever the fleet."""
    if config.partition == "sampled":
        size = sampled_size(config)
        if size < config.min_samples_per_participant or size > len(bundle.train):
            raise UserInputError("data.samples_per_participant", f"must be in [data.min_samples_per_participant = "
                                                                 f"{config.min_samples_per_participant}, "
                                                                 f"{len(bundle.train)} (the training split)] "
                                                                 f"(got {size})")
        return
    if n_parts * config.min_samples_per_participant > len(bundle.train):
        raise UserInputError("fleet", f"{n_parts} participants need at least "
                                      f"{n_parts * config.min_samples_per_participant} training samples "
                                      f"({config.min_samples_per_participant} each) but the training split has "
                                      f"{len(bundle.train)}")


def sampled_size(config: DataConfig) -> int:
    """How many samples each participant draws under `partition: sampled`."""
    return config.samples_per_participant or config.min_samples_per_participant


def partition(bundle: DataBundle, config: DataConfig, n_parts: int, seed: int) -> Shards | SampledShards:
    """Each participant's sample indices into the training split: IID, Dirichlet label skew (classification),
    whole natural groups of the data set (e.g. shakespeare's plays or speakers), or drawn at random for each
    participant (`sampled`: nothing stored per participant)."""
    check_enough_samples(bundle, config, n_parts)
    if config.partition == "sampled":
        return SampledShards(len(bundle.train), n_parts, sampled_size(config), seed)
    return Shards(_partition_lists(bundle, config, n_parts, seed))


def _partition_lists(bundle: DataBundle, config: DataConfig, n_parts: int, seed: int) -> list[np.ndarray]:
    if config.partition == "iid":
        return partition_iid(len(bundle.train), n_parts, seed)
    known = ["iid", "sampled", *(["dirichlet"] if bundle.shape.task == "classification" else []), *bundle.groups]
    if config.partition not in known:
        raise UserInputError("data.partition", f"{bundle.name} cannot be partitioned by '{config.partition}' "
                                               f"(it can: {', '.join(known)})")
    if config.partition == "dirichlet":
        return partition_dirichlet(bundle.train.y, n_parts, config.alpha, seed, config.min_samples_per_participant)
    return partition_groups(bundle.groups[config.partition], n_parts, seed, config.min_samples_per_participant,
                            what=config.partition)
