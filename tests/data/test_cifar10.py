import os
import pickle

import numpy as np
import pytest

from msfusion_ray.data.cifar10 import load_cifar10, read_python_batch
from msfusion_ray.errors import UserInputError


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def _write_binary(directory):
    directory.mkdir(parents=True)
    expected = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images, labels = _images(4, i)
        records = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(4, -1)], axis=1)
        records.tofile(directory / f"{name}.bin")
        expected[name] = (images, labels)
    return expected


def test_binary_batches_load_in_cifar_layout(tmp_path):
    expected = _write_binary(tmp_path / "cifar-10-batches-bin")
    arrays = load_cifar10(tmp_path)
    assert arrays["train_x"].shape == (20, 3, 32, 32) and arrays["test_x"].shape == (4, 3, 32, 32)
    assert np.array_equal(arrays["train_x"][:4], expected["data_batch_1"][0])
    assert np.array_equal(arrays["train_y"][16:], expected["data_batch_5"][1])
    assert np.array_equal(arrays["test_x"], expected["test_batch"][0])


def test_python_batches_load_through_the_arrays_only_unpickler(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images, labels = _images(3, i)
        with open(directory / name, "wb") as stream:
            pickle.dump({b"data": images.reshape(3, -1), b"labels": labels.tolist()}, stream)
    arrays = load_cifar10(tmp_path)
    assert arrays["train_x"].shape == (15, 3, 32, 32)
    assert np.array_equal(arrays["test_x"], _images(3, 5)[0])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as stream:
        pickle.dump({b"data": _Exploit(), b"labels": [1]}, stream)
    with pytest.raises(UserInputError, match="refusing to load global"):
        read_python_batch(path)


def test_missing_cifar_is_a_one_line_error_with_a_hint(tmp_path):
    with pytest.raises(UserInputError) as err:
        load_cifar10(tmp_path)
    assert err.value.where == "data.data_dir" and "--data-dir" in err.value.message
    with pytest.raises(UserInputError, match="not shipped"):
        load_cifar10(None)
