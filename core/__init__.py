"""diffcomp: language models that carry a differentiable computer.

The public API (docs/architecture.md, "Stable API") is importable from here. Names are
resolved lazily, so ``import diffcomp`` stays cheap: the language-model stack
(transformers) is imported only when a model is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (AssemblyError, CompileError, DiffcompError, DuplicateNameError, HaltingError, PluginError,
                     RecipeError, UnknownNameError)
from .hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

# diffcomp.alu and diffcomp.swap are both modules and the stable functions
# they define: importing a module binds the package attribute to it, so each
# module is callable (calling it calls the function), and both are imported
# on first use like every other name here: ``import diffcomp`` needs no torch.
_CALLABLE_MODULES = ("alu", "swap")

# public name -> module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    # numbers
    "NumberEncoding": ".encodings", "encoding": ".encodings", "convert": ".encodings",
    "Op": ".ops", "ALU": ".alu", "ConvertingALU": ".swap",
    # plug-ins
    "register_plugin": ".registry", "PluginInfo": ".registry",
    # the machine
    "Memory": ".machine", "Registers": ".machine", "Interpreter": ".machine", "Machine": ".machine",
    "State": ".machine", "Program": ".machine", "Library": ".machine", "assemble": ".machine",
    "disassemble": ".machine", "execute": ".machine", "program": ".machine",
    # the compiler (Python -> assembly)
    "compile": ".compiler",
    "library": ".machine", "run_chain": ".machine", "convention": ".machine",
    # training
    "Trainer": ".train", "TrainConfig": ".train",
    # trained models
    "load": ".hub",
}

__all__ = sorted([*_LAZY, *_CALLABLE_MODULES, "plugins", "hookimpl", "hookspec",
                  "AssemblyError", "CompileError", "DiffcompError",
                  "DuplicateNameError", "HaltingError", "PluginError", "RecipeError", "UnknownNameError"])


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "plugins":
        # diffcomp.plugins is both the package of built-in plug-ins and the
        # stable function listing installed plug-ins: the package module is
        # callable (see plugins/__init__.py), so both spellings work.
        return importlib.import_module(".plugins", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'diffcomp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time these resolve lazily
    from .alu import ALU, alu
    from .swap import ConvertingALU, swap
    from .encodings import NumberEncoding, convert, encoding
    from .ops import Op
    from .registry import PluginInfo, register_plugin
