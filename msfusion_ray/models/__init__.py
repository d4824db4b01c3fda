"""Plain-torch models that can be built at any width, each with its split spec."""

from msfusion_ray.models.base import DataShape, ModelFamily, build_family, family_names

__all__ = ["DataShape", "ModelFamily", "build_family", "family_names"]
