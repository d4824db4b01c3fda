"""Plain-torch models that can be built at any width, each with its split spec: the built-in networks, and any
function returning a width-tagged nn.Module (msfusion_ray.models.module)."""

from msfusion_ray.models.base import DataShape, ModelFamily, family_names
from msfusion_ray.models.module import ModuleFamily, build_family

__all__ = ["DataShape", "ModelFamily", "ModuleFamily", "build_family", "family_names"]
