"""Fashion-MNIST from the standard IDX files (as the Debian package dataset-fashion-mnist installs them)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from msfusion_ray.errors import UserInputError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
INSTALL_HINT = "install it with 'sudo apt-get install dataset-fashion-mnist' or pass --data-dir DIR"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not): magic 0x0000 | dtype | ndim, big-endian dims, then data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UserInputError(str(path), "not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise UserInputError(str(path), f"truncated IDX file ({len(raw) - offset} data bytes, expected {expected})")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise UserInputError("data.data_dir", f"{directory}: Fashion-MNIST file {stem}[.gz] not found; {INSTALL_HINT}")


def load_fashion_mnist(directory: str | Path | None = None) -> dict[str, np.ndarray]:
    """{"train_x", "train_y", "test_x", "test_y"}: images N x 1 x 28 x 28 uint8, labels int64."""
    directory = Path(directory) if directory is not None else DEFAULT_DIR
    if not directory.is_dir():
        raise UserInputError("data.data_dir", f"{directory}: directory not found; {INSTALL_HINT}")
    arrays = {name: read_idx(_find(directory, stem)) for name, stem in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or len(images) != len(labels):
            raise UserInputError("data.data_dir", f"{directory}: {split} images and labels do not match")
    return {
        "train_x": arrays["train_images"][:, None], "train_y": arrays["train_labels"].astype(np.int64),
        "test_x": arrays["test_images"][:, None], "test_y": arrays["test_labels"].astype(np.int64),
    }
