"""msfusion_ray: compare collaborative-training schemes on emulated heterogeneous fleets, on Ray and PyTorch."""

__version__ = "0.1.0"
