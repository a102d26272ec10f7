"""The library Λ: named programs that call one another, and the registered programs (paper §3.1).

A :class:`Library` holds :class:`~diffcomp.machine.program.Program`\\ s by name
and falls back to the registered ones (``register_programs``; a plug-in may
register a Program or assembly text, assembled here on first use).
:meth:`Library.link` lays the programs a machine needs into one
:class:`~diffcomp.machine.program.Image` (:func:`~diffcomp.machine.program.link`).
"""

from __future__ import annotations

import types

from collections.abc import Iterable, Iterator, Sequence

from ..errors import UnknownNameError
from .assembler import assemble
from .program import Image, Program, link


class Library:
    """Named programs that can ``CALL`` one another (paper §3.1).

    ``Library([p, q])``, ``library.add(program)``, ``library["name"]``. A call
    to a name the library lacks falls back to the registered programs
    (``diffcomp.program(name)``) unless ``registered=False``. :meth:`link`
    lays the programs a machine needs out in one address space.
    """

    def __init__(self, programs: Iterable[Program] = (), *, registered: bool = True) -> None:
        self._programs: dict[str, Program] = {}
        self.registered = registered
        for program in programs:
            self.add(program)

    def add(self, program: Program) -> "Library":
        if not isinstance(program, Program):
            raise TypeError(f"a Library holds diffcomp.Program objects (from diffcomp.assemble), "
                            f"got {type(program).__name__}")
        if program.name in self._programs and self._programs[program.name] is not program:
            raise ValueError(f"the library already has a program named {program.name!r}")
        self._programs[program.name] = program
        return self

    def __getitem__(self, name: str) -> Program:
        return self.resolve(name)

    def __contains__(self, name: object) -> bool:
        return name in self._programs

    def __iter__(self) -> Iterator[Program]:
        return iter(self._programs.values())

    def __len__(self) -> int:
        return len(self._programs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._programs)

    def resolve(self, name: str) -> Program:
        """The program called ``name``: this library's, else a registered one."""
        if name in self._programs:
            return self._programs[name]
        if self.registered:
            from ..registry import names

            if name in names("program"):
                return _registered(name)
        known = list(self._programs) + (list(_registered_names()) if self.registered else [])
        raise UnknownNameError("program", name, known)

    def link(self, entries: Sequence[str] | None = None, *, modulus: int | None = None,
             registers: int | None = None) -> "Image":
        """Lay out ``entries`` (default: every program here) and all they call, from address 1."""
        entries = list(self.names if entries is None else entries)
        if not entries:
            raise ValueError("nothing to link: the library is empty and no entry program was named")
        return link([self.resolve(e) for e in entries], self.resolve, modulus=modulus, registers=registers)

    def __repr__(self) -> str:
        return f"Library({list(self._programs)})"


def _registered_names() -> tuple[str, ...]:
    from ..registry import names

    return names("program")


_ASSEMBLED: dict[int, Program] = {}


def _registered(name: str) -> Program:
    from ..registry import lookup

    value = lookup("program", name)
    if isinstance(value, Program):
        return value
    if isinstance(value, str):  # a plug-in may register assembly text
        key = id(value)
        if key not in _ASSEMBLED:
            _ASSEMBLED[key] = assemble(value, name=name)
        return _ASSEMBLED[key]
    if isinstance(value, types.FunctionType):  # or a Python function, compiled when first used
        key = id(value)
        if key not in _ASSEMBLED:
            from ..compiler import compile as compile_python

            _ASSEMBLED[key] = compile_python(value, name=name)
        return _ASSEMBLED[key]
    raise TypeError(f"program {name!r} was registered as a {type(value).__name__}; "
                    "expected a diffcomp.Program, assembly text or a Python function")


def program(name: str) -> Program:
    """A registered library program: ``diffcomp.program("insertion_sort")``."""
    if isinstance(name, Program):
        return name
    return _registered(name)


__all__ = ["Library", "program"]
