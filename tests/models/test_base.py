"""The family contract's memory format: networks with spatial convolutions, built-in or given by import path, build
channels last unless told otherwise, others as torch builds them; their weights travel in C order either way, and
both layouts compute the same network to rounding."""

import pickle

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


NETS = """
from torch import nn


def conv_net(shape, options):
    return nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))


def patches_net(shape, options):  # convolutions that only tile the image, as a ViT's patch embedding
    return nn.Sequential(nn.Conv2d(1, 8, 4, stride=4), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))


def dense_net(shape, options):
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))
"""


@pytest.mark.parametrize("name, expected", [("cnn", True), ("fedavg_cnn", True), ("resnet18", True),
                                            ("resnet101", True), ("vgg", True), ("vit", False)])
def test_auto_gives_each_built_in_the_layout_measured_faster_for_it_without_random_draws(name, expected):
    family = build_family(name, IMAGES if "cnn" in name else DataShape((3, 32, 32), 10), 0.25)
    state = torch.get_rng_state()
    assert family.channels_last is expected
    assert torch.equal(state, torch.get_rng_state())


def test_a_network_by_import_path_is_built_in_the_layout_auto_chooses_for_the_built_ins(tmp_path):
    """A user's convolutional network trains channels last as the built-in CNNs do (issue 29); one without
    convolutions, or with only patch-tiling ones, stays as torch builds it. The choice travels with the family."""
    (tmp_path / "nets.py").write_text(NETS)
    built_in = build_family("fedavg_cnn", IMAGES)
    conv = build_family(f"{tmp_path}/nets.py:conv_net", IMAGES)
    assert conv.channels_last and built_in.channels_last
    model = conv.build()
    weight = _conv_weight(model)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert all(array.flags.c_contiguous for array in to_weights(model).values())
    assert pickle.loads(pickle.dumps(conv)).channels_last
    for name in ("patches_net", "dense_net"):
        family = build_family(f"{tmp_path}/nets.py:{name}", IMAGES)
        assert not family.channels_last and not pickle.loads(pickle.dumps(family)).channels_last
        assert all(p.is_contiguous() for p in family.build().parameters())
    assert not build_family(f"{tmp_path}/nets.py:conv_net", IMAGES, memory_format="contiguous").channels_last
