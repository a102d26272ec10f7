"""Packages whose public names resolve on first use, so that importing one part imports no more than it needs.

A package calls :func:`lazy_package` at its end with ``{name: submodule}``;
a name is imported from its submodule when first asked for. Some public names
are functions named like a submodule (``diffcomp.machine.execute``,
``diffcomp.model.pretrained``, ``diffcomp.model.llama``): importing the
submodule binds its name on the package, and the package keeps the function
there instead, as the eager ``from .x import x`` these packages once did.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any


class LazyPackage(types.ModuleType):
    """A package module that resolves its ``_LAZY`` names on first use and keeps functions over submodules."""

    _LAZY: Mapping[str, str]

    def __getattr__(self, name: str) -> Any:
        module = self.__dict__.get("_LAZY", {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, self.__name__), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_LAZY", {}):
            return  # a submodule named like the function the package exports: the function stays
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("__all__", ())))


def lazy_package(name: str) -> None:
    """Make the package ``name`` (its ``_LAZY`` table already set) a :class:`LazyPackage`."""
    sys.modules[name].__class__ = LazyPackage
