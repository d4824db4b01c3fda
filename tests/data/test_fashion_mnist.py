import gzip

import numpy as np
import pytest

from msfusion_ray.data.fashion_mnist import load_fashion_mnist, read_idx
from msfusion_ray.errors import UserInputError
from tests.conftest import FASHION_MNIST_DIR


def test_reads_the_real_fashion_mnist_files():
    arrays = load_fashion_mnist(FASHION_MNIST_DIR)
    assert arrays["train_x"].shape == (60000, 1, 28, 28) and arrays["train_x"].dtype == np.uint8
    assert arrays["test_x"].shape == (10000, 1, 28, 28)
    assert np.bincount(arrays["train_y"]).tolist() == [6000] * 10
    assert np.bincount(arrays["test_y"]).tolist() == [1000] * 10
    assert 50 < arrays["train_x"].mean() < 100  # real images, not zeros


def _write_idx(path, array, dtype_code=0x08):
    header = bytes([0, 0, dtype_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_parses_header_and_data(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


def test_truncated_or_foreign_files_are_user_errors(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + np.array(array.shape, dtype=">u4").tobytes()
    (tmp_path / "short").write_bytes(header + array.tobytes()[:10])
    with pytest.raises(UserInputError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(UserInputError, match="magic"):
        read_idx(tmp_path / "text")


def test_missing_directory_says_how_to_install(tmp_path):
    with pytest.raises(UserInputError) as err:
        load_fashion_mnist(tmp_path / "nowhere")
    assert err.value.where == "data.data_dir"
    assert "apt-get install dataset-fashion-mnist" in err.value.message
    assert "\n" not in str(err.value)


def test_validation_samples_hold_out_part_of_the_training_split():
    """Fashion-MNIST has no validation split: a seeded hold-out of the training split, disjoint from what is
    trained on and from the test split, so that tuning never sees the test split."""
    from msfusion_ray.config import DataConfig
    from msfusion_ray.data import load_data

    config = DataConfig(train_samples=3000, validation_samples=500, eval_samples=200)
    bundle = load_data(config, seed=3)
    assert len(bundle.train) == 3000 and len(bundle.validation) == 500 and len(bundle.test) == 200
    images = lambda split: {row.tobytes() for row in split.x.reshape(len(split), -1)}  # noqa: E731
    assert not images(bundle.train) & images(bundle.validation)
    again = load_data(config, seed=3)
    assert np.array_equal(again.validation.x, bundle.validation.x)  # seeded
    assert not np.array_equal(load_data(config, seed=4).validation.x, bundle.validation.x)
    assert load_data(DataConfig(train_samples=3000), seed=3).validation is None
    with pytest.raises(UserInputError, match="validation_samples"):
        load_data(DataConfig(validation_samples=60000), seed=0)
