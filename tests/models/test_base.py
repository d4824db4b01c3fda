"""The family contract's memory format: convolutional families build channels last unless told otherwise, their
weights travel in C order either way, and both layouts compute the same network to rounding."""

import numpy as np
import pytest
import torch

from msfusion_ray.errors import UserInputError
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.models.weights import load_weights, to_weights

IMAGES = DataShape((1, 28, 28), 10)


def _conv_weight(model: torch.nn.Module) -> torch.Tensor:
    """The last convolution's weight (a first one of one input channel is both layouts at once)."""
    return [p for p in model.parameters() if p.dim() == 4][-1]


@pytest.mark.parametrize("name", ["cnn", "fedavg_cnn", "resnet18", "vgg"])
def test_convolutional_families_build_channels_last_and_ship_weights_in_c_order(name):
    shape = IMAGES if "cnn" in name else DataShape((3, 32, 32), 10)
    model = build_family(name, shape, 0.25).build()
    weight = _conv_weight(model)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert all(array.flags.c_contiguous for array in to_weights(model).values())
    first_layer = build_family(name, shape, 0.25).layers()[0].build()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in first_layer.parameters() if p.dim() == 4)


def test_contiguous_is_torchs_layout_and_computes_the_same_network_to_rounding():
    fast = build_family("fedavg_cnn", IMAGES, memory_format="auto")
    plain = build_family("fedavg_cnn", IMAGES, memory_format="contiguous")
    torch.manual_seed(0)
    model = plain.build().eval()
    assert _conv_weight(model).is_contiguous()
    other = fast.build().eval()
    load_weights(other, to_weights(model))
    assert all(np.array_equal(value, to_weights(model)[key]) for key, value in to_weights(other).items())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(other(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_family_without_convolutions_keeps_torchs_layout_unless_asked_and_a_bad_format_is_one_line():
    tokens = DataShape((8,), 16, task="language_model", input_dtype="int")
    assert not build_family("transformer", tokens).channels_last
    assert build_family("vit", DataShape((3, 32, 32), 10), memory_format="channels_last").channels_last
    with pytest.raises(UserInputError, match="model.memory_format"):
        build_family("cnn", IMAGES, memory_format="nhwc")
