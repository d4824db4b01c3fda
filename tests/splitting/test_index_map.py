"""Sub-model extraction and scatter aggregation on real model specs."""

import numpy as np
import pytest
import torch

from msfusion_ray.costs.flops import count_flops
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.models.weights import load_weights, to_weights
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.index_map import (extract, index_map, prefix_selection, realign, selection_fraction,
                                              shared_entries, widths_of)

FAMILIES = [("cnn", (1, 28, 28), 0.5), ("resnet18", (3, 32, 32), 0.125)]


def _random_selection(spec, rng, share=0.5):
    return {g: np.sort(rng.choice(n, max(1, int(n * share)), replace=False)) for g, n in spec.groups.items()}


def _sub_model(family, weights, selection):
    model = family.build(widths_of(family.spec, selection))
    load_weights(model, extract(weights, index_map(family.spec, selection)))
    return model.eval()


@pytest.mark.parametrize("name,shape,width", FAMILIES)
def test_rate_one_sub_model_gives_the_full_models_outputs(name, shape, width):
    family = build_family(name, DataShape(shape, 10), width)
    torch.manual_seed(0)
    full = family.build().eval()
    weights = to_weights(full)
    sub = _sub_model(family, weights, prefix_selection(family.spec, 1.0))
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert torch.equal(full(x), sub(x))


@pytest.mark.parametrize("name,shape,width", FAMILIES)
def test_a_random_sub_model_is_a_real_narrower_network(name, shape, width):
    family = build_family(name, DataShape(shape, 10), width)
    weights = to_weights(family.build())
    selection = _random_selection(family.spec, np.random.default_rng(1))
    sub = _sub_model(family, weights, selection)
    assert sub(torch.randn(2, *shape)).shape == (2, 10)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in family.build().parameters())


@pytest.mark.parametrize("name,shape,width", FAMILIES)
def test_extract_then_scatter_is_the_identity_on_covered_entries(name, shape, width):
    family = build_family(name, DataShape(shape, 10), width)
    weights = to_weights(family.build())
    selection = _random_selection(family.spec, np.random.default_rng(2))
    imap = index_map(family.spec, selection)
    accumulator = ScatterAccumulator(weights)
    accumulator.add(extract(weights, imap), imap, weight=3.0)
    zeros = {k: np.zeros_like(v) for k, v in weights.items()}
    merged = accumulator.result(zeros)
    for key, value in weights.items():
        covered = accumulator.coverage()[key] > 0
        assert np.array_equal(merged[key][covered], value[covered])
        assert (merged[key][~covered] == 0).all()  # untouched entries keep the previous value


def test_aggregation_equals_a_brute_force_weighted_mean_on_overlapping_maps():
    family = build_family("cnn", DataShape((1, 28, 28), 10), 0.25)
    spec = family.spec
    previous = to_weights(family.build())
    rng = np.random.default_rng(3)
    updates = []
    for k in range(5):
        selection = _random_selection(spec, rng, share=rng.uniform(0.3, 0.8))
        sub = {key: rng.normal(size=v.shape).astype(np.float32)
               for key, v in extract(previous, index_map(spec, selection)).items()}
        updates.append((selection, sub, float(rng.integers(1, 10))))
    accumulator = ScatterAccumulator(previous)
    for selection, sub, weight in updates:
        accumulator.add(sub, index_map(spec, selection), weight)
    merged = accumulator.result(previous)

    for key, value in previous.items():  # element by element, the slow way
        sums, weights = np.zeros(value.shape), np.zeros(value.shape)
        for selection, sub, weight in updates:
            positions = [np.arange(n) if i is None else i for i, n in zip(index_map(spec, selection)[key], value.shape)]
            for sub_index in np.ndindex(sub[key].shape):
                where = tuple(p[j] for p, j in zip(positions, sub_index))
                sums[where] += weight * sub[key][sub_index]
                weights[where] += weight
        expected = np.where(weights > 0, sums / np.maximum(weights, 1e-300), value)
        assert np.allclose(merged[key], expected, atol=1e-5), key


def test_conv_flops_scale_with_the_product_of_in_and_out_rates():
    family = build_family("cnn", DataShape((1, 28, 28), 10), 1.0)
    conv2 = lambda widths: family.build(widths).features[4]  # the conv from conv1 to conv2  # noqa: E731
    full = family.full_widths()

    def flops(c1, c2):
        layer = conv2({**full, "conv1": c1, "conv2": c2})
        return count_flops(lambda: layer(torch.zeros(2, c1, 14, 14)))[1]

    base = flops(full["conv1"], full["conv2"])
    assert flops(full["conv1"] // 2, full["conv2"]) == base // 2
    assert flops(full["conv1"] // 2, full["conv2"] // 4) == base // 8
    assert flops(full["conv1"] // 4, full["conv2"] // 4) == base // 16


def test_realign_keeps_common_units_in_place_and_takes_the_sources_own_value_there():
    family = build_family("cnn", DataShape((1, 28, 28), 10), 0.25)
    spec = family.spec
    global_weights = {k: np.random.default_rng(0).normal(size=s).astype(np.float32) for k, s in spec.shapes.items()}
    a, b = _random_selection(spec, np.random.default_rng(4)), _random_selection(spec, np.random.default_rng(5))
    target = extract(global_weights, index_map(spec, a))
    source = {k: v + 100 for k, v in extract(global_weights, index_map(spec, b)).items()}
    merged = realign(spec, target, a, source, b)
    # scatter both into global coordinates and compare entry by entry where both sub-models hold it
    acc_merged = ScatterAccumulator(global_weights)
    acc_merged.add(merged, index_map(spec, a), 1.0)
    acc_target, in_b = ScatterAccumulator(global_weights), ScatterAccumulator(global_weights)
    acc_target.add(target, index_map(spec, a), 1.0)
    in_b.add(source, index_map(spec, b), 1.0)
    nan = {k: np.full(v.shape, np.nan, dtype=np.float32) for k, v in global_weights.items()}
    m = acc_merged.result(nan)
    for key in global_weights:
        both = (acc_target.coverage()[key] > 0) & (in_b.coverage()[key] > 0)
        assert np.allclose(m[key][both], global_weights[key][both] + 100)
    # equal widths: every entry is the source's, so nothing of the target is left
    assert all(np.all(merged[k] >= 50) for k in merged)


@pytest.mark.parametrize("shift", [2, 4])  # in eighths of each group: windows that half overlap, or share nothing
@pytest.mark.parametrize("name,shape", [("cnn", (1, 28, 28)), ("transformer", (16,))])
def test_realign_of_another_window_is_the_source_network_with_its_units_permuted(name, shape, shift):
    """MSfusion's previous local model in this round's window: with equal widths it is still the network it was
    (the same outputs), its units paired with the target's (common ones in place, the rest by position)."""
    if name == "cnn":
        family = build_family("cnn", DataShape(shape, 10), 1.0)
    else:
        family = build_family("transformer", DataShape(shape, 30, "language_model"), 1.0, {"d_model": 32, "n_heads": 8})
    spec = family.spec
    weights = {k: v + np.float32(0.1) * np.random.default_rng(1).normal(size=v.shape).astype(np.float32)
               for k, v in to_weights(family.build()).items()}
    first = {g: np.arange(n // 2) for g, n in spec.groups.items()}
    later = {g: np.arange(shift * n // 8, shift * n // 8 + n // 2) for g, n in spec.groups.items()}
    source = extract(weights, index_map(spec, first))
    target = extract({k: v * 0 for k, v in weights.items()}, index_map(spec, later))
    moved = realign(spec, target, later, source, first)
    # disjoint windows pair by position alone (a copy); overlapping ones keep their common units in place
    assert all(np.array_equal(moved[k], source[k]) for k in source) == (shift == 4)
    x = torch.randn(4, *shape) if name == "cnn" else torch.randint(0, 30, (4, *shape))
    outputs = []
    for sub in (source, moved):
        model = family.build(widths_of(spec, first))
        load_weights(model, sub)
        with torch.no_grad():
            outputs.append(model.eval()(x))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_shared_entries_and_fraction_count_the_common_parameters():
    family = build_family("resnet18", DataShape((1, 32, 32), 10), 0.125)
    spec = family.spec
    weights = {k: np.ones(s, dtype=np.float32) for k, s in spec.shapes.items()}
    a, b = _random_selection(spec, np.random.default_rng(6)), _random_selection(spec, np.random.default_rng(7))
    acc_a, acc_b = ScatterAccumulator(weights), ScatterAccumulator(weights)
    acc_a.add(extract(weights, index_map(spec, a)), index_map(spec, a), 1.0)
    acc_b.add(extract(weights, index_map(spec, b)), index_map(spec, b), 1.0)
    both = sum(int(((acc_a.coverage()[k] > 0) & (acc_b.coverage()[k] > 0)).sum()) for k in weights)
    assert shared_entries(spec, a, b) == both
    total = sum(v.size for v in weights.values())
    assert selection_fraction(spec, a) == pytest.approx(sum(v.size for v in extract(weights, index_map(spec, a)).values()) / total)
    assert selection_fraction(spec, None) == 1.0
