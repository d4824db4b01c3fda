"""Fashion-MNIST from the standard IDX files (as the Debian package dataset-fashion-mnist installs them)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
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


# Deflate cannot expand data more than about 1032 to 1 (RFC 1951's longest match per shortest code), so a gzip file
# of n bytes holds at most this many times n: a header that claims more is refused before anything is allocated.
MAX_DEFLATE_RATIO = 1032


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not): magic 0x0000 | dtype | ndim, big-endian dims, then data. The
    header is checked against the file's size before the data is read; a file that is not gzip, is cut short or
    has bytes beyond its data is refused naming the file."""
    compressed = path.suffix == ".gz"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as stream:
            magic = stream.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES or magic[3] == 0:
                raise UserInputError(str(path), "not an IDX file (bad magic number)")
            dtype, ndim = np.dtype(IDX_DTYPES[magic[2]]), magic[3]
            header = stream.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise UserInputError(str(path), f"truncated IDX header ({ndim} dimensions announced)")
            dims = struct.unpack(f">{ndim}I", header)
            expected = math.prod(dims) * dtype.itemsize
            size = path.stat().st_size
            room = MAX_DEFLATE_RATIO * size if compressed else size - 4 - 4 * ndim
            if expected > room:
                shape = "x".join(map(str, dims)) if ndim <= 4 else f"{ndim} dimensions"
                claimed = str(expected) if expected < 10**18 else f"about 10^{len(str(expected)) - 1}"
                raise UserInputError(str(path), f"IDX header claims {shape} ({claimed} bytes) but the file can "
                                                f"hold at most {room} bytes")
            raw = stream.read(expected + 1)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        kind = "gzip " if compressed else ""
        raise UserInputError(str(path), f"cannot read the {kind}file ({type(err).__name__}: {err})") from None
    if len(raw) < expected:
        raise UserInputError(str(path), f"truncated IDX file ({len(raw)} data bytes, header says {expected})")
    if len(raw) > expected:
        raise UserInputError(str(path), f"IDX file holds more than the {expected} data bytes its header announces")
    return np.frombuffer(raw, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


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
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserInputError("data.data_dir", f"{directory}: {split} images ({'x'.join(map(str, images.shape))}) "
                                                  f"and labels ({'x'.join(map(str, labels.shape))}) do not match")
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise UserInputError("data.data_dir", f"{directory}: {split} images and labels must be unsigned bytes "
                                                  f"(got {images.dtype} and {labels.dtype})")
    return {
        "train_x": arrays["train_images"][:, None], "train_y": arrays["train_labels"].astype(np.int64),
        "test_x": arrays["test_images"][:, None], "test_y": arrays["test_labels"].astype(np.int64),
    }
