"""GPU hosts: which device a run trains on, how host actors share the cluster's GPUs, and what NVML says of them.

`runtime.device` picks the device (auto: cuda when the cluster has GPUs). Hosts ask Ray for a fraction of a GPU
(`runtime.gpus_per_host`, by default 1/k with k the fewest hosts per GPU that seat every host), so k hosts share
each GPU. A host on a GPU keeps to its share of the GPU's memory: the memory guard refuses work planned above it
and the caching allocator is capped there, so hosts that share a GPU never plan more than it holds. The real GPU's
total and used memory and utilisation come from nvidia-ml-py (`pynvml`), sampled by a thread of each host while
its tasks run; without NVML (or without a GPU) there are no samples and nothing else changes.

Ray itself knows only GPU counts, never their memory: what a share holds is known on the host, once CUDA is up.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from msfusion_ray.devices.gpu_share import resolve_device
from msfusion_ray.errors import UserInputError

# Memory a process's CUDA context and kernels take on its GPU outside the caching allocator (CUDA loads modules
# lazily; a context with PyTorch's kernels is usually 300 to 500 MiB): an allowance kept out of each host's share,
# not a measurement.
CUDA_CONTEXT_RESERVE_BYTES = 512 * 2**20
SAMPLE_INTERVAL_S = 0.25  # NVML sampling period of a host's telemetry thread


# ---------------------------------------------------------------------------------------------------------------
# Which device, and how much of a GPU each host gets


def torch_cuda_gpus() -> int:
    """GPUs that torch can use in this process (0 with a CPU-only build of torch)."""
    return torch.cuda.device_count() if torch.backends.cuda.is_built() and torch.cuda.is_available() else 0


def cluster_gpus() -> float | None:
    """GPUs of the open Ray session's cluster (None: no session is open yet)."""
    ray = sys.modules.get("ray")  # not imported: no session is open (and importing it here is not needed)
    if ray is not None and ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0.0))
    return None


def check_device(requested: str, address: str | None) -> None:
    """Bad device settings end before anything is written: `cuda` where the cluster has no GPU. The cluster is the
    open Ray session's, or the embedded one that will start on this machine; a cluster still to be joined by address
    is checked when the run's driver prepares in it."""
    if requested != "cuda":
        return
    gpus = cluster_gpus()
    if gpus is None and address is None:  # the embedded cluster will be this machine
        local = nvml_gpu_count()
        if torch_cuda_gpus() == 0 and local > 0:
            raise UserInputError("runtime.device", f"cuda, but torch {torch.__version__} is a CPU-only build "
                                                   f"(this machine has {local} GPU(s))")
        gpus = float(torch_cuda_gpus())
    if gpus is not None:
        resolve_device(requested, gpus)


def host_budget_bytes(total_bytes: int, share: float) -> int:
    """Memory a host may plan on a GPU of `total_bytes` of which it holds `share`: its part of the GPU, less its
    CUDA context."""
    return int(total_bytes * share) - CUDA_CONTEXT_RESERVE_BYTES


# ---------------------------------------------------------------------------------------------------------------
# NVML telemetry


@dataclass(frozen=True)
class GpuSample:
    used_bytes: int  # the GPU's memory in use, every process's
    total_bytes: int
    util_pct: float  # share of the last sample period in which a kernel ran on the GPU


def nvml_gpu_count() -> int:
    """GPUs NVML sees on this machine (0 without NVML)."""
    nvml = _nvml()
    if nvml is None:
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001 (any NVML failure means: no telemetry)
        return 0


def _nvml() -> Any:
    """The initialised pynvml module, or None where nvidia-ml-py or the NVML library is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 (NVMLError_LibraryNotFound, driver errors: no telemetry)
        return None
    return pynvml


class NvmlMonitor:
    """One GPU as NVML reports it."""

    def __init__(self, nvml: Any, handle: Any):
        self._nvml = nvml
        self._handle = handle

    @classmethod
    def open(cls, uuid: str | None = None) -> "NvmlMonitor | None":
        """The GPU with this UUID (torch's device properties give it), else the one CUDA_VISIBLE_DEVICES names
        first, else the machine's only GPU; None where NVML is missing or the GPU cannot be told apart."""
        nvml = _nvml()
        if nvml is None:
            return None
        try:
            return cls(nvml, _find_handle(nvml, uuid))
        except Exception:  # noqa: BLE001
            return None

    def name(self) -> str:
        try:
            name = self._nvml.nvmlDeviceGetName(self._handle)
        except Exception:  # noqa: BLE001
            return ""
        return name.decode() if isinstance(name, bytes) else str(name)

    def sample(self) -> GpuSample | None:
        try:
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
        except Exception:  # noqa: BLE001 (a GPU that stops answering gives no samples, not a failed task)
            return None
        return GpuSample(int(memory.used), int(memory.total), float(rates.gpu))


def _find_handle(nvml: Any, uuid: str | None) -> Any:
    if uuid:
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if visible.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(visible))
    if visible.startswith("GPU-"):
        return nvml.nvmlDeviceGetHandleByUUID(visible)
    if nvml.nvmlDeviceGetCount() == 1:
        return nvml.nvmlDeviceGetHandleByIndex(0)
    raise LookupError("cannot tell which GPU this process uses")


@dataclass
class GpuWindow:
    """What the samples taken while a window was open say (one task's, on its host)."""

    samples: int = 0
    total_bytes: int = 0
    used_max_bytes: int = 0
    util_sum: float = 0.0
    util_max_pct: float = math.nan

    def add(self, sample: GpuSample) -> None:
        self.samples += 1
        self.total_bytes = sample.total_bytes
        self.used_max_bytes = max(self.used_max_bytes, sample.used_bytes)
        self.util_sum += sample.util_pct
        self.util_max_pct = sample.util_pct if math.isnan(self.util_max_pct) else max(self.util_max_pct,
                                                                                       sample.util_pct)

    @property
    def util_mean_pct(self) -> float:
        return self.util_sum / self.samples if self.samples else math.nan


class GpuSampler:
    """Samples the GPU every `interval_s` in a daemon thread, into every window open at the time; each window also
    gets a sample when it opens and when it closes, so a task shorter than the period has two."""

    def __init__(self, sample: Callable[[], GpuSample | None], interval_s: float = SAMPLE_INTERVAL_S):
        self._sample = sample
        self._interval_s = interval_s
        self._windows: list[GpuWindow] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "GpuSampler":
        self._thread = threading.Thread(target=self._loop, name="gpu-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                if not self._windows:
                    continue
            self.record()

    def record(self) -> None:
        """Take one sample into every open window."""
        sample = self._sample()
        if sample is None:
            return
        with self._lock:
            for window in self._windows:
                window.add(sample)

    @contextmanager
    def window(self) -> Iterator[GpuWindow]:
        window = GpuWindow()
        with self._lock:
            self._windows.append(window)
        self.record()
        try:
            yield window
        finally:
            self.record()
            with self._lock:
                self._windows.remove(window)


# ---------------------------------------------------------------------------------------------------------------
# A host's GPU


@dataclass
class HostGpu:
    """The GPU share a host trains on."""

    device: torch.device
    share: float  # of the GPU, as asked of Ray
    total_bytes: int
    budget_bytes: int  # what its work may plan: the share less the CUDA context
    name: str = ""
    uuid: str = ""
    sampler: GpuSampler | None = None  # None without NVML

    @contextmanager
    def window(self) -> Iterator[GpuWindow]:
        if self.sampler is None:
            yield GpuWindow()
            return
        with self.sampler.window() as window:
            yield window


def configure_cuda_determinism() -> None:
    """Same seed, same result on a GPU too, as far as CUDA allows: deterministic cuDNN and cuBLAS kernels (torch
    warns where an op has none). CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def open_host_gpu(share: float, host_id: int) -> HostGpu:
    """Start CUDA on the GPU Ray gave this host (device 0 of those it sees), cap the caching allocator at the
    host's budget, warm the kernels up and start the telemetry thread."""
    configure_cuda_determinism()
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    properties = torch.cuda.get_device_properties(device)
    total = int(properties.total_memory)
    budget = host_budget_bytes(total, share)
    if budget <= 0:
        raise RuntimeError(f"host {host_id}: runtime.gpus_per_host={share:g} of a {total / 2**20:.0f} MiB GPU leaves "
                           f"nothing beside a CUDA context ({CUDA_CONTEXT_RESERVE_BYTES / 2**20:.0f} MiB); give each "
                           f"host more of a GPU")
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
    warm = torch.ones(8, 8, device=device)
    (warm @ warm).sum().item()  # cuBLAS and the first kernels load here, not in a participant's training time
    uuid = str(getattr(properties, "uuid", "") or "")
    monitor = NvmlMonitor.open(uuid or None)
    sampler = GpuSampler(monitor.sample).start() if monitor is not None else None
    name = (monitor.name() if monitor is not None else "") or str(properties.name)
    return HostGpu(device, share, total, budget, name=name, uuid=uuid, sampler=sampler)


def host_gpu(device: str, required: bool, share: float, host_id: int) -> HostGpu | None:
    """The host's GPU when the run trains on cuda and Ray gave it one torch can use. A host that cannot use it
    trains on CPU where the device was `auto` (its records say so) and stops the run where it was `cuda`."""
    if device != "cuda":
        return None
    if torch.cuda.is_available():
        return open_host_gpu(share, host_id)
    if required:
        build = "a CPU-only build" if not torch.backends.cuda.is_built() else "unable to reach it"
        raise RuntimeError(f"runtime.device: cuda, but host {host_id} was given GPU(s) "
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r} and torch {torch.__version__} there is "
                           f"{build}")
    return None


def release_cuda_memory() -> None:
    """After a CUDA out-of-memory error: return the cached blocks, so that the next task starts clean."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
