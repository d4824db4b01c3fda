"""Packaging beside pyproject.toml: the packages, and the ready configs and device profiles as package data.

The project keeps device_profiles/ and configs/ at the top level of the checkout; the wheel carries them inside the
package as msfusion_ray/bundled/device_profiles and msfusion_ray/bundled/configs (msfusion_ray.paths finds either),
so an installed `msfusion-ray` works from any directory. Their subdirectories are listed here as they are found, so a
new fleet or config directory needs no edit.
"""

from pathlib import Path

from setuptools import find_packages, setup

BUNDLED = ("device_profiles", "configs")


def bundled_packages() -> dict[str, str]:
    """Package name -> directory, for every directory under the bundled trees."""
    here = Path(__file__).resolve().parent
    packages = {}
    for top in BUNDLED:
        for directory in [here / top, *sorted(p for p in (here / top).rglob("*") if p.is_dir())]:
            relative = directory.relative_to(here)
            packages["msfusion_ray.bundled." + ".".join(relative.parts)] = relative.as_posix()
    return packages


data = bundled_packages()
setup(
    packages=find_packages(include=["msfusion_ray", "msfusion_ray.*", "analysis", "analysis.*"]) + list(data),
    package_dir=data,
    package_data={name: ["*.yaml", "*.csv", "*.md"] for name in data},  # sources: device lists and licences
)
