"""Measurement passes on one thread.

A footprint or a FLOP count is a forward and backward pass on an example batch whose figures depend only on shapes,
not on how many threads compute it. The launcher prepares a run on torch's default threads (two here) while the
embedded cluster starts on the same cores, and two OpenMP threads that wait on a busy core spin: a FedAvg CNN
footprint took 0.14-0.24 CPU seconds on two threads and 0.01-0.05 on one, the same bytes (load 45).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside, as many as before after."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
