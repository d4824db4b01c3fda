"""One small registry for every kind of plug-in (models, strategies, local objectives, and whatever else is found
by name in a config).

A registry is filled by decorators in the files that define the plug-ins (`@register("fedavg")`), and finds those
files itself: on the first lookup of a name not yet registered it imports every module of the packages it was told
to search. So no module has to import the plug-in files to make them known (that was the import cycle of the
hand-written registries), and a new plug-in file needs no edit anywhere else; a lookup of an entry whose module is
already imported imports nothing (a host's procedure: searching imported every strategy, and through MP-SL scipy,
0.3 CPU seconds in every host before its first task).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from msfusion_ray.errors import UserInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind. `kind` names it in errors ("strategy"); `field` is the config field that holds
    such names ("strategy.name"); `search` lists the packages whose modules define the built-in entries."""

    def __init__(self, kind: str, field: str, search: tuple[str, ...] = ()):
        self.kind = kind
        self.field = field
        self.search = search
        self._entries: dict[str, T] = {}
        self._searched = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: enter `obj` under `name`; a class also gets `name` as its `name` attribute."""

        def add(obj: T) -> T:
            if isinstance(obj, type):
                obj.name = name
            self._entries[name] = obj
            return obj

        return add

    def _search_packages(self) -> None:
        if self._searched:
            return
        self._searched = True  # before importing: a module being imported may look its own registry up
        for package_name in self.search:
            package = importlib.import_module(package_name)
            for module in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
                importlib.import_module(module.name)

    def names(self) -> list[str]:
        self._search_packages()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self._search_packages()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The entry, or a one-line `UserInputError` on the config field that lists the known names."""
        if name not in self._entries:
            self._search_packages()
        if name not in self._entries:
            raise UserInputError(self.field, f"unknown {self.kind} '{name}' (known: {', '.join(self.names())})")
        return self._entries[name]

    __getitem__ = get

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]
