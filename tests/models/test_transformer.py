"""The GPT-style transformer: its split spec, exact sub-models, FLOPs against a hand count, and that it learns."""

import math

import numpy as np
import pytest
import torch

from msfusion_ray.config import DataConfig, TrainingConfig
from msfusion_ray.costs.flops import StepCostCache, count_flops
from msfusion_ray.errors import UserInputError
from msfusion_ray.models import DataShape, build_family
from msfusion_ray.models.weights import load_weights, to_weights
from msfusion_ray.splitting.index_map import extract, index_map, prefix_selection, widths_of
from msfusion_ray.training.evaluate import evaluate
from msfusion_ray.training.local import train_local

TEXT = DataShape((16,), 50, "language_model")
SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 2, "mlp_ratio": 2.0}  # head_dim 8, 64 MLP units


def _family(width=1.0, shape=TEXT, **options):
    return build_family("transformer", shape, width, {**SMALL, **options})


def _sub_model(family, weights, selection):
    sub = family.build(widths_of(family.spec, selection))
    load_weights(sub, extract(weights, index_map(family.spec, selection)))
    return sub.eval()


def _full(seed=0):
    family = _family()
    torch.manual_seed(seed)
    model = family.build().eval()
    return family, model, to_weights(model)


def test_spec_splits_whole_heads_and_mlp_units_and_keeps_the_rest_whole():
    family = _family()
    spec = family.spec
    assert dict(spec.groups) == {"block0.heads": 4, "block0.mlp": 64, "block1.heads": 4, "block1.mlp": 64}
    for name in ("q", "k", "v"):
        axis = spec.params[f"blocks.0.attn.{name}.weight"][0]
        assert (axis.group, axis.block) == ("block0.heads", 8)
    assert spec.params["blocks.1.attn.out.weight"][1].block == 8
    assert spec.params["blocks.1.mlp.proj.weight"][1].group == "block1.mlp"
    whole = [k for k, axes in spec.params.items() if all(a is None for a in axes)]
    assert {"tokens.weight", "positions.weight", "ln_f.weight", "blocks.0.ln1.weight",
            "blocks.0.attn.out.bias"} <= set(whole)
    # the vocabulary head is the embedding: one state-dict entry, not two
    state = family.build().state_dict()
    assert [k for k, v in state.items() if v.shape[0] == TEXT.num_outputs] == ["tokens.weight"]


def test_width_multiplier_scales_heads_and_mlp_units_with_head_dim_fixed():
    half = _family(width=0.5)
    assert half.full_widths() == {"block0.heads": 2, "block0.mlp": 32, "block1.heads": 2, "block1.mlp": 32}
    model = half.build()
    assert tuple(model.blocks[0].attn.q.weight.shape) == (2 * 8, 32)
    assert tuple(model.tokens.weight.shape) == (50, 32)


def test_rate_one_sub_model_gives_the_full_models_logits_exactly():
    family, full, weights = _full()
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    sub = _sub_model(family, weights, prefix_selection(family.spec, 1.0))
    with torch.no_grad():
        assert torch.equal(sub(x), full(x))


def test_head_and_unit_slices_compute_what_those_heads_and_units_compute_in_the_full_model():
    """Keeping heads {1, 3} and every other MLP unit must equal the full model with the other heads' and units'
    outputs silenced (their columns of the output projections zeroed): so the index map moves q, k, v rows and
    output columns of a head together, and nothing else."""
    family, full, weights = _full()
    heads, units = np.array([1, 3]), np.arange(0, 64, 2)
    selection = {g: heads if g.endswith("heads") else units for g in family.spec.groups}
    sub = _sub_model(family, weights, selection)
    silenced = {k: v.copy() for k, v in weights.items()}
    dropped_heads = np.setdiff1d(np.arange(4), heads)
    for block in (0, 1):
        out = silenced[f"blocks.{block}.attn.out.weight"]
        for h in dropped_heads:
            out[:, h * 8:(h + 1) * 8] = 0
        silenced[f"blocks.{block}.mlp.proj.weight"][:, np.setdiff1d(np.arange(64), units)] = 0
    load_weights(full, silenced)
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(sub(x), full(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(sub(x), _sub_model(family, weights, prefix_selection(family.spec, 1.0))(x))


def _hand_count(batch, length, d_model, heads, head_dim, mlp, vocab, layers):
    """Forward FLOPs: q, k, v and output projections 2*B*T*d*(h*hd) each, Q K^T and A V 2*B*h*T*T*hd each,
    the MLP's two layers 2*B*T*d*m each, the tied vocabulary head 2*B*T*d*V."""
    projections = 4 * 2 * batch * length * d_model * heads * head_dim
    scores = 2 * 2 * batch * heads * length * length * head_dim
    mlp_flops = 2 * 2 * batch * length * d_model * mlp
    return projections, scores, mlp_flops, 2 * batch * length * d_model * vocab


def test_head_sliced_attention_flops_match_the_hand_count():
    family, _, weights = _full()
    selection = {"block0.heads": np.array([0, 2]), "block1.heads": np.array([1, 3])}  # 2 of 4 heads each
    sub = _sub_model(family, weights, selection)
    batch, length = 3, 16
    projections, scores, mlp, head = _hand_count(batch, length, 32, 2, 8, 64, 50, 2)
    hidden = torch.randn(batch, length, 32)
    _, attention = count_flops(lambda: sub.blocks[0].attn(hidden))
    assert attention == projections + scores == 4 * 2 * 3 * 16 * 32 * 16 + 2 * 2 * 3 * 2 * 16 * 16 * 8
    x = torch.randint(0, 50, (batch, length))
    _, forward = count_flops(lambda: sub(x))
    assert forward == 2 * (projections + scores + mlp) + head
    # training: each layer's backward is twice its forward (input and weight gradients); attention's backward
    # is five products of the size of Q K^T (its CPU kernel recomputes the scores: torch's flash formula)
    loss = lambda: torch.nn.functional.cross_entropy(sub(x).flatten(0, 1), x.flatten())  # noqa: E731
    _, step = count_flops(lambda: loss().backward())
    assert step == 3 * (2 * (projections + mlp) + head) + 2 * (scores + 5 * scores // 2)


def test_bad_options_are_one_line_errors_naming_the_field():
    with pytest.raises(UserInputError, match="model.options.n_heads"):
        _family(n_heads=5)
    with pytest.raises(UserInputError, match="model.options.depth"):
        build_family("transformer", TEXT, 1.0, {"depth": 3})
    with pytest.raises(UserInputError, match="model.options.context"):
        _family(context=8)
    with pytest.raises(UserInputError, match="model.name"):
        build_family("transformer", DataShape((1, 28, 28), 10), 1.0, {})
    assert _family(context=32).build().positions.weight.shape[0] == 32


def test_a_short_training_run_beats_the_unigram_baseline_by_far(one_thread):
    """Real text, in-process (no Ray): 400 Adam steps of a small model (about 15 s on one idle core) bring the
    validation perplexity far below exp(entropy) of the training characters, the best a model without context
    can reach."""
    from msfusion_ray.data import load_data

    data = load_data(DataConfig(dataset="shakespeare", eval_samples=400, options={"context": 64}), seed=0)
    counts = np.bincount(data.train.y.ravel(), minlength=data.shape.num_outputs)
    p = counts[counts > 0] / counts.sum()
    unigram = math.exp(-(p * np.log(p)).sum())
    assert 20 < unigram < 40  # characters of English verse
    family = build_family("transformer", data.shape, 1.0, {"d_model": 64, "n_heads": 4, "n_layers": 2})
    torch.manual_seed(0)
    model = family.build()
    training = TrainingConfig(local_steps=400, batch_size=32, optimizer="adam", lr=3e-3)
    train_local(model, data, np.arange(len(data.train)), training, training.lr, np.random.default_rng(0),
                StepCostCache(), "lm")
    perplexity = evaluate(model, data, data.validation, 200)["perplexity"]
    assert perplexity < 0.5 * unigram, (perplexity, unigram)
