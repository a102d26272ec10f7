"""A compiler from a subset of Python to the machine's assembly: ``diffcomp.compile``.

Parse (Python's ``ast``) -> IR (:mod:`.ir`, a control-flow graph) -> passes
(:mod:`.passes`: constant folding, dead-code removal, jump threading) ->
register allocation (:mod:`.regalloc`) -> assembly text (:mod:`.emit`),
assembled by :func:`diffcomp.assemble` into an ordinary library
:class:`~diffcomp.Program`.

The subset
    Integer variables and parameters; integer constants (and module-level
    integer constants); ``+ - * // %`` and unary ``-``; ``min``, ``max``;
    ``== != < <= > >=`` (chains too); ``and``, ``or``, ``not``; ``x if c
    else y``; ``if``/``elif``/``else``; ``while``; ``for x in range(...)``
    (step 1); ``break``, ``continue``, ``return``, ``pass``; tuple assignment
    ``a, b = b, a + b``; memory as ``mem[i]`` (the name ``mem``, read and
    written); calls of other functions in the same source and of library
    programs by name, recursion included. More values live at once than the
    15 registers hold: the most crowded ones move to a stack frame (spilled).
    Anything else is a :class:`~diffcomp.errors.CompileError` with the file,
    line and column.

The machine's integer semantics
    Every value is an integer mod the machine's range ``n`` (the base):
    ``x - y`` wraps, comparisons compare the residues ``0..n-1``, ``x // 0 ==
    x % 0 == 0`` (the ALU's ``div`` and ``mod``), ``not x`` is ``x == 0``, and
    ``a and b`` / ``a or b`` give the deciding operand as in Python.
    :func:`diffcomp.compiler.run_python` runs the same function as Python
    under these semantics (the reference the differential tests use).

The calling convention (compiled functions; hand-written programs state their own)
    - arguments in r0, r1, ... in order; the result in r0 (``return x``);
    - ``CALL`` puts the return address in ``lr``; the callee returns with ``RET``;
    - the caller saves what it needs: before a call it pushes every live
      value in a register the callee may write (for a library program the
      compiler reads which registers it writes, its callees' included; a
      recursive call writes them all) and ``lr``, and pops them after;
    - the stack pointer is r15; the stack grows down from the top of memory
      (r15 starts at 0, so the first push writes cell ``n - 1``): a program
      that calls and keeps values across the call (recursion, for one) needs
      as many memory cells as the base (``execute(..., cells=base)``);
      leaf functions never touch it. A function with spilled values takes a
      frame below r15 on entry and gives it back before it returns. Every
      compiled function leaves r15 as it found it; code it calls must too;
    - ``return f(x)`` (a tail call) is a jump: a self tail call becomes a loop.

Calling a hand-written program
    ``insertion_sort()`` calls the library program by name: it works on
    memory, so it takes no arguments. Arguments go to r0.. in order and the
    result is read from r0; a program that leaves its result elsewhere says
    so at the call: ``fibonacci(0, 1, d, result="r3")``.
"""

from __future__ import annotations

import ast
import gc
import itertools
import re
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import CompileError
from ..machine.library import Library
from ..machine.program import Program
from .emit import SP, emit
from .ir import Call, Function, Var
from .parse import ALLOWED, Unit, collect, error, lower
from .passes import legalize, liveness, optimize
from .regalloc import ALLOCATABLE, Frame, Spill, allocate, spill
from .semantics import Word, run_python

STACK_POINTER = SP
_REGISTER_NAME = re.compile(r"[rR][0-9]+|lr")


def compile(fn_or_source: Callable | str, name: str | None = None, *, library: Library | Iterable[Any] | None = None,
            base: int | None = None, filename: str | None = None) -> Program:
    """Compile a Python function (or source text) into a library :class:`~diffcomp.Program`.

    ``fn_or_source`` is a function object (the functions it calls are
    compiled with it, into the same program) or Python source text (its
    function called ``name``, or the one no other calls). ``name`` names the
    program (default: the function's name). ``library`` is what calls may
    name besides the functions compiled together: a
    :class:`~diffcomp.Library`, or programs or names (default: the
    registered programs). ``base``, when given, lets constants fold exactly
    mod that base; without it the program runs on any base. ``filename``
    names source text in messages.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    enabled = gc.isenabled()
    gc.disable()  # many small short-lived objects: with torch loaded, collections would cost 5x the compile
    try:
        unit = collect(fn_or_source, name if isinstance(fn_or_source, str) else None, filename)
        return compile_unit(unit, name or unit.entry, library=library, base=base)
    finally:
        if enabled:
            gc.enable()


def compile_unit(unit: Unit, name: str, *, library: Library | Iterable[Any] | None = None,
                 base: int | None = None) -> Program:
    from ..machine.assembler import assemble

    programs = _Programs(library)
    for fname, source in unit.functions.items():
        if _REGISTER_NAME.fullmatch(fname):
            raise error(f"a function cannot be named {fname!r}: that is a register's name", source, source.node)
    functions: dict[str, Function] = {}
    counters: dict[str, Any] = {}
    for fname, source in unit.functions.items():
        fn = lower(source, unit, programs.known)
        _check_assigned(fn, source)
        counter = counters[fname] = itertools.count()
        optimize(fn, base, lambda: _temp(counter))
        legalize(fn, lambda: _temp(counter))
        functions[fname] = fn

    # compile callees first, so a caller knows exactly which registers each one writes
    writes: dict[str, frozenset[int]] = {}
    cyclic = _recursive(functions)
    texts: dict[str, list[str]] = {}
    for fname in _postorder(functions, unit.entry):
        fn = functions[fname]

        def clobbers(call: Call, fname=fname) -> frozenset[int]:
            if call.internal:
                if call.callee in cyclic.get(fname, ()) or call.callee not in writes:
                    return frozenset(ALLOCATABLE)
                return writes[call.callee]
            return programs.writes(call.callee)

        def fail(message: str, node, fname=fname) -> CompileError:
            return error(f"in {fname}(): {message}", unit.functions[fname], node)

        alloc, frame = None, None
        for _ in range(2 * len(list(_variables(fn))) + 1):
            try:
                alloc = allocate(fn, clobbers, fail, spill=True)
                break
            except Spill as spilled:  # too many values at once: keep one in the stack frame instead
                frame = frame or Frame(fn)
                spill(fn, spilled.var, frame, lambda: _temp(counters[fname]))
        if alloc is None:
            alloc = allocate(fn, clobbers, fail)  # names the value that found no register
        lines = emit(fn, alloc, clobbers, fail)
        texts[fname] = lines
        written = set(alloc.registers.values())
        for c in fn.calls():  # what its callees write, and the argument and result registers
            written |= set(range(len(c.args))) | {getattr(c, "result", 0)} | clobbers(c)
        writes[fname] = frozenset(r for r in written | {0} if r != SP)
    order = [unit.entry] + [f for f in functions if f != unit.entry and f in texts]
    doc = _doc(unit, functions[unit.entry])
    text = "\n".join(f"; {line}".rstrip() for line in doc.splitlines()) + "\n\n"
    text += "\n".join(line for f in order for line in texts[f]) + "\n"
    externals = {c.callee for fn in functions.values() for c in fn.calls() if not c.internal}
    return assemble(text, name=name, library=externals)


def _variables(fn: Function) -> set[Var]:
    return {v for b in fn for i in b.instructions for v in [*i.uses(), *i.defs()] if isinstance(v, Var)}


def _temp(counter) -> Var:
    return Var(f"$n{next(counter)}")


def _doc(unit: Unit, fn: Function) -> str:
    params = ", ".join(p.name for p in fn.params)
    registers = ", ".join(f"r{k} = {p.name}" for k, p in enumerate(fn.params)) or "no arguments"
    docstring = (ast.get_docstring(unit.functions[unit.entry].node) or "").strip()
    head = f"{fn.name}({params}), compiled from Python. in: {registers}. out: r0 = its result."
    return head + ("\n" + docstring if docstring else "")


def _check_assigned(fn: Function, source) -> None:
    """A variable read before any assignment on some path is an error (Python's UnboundLocalError)."""
    live_in, _ = liveness(fn)
    unbound = live_in[fn.entry] - set(fn.params)
    if unbound:
        var = sorted(unbound, key=str)[0]
        node = next((n for n in _walk(fn.node) if getattr(n, "id", None) == var.name), fn.node)
        raise error(f"in {fn.name}(): variable {var.name!r} may be read before it is assigned", source, node)


def _walk(node):
    return sorted((n for n in ast.walk(node) if isinstance(n, ast.Name)),
                  key=lambda n: (n.lineno, n.col_offset))


def _recursive(functions: dict[str, Function]) -> dict[str, set[str]]:
    """For each function, the functions it calls that can call it back (its strongly connected partners)."""
    graph = {f: {c.callee for c in fn.calls() if c.internal} for f, fn in functions.items()}
    reach: dict[str, set[str]] = {}
    for f in graph:
        seen, stack = set(), list(graph[f])
        while stack:
            g = stack.pop()
            if g not in seen:
                seen.add(g)
                stack.extend(graph.get(g, ()))
        reach[f] = seen
    return {f: {g for g in graph[f] if f in reach[g]} for f in graph}


def _postorder(functions: dict[str, Function], entry: str) -> list[str]:
    order, seen = [], set()

    def visit(f: str) -> None:
        seen.add(f)
        for c in functions[f].calls():
            if c.internal and c.callee not in seen:
                visit(c.callee)
        order.append(f)

    visit(entry)
    return order


class _Programs:
    """The library programs a compiled function may call: names, and which registers each writes."""

    def __init__(self, library: Library | Iterable[Any] | None):
        self.programs: dict[str, Program] = {}
        self.names: set[str] = set()
        self.registered = library is None or (isinstance(library, Library) and library.registered)
        if isinstance(library, Library):
            self.programs.update({p.name: p for p in library})
        elif library is not None:
            for item in library:
                if isinstance(item, Program):
                    self.programs[item.name] = item
                elif isinstance(item, str):
                    self.names.add(item)
                else:
                    raise TypeError(f"library items must be diffcomp.Program objects or names, got "
                                    f"{type(item).__name__}")
        self.names |= set(self.programs)

    def known(self, name: str) -> bool:
        if name in self.names:
            return True
        if self.registered:
            from ..registry import names

            return name in names("program")
        return False

    def resolve(self, name: str) -> Program | None:
        if name in self.programs:
            return self.programs[name]
        if self.registered:
            from ..machine.library import program

            try:
                return program(name)
            except LookupError:
                return None
        return None

    def writes(self, name: str) -> frozenset[int]:
        """The general registers ``name`` (and everything it calls) may write; all of them if unknown."""
        everything = frozenset(range(SP))
        seen, stack, out = set(), [name], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            p = self.resolve(n)
            if p is None:
                return everything
            for i in p.instructions:
                if i.out is not None and i.out.kind == "register":
                    out.add(int(i.out.value))
                for o in i.operands:
                    if o.kind == "program":
                        stack.append(o.value)
        return frozenset(out)


__all__ = ["compile", "CompileError", "ALLOWED", "STACK_POINTER", "run_python", "Word"]
