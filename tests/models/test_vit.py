"""The ViT and the transformer's early exits: split spec, depth cuts as real smaller networks, exact slices."""

import numpy as np
import pytest
import torch

from msfusion_ray.errors import UserInputError
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.models.exits import deepest_exit_at_or_below, exit_depths
from msfusion_ray.models.weights import load_weights, to_weights
from msfusion_ray.splitting.aggregate import ScatterAccumulator
from msfusion_ray.splitting.index_map import extract, index_map, widths_of

IMAGES = DataShape((1, 32, 32), 10)
TEXT = DataShape((16,), 50, "language_model")
VIT = {"d_model": 32, "n_heads": 4, "n_layers": 8, "mlp_ratio": 2.0, "patch": 8}  # 16 patches + class token
GPT = {"d_model": 32, "n_heads": 4, "n_layers": 4, "mlp_ratio": 2.0, "early_exits": True}


def _vit(**options):
    return build_family("vit", IMAGES, 1.0, {**VIT, **options})


def _gpt(**options):
    return build_family("transformer", TEXT, 1.0, {**GPT, **options})


def _inputs(family, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if family.data.task == "language_model":
        return torch.randint(0, 50, (3, 16), generator=generator)
    return torch.randn(3, 1, 32, 32, generator=generator)


def _sub_model(family, weights, selection, depth):
    keys = family.depth_keys(depth)
    sub = family.build(widths_of(family.spec, selection), depth=depth)
    load_weights(sub, extract(weights, index_map(family.spec, selection, keys)))
    return sub.eval()


def test_exit_positions_follow_the_codes_quarters():
    assert exit_depths(12) == (3, 6, 9, 12)
    assert exit_depths(8) == (2, 4, 6, 8)
    assert exit_depths(2) == (1, 2)  # floor(2/4) = 0 is no position
    assert exit_depths(1) == (1,)
    assert deepest_exit_at_or_below((2, 4, 6, 8), 7) == 6
    assert deepest_exit_at_or_below((2, 4, 6, 8), 1) is None


def test_vit_spec_splits_heads_and_mlp_units_per_block_and_keeps_the_rest_whole():
    family = _vit()
    spec = family.spec
    assert len(spec.groups) == 16 and spec.groups["block7.heads"] == 4 and spec.groups["block3.mlp"] == 64
    assert spec.params["blocks.2.attn.q.weight"][0].group == "block2.heads"
    assert spec.params["blocks.2.attn.out.weight"][1].block == 8
    whole = {k for k, axes in spec.params.items() if all(a is None for a in axes)}
    assert {"cls_token", "pos_embedding", "patches.weight", "exits.0.linear.weight", "exits.3.norm.weight",
            "blocks.0.ln1.weight"} <= whole
    model = family.build()
    assert model.exit_after == (2, 4, 6, 8)
    outputs = model.forward_exits(_inputs(family))
    assert [tuple(o.shape) for o in outputs] == [(3, 10)] * 4
    with torch.no_grad():
        assert torch.equal(model(_inputs(family)), model.forward_exits(_inputs(family))[-1])


def test_a_depth_cut_holds_the_first_blocks_and_the_exits_at_or_below_and_nothing_else():
    family = _vit()
    keys = family.depth_keys(4)
    assert keys < family.depth_keys(None)
    assert {k.split(".")[1] for k in keys if k.startswith("blocks.")} == {"0", "1", "2", "3"}
    assert {k.split(".")[1] for k in keys if k.startswith("exits.")} == {"0", "1"}
    model = family.build(depth=4)
    assert model.exit_after == (2, 4) and len(model.blocks) == 4
    assert set(to_weights(model)) == keys
    with pytest.raises(ValueError, match="holds no exit"):
        family.build(depth=1)


@pytest.mark.parametrize("make", [_vit, _gpt])
def test_a_depth_cut_computes_what_the_first_blocks_and_exits_of_the_whole_model_compute(make):
    family = make()
    torch.manual_seed(0)
    full = family.build().eval()
    weights = to_weights(full)
    depth = family.exit_depths()[1]
    cut = _sub_model(family, weights, None, depth)
    x = _inputs(family)
    with torch.no_grad():
        whole, shallow = full.forward_exits(x), cut.forward_exits(x)
    assert len(shallow) == 2
    for a, b in zip(shallow, whole[:2]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make", [_vit, _gpt])
def test_cut_and_slice_equals_the_whole_model_with_the_dropped_units_silenced(make):
    """A depth cut with a random head and unit selection is the whole model's first blocks with the other heads'
    and units' columns of the output projections zeroed: index maps restricted to the cut's keys move exactly the
    right rows and columns."""
    family = make()
    torch.manual_seed(1)
    full = family.build().eval()
    weights = to_weights(full)
    depth = family.exit_depths()[-2]
    rng = np.random.default_rng(0)
    groups = {g: n for g, n in family.spec.groups.items() if int(g[5:].split(".")[0]) < depth}
    selection = {g: np.sort(rng.choice(n, max(1, n // 2), replace=False)) for g, n in groups.items()}
    cut = _sub_model(family, weights, selection, depth)
    silenced = {k: v.copy() for k, v in weights.items()}
    for group, kept in selection.items():
        block, kind = group[5:].split(".")
        dropped = np.setdiff1d(np.arange(groups[group]), kept)
        if kind == "heads":
            columns = (dropped[:, None] * 8 + np.arange(8)).ravel()
            silenced[f"blocks.{block}.attn.out.weight"][:, columns] = 0
        else:
            silenced[f"blocks.{block}.mlp.proj.weight"][:, dropped] = 0
    load_weights(full, silenced)
    x = _inputs(family, seed=3)
    with torch.no_grad():
        expected = full.forward_exits(x)[:len(cut.exit_after)]
        for a, b in zip(cut.forward_exits(x), expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_scatter_aggregation_of_cuts_leaves_the_keys_no_cut_holds_as_they_were():
    family = _vit()
    torch.manual_seed(0)
    weights = to_weights(family.build())
    accumulator = ScatterAccumulator(weights)
    for depth in (2, 4):
        imap = index_map(family.spec, None, family.depth_keys(depth))
        sub = {k: v + 1.0 for k, v in extract(weights, imap).items()}
        accumulator.add(sub, imap, weight=1.0)
    merged = accumulator.result(weights)
    np.testing.assert_allclose(merged["blocks.0.mlp.fc.weight"], weights["blocks.0.mlp.fc.weight"] + 1, rtol=1e-6)
    np.testing.assert_array_equal(merged["blocks.5.mlp.fc.weight"], weights["blocks.5.mlp.fc.weight"])
    np.testing.assert_array_equal(merged["exits.3.linear.weight"], weights["exits.3.linear.weight"])


def test_a_cut_family_has_the_cut_as_its_global_model():
    family = _vit().cut(6)
    assert family.depth == 6 and len(family.build().blocks) == 6
    assert "block6.heads" not in family.spec.groups
    assert set(to_weights(family.build())) == _vit().depth_keys(6)
    assert family.shape_key(family.full_widths()) != _vit().shape_key(_vit().full_widths())


def test_the_transformer_without_early_exits_is_the_model_it_was():
    plain = build_family("transformer", TEXT, 1.0, {**GPT, "early_exits": False})
    torch.manual_seed(0)
    model = plain.build()
    assert plain.exit_depths() == (4,) and not any(k.startswith("exits.") for k in model.state_dict())
    with pytest.raises(ValueError, match="holds no exit"):
        plain.build(depth=2)
    with_exits = _gpt()
    assert with_exits.exit_depths() == (1, 2, 3, 4)
    assert {k for k in with_exits.depth_keys(2) if k.startswith("exits.")} >= {"exits.1.linear.weight"}
    assert "ln_f.weight" not in with_exits.depth_keys(2) and "ln_f.weight" in with_exits.depth_keys(4)


def test_bad_vit_options_are_one_line_errors_naming_the_field():
    with pytest.raises(UserInputError, match="model.options.patch"):
        build_family("vit", DataShape((1, 28, 28), 10), 1.0, {"patch": 8})
    with pytest.raises(UserInputError, match="model.options.n_heads"):
        _vit(n_heads=5)
    with pytest.raises(UserInputError, match="model.name"):
        build_family("vit", TEXT, 1.0, {})
