"""Co-S2P's cross-block knowledge-transfer loss against a hand computation."""

import math

import pytest
import torch

from msfusion_ray.training.losses import exit_distillation_loss


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _hand(exits, targets, gamma, t, distill, reduction):
    """Per sample: CE of every exit, plus gamma t^2 sum_c q_c log(q_c / p_c) with q the deepest exit's and p the
    shallower exit's tempered softmax; each term averaged over samples, and the KL also over the classes where
    the reduction is `mean` (torch's KLDivLoss() default, Co-S2P's code)."""
    n = len(targets)
    ce = lambda z: -sum(math.log(_softmax(z[i], 1)[targets[i]]) for i in range(n)) / n  # noqa: E731
    total = ce(exits[-1])
    for z in exits[:-1]:
        total += ce(z)
        if distill:
            kl = 0.0
            for i in range(n):
                q, p = _softmax(exits[-1][i], t), _softmax(z[i], t)
                kl += sum(qc * math.log(qc / pc) for qc, pc in zip(q, p))
            total += gamma * t * t * kl / n / (len(z[0]) if reduction == "mean" else 1)
    return total


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
@pytest.mark.parametrize("distill", [True, False])
def test_the_distillation_loss_matches_a_hand_computation(distill, reduction):
    exits = [[[0.2, -1.0, 0.5], [1.5, 0.1, -0.3]],
             [[1.0, 0.0, -2.0], [0.0, 0.3, 0.9]],
             [[2.0, -0.5, 0.1], [-1.0, 2.5, 0.4]]]
    targets = [2, 1]
    got = exit_distillation_loss("classification", [torch.tensor(z) for z in exits], torch.tensor(targets),
                                 gamma=0.5, temperature=3.0, distill=distill, reduction=reduction)
    assert float(got) == pytest.approx(_hand(exits, targets, 0.5, 3.0, distill, reduction), rel=1e-6)


def test_a_language_model_distils_per_token_and_one_exit_is_plain_cross_entropy():
    torch.manual_seed(0)
    shallow, deep = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    per_token = exit_distillation_loss("classification", [shallow.reshape(10, 7), deep.reshape(10, 7)],
                                       targets.reshape(10), 0.5, 3.0, True)
    lm = exit_distillation_loss("language_model", [shallow, deep], targets, 0.5, 3.0, True)
    torch.testing.assert_close(lm, per_token)
    alone = exit_distillation_loss("classification", [deep[0]], targets[0], 0.5, 3.0, True)
    torch.testing.assert_close(alone, torch.nn.functional.cross_entropy(deep[0], targets[0]))


def test_the_teacher_is_not_detached():
    shallow = torch.tensor([[0.0, 1.0]], requires_grad=True)
    deep = torch.tensor([[2.0, -1.0]], requires_grad=True)
    exit_distillation_loss("classification", [shallow, deep], torch.tensor([0]), 0.5, 3.0, True).backward()
    without = torch.tensor([[2.0, -1.0]], requires_grad=True)
    exit_distillation_loss("classification", [shallow.detach(), without], torch.tensor([0]), 0.5, 3.0,
                           False).backward()
    assert not torch.allclose(deep.grad, without.grad)
