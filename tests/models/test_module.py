"""Bring your own model: a function returning the full, width-tagged module; the package cuts every sub-model
from it (every supported layer type), rejects a tag it cannot split in one line naming the layer, and checks that
extraction and the built sub-model agree."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from msfusion_ray.code_refs import load_ref, ship_with_job
from msfusion_ray.errors import UserInputError
from msfusion_ray.models import DataShape, ModuleFamily, build_family
from msfusion_ray.models.module import check_sub_model
from msfusion_ray.models.weights import load_weights, to_weights
from msfusion_ray.splitting.index_map import extract, index_map, widths_of
from msfusion_ray.splitting.spec import width_axes

SEQUENCE = DataShape((12,), 10, input_dtype="int")  # token ids of length 12, ten classes
IMAGES = DataShape((1, 8, 8), 10)


class EveryLayer(nn.Module):
    """One of each supported layer type, tagged. Tokens take two paths: a split embedding, LayerNorm, Conv1d,
    GroupNorm and BatchNorm; and a whole embedding (attention splits heads, not its residual stream) through
    multi-head attention and a Conv2d; both meet in the hidden linear layer."""

    def __init__(self):
        super().__init__()
        self.embed = width_axes(nn.Embedding(30, 16), out="embed")
        self.norm = width_axes(nn.LayerNorm(16), out="embed")
        self.conv = width_axes(nn.Conv1d(16, 12, 3, padding=1), inp="embed", out=("chan", 3))
        self.group_norm = width_axes(nn.GroupNorm(4, 12), out=("chan", 3))
        self.bn = width_axes(nn.BatchNorm1d(12), out=("chan", 3))
        self.whole = nn.Embedding(30, 16)
        self.attn = width_axes(nn.MultiheadAttention(16, 4, batch_first=True), out="heads")
        self.conv2d = width_axes(nn.Conv2d(1, 6, 3, padding=1), out="maps")
        self.hidden = width_axes(nn.Linear(12, 20), inp=("chan", 3), out="hidden")
        self.maps = width_axes(nn.Linear(6, 20), inp="maps", out="hidden")
        self.head = width_axes(nn.Linear(20, 10), inp="hidden")

    def forward_features(self, x):
        h = self.norm(self.embed(x))
        h = self.bn(self.group_norm(self.conv(h.transpose(1, 2)))).mean(-1)
        a = self.whole(x)
        a = self.attn(a, a, a, need_weights=False)[0]
        m = self.conv2d(a.unsqueeze(1)).mean((-2, -1))
        features = F.relu(self.hidden(h) + self.maps(m))
        return features, self.head(features)

    def forward(self, x):
        return self.forward_features(x)[1]


def every_layer(shape, options):
    return EveryLayer()


def _family(factory, shape=SEQUENCE, **kwargs):
    return ModuleFamily("test:net", shape, factory=factory, **kwargs)


def _sub(family, selection):
    weights = to_weights(family.build())
    sub = family.build(widths_of(family.spec, selection))
    load_weights(sub, extract(weights, index_map(family.spec, selection)))
    return sub


def test_every_supported_layer_is_cut_to_the_selected_units():
    family = _family(every_layer)
    assert family.spec.groups == {"embed": 16, "chan": 4, "heads": 4, "maps": 6, "hidden": 20}
    selection = {"embed": np.array([0, 3, 5, 9, 12]), "heads": np.array([1, 3]), "chan": np.array([0, 2]),
                 "maps": np.array([1, 4, 5]), "hidden": np.arange(0, 20, 2)}
    sub = _sub(family, selection)
    assert sub.embed.weight.shape == (30, 5) and sub.norm.normalized_shape == (5,)
    assert sub.attn.num_heads == 2 and sub.attn.in_proj_weight.shape == (2 * 3 * 4, 16)
    assert sub.conv.weight.shape == (6, 5, 3) and sub.group_norm.num_groups == 2 and sub.bn.num_features == 6
    assert sub.hidden.weight.shape == (10, 6) and sub.head.weight.shape == (10, 10)
    assert sub.conv2d.weight.shape == (3, 1, 3, 3) and sub.maps.weight.shape == (10, 3)
    assert sub(torch.randint(0, 30, (2, 12))).shape == (2, 10)
    assert check_sub_model(family)  # and a random selection agrees with extraction


def test_the_full_selection_computes_what_the_full_model_computes():
    family = _family(every_layer)
    full = family.build().eval()
    sub = _sub(family, {g: np.arange(n) for g, n in family.spec.groups.items()}).eval()
    x = torch.randint(0, 30, (3, 12))
    with torch.no_grad():
        assert torch.allclose(sub(x), full(x), atol=1e-6)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = width_axes(nn.MultiheadAttention(16, 4, batch_first=True), out="heads")

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def test_an_attention_sub_model_computes_exactly_its_heads():
    """Heads a sub-model drops contribute to the global output only through their columns of the output
    projection: with those zeroed, the global layer computes what the sub-model computes."""
    family = _family(lambda shape, options: Attention(), DataShape((5, 16), 16))
    keep = np.array([0, 2])
    sub = _sub(family, {"heads": keep}).eval()
    full = family.build().eval()
    with torch.no_grad():
        for head in (1, 3):
            full.attn.out_proj.weight[:, head * 4:(head + 1) * 4] = 0
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.allclose(sub(x), full(x), atol=1e-5)


class Tagged(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.body = nn.Sequential(width_axes(nn.Linear(4, 8), out="h"), layer, width_axes(nn.Linear(8, 2), inp="h"))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("layer, named", [
    (width_axes(nn.ReLU(), out="h"), "body.1 (ReLU): width tags are supported on Conv1d, Conv2d, Linear"),
    (width_axes(nn.ConvTranspose1d(8, 8, 1), out="h"), "body.1 (ConvTranspose1d): width tags are supported"),
    (width_axes(nn.BatchNorm1d(8), inp="h"), "body.1 (BatchNorm1d): a BatchNorm1d has no input width"),
    (width_axes(nn.GroupNorm(2, 8), out="h"), "body.1 (GroupNorm): one width unit must be whole groups of 4"),
])
def test_a_tag_the_package_cannot_split_is_one_line_naming_the_layer(layer, named):
    with pytest.raises(UserInputError) as err:
        _family(lambda shape, options: Tagged(layer), DataShape((4,), 2))
    assert err.value.where == "model.name" and named in err.value.message and "\n" not in str(err.value)


class SizeFromInit(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = 8
        self.fc = width_axes(nn.Linear(4, 8), out="h")
        self.out = width_axes(nn.Linear(8, 2), inp="h")

    def forward(self, x):
        return self.out(F.relu(self.fc(x)).view(-1, self.hidden))


def test_a_sub_model_that_cannot_run_is_caught_by_the_check():
    family = _family(lambda shape, options: SizeFromInit(), DataShape((4,), 2))
    with pytest.raises(UserInputError) as err:
        check_sub_model(family)
    assert "fails its forward pass" in err.value.message and "\n" not in str(err.value)


def test_a_function_without_width_is_narrowed_by_cutting_and_cannot_be_widened():
    family = _family(every_layer, width=0.5)
    assert family.full_widths() == {"embed": 8, "chan": 2, "heads": 2, "maps": 3, "hidden": 10}
    full = to_weights(_family(every_layer).build())
    narrow = to_weights(family.build())
    assert np.array_equal(narrow["hidden.weight"], full["hidden.weight"][:10, :6])  # the first units of the full
    with pytest.raises(UserInputError, match="model.width"):
        _family(every_layer, width=2.0)


def test_a_function_taking_widths_builds_the_narrowed_global_model_itself():
    calls = []

    def make(shape, options, widths=None):
        calls.append(widths)
        hidden = (widths or {}).get("h", 8)
        return nn.Sequential(width_axes(nn.Linear(4, hidden), out="h"), width_axes(nn.Linear(hidden, 2), inp="h"))

    family = _family(make, DataShape((4,), 2))
    narrow = family.narrowed({"h": 3})
    weights = to_weights(narrow.build())
    assert calls[-1] == {"h": 3} and weights["0.weight"].shape == (3, 4)
    torch.manual_seed(0)  # the family's seed: a Linear(4, 3) as torch initialises one of that size
    assert np.array_equal(weights["0.weight"], nn.Linear(4, 3).weight.detach().numpy())
    assert narrow.build({"h": 2})[0].weight.shape == (2, 4)  # sub-models of it are cut as usual
    cut = _family(lambda shape, options: make(shape, options), DataShape((4,), 2)).narrowed({"h": 3})
    assert np.array_equal(to_weights(cut.build())["0.weight"], to_weights(family.build())["0.weight"][:3])


def test_the_full_network_is_seeded_and_rebuilt_the_same_after_pickling():
    family = _family(every_layer, seed=4)
    again = pickle.loads(pickle.dumps(ModuleFamily("tests.models.test_module:every_layer", SEQUENCE, seed=4)))
    assert again._template is None  # the network never travels: each process builds its own
    a, b = to_weights(family.build()), to_weights(again.build())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["hidden.weight"], to_weights(_family(every_layer, seed=5).build())["hidden.weight"])


NETS = '''
from dataclasses import dataclass
from torch import nn
from msfusion_ray.splitting.spec import width_axes
from msfusion_ray.validation import checked, positive


@dataclass(frozen=True)
class Options:
    hidden: int = checked(16, check=positive)


def make_mlp(shape, options: Options):
    inputs = 1
    for size in shape.input_shape:
        inputs *= size
    return nn.Sequential(nn.Flatten(), width_axes(nn.Linear(inputs, options.hidden), out="hidden"), nn.ReLU(),
                         width_axes(nn.Linear(options.hidden, shape.num_outputs), inp="hidden"))
'''


def test_a_model_file_outside_the_package_by_path_with_typed_options(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    source = f"{tmp_path / 'nets.py'}:make_mlp"
    family = build_family(source, IMAGES, 1.0, {"hidden": 24})
    assert family.spec.groups == {"hidden": 24} and family.name == source
    assert build_family(source, IMAGES, 1.0, {}).spec.groups == {"hidden": 16}
    with pytest.raises(UserInputError, match="model.options.hidden: must be > 0"):
        build_family(source, IMAGES, 1.0, {"hidden": 0})
    with pytest.raises(UserInputError, match="model.options.depth: unknown field"):
        build_family(source, IMAGES, 1.0, {"depth": 2})
    restored = pickle.loads(pickle.dumps(family))
    assert restored.options.hidden == 24 and restored.build().state_dict().keys() == family.build().state_dict().keys()
    assert ship_with_job([source, "cnn", "msfusion_ray.models.cnn:SmallCNN"]) == [str(tmp_path / "nets.py")]


def test_import_paths_that_cannot_be_had_are_one_line(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    cases = [(f"{tmp_path}/missing.py:make", "missing.py: file not found"),
             (f"{tmp_path}/nets.py:make_cnn", "has no 'make_cnn'"),
             ("no_such_package.nets:make", "importing no_such_package.nets failed: ModuleNotFoundError"),
             ("msfusion_ray.models.cnn:", "expected 'package.module:function'")]
    for text, expect in cases:
        with pytest.raises(UserInputError) as err:
            load_ref(text, "model.name")
        assert err.value.where == "model.name" and expect in err.value.message, text
    assert load_ref("msfusion_ray.models.cnn:SmallCNN", "model.name").__name__ == "SmallCNN"


def test_the_built_in_networks_are_family_classes_on_the_one_registry():
    from msfusion_ray.models.base import MODELS
    from msfusion_ray.models.cnn import CNNFamily

    assert {"cnn", "resnet18", "resnet101", "transformer", "vgg", "vit"} <= set(MODELS.names())
    family = build_family("cnn", IMAGES, 0.5)
    assert isinstance(family, CNNFamily) and not isinstance(family, ModuleFamily)
    assert family.full_widths() == {"conv1": 16, "conv2": 32, "fc1": 64}
    with pytest.raises(UserInputError, match="model.name: unknown model 'magic' \\(known: cnn, "):
        build_family("magic", IMAGES)


# A user's family class: a built-in derived to change the network's widths, keeping what the built-in knows beyond
# widths (its layer list for pipeline split learning).
FAMILIES = '''
from msfusion_ray.models.cnn import CNNFamily


class SlimCNN(CNNFamily):
    units = {"conv1": 8, "conv2": 16, "fc1": 24}
'''


def test_a_family_class_by_import_path_is_named_by_it_and_keeps_its_layers(tmp_path):
    from msfusion_ray.models.layers import build_part, load_part_weights

    (tmp_path / "families.py").write_text(FAMILIES)
    source = f"{tmp_path / 'families.py'}:SlimCNN"
    family = build_family(source, IMAGES)
    assert family.name == source and build_family("cnn", IMAGES).name == "cnn"  # caches never mix the two
    assert family.full_widths() == {"conv1": 8, "conv2": 16, "fc1": 24} and family.spec.groups == family.full_widths()
    net = family.build().eval()
    layers = family.layers()
    whole = build_part(layers, 0, len(layers)).eval()
    load_part_weights(whole, to_weights(net))
    x = torch.randn(3, *IMAGES.input_shape)
    with torch.no_grad():
        assert torch.allclose(whole(x), net(x), atol=1e-6)
    with pytest.raises(UserInputError, match="model.options.hidden: unknown field"):
        build_family(source, IMAGES, 1.0, {"hidden": 3})


def test_a_family_class_from_a_file_travels_by_value(tmp_path):
    """Another process (the driver, a host) gets the class with the family, even where the file is not."""
    import subprocess
    import sys

    from ray import cloudpickle

    (tmp_path / "families.py").write_text(FAMILIES)
    family = build_family(f"{tmp_path / 'families.py'}:SlimCNN", IMAGES, 0.5)
    (tmp_path / "family.pkl").write_bytes(cloudpickle.dumps(family))
    (tmp_path / "families.py").unlink()
    read = ("import pickle, sys; f = pickle.load(open(sys.argv[1], 'rb')); "
            "print(sorted(f.full_widths().items()), sum(p.numel() for p in f.build().parameters()))")
    out = subprocess.run([sys.executable, "-c", read, str(tmp_path / "family.pkl")], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    expected = sum(p.numel() for p in family.build().parameters())
    assert out.stdout.split() == f"{sorted(family.full_widths().items())} {expected}".split()


def test_a_built_in_by_its_import_path_is_the_built_in():
    by_name, by_path = build_family("cnn", IMAGES, 0.5), build_family("msfusion_ray.models.cnn:CNNFamily", IMAGES, 0.5)
    assert type(by_path) is type(by_name) and by_path.full_widths() == by_name.full_widths()
    assert by_path.build().state_dict().keys() == by_name.build().state_dict().keys()
    with pytest.raises(UserInputError, match="model.name: 'msfusion_ray.models.cnn:CNNFamily.kernel' is neither"):
        build_family("msfusion_ray.models.cnn:CNNFamily.kernel", IMAGES)

