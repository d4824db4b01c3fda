"""Built modules kept for the next task of the same shape on a host, so that a task loads its weights into a module
built before instead of constructing and initialising one (for the small CNN at width 0.25 that took longer
than its training step).

What a task trains is unchanged bit for bit: every floating-point parameter and buffer is loaded by the task
anyway, every other buffer (BatchNorm's counters, non-persistent buffers) is put back as the build left it, and
torch's CPU generator is advanced by exactly the draws the build's initialisation would have taken, so whatever
the task draws later (dropout) is what it drew after a fresh build. That count is measured once per shape, on a
generator of the host's own seeded twice (it must come out the same, and reproduce the whole generator state);
a build whose draws cannot be reproduced that way (one that leaves a cached normal sample, say) is never pooled.
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch
from torch import nn

_PROBE_SEEDS = (0x5EED, 0xC0FFEE)
_MT_WORDS = 624  # the Mersenne Twister's state: it is regenerated once every 624 draws


class ModulePool:
    """Modules by shape key, taken for a task and given back once the task is done with them. A module given back
    with hooks still on it (a task that failed before its objective removed them) is dropped."""

    def __init__(self, most: int = 8):
        self._most = most  # shapes kept at once (the least recently given back go first)
        self._free: dict[Hashable, nn.Module] = {}
        self._draws: dict[Hashable, int | None] = {}  # per shape: generator draws its build takes (None: unknown)
        self._fresh: dict[Hashable, dict[str, torch.Tensor]] = {}  # per shape: the build's own buffers

    def take(self, key: Hashable, build: Callable[[], nn.Module]) -> nn.Module:
        """A module of shape `key` in training mode, as `build()` would make it except for its floating-point state
        (which the caller replaces whole: `load_weights`), with torch's generator where `build()` would leave
        it."""
        module = self._free.pop(key, None)
        if module is None:
            if key not in self._draws:
                self._draws[key] = _generator_draws(build)
            module = build()
            loaded = {name for name, value in module.state_dict().items() if value.is_floating_point()}
            self._fresh[key] = {name: buffer.clone() for name, buffer in module.named_buffers() if name not in loaded}
            return module
        for name, buffer in module.named_buffers():
            if name in self._fresh[key]:
                buffer.copy_(self._fresh[key][name])
        if not all(m.training for m in module.modules()):
            module.train()
        _advance_generator(self._draws[key])
        return module

    def give_back(self, key: Hashable, module: nn.Module) -> None:
        if self._draws.get(key) is None or _has_hooks(module):
            return
        for parameter in module.parameters():
            parameter.grad = None  # its memory is free until the next task of the shape
        self._free.pop(key, None)
        self._free[key] = module
        while len(self._free) > self._most:
            del self._free[next(iter(self._free))]


def _has_hooks(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in module.modules())


def _advance_generator(draws: int) -> None:
    """Take `draws` 32-bit draws from torch's CPU generator: an int64 element takes two (`random64`), an int32 one
    one; in pairs the advance of a CNN's build took 51 instead of 71 us, paid by every task of a pooled module."""
    pairs, odd = divmod(draws, 2)
    if pairs:
        torch.empty(pairs, dtype=torch.int64).random_()
    if odd:
        torch.empty(1, dtype=torch.int32).random_()


def _generator_draws(build: Callable[[], nn.Module]) -> int | None:
    """The 32-bit draws `build()` takes from torch's CPU generator, if advancing by that many reproduces the state it
    leaves (from two seeds); the generator is left as it was."""
    generator = torch.default_generator
    saved = generator.get_state()
    try:
        counts = {_draws_from(build, seed) for seed in _PROBE_SEEDS}
    finally:
        generator.set_state(saved)
    count = counts.pop()
    return count if not counts else None


def _draws_from(build: Callable[[], nn.Module], seed: int) -> int | None:
    generator = torch.default_generator
    generator.manual_seed(seed)
    module = build()
    target = generator.get_state()
    most = 4 * sum(t.numel() for t in [*module.parameters(), *module.buffers()]) + 4 * _MT_WORDS
    generator.manual_seed(seed)
    if torch.equal(generator.get_state(), target):
        return 0
    draws = 0
    while draws <= most:  # whole regenerations first, then one draw at a time up to the state `build()` left
        block_start = generator.get_state()
        _advance_generator(_MT_WORDS)
        if torch.equal(generator.get_state(), target):
            return draws + _MT_WORDS
        if _same_words(generator.get_state(), target):
            generator.set_state(block_start)
            for single in range(1, _MT_WORDS + 1):
                _advance_generator(1)
                if torch.equal(generator.get_state(), target):
                    return draws + single
            return None
        draws += _MT_WORDS
    return None


def _same_words(state: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether two CPU generator states hold the same Mersenne Twister words (bytes 24 on: the 624 words, then the
    cached normal samples), whatever their position in them."""
    return torch.equal(state[24:24 + 8 * _MT_WORDS], target[24:24 + 8 * _MT_WORDS])
