"""Models cut by depth: every family's parts are real modules built alone, named as in the whole model, and a chain
of parts computes, differentiates and steps exactly as the whole model does."""

import numpy as np
import pytest
import torch

from msfusion_ray.errors import UserInputError
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.models.layers import (build_part, check_cuts, load_part_weights, parameters_of, part_weights,
                                        run_chain, tie_shared)
from msfusion_ray.models.weights import to_weights
from msfusion_ray.training.losses import task_loss

IMAGE = DataShape((3, 32, 32), 10)
TEXT = DataShape((12,), 40, "language_model")
FAMILIES = {
    "cnn": ("cnn", DataShape((1, 28, 28), 10), 0.5, {}),
    "resnet18": ("resnet18", IMAGE, 0.125, {}),
    "resnet101": ("resnet101", IMAGE, 0.0625, {}),
    "vgg19": ("vgg", IMAGE, 0.125, {"hidden": 512}),
    "vgg11_bn": ("vgg", DataShape((1, 32, 32), 10), 0.125, {"depth": 11, "batch_norm": True, "hidden": 256}),
    "transformer": ("transformer", TEXT, 1.0, {"d_model": 32, "n_heads": 4, "n_layers": 3, "mlp_ratio": 2.0}),
}
LAYER_COUNTS = {"cnn": 4, "resnet18": 11, "resnet101": 37, "vgg19": 25, "vgg11_bn": 17, "transformer": 5}


def _family(key):
    name, shape, width, options = FAMILIES[key]
    return build_family(name, shape, width, options)


def _batch(family, size=4):
    generator = torch.Generator().manual_seed(1)
    if family.data.task == "language_model":
        x = torch.randint(0, family.data.num_outputs, (size, *family.data.input_shape), generator=generator)
        return x, torch.randint(0, family.data.num_outputs, x.shape, generator=generator)
    return (torch.randn((size, *family.data.input_shape), generator=generator),
            torch.randint(0, family.data.num_outputs, (size,), generator=generator))


def _cuts(n_layers, n_parts):
    """Evenly spread cut points for n_parts parts."""
    return [round(n_layers * i / n_parts) for i in range(1, n_parts)]


def _train_step(params, forward, task, x, y):
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    torch.manual_seed(7)  # the same dropout masks in both runs
    loss = task_loss(task, forward(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@pytest.mark.parametrize("key", FAMILIES)
def test_layer_count_and_every_part_named_as_in_the_whole_model(key):
    family = _family(key)
    layers = family.layers()
    assert len(layers) == LAYER_COUNTS[key]
    torch.manual_seed(0)
    whole = to_weights(family.build())
    named = {}
    for i in range(len(layers)):
        named.update(part_weights(build_part(layers, i, i + 1)))
    assert set(named) == set(whole)
    assert all(named[k].shape == whole[k].shape for k in whole)


@pytest.mark.parametrize("n_parts", [1, 2, 3, 4])
@pytest.mark.parametrize("key", FAMILIES)
def test_a_chain_of_parts_trains_exactly_as_the_whole_model(key, n_parts):
    family = _family(key)
    x, y = _batch(family)
    torch.manual_seed(0)
    model = family.build().train()
    start = to_weights(model)
    whole_loss = _train_step(list(model.parameters()), model, family.data.task, x, y)
    expected = to_weights(model)

    layers = family.layers()
    parts = [build_part(layers, a, b) for a, b in check_cuts(_cuts(len(layers), n_parts), len(layers), "cuts")]
    for part in parts:
        load_part_weights(part, start)
        part.train()
    tie_shared(parts)
    chain_loss = _train_step(parameters_of(parts), lambda inputs: run_chain(parts, inputs), family.data.task, x, y)
    assert chain_loss == pytest.approx(whole_loss, rel=1e-6)
    trained = {}
    for part in parts:
        trained.update(part_weights(part))
    assert set(trained) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(trained[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_parts_build_only_their_own_layers():
    family = _family("vgg19")
    layers = family.layers()
    fc1 = next(i for i, layer in enumerate(layers) if layer.name == "fc1")
    part = build_part(layers, fc1, fc1 + 1)
    assert set(part_weights(part)) == {"classifier.0.0.weight", "classifier.0.0.bias"}
    hidden = family.full_widths()["fc1"]
    assert sum(p.numel() for p in part.parameters()) == 64 * 49 * hidden + hidden


def test_the_mpsl_vgg19_has_the_imagenet_classifier():
    family = build_family("vgg", IMAGE, 1.0, {})
    layers = family.layers()
    head = build_part(layers, 21, 25)
    assert sum(p.numel() for p in head.parameters()) == 512 * 49 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
    with torch.no_grad():
        features = run_chain([build_part(layers, 0, 21)], torch.zeros(1, 3, 32, 32))
    assert tuple(features.shape) == (1, 512, 2, 2)  # max-pools padded by 1, as in MP-SL's code


def test_tied_embedding_is_one_tensor_for_the_owner_that_holds_both_ends():
    family = _family("transformer")
    layers = family.layers()
    first, last = build_part(layers, 0, 1), build_part(layers, 4, 5)
    tie_shared([first, last])
    assert first.layers[0].tokens.weight is last.layers[0].tokens.weight
    assert len(parameters_of([first, last])) == len(list(first.parameters())) + len(list(last.parameters())) - 1


def test_bad_cuts_and_uncuttable_input_are_one_line_errors():
    with pytest.raises(UserInputError, match="strictly"):
        check_cuts([3, 3], 10, "strategy.params.cuts")
    with pytest.raises(UserInputError, match="strictly"):
        check_cuts([0, 4], 10, "strategy.params.cuts")
    with pytest.raises(ValueError):
        build_part(_family("cnn").layers(), 2, 9)
