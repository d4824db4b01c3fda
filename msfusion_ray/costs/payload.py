"""Exact byte counts of what is shipped: the arrays themselves, not a pickle of them."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def payload_bytes(arrays: Mapping[str, Any] | None) -> int:
    """Sum of the sizes of every numpy array in a (possibly nested) mapping."""
    if arrays is None:
        return 0
    total = 0
    for value in arrays.values():
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, Mapping):
            total += payload_bytes(value)
    return total
