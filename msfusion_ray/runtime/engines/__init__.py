"""The engines (docs/engines.md): `sync` rounds, the `async` buffered event loop on the virtual timeline, the
`pipeline` of split learning; each file registers its own (`@register_engine`), found by the one registry."""

from msfusion_ray.runtime.engines.base import Engine, EngineContext, Step, make_engine  # noqa: F401
