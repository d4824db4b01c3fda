"""Which device a run's hosts train on and what share of a GPU each asks Ray for: arithmetic on the cluster's GPU
count, without torch (the launcher decides it; msfusion_ray.devices.gpu has the rest of the GPU hosts)."""

from __future__ import annotations

import math

from msfusion_ray.errors import UserInputError

RAY_RESOURCE_DIGITS = 4  # Ray keeps resource quantities to 4 decimal places


def resolve_device(requested: str, gpus: float) -> str:
    """The device hosts train on: `cpu`, or `cuda` when asked for or (auto) when the cluster has GPUs."""
    if requested == "cpu" or (requested == "auto" and gpus <= 0):
        return "cpu"
    if gpus <= 0:
        raise UserInputError("runtime.device", "cuda, but the cluster has no GPUs (use auto or cpu)")
    return "cuda"


def floor_digits(value: float, digits: int = RAY_RESOURCE_DIGITS) -> float:
    scale = 10**digits
    return math.floor(value * scale + 1e-9) / scale


def gpu_share(gpus: float, hosts: int, requested: float | None = None) -> float:
    """The GPU each of `hosts` host actors asks for: `requested`, or an even share, 1/k with k = ceil(hosts / gpus)
    hosts on each GPU (a fraction Ray can seat k times on one GPU; a whole GPU where there are enough). `gpus` may
    be fractional: a sweep's cells divide the cluster's GPUs among them. Raises where `requested` leaves hosts
    that no GPU can seat."""
    if requested is not None:
        per_gpu = math.floor(1 / requested + 1e-9)
        seats = math.floor(gpus + 1e-9) * per_gpu
        if gpus >= 1 and hosts > seats:
            raise UserInputError("runtime.gpus_per_host", f"{hosts} hosts at {requested:g} GPU each need more than "
                                                          f"the cluster's {gpus:g} GPUs (they seat {seats} hosts)")
        return requested
    per_gpu = math.ceil(hosts / gpus - 1e-9)
    return min(1.0, floor_digits(1 / per_gpu))
