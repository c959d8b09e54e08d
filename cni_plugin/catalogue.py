"""A registry of classes by name, filled by importing every module of one package.

backends/ and agent/controllers/ use it, so a new backend or controller is one new
module that decorates its class with the catalogue's `register`.
"""

import importlib
import pkgutil


class Catalogue:
    def __init__(self, kind: str, package: str, path, shared=()):
        self.kind = kind          # "backend", "controller": for messages
        self.package = package    # the package whose modules register themselves
        self.path = path          # its __path__
        self.shared = set(shared)  # modules of the package that register nothing
        self.entries = {}
        self.loaded = False

    def register(self, cls):
        """Class decorator: `cls` under `cls.name`."""
        if cls.name in self.entries and self.entries[cls.name] is not cls:
            raise ValueError(f"{self.kind} {cls.name!r} registered twice")
        self.entries[cls.name] = cls
        return cls

    def _load(self) -> None:
        if not self.loaded:
            for module in pkgutil.iter_modules(self.path):
                if module.name not in self.shared:
                    importlib.import_module(f"{self.package}.{module.name}")
            self.loaded = True

    def names(self) -> list:
        self._load()
        return sorted(self.entries)

    def get(self, name: str):
        """The class registered as `name`; KeyError if none."""
        self._load()
        return self.entries[name]

    def all(self) -> list:
        self._load()
        return list(self.entries.values())
