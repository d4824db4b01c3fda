"""SGD and Adam as the training loops use them (`step`, `zero_grad`), without torch.optim.

torch.optim's optimizers import torch._dynamo on first use (their methods are wrapped to be skipped by the
compiler), which costs each process about 73 MB of private memory and 1 to 4 s here; every host, and every
pipeline stage, would pay it for nothing, since nothing in this package is compiled. These compute exactly what
torch.optim's single-tensor paths (the ones it takes on CPU) compute, in the same operations and order, so a run
gives the same weights bit for bit (tests/training/test_optimizers.py holds them to it). On a GPU torch.optim would
take its multi-tensor path, which rounds differently; these keep the single-tensor one everywhere.
"""

from __future__ import annotations

from typing import Iterable

import torch


class Optimizer:
    """Parameters whose gradient is set are updated by `step`; the others are left alone (as torch.optim does)."""

    def __init__(self, params: Iterable[torch.Tensor]):
        self.params = list(params)

    @torch.no_grad()
    def step(self) -> None:
        for i, param in enumerate(self.params):
            if param.grad is not None:
                self._update(i, param, param.grad)

    def _update(self, i: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.detach_().zero_()


class SGD(Optimizer):
    """torch.optim.SGD without dampening or Nesterov: g += weight_decay * w; b = momentum * b + g (b = g at the
    first step); w -= lr * b."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def _update(self, i: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        if self.weight_decay != 0:
            grad = grad.add(param, alpha=self.weight_decay)
        if self.momentum != 0:
            buf = self.buffers[i]
            if buf is None:
                buf = self.buffers[i] = grad.detach().clone()
            else:
                buf.mul_(self.momentum).add_(grad)
            grad = buf
        param.add_(grad, alpha=-self.lr)


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient, no AMSGrad): m = lerp(m, g, 1 - beta1),
    v = beta2 * v + (1 - beta2) g^2, w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.steps = [0] * len(self.params)
        self.moments: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.params)

    def _update(self, i: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        if self.moments[i] is None:
            self.moments[i] = (torch.zeros_like(param, memory_format=torch.preserve_format),
                               torch.zeros_like(param, memory_format=torch.preserve_format))
        exp_avg, exp_avg_sq = self.moments[i]
        self.steps[i] += 1
        step = float(self.steps[i])
        if self.weight_decay != 0:
            grad = grad.add(param, alpha=self.weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
