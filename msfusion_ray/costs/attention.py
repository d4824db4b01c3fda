"""Teaches torch's FLOP counter the CPU attention kernels.

`FlopCounterMode` knows the CUDA kernels behind `scaled_dot_product_attention` (flash, efficient, cuDNN) but not
the CPU one (`_scaled_dot_product_flash_attention_for_cpu` and its backward), so on a CPU attention counted zero.
The CPU kernel does the same two matrix products forward (Q K^T and A V, each 2*B*h*T*T*head_dim, the causal mask
not subtracted) and five backward, so torch's own formulas for the other kernels apply unchanged.
`msfusion_ray.costs.flops` registers them when it is imported, so every FLOP count in the project includes them.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_backward_flop, sdpa_flop

_aten = torch.ops.aten
_FORMULAS = {
    "_scaled_dot_product_flash_attention_for_cpu": sdpa_flop,
    "_scaled_dot_product_flash_attention_for_cpu_backward": sdpa_backward_flop,
}


def register_cpu_attention_flops() -> None:
    """Idempotent: registers each CPU kernel that this torch has and its counter does not know yet."""
    for name, formula in _FORMULAS.items():
        op = getattr(_aten, name, None)
        if op is not None and op not in flop_registry:
            register_flop_formula(op)(formula.__wrapped__)

