"""The package's SGD and Adam compute what torch.optim's do, bit for bit, and never import torch._dynamo."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from msfusion_ray.training.optimizers import SGD, Adam


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))


def _train(net: nn.Module, optimizer, steps: int = 6) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(5, 6, generator=generator)
        y = torch.randint(0, 3, (5,), generator=generator)
        # every other step the last layer gets no gradient: both must leave it, and its state, alone
        logits = net(x) if step % 2 == 0 else net[:3](x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("ours, reference", [
    (lambda p: SGD(p, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    (lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4)),
    (lambda p: Adam(p, lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3)),
    (lambda p: Adam(p, lr=3e-3, weight_decay=1e-2), lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-2)),
])
def test_the_same_weights_as_torch_optim_bit_for_bit(ours, reference):
    a, b = _net(), _net()
    got, expected = _train(a, ours(list(a.parameters()))), _train(b, reference(list(b.parameters())))
    assert all(torch.equal(x, y) for x, y in zip(got, expected))
    assert not torch.equal(got[0], [p for p in _net().parameters()][0])  # and they did train


def test_zero_grad_without_set_to_none_zeroes_in_place():
    net = _net()
    optimizer = SGD(net.parameters(), lr=0.1)
    net(torch.randn(2, 6)).sum().backward()
    grad = net[0].weight.grad
    optimizer.zero_grad(set_to_none=False)
    assert net[0].weight.grad is grad and not grad.any()


def test_training_and_its_measurements_never_import_torch_dynamo():
    """A host's step (FLOPs counted, live tensors tracked, SGD or Adam) leaves torch's compiler unloaded."""
    code = ("import sys, torch\n"
            "from msfusion_ray.costs.flops import count_flops\n"
            "from msfusion_ray.costs.memory import TensorPeakTracker\n"
            "from msfusion_ray.training.optimizers import SGD, Adam\n"
            "net = torch.nn.Linear(4, 2)\n"
            "for opt in (SGD(net.parameters(), lr=0.1, momentum=0.9), Adam(net.parameters())):\n"
            "    with TensorPeakTracker() as peak:\n"
            "        _, flops = count_flops(lambda: net(torch.randn(3, 4)).sum().backward())\n"
            "    opt.step(); opt.zero_grad()\n"
            "    assert flops > 0 and peak.peak_bytes > 0\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
