"""CIFAR-10 for users who have it: the binary batches, or the python batches through a locked-down unpickler.

The binary version (cifar-10-batches-bin) is read directly: each record is one label byte and 3072 pixel bytes.
The python version (cifar-10-batches-py) is a pickle; it is opened with an unpickler that admits nothing but
numpy's array reconstruction, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from typing import Any
from pathlib import Path

import numpy as np

from msfusion_ray.errors import UserInputError

RECORD_BYTES = 1 + 3 * 32 * 32
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
INSTALL_HINT = ("download CIFAR-10 (binary or python version) from https://www.cs.toronto.edu/~kriz/cifar.html, "
                "extract it and pass --data-dir DIR")

# The only globals a CIFAR python batch needs: numpy's array reconstruction.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # pickle's signature
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise UserInputError(str(path), f"not a CIFAR-10 binary batch (size {raw.size} is not a multiple of "
                                        f"{RECORD_BYTES})")
    records = raw.reshape(-1, RECORD_BYTES)
    return records[:, 1:].reshape(-1, 3, 32, 32), _checked_labels(path, records[:, 0])


def read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A python batch, checked whole: a pickle that is malformed in any way (truncated, of other objects, of arrays
    of the wrong shape or type) is a one-line error naming the file, never an exception from inside pickle."""
    try:
        with open(path, "rb") as stream:
            batch = _ArraysOnlyUnpickler(stream, encoding="bytes").load()
    except Exception as err:  # noqa: BLE001  (pickle raises anything its input makes it raise)
        raise UserInputError(str(path), f"not a safe CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise UserInputError(str(path), "not a CIFAR-10 python batch (expected a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserInputError(str(path), "not a CIFAR-10 python batch ('data' must be an N x 3072 uint8 array)")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise UserInputError(str(path), f"not a CIFAR-10 python batch ('labels' must be a list of {len(data)} "
                                        f"integers)")
    if not all(isinstance(label, (int, np.integer)) and not isinstance(label, bool) for label in labels):
        raise UserInputError(str(path), "not a CIFAR-10 python batch ('labels' must be integers)")
    return data.reshape(-1, 3, 32, 32), _checked_labels(path, np.asarray(labels, dtype=np.int64))


def _checked_labels(path: Path, labels: np.ndarray) -> np.ndarray:
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise UserInputError(str(path), f"CIFAR-10 labels must be 0 to {len(CLASSES) - 1} (found "
                                        f"{labels.min()} to {labels.max()})")
    return labels


def _batch_paths(directory: Path) -> tuple[list[Path], Path, str] | None:
    for sub, suffix, kind in (("cifar-10-batches-bin", ".bin", "binary"), ("cifar-10-batches-py", "", "python"),
                              ("", ".bin", "binary"), ("", "", "python")):
        base = directory / sub if sub else directory
        train = [base / f"{name}{suffix}" for name in TRAIN_BATCHES]
        test = base / f"{TEST_BATCH}{suffix}"
        if test.is_file() and all(p.is_file() for p in train):
            return train, test, kind
    return None


def load_cifar10(directory: str | Path | None) -> dict[str, np.ndarray]:
    """{"train_x", "train_y", "test_x", "test_y"}: images N x 3 x 32 x 32 uint8, labels int64."""
    if directory is None:
        raise UserInputError("data.data_dir", f"CIFAR-10 is not shipped with this tool; {INSTALL_HINT}")
    directory = Path(directory)
    found = _batch_paths(directory) if directory.is_dir() else None
    if found is None:
        raise UserInputError("data.data_dir", f"{directory}: no CIFAR-10 batches found; {INSTALL_HINT}")
    train_paths, test_path, kind = found
    read = read_binary_batch if kind == "binary" else read_python_batch
    train = [read(p) for p in train_paths]
    test_x, test_y = read(test_path)
    return {"train_x": np.concatenate([x for x, _ in train]), "train_y": np.concatenate([y for _, y in train]),
            "test_x": test_x, "test_y": test_y}
