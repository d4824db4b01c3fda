"""Modules reused by shape: a task trains exactly as in a freshly built module, torch's generator included."""

import torch
from torch import nn

from msfusion_ray.models.pool import ModulePool, _advance_generator
from msfusion_ray.models.weights import load_weights, to_weights


class _Net(nn.Module):
    """Initialised from the generator, with dropout (draws while training) and BatchNorm (an integer counter)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.head(self.drop(self.norm(self.conv(x)).relu()).flatten(1))


def _train(model, weights, seed_after_take=None):
    """One SGD step from `weights`; the trained weights and the generator's next draw."""
    load_weights(model, weights)
    x, y = torch.ones(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= 0.1 * parameter.grad
    return to_weights(model), {k: v.clone() for k, v in model.state_dict().items()}, torch.rand(1)


def test_a_reused_module_trains_as_a_fresh_build_would():
    torch.manual_seed(0)
    weights = to_weights(_Net())
    pool = ModulePool()
    for seed in (1, 2):  # the first task builds, the second reuses the module the first gave back
        torch.manual_seed(seed)
        fresh = _train(_Net(), weights)
        torch.manual_seed(seed)
        module = pool.take("net", _Net)
        pooled = _train(module, weights)
        pool.give_back("net", module)
        assert all(torch.equal(torch.as_tensor(fresh[0][k]), torch.as_tensor(pooled[0][k])) for k in fresh[0])
        assert all(torch.equal(fresh[1][k], pooled[1][k]) for k in fresh[1])  # num_batches_tracked: 1, not 2
        assert torch.equal(fresh[2], pooled[2])  # the generator where the fresh build and step left it
    assert pool.take("net", _Net) is module


def test_a_build_whose_draws_cannot_be_replayed_is_never_reused():
    class SmallNormal(nn.Module):  # normal_ on fewer than 16 values keeps a cached sample in the generator
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(nn.init.normal_(torch.empty(5)))

    pool = ModulePool()
    module = pool.take("small", SmallNormal)
    pool.give_back("small", module)
    assert pool.take("small", SmallNormal) is not module


def test_a_module_given_back_with_a_hook_on_it_is_dropped():
    pool = ModulePool()
    module = pool.take("net", _Net)
    module.head.register_forward_hook(lambda *args: None)
    pool.give_back("net", module)
    assert pool.take("net", _Net) is not module


def test_the_generator_is_advanced_by_exactly_the_draws_asked_for_odd_or_even():
    generator = torch.default_generator
    saved = generator.get_state()
    try:
        for draws in (0, 1, 2, 623, 624, 26675):
            generator.manual_seed(7)
            if draws:
                torch.empty(draws, dtype=torch.int32).random_()  # one 32-bit draw per element
            expected = generator.get_state()
            generator.manual_seed(7)
            _advance_generator(draws)
            assert torch.equal(generator.get_state(), expected), draws
    finally:
        generator.set_state(saved)
