"""Measurement modes that never wake torch's compiler.

torch wraps the `__torch_dispatch__` of every TorchDispatchMode (its FLOP counter's, this package's tensor-peak
tracker's) so that torch.compile skips it, and the wrapper imports torch._dynamo the first time it is called:
about 73 MB of private memory and 1 to 4 s in every host process here, for nothing, since nothing in this package
is compiled. `call_directly` tells such a wrapper to call the function it wraps. It fills the cache the wrapper
(torch._compile._disable_dynamo) looks in; a wrapper of another kind is left as it is, and then costs only the
import, as before.
"""

from __future__ import annotations

from typing import Any

from torch.utils import flop_counter


def call_directly(wrapper: Any) -> None:
    raw = getattr(wrapper, "__wrapped__", None)
    if raw is not None and getattr(raw, "__dynamo_disable", None) is None:
        setattr(raw, "__dynamo_disable", raw)


def dispatch_of(mode: type | None) -> Any:
    return None if mode is None else mode.__dict__.get("__torch_dispatch__")


call_directly(dispatch_of(getattr(flop_counter, "_FlopCounterMode", None)))
