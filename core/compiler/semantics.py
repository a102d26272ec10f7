"""The compiled subset run as Python, under the machine's integer semantics: the compiler's reference.

:func:`run_python` executes the very function :func:`diffcomp.compile`
compiles, as Python, with every integer a :class:`Word` (a residue mod the
machine's range ``n``) and ``mem`` a list of ``n``-residues: ``x - y`` wraps,
comparisons compare residues, ``x // 0 == x % 0 == 0`` (the ALU's ``div`` and
``mod``, see ``diffcomp.plugins.ops``). Python itself decides everything else
(control flow, ``and``/``or`` returning an operand, tuple assignment), so a
difference between it and the compiled program on the machine is a compiler
bug, not a second interpretation of Python.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .parse import MEMORY, Unit, collect


class Word:
    """An integer mod ``n``, with the machine's arithmetic."""

    __slots__ = ("value", "n")

    def __init__(self, value: int, n: int):
        self.value, self.n = int(value) % n, n

    def _other(self, other: Any) -> int:
        if isinstance(other, Word):
            return other.value
        if isinstance(other, (int, bool)):
            return int(other) % self.n
        raise TypeError(f"a machine integer meets a {type(other).__name__}")

    def _new(self, value: int) -> "Word":
        return Word(value, self.n)

    def __add__(self, o): return self._new(self.value + self._other(o))
    def __radd__(self, o): return self._new(self._other(o) + self.value)
    def __sub__(self, o): return self._new(self.value - self._other(o))
    def __rsub__(self, o): return self._new(self._other(o) - self.value)
    def __mul__(self, o): return self._new(self.value * self._other(o))
    def __rmul__(self, o): return self._new(self._other(o) * self.value)

    def __floordiv__(self, o):
        b = self._other(o)
        return self._new(self.value // b if b else 0)

    def __rfloordiv__(self, o):
        return self._new(self._other(o) // self.value if self.value else 0)

    def __mod__(self, o):
        b = self._other(o)
        return self._new(self.value % b if b else 0)

    def __rmod__(self, o):
        return self._new(self._other(o) % self.value if self.value else 0)

    def __neg__(self): return self._new(-self.value)
    def __pos__(self): return self
    def __lt__(self, o): return self._new(self.value < self._other(o))
    def __le__(self, o): return self._new(self.value <= self._other(o))
    def __gt__(self, o): return self._new(self.value > self._other(o))
    def __ge__(self, o): return self._new(self.value >= self._other(o))
    def __eq__(self, o): return self._new(self.value == self._other(o))  # type: ignore[override]
    def __ne__(self, o): return self._new(self.value != self._other(o))  # type: ignore[override]
    def __bool__(self): return self.value != 0
    def __index__(self): return self.value
    def __int__(self): return self.value
    def __hash__(self): return hash(self.value)
    def __repr__(self): return f"Word({self.value}, n={self.n})"


class Memory:
    """``mem``: cells of residues; an index beyond the cells is an error, as on the strict machine."""

    def __init__(self, cells: Sequence[int], n: int):
        self.cells, self.n = [int(c) % n for c in cells], n

    def _index(self, i: Any) -> int:
        k = int(i)
        if not 0 <= k < len(self.cells):
            raise IndexError(f"mem[{k}] is beyond the memory's {len(self.cells)} cells")
        return k

    def __getitem__(self, i: Any) -> Word:
        return Word(self.cells[self._index(i)], self.n)

    def __setitem__(self, i: Any, value: Any) -> None:
        self.cells[self._index(i)] = Word(int(value) if not isinstance(value, Word) else value.value, self.n).value


@attrs.frozen
class PythonResult:
    value: int | None
    memory: list[int]


class _ToWords(ast.NodeTransformer):
    """Every integer constant a Word; ``not`` a Word; ``range`` yields Words; library calls to models."""

    def __init__(self, functions: set[str], externals: set[str]):
        self.functions, self.externals = functions, externals

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if type(node.value) in (int, bool):
            return ast.copy_location(ast.Call(ast.Name("__word", ast.Load()), [node], []), node)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            return ast.copy_location(ast.Call(ast.Name("__word", ast.Load()), [node], []), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name):
            if node.func.id == "range":
                node.func = ast.Name("__range", ast.Load())
            elif node.func.id in self.externals and node.func.id not in self.functions:
                callee = ast.Subscript(ast.Name("__programs", ast.Load()), ast.Constant(node.func.id), ast.Load())
                return ast.copy_location(ast.Call(callee, [ast.Name(MEMORY, ast.Load()), *node.args], []), node)
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node  # a docstring
        return self.generic_visit(node)


def run_python(fn_or_source: Callable | str | Unit, args: Sequence[int] = (), memory: Sequence[int] = (), *,
               base: int = 128, name: str | None = None,
               programs: Mapping[str, Callable[..., Any]] | None = None) -> PythonResult:
    """Run a function of the subset as Python with the machine's integers; ``(value, memory)`` back.

    ``programs`` gives Python models of the library programs it calls:
    ``programs["insertion_sort"](mem, *args)`` works on ``mem`` (a list-like
    of residues) and returns the value the call gives (or None).
    """
    unit = fn_or_source if isinstance(fn_or_source, Unit) else collect(fn_or_source, name)
    programs = dict(programs or {})
    namespace: dict[str, Any] = {
        "__word": lambda v: Word(int(v), base),
        "__range": lambda *bounds: (Word(k, base) for k in range(*(int(b) for b in bounds))),
        "__programs": programs,
        MEMORY: Memory(memory, base),
        **{k: Word(v, base) for k, v in unit.constants.items()},
    }
    externals = {n.func.id for s in unit.functions.values() for n in ast.walk(s.node)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)} - {"min", "max", "range"}
    for fname, source in unit.functions.items():
        tree = _ToWords(set(unit.functions), externals).visit(ast.Module([_copy(source.node)], []))
        ast.fix_missing_locations(tree)
        exec(compile(tree, source.file, "exec"), namespace)  # noqa: S102 (the user's own function)
    result = namespace[unit.entry](*(Word(a, base) for a in args))
    value = None if result is None else Word(int(result), base).value
    return PythonResult(value, namespace[MEMORY].cells)


def _copy(node: ast.FunctionDef) -> ast.FunctionDef:
    import copy

    node = copy.deepcopy(node)
    node.decorator_list = []
    return node


__all__ = ["run_python", "Word", "Memory", "PythonResult"]
