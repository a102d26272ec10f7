"""Exceptions raised by diffcomp.

Every error a user can cause (bad options, an unknown plug-in name, broken
assembly, a malformed recipe) derives from :class:`DiffcompError`, so a caller
can catch one class; each also derives from the builtin its meaning matches
(``ValueError`` for bad values, ``LookupError`` for unknown names).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffcompError(Exception):
    """Base class of every error diffcomp raises on purpose."""


class PluginError(DiffcompError):
    """A plug-in failed to load, or registered something invalid."""


class DuplicateNameError(PluginError, ValueError):
    """The same name was registered twice; the message names both plug-ins."""


class UnknownNameError(DiffcompError, LookupError):
    """A look-up named something nobody registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], note: str = ""):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, self.known)}; "
                         f"registered {kind}s: {', '.join(self.known) or '(none)'}{note}")

    def __str__(self) -> str:  # LookupError would otherwise quote the message
        return self.args[0]


class AssemblyError(DiffcompError, ValueError):
    """Assembly text that cannot be assembled; carries the line number."""

    def __init__(self, message: str, line: int | None = None, source: str | None = None):
        self.line, self.source, self.message = line, source, message
        where = f"line {line}: " if line is not None else ""
        text = f"{where}{message}"
        if source is not None:
            text += f"\n    {source.strip()}"
        super().__init__(text)


class CompileError(DiffcompError, ValueError):
    """Python source outside the subset :func:`diffcomp.compile` accepts; carries file, line and column."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 column: int | None = None, source: str | None = None):
        self.message, self.file, self.line, self.column, self.source = message, file, line, column, source
        where = ":".join(str(x) for x in (file or "<source>", line, column) if x is not None)
        text = f"{where}: {message}"
        if source is not None and source.strip():
            text += f"\n    {source.strip()}"
        super().__init__(text)


class HaltingError(DiffcompError, RuntimeError):
    """A run reached its step limit without halting."""


class RecipeError(DiffcompError, ValueError):
    """A recipe (or an override of one) is invalid; raised before any work starts."""


def is_fraction(value: object) -> bool:
    """Whether ``value`` is a number in ``[0, 1)`` (a probability below 1; ``True`` and ``False`` are not numbers
    here)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < 1


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
