"""The engines (docs/engines.md): `sync` rounds, the `async` buffered event loop on the virtual timeline."""

from msfusion_ray.runtime.engines import pipeline, semi_async, sync  # noqa: F401  (registration side effect)
from msfusion_ray.runtime.engines.base import Engine, EngineContext, Step, make_engine  # noqa: F401
