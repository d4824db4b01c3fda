"""data.normalize: standardised inputs by default, or exactly pixels / 255."""

import numpy as np
import torch

from msfusion_ray.config import DataConfig
from msfusion_ray.data import load_data


def test_without_normalisation_inputs_are_pixels_over_255():
    bundle = load_data(DataConfig(train_samples=64, eval_samples=32, normalize=False), seed=0)
    x, y = bundle.to_batch(bundle.test.x[:8], bundle.test.y[:8])
    assert bundle.mean == () and bundle.std == ()
    expected = torch.from_numpy(bundle.test.x[:8].astype(np.float32)) / 255.0
    assert torch.equal(x, expected)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.tolist() == bundle.test.y[:8].tolist()


def test_by_default_inputs_are_standardised_per_channel():
    bundle = load_data(DataConfig(train_samples=2000, eval_samples=32), seed=0)
    x, _ = bundle.to_batch(bundle.train.x[:2000], bundle.train.y[:2000])
    assert len(bundle.mean) == 1 and 0.2 < bundle.mean[0] < 0.4
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-2
