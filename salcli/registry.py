"""What the four registries share (methods, model sources, measures, output sinks): a name -> class mapping where
a duplicate name is an error and an unknown name a usage error with a suggestion, and discovery of a package's
modules, so a new entry is one file. No torch here."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterable

from .errors import UsageError, did_you_mean


class Registry(dict):
    """``{name: class}`` for one kind of plug-in (``kind``: "method", "model source", ...)."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        super().__init__()
        self.kind, self.plural = kind, plural or f"{kind}s"

    def register(self, name: str, check: Callable[[str, type], None] | None = None):
        """Class decorator: ``@REGISTRY.register("name")`` sets ``cls.name``; a duplicate name is an error."""

        def wrap(cls: type) -> type:
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self[name].__name__}, {cls.__name__})")
            if check is not None:
                check(name, cls)
            cls.name = name
            self[name] = cls
            return cls

        return wrap

    def lookup(self, name: str) -> Any:
        """The class registered as ``name``; an unknown name is a usage error naming the close ones."""
        if name not in self:
            raise UsageError(f"unknown {self.kind} '{name}'.{did_you_mean(name, self)} "
                             f"{self.plural.capitalize()}: {', '.join(self)}")
        return self[name]


def discover(package: str, paths: Iterable[str]) -> None:
    """Import every module of a package (call it at the end of the package's ``__init__``)."""
    for info in sorted(pkgutil.iter_modules(paths), key=lambda i: i.name):
        importlib.import_module(f"{package}.{info.name}")
