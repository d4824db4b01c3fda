"""Measured memory: the live-tensor peak of a block of torch code, the process's resident-set peak, and the peak
torch's allocator held on a GPU."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import psutil
import torch
from torch._ops import OpOverload
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from msfusion_ray.costs.eager import call_directly, dispatch_of


class TensorPeakTracker(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once while the mode is active.

    Every tensor an op returns is followed by a weak reference to its storage until it is freed, so the figure is
    what torch allocated (activations, gradients, optimizer state, temporaries), independent of the allocator's
    caching and of how the planner estimates it. Tensors that exist beforehand are added with `track`.

    The references are torch's own weak references to the C++ storage (`StorageWeakRef`, what torch's fake tensors
    and AOT autograd keep), asked whether they expired when the figure is needed. An earlier tracker used Python
    weak references with callbacks instead: those ran Python code inside the C++ destructor of every freed
    storage, in the middle of autograd's backward and of the kernels that free tensors, and crashed or hung the
    process depending on what ran before it (docs/emulation.md, "The live-tensor peak"). Nothing here runs when a
    storage is freed, and the tracker holds no reference cycle.

    Frees are looked for only where the peak could rise: the bytes counted since the last look bound the live
    bytes from above, and while that bound stays under the peak, so does what is live. The peak is exactly the
    most bytes alive when some op's outputs were added, as if every free were seen at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.peak_bytes = 0
        self._counted = 0  # bytes of the storages in `_held`, some of which may have been freed since
        self._held: dict[int, tuple[StorageWeakRef, int]] = {}  # storage address -> (weak reference, bytes)
        self._held_after_look = 0  # entries left by the last look for frees

    @property
    def live_bytes(self) -> int:
        self._forget_freed()
        return self._counted

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self._add(tensor)

    def _forget_freed(self) -> None:
        expired = torch.UntypedStorage._expired
        freed = [key for key, (ref, _) in self._held.items() if expired(ref.cdata)]
        for key in freed:
            self._counted -= self._held.pop(key)[1]
        self._held_after_look = len(self._held)

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if size == 0 or key in self._held:  # a held weak reference keeps the address from being reused
            return
        self._held[key] = (StorageWeakRef(storage), size)
        self._counted += size
        if self._counted > self.peak_bytes or len(self._held) > 2 * self._held_after_look + 64:
            self._forget_freed()
            self.peak_bytes = max(self.peak_bytes, self._counted)

    def __torch_dispatch__(self, func: OpOverload, types: tuple[type, ...], args: tuple = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)
        return out


call_directly(dispatch_of(TensorPeakTracker))


class ProcMemory:
    """This process's resident set as the kernel counts it, read through files of /proc/self kept open: a task's
    memory figures read them three times, and opening each file (and, before, making a psutil reader) cost more
    than reading it (about 70 of a host's 2900 microseconds per task). The files name the process that opened
    them, so each process (a forked one too) opens its own (`proc_memory`)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._status = os.open("/proc/self/status", os.O_RDONLY)
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            self._clear_refs: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            self._clear_refs = None

    def rss_bytes(self) -> int:
        """The resident set now (what psutil's `memory_info().rss` reads: statm's second field, in pages)."""
        return int(os.pread(self._statm, 256, 0).split()[1]) * self._page

    def status_kib(self, field: str) -> int | None:
        """A field of /proc/self/status in KiB (`VmHWM`, `VmRSS`, ...); None where it has none."""
        status = b"\n" + os.pread(self._status, 16384, 0)
        at = status.find(f"\n{field}:".encode())
        return int(status[at + len(field) + 2:status.index(b"\n", at + 1)].split()[0]) if at >= 0 else None

    def reset_peak(self) -> bool:
        """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where that is not possible."""
        if self._clear_refs is None:
            return False
        try:
            os.write(self._clear_refs, b"5")
            return True
        except OSError:
            return False


@functools.lru_cache(maxsize=None)
def _proc_memory(pid: int) -> ProcMemory:
    return ProcMemory()


def proc_memory() -> ProcMemory:
    """This process's `ProcMemory`, opened once per process."""
    return _proc_memory(os.getpid())


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
    memory = proc_memory()
    has_hwm = memory.reset_peak()
    start = memory.rss_bytes()
    try:
        yield result
    finally:
        hwm_kib = memory.status_kib("VmHWM") if has_hwm else None
        end = hwm_kib * 1024 if hwm_kib is not None else memory.rss_bytes()
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
