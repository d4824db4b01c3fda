"""The FedAvg paper's CNN: its published size, and its width split like every family's."""

import numpy as np
import torch

from msfusion_ray.models import DataShape, build_family
from msfusion_ray.models.weights import load_weights, to_weights
from msfusion_ray.splitting.index_map import extract, index_map, prefix_selection, widths_of


def test_has_the_papers_1663370_parameters_on_28x28_images():
    model = build_family("fedavg_cnn", DataShape((1, 28, 28), 10)).build()
    assert sum(p.numel() for p in model.parameters()) == 1_663_370
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_a_half_width_slice_is_a_narrower_network_and_full_width_the_same_network():
    family = build_family("fedavg_cnn", DataShape((1, 28, 28), 10))
    torch.manual_seed(0)
    full = family.build().eval()
    weights = to_weights(full)
    x = torch.randn(2, 1, 28, 28)
    for rate in (1.0, 0.5):
        selection = prefix_selection(family.spec, rate)
        sub = family.build(widths_of(family.spec, selection))
        load_weights(sub, extract(weights, index_map(family.spec, selection)))
        with torch.no_grad():
            out = sub.eval()(x)
        if rate == 1.0:
            assert torch.equal(out, full(x))
        else:
            assert sum(p.numel() for p in sub.parameters()) < 1_663_370 / 3
            assert out.shape == (2, 10) and np.isfinite(out.numpy()).all()
