"""The built-in ALU operations (the table in docs/architecture.md), as data.

Each function works on Python ints and on int64 tensors alike (see
:func:`diffcomp.ops.where`); results are taken modulo the encoding's range by
whoever applies them.
"""

from __future__ import annotations

import diffcomp
from diffcomp.ops import Op, where


def _minimum(a, b):
    return where(a < b, a, b)


def _maximum(a, b):
    return where(a < b, b, a)


def _safe(b):
    return where(b == 0, 1, b)


BUILTIN_OPS = (
    Op("zero", lambda a, b: a * 0, arity=0, doc="0"),
    Op("inc", lambda a, b: a + 1, arity=1, doc="a + 1"),
    Op("dec", lambda a, b: a - 1, arity=1, doc="a - 1"),
    Op("add", lambda a, b: a + b, doc="a + b"),
    Op("sub", lambda a, b: a - b, doc="a - b"),
    Op("mul", lambda a, b: a * b, doc="a * b"),
    Op("div", lambda a, b: where(b == 0, 0, a // _safe(b)), doc="floor(a / b); 0 when b = 0"),
    Op("mod", lambda a, b: where(b == 0, 0, a % _safe(b)), doc="a mod b; 0 when b = 0"),
    Op("min", _minimum, doc="min(a, b)"),
    Op("max", _maximum, doc="max(a, b)"),
    Op("eq", lambda a, b: where(a == b, 1, 0), doc="1 if a = b else 0"),
    Op("lt", lambda a, b: where(a < b, 1, 0), doc="1 if a < b else 0"),
)


@diffcomp.hookimpl
def register_ops(register):
    for op in BUILTIN_OPS:
        register(op)
