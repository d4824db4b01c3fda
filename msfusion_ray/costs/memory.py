"""Measured memory: the live-tensor peak of a block of torch code, the process's resident-set peak, and the peak
torch's allocator held on a GPU."""

from __future__ import annotations

import functools
import os
import weakref
from pathlib import Path
from contextlib import contextmanager
from typing import Iterable, Iterator

import psutil
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from msfusion_ray.costs.eager import call_directly, dispatch_of


class TensorPeakTracker(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once while the mode is active.

    Every tensor an op returns is followed by a weak reference to its storage until it is freed, so the figure is
    what torch allocated (activations, gradients, optimizer state, temporaries), independent of the allocator's
    caching and of how the planner estimates it. Tensors that exist beforehand are added with `track`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs: dict[int, weakref.ref] = {}

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self._add(tensor)

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if size == 0 or key in self._refs:
            return

        def freed(_ref: weakref.ref, key: int = key, size: int = size) -> None:
            if self._refs.pop(key, None) is not None:
                self.live_bytes -= size

        self._refs[key] = weakref.ref(storage, freed)
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)
        return out


call_directly(dispatch_of(TensorPeakTracker))


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def _process(pid: int) -> psutil.Process:
    return psutil.Process(pid)


def _this_process() -> psutil.Process:
    """This process, made once (a `psutil.Process` reads /proc to be made: paid by every task otherwise)."""
    return _process(os.getpid())


class RssPeak:
    """Result holder of `rss_peak`: bytes the process's resident set rose above its level at entry."""

    delta_bytes: int = 0


@contextmanager
def rss_peak() -> Iterator[RssPeak]:
    """Peak rise of the process's resident set over a block (VmHWM after a reset; plain RSS delta elsewhere).

    Memory the allocator kept from earlier work is reused without raising RSS, so this is a lower bound on what the
    block used; the live-tensor tracker gives the allocation-level figure.
    """
    result = RssPeak()
    process = _this_process()
    has_hwm = _reset_peak_rss()
    start = process.memory_info().rss
    try:
        yield result
    finally:
        hwm_kib = _status_kib("VmHWM") if has_hwm else None
        end = hwm_kib * 1024 if hwm_kib is not None else process.memory_info().rss
        result.delta_bytes = max(0, end - start)


class CudaPeak:
    """Result holder of `cuda_peak`: the most bytes torch's allocator held at once on the GPU during the block."""

    peak_bytes: int = 0


@contextmanager
def cuda_peak(device: torch.device) -> Iterator[CudaPeak]:
    """`torch.cuda.max_memory_allocated` over a block, its peak reset at entry (the process-lifetime peak would
    carry every earlier task's). Nothing is measured on a CPU device."""
    result = CudaPeak()
    if device.type != "cuda":
        yield result
        return
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield result
    finally:
        result.peak_bytes = int(torch.cuda.max_memory_allocated(device))


_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def machine_memory_bytes() -> int:
    """Memory this process's machine has: its physical memory, or less where a control group limits it."""
    total = psutil.virtual_memory().total
    for path in _CGROUP_LIMITS:
        try:
            limit = path.read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total
