"""Python source -> the compiler's IR (:mod:`diffcomp.compiler.ir`), one function at a time.

:func:`collect` finds the functions to compile (a function object and the
Python functions it calls, or every function of a source text) and the integer
constants they read; :func:`lower` turns one ``ast.FunctionDef`` into a
:class:`~diffcomp.compiler.ir.Function`. Anything outside the subset is a
:class:`~diffcomp.errors.CompileError` at the offending node's line and column.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import itertools
import linecache
import textwrap
import types
from collections.abc import Callable, Iterable

import attrs

from ..errors import CompileError, did_you_mean
from .ir import (Block, Branch, Call, Function, Jump, Op, Read, Return, TailCall, Value, Var, Write)

#: what the subset allows, for messages
ALLOWED = ("integer variables and parameters; integer constants; + - * // % and unary -; min(), max(); "
           "== != < <= > >=; and, or, not; x if c else y; if/elif/else; while; for x in range(...); "
           "break; continue; return; pass; mem[i] (memory); calls of other functions and library programs")
MEMORY = "mem"
_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.FloorDiv: "div", ast.Mod: "mod"}
_SYMBOL = {ast.Div: "/", ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^",
           ast.BitAnd: "&", ast.MatMult: "@", ast.Invert: "~", ast.Is: "is", ast.IsNot: "is not", ast.In: "in",
           ast.NotIn: "not in"}


@attrs.define(eq=False)
class Source:
    """One function's syntax tree with where it came from (positions are the file's own)."""

    node: ast.FunctionDef
    file: str
    lines: list[str]


@attrs.define(eq=False)
class Unit:
    """What to compile: functions by name (the entry first) and the integer constants they may read."""

    functions: dict[str, Source]
    entry: str
    constants: dict[str, int]


def error(message: str, source: Source | tuple[str, list[str]], node: ast.AST | None) -> CompileError:
    file, lines = (source.file, source.lines) if isinstance(source, Source) else source
    line = getattr(node, "lineno", None)
    column = getattr(node, "col_offset", None)
    text = lines[line - 1] if line is not None and 0 < line <= len(lines) else None
    return CompileError(message, file, line, column + 1 if column is not None else None, text)


# -- finding the functions -----------------------------------------------------------------------

def collect(fn_or_source: Callable | str, name: str | None = None, filename: str | None = None) -> Unit:
    """The functions to compile and their constants, from a function object or Python source text."""
    if isinstance(fn_or_source, str):
        return _from_text(fn_or_source, name, filename or "<source>")
    if isinstance(fn_or_source, types.FunctionType):
        return _from_function(fn_or_source)
    raise TypeError(f"compile() takes a Python function or source text (a str), got {type(fn_or_source).__name__}")


def _parse(text: str, file: str) -> ast.Module:
    try:
        return ast.parse(text, filename=file)
    except SyntaxError as exc:
        lines = text.splitlines()
        raise CompileError(f"not valid Python: {exc.msg}", file, exc.lineno, exc.offset,
                           lines[exc.lineno - 1] if exc.lineno and exc.lineno <= len(lines) else None) from None


def _from_text(text: str, name: str | None, file: str) -> Unit:
    tree = _parse(text, file)
    lines = text.splitlines()
    functions: dict[str, Source] = {}
    constants: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions[node.name] = Source(node, file, lines)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _literal(node.value)
            if value is not None:
                constants[node.targets[0].id] = value
    if not functions:
        raise CompileError("no function to compile: the source defines no 'def' at module level", file, 1, 1)
    if name is not None and name in functions:
        entry = name
    elif len(functions) == 1:
        entry = next(iter(functions))
    else:
        called = {n.func.id for f in functions.values() for n in ast.walk(f.node)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        roots = [f for f in functions if f not in called] or list(functions)
        if name is not None or len(roots) != 1:
            what = f"no function named {name!r}{did_you_mean(name, functions)}" if name is not None else \
                "several functions could be the program"
            raise CompileError(f"{what}; name one of: {', '.join(functions)}", file, 1, 1)
        entry = roots[0]
    ordered = {entry: functions[entry], **{k: v for k, v in functions.items() if k != entry}}
    return Unit(ordered, entry, constants)


def _literal(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, bool):
        return int(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _literal(node.operand)
        return None if inner is None else -inner
    return None


def _function_source(fn: types.FunctionType) -> Source:
    try:
        lines, start = inspect.getsourcelines(fn)
        file = inspect.getsourcefile(fn) or "<source>"
    except (OSError, TypeError):
        raise CompileError(f"cannot read the source of {fn.__qualname__}: define it in a file, or pass its "
                           "source text to compile()", getattr(fn.__code__, "co_filename", None),
                           fn.__code__.co_firstlineno) from None
    text = "".join(lines)
    dedented = textwrap.dedent(text)
    indent = len(lines[0]) - len(lines[0].lstrip()) if dedented != text else 0
    tree = _parse(dedented, file)
    node = tree.body[0]
    if not isinstance(node, ast.FunctionDef):
        raise CompileError(f"{fn.__qualname__} is not a plain 'def' function", file, start)
    ast.increment_lineno(node, start - 1)  # positions in the file, not in the extracted text
    for n in ast.walk(node):
        if getattr(n, "col_offset", None) is not None:
            n.col_offset += indent
        if getattr(n, "end_col_offset", None) is not None:
            n.end_col_offset += indent
    file_lines = [line.rstrip("\n") for line in linecache.getlines(file)] or \
        [""] * (start - 1) + text.splitlines()  # inspect read the file through the same cache
    return Source(node, file, file_lines)


def _from_function(fn: types.FunctionType) -> Unit:
    functions: dict[str, Source] = {}
    constants: dict[str, int] = {}
    queue = [fn]
    while queue:
        f = queue.pop(0)
        if f.__name__ in functions:
            continue
        source = _function_source(f)
        functions[f.__name__] = source
        for n in ast.walk(source.node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in f.__globals__:
                value = f.__globals__[n.id]
                if isinstance(value, types.FunctionType) and n.id not in functions:
                    queue.append(value)
                elif type(value) in (int, bool):
                    constants.setdefault(n.id, int(value))
    return Unit(functions, fn.__name__, constants)


# -- lowering one function -----------------------------------------------------------------------

class Lowering:
    """Builds the control-flow graph of one function, statement by statement."""

    def __init__(self, source: Source, unit: Unit, programs: Callable[[str], bool], result_of: Callable[[str], int]):
        self.source, self.unit, self.is_program, self.result_of = source, unit, programs, result_of
        node = source.node
        self.name = node.name
        self._check_signature(node)
        self.params = [Var(a.arg) for a in node.args.args]
        self.locals = {a.arg for a in node.args.args} | _assigned(node)
        self.blocks: dict[str, Block] = {}
        self._labels = itertools.count()
        self._temps = itertools.count()
        self.loops: list[tuple[str, str]] = []  # (continue target, break target)
        entry = self.new_block("entry")
        self.body_label = self.new_block("body").label
        entry.terminator = Jump(self.body_label)
        self.current: Block | None = self.blocks[self.body_label]

    def err(self, message: str, node: ast.AST | None) -> CompileError:
        return error(f"in {self.name}(): {message}", self.source, node)

    def _check_signature(self, node: ast.FunctionDef) -> None:
        args = node.args
        extra = (args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs or args.defaults
                 or args.kw_defaults)
        if extra:
            raise self.err("parameters must be plain names (no defaults, *args, **kwargs or keyword-only "
                           "parameters): they arrive in r0, r1, ... in order", node)
        if len(args.args) > 15:
            raise self.err(f"{len(args.args)} parameters; at most 15 fit in registers r0..r14", node)

    def new_block(self, hint: str) -> Block:
        block = Block(f"{hint}{next(self._labels)}")
        self.blocks[block.label] = block
        return block

    def temp(self) -> Var:
        return Var(f"$t{next(self._temps)}")

    def emit(self, instruction) -> None:
        if self.current is None:  # code after return/break/continue: unreachable, but still checked
            self.current = self.new_block("dead")
        self.current.instructions.append(instruction)

    def end(self, terminator) -> None:
        if self.current is None:
            self.current = self.new_block("dead")
        self.current.terminator = terminator
        self.current = None

    def start(self, block: Block) -> None:
        if self.current is not None and self.current.terminator is None:
            self.current.terminator = Jump(block.label)
        self.current = block

    # -- the function --------------------------------------------------------------------------

    def run(self) -> Function:
        body = self.source.node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]  # the docstring
        self.statements(body)
        if self.current is not None:
            self.end(Return(None, self.source.node))
        return Function(self.name, self.params, self.blocks, "entry0", self.source.file, self.source.node,
                        self.source.lines)

    def statements(self, body: Iterable[ast.stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def statement(self, s: ast.stmt) -> None:
        if isinstance(s, ast.Assign):
            if len(s.targets) == 1 and isinstance(s.targets[0], ast.Tuple):
                self.assign_tuple(s.targets[0], s.value, s)
                return
            value = self.expr(s.value)
            for target in s.targets:
                self.assign(target, value, s)
        elif isinstance(s, ast.AnnAssign):
            if s.value is None:
                return
            self.assign(s.target, self.expr(s.value), s)
        elif isinstance(s, ast.AugAssign):
            op = self.binop(s.op, s)
            if isinstance(s.target, ast.Name):
                var = self.load_name(ast.Name(s.target.id, ast.Load(), lineno=s.lineno, col_offset=s.col_offset))
                self.assign(s.target, self.arith(op, var, self.expr(s.value), s), s)
            elif self.is_memory(s.target):
                addr = self.expr(s.target.slice)
                old = self.temp()
                self.emit(Read(old, addr, s))
                self.emit(Write(addr, self.arith(op, old, self.expr(s.value), s), s))
            else:
                raise self.err("only a variable or mem[i] can be updated in place", s.target)
        elif isinstance(s, ast.If):
            then, after = self.new_block("then"), self.new_block("endif")
            other = self.new_block("else") if s.orelse else after
            self.cond(s.test, then.label, other.label)
            self.start(then)
            self.statements(s.body)
            if s.orelse:
                self.end_into(after)
                self.start(other)
                self.statements(s.orelse)
            self.start(after)
        elif isinstance(s, ast.While):
            if s.orelse:
                raise self.err("'while ... else' is not in the subset; " + ALLOWED, s)
            head, body, after = self.new_block("while"), self.new_block("do"), self.new_block("endwhile")
            self.start(head)
            self.cond(s.test, body.label, after.label)
            self.loop(body, head.label, after, s.body)
        elif isinstance(s, ast.For):
            self.for_range(s)
        elif isinstance(s, ast.Break):
            if not self.loops:
                raise self.err("'break' outside a loop", s)
            self.end(Jump(self.loops[-1][1]))
        elif isinstance(s, ast.Continue):
            if not self.loops:
                raise self.err("'continue' outside a loop", s)
            self.end(Jump(self.loops[-1][0]))
        elif isinstance(s, ast.Return):
            self.return_(s)
        elif isinstance(s, ast.Expr):
            if isinstance(s.value, ast.Call):
                self.call(s.value, want=False)
            elif isinstance(s.value, ast.Constant) and isinstance(s.value.value, str):
                pass  # a string as a comment
            else:
                self.expr(s.value)
        elif isinstance(s, ast.Pass):
            pass
        else:
            what = {ast.FunctionDef: "nested functions (closures)", ast.AsyncFunctionDef: "async functions",
                    ast.Lambda: "lambdas", ast.ClassDef: "classes", ast.Import: "imports",
                    ast.ImportFrom: "imports", ast.Global: "'global'", ast.Nonlocal: "'nonlocal'",
                    ast.Try: "'try'", ast.With: "'with'", ast.Raise: "'raise'", ast.Assert: "'assert'",
                    ast.Delete: "'del'"}.get(type(s), f"'{type(s).__name__}' statements")
            raise self.err(f"{what} are not in the subset; allowed: {ALLOWED}", s)

    def end_into(self, block: Block) -> None:
        if self.current is not None and self.current.terminator is None:
            self.current.terminator = Jump(block.label)
        self.current = None

    def loop(self, body: Block, continue_to: str, after: Block, statements: list[ast.stmt]) -> None:
        self.start(body)
        self.loops.append((continue_to, after.label))
        self.statements(statements)
        self.loops.pop()
        if self.current is not None:
            self.end(Jump(continue_to))
        self.current = after

    def for_range(self, s: ast.For) -> None:
        it = s.iter
        if s.orelse:
            raise self.err("'for ... else' is not in the subset; " + ALLOWED, s)
        if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"
                and 1 <= len(it.args) <= 2 and not it.keywords and "range" not in self.locals):
            raise self.err("a for loop must be 'for x in range(stop)' or 'for x in range(start, stop)' (a step "
                           "of 1); write a while loop for anything else", it)
        if not isinstance(s.target, ast.Name):
            raise self.err("the loop variable must be a plain name", s.target)
        start = self.expr(it.args[0]) if len(it.args) == 2 else 0
        stop = self.expr(it.args[-1])
        counter, limit = self.temp(), self.temp()
        self.emit(Op(counter, "mov", start, node=it))
        self.emit(Op(limit, "mov", stop, node=it))  # range() reads its bounds once
        head, body, step, after = (self.new_block(h) for h in ("for", "do", "next", "endfor"))
        self.start(head)
        t = self.temp()
        self.emit(Op(t, "lt", counter, limit, it))
        self.end(Branch(t, body.label, after.label, it))
        self.current = body
        self.emit(Op(Var(s.target.id), "mov", counter, node=s.target))
        self.loops.append((step.label, after.label))
        self.statements(s.body)
        self.loops.pop()
        self.start(step)
        self.emit(Op(counter, "add", counter, 1, it))
        self.end(Jump(head.label))
        self.current = after

    def return_(self, s: ast.Return) -> None:
        value = s.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and not self.builtin(value):
            callee, internal = self.callee(value)
            result = 0 if internal else self.result_register(value)
            if result == 0:
                args = self.call_args(value, callee, internal)
                if callee == self.name:  # self tail call: rebind the parameters, jump back to the top
                    temps = []
                    for p, a in zip(self.params, args):
                        t = self.temp()
                        self.emit(Op(t, "mov", a, node=value))
                        temps.append(t)
                    for p, t in zip(self.params, temps):
                        self.emit(Op(p, "mov", t, node=value))
                    self.end(Jump(self.body_label))
                else:
                    self.end(TailCall(callee, args, internal, value))
                return
        self.end(Return(None if value is None else self.expr(value), s))

    # -- assignments ---------------------------------------------------------------------------

    def assign(self, target: ast.expr, value: Value, node: ast.AST) -> None:
        if isinstance(target, ast.Name):
            if target.id == MEMORY:
                raise self.err("'mem' is the machine's memory: assign to a cell, mem[i] = x", target)
            dst = Var(target.id)
            last = self.current.instructions[-1] if self.current is not None and self.current.instructions \
                else None
            if isinstance(value, Var) and value.temporary and last is not None and value in last.defs() \
                    and not isinstance(last, Call):
                last.dst = dst  # compute straight into the variable
            else:
                self.emit(Op(dst, "mov", value, node=node))
        elif self.is_memory(target):
            self.emit(Write(self.expr(target.slice), value, node))
        elif isinstance(target, ast.Subscript):
            raise self.err("only 'mem' can be indexed (lists other than mem are not in the subset)", target)
        else:
            raise self.err("assign to a variable, mem[i], or a tuple of variables", target)

    def assign_tuple(self, target: ast.Tuple, value: ast.expr, node: ast.AST) -> None:
        if not isinstance(value, ast.Tuple) or len(value.elts) != len(target.elts):
            raise self.err("a tuple assignment needs a tuple of as many values on the right "
                           "(a, b = b, a + b)", node)
        values = []
        for v in value.elts:  # every right-hand side is read before any target is written
            x = self.expr(v)
            if isinstance(x, Var) and not x.temporary:
                t = self.temp()
                self.emit(Op(t, "mov", x, node=v))
                x = t
            values.append(x)
        for t, x in zip(target.elts, values):
            self.assign(t, x, node)

    # -- expressions ---------------------------------------------------------------------------

    def is_memory(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == MEMORY \
                and MEMORY not in self.locals:
            if isinstance(node.slice, ast.Slice):
                raise self.err("mem takes one index, mem[i]; slices are not in the subset", node)
            return True
        return False

    def load_name(self, node: ast.Name) -> Value:
        if node.id in self.locals:
            return Var(node.id)
        if node.id in self.unit.constants:
            return self.unit.constants[node.id]
        if node.id in ("True", "False"):
            return int(node.id == "True")
        if node.id == MEMORY:
            raise self.err("'mem' is the machine's memory: read a cell, mem[i]", node)
        known = sorted(self.locals | set(self.unit.constants))
        raise self.err(f"unknown name {node.id!r}{did_you_mean(node.id, known)}: a name must be a parameter, "
                       "a variable assigned in the function, an integer constant at module level, or mem", node)

    def binop(self, op: ast.operator, node: ast.AST) -> str:
        if type(op) in _BINOPS:
            return _BINOPS[type(op)]
        symbol = _SYMBOL.get(type(op), type(op).__name__)
        hint = " (use // for the machine's integer division)" if symbol == "/" else ""
        raise self.err(f"the operator {symbol} is not in the subset{hint}; arithmetic is + - * // % on "
                       "integers mod the machine's range", node)

    def arith(self, op: str, a: Value, b: Value | None, node: ast.AST) -> Var:
        t = self.temp()
        self.emit(Op(t, op, a, b, node))
        return t

    def expr(self, e: ast.expr) -> Value:
        if isinstance(e, ast.Constant):
            if type(e.value) in (int, bool):
                return int(e.value)
            kind = {float: "floats", str: "strings", complex: "complex numbers", bytes: "bytes",
                    type(None): "None"}.get(type(e.value), type(e.value).__name__)
            raise self.err(f"{kind} are not in the subset: values are integers mod the machine's range", e)
        if isinstance(e, ast.Name):
            return self.load_name(e)
        if isinstance(e, ast.BinOp):
            op = self.binop(e.op, e)
            return self.arith(op, self.expr(e.left), self.expr(e.right), e)
        if isinstance(e, ast.UnaryOp):
            if isinstance(e.op, ast.USub):
                return self.arith("sub", 0, self.expr(e.operand), e)
            if isinstance(e.op, ast.UAdd):
                return self.expr(e.operand)
            if isinstance(e.op, ast.Not):
                return self.arith("eq", self.expr(e.operand), 0, e)
            raise self.err("the operator ~ is not in the subset", e)
        if isinstance(e, ast.Compare) and len(e.ops) == 1:
            return self.compare(e.ops[0], self.expr(e.left), self.expr(e.comparators[0]), e)
        if isinstance(e, (ast.Compare, ast.BoolOp, ast.IfExp)):
            return self.value_by_branches(e)
        if isinstance(e, ast.Call):
            return self.call(e, want=True)
        if isinstance(e, ast.Subscript):
            if self.is_memory(e):
                t = self.temp()
                self.emit(Read(t, self.expr(e.slice), e))
                return t
            raise self.err("only 'mem' can be indexed (lists other than mem are not in the subset)", e)
        what = {ast.List: "lists", ast.Tuple: "tuples (outside a, b = x, y)", ast.Dict: "dicts", ast.Set: "sets",
                ast.Lambda: "lambdas", ast.Attribute: "attributes (x.y)", ast.ListComp: "comprehensions",
                ast.GeneratorExp: "generators", ast.JoinedStr: "f-strings",
                ast.NamedExpr: "':='"}.get(type(e), type(e).__name__)
        raise self.err(f"{what} are not in the subset; allowed: {ALLOWED}", e)

    def compare(self, op: ast.cmpop, a: Value, b: Value, node: ast.AST) -> Var:
        kind = type(op)
        if kind in (ast.Eq, ast.NotEq):
            t = self.arith("eq", a, b, node)
            return t if kind is ast.Eq else self.arith("eq", t, 0, node)
        if kind in (ast.Lt, ast.Gt):
            return self.arith("lt", *((a, b) if kind is ast.Lt else (b, a)), node)
        if kind in (ast.LtE, ast.GtE):
            t = self.arith("lt", *((b, a) if kind is ast.LtE else (a, b)), node)
            return self.arith("eq", t, 0, node)
        raise self.err(f"the comparison {_SYMBOL.get(kind, kind.__name__)} is not in the subset; compare "
                       "with == != < <= > >=", node)

    def value_by_branches(self, e: ast.expr) -> Var:
        """``a and b``, ``a or b`` (Python's: the deciding operand), chained comparisons, ``x if c else y``."""
        result = self.temp()
        after = self.new_block("join")
        if isinstance(e, ast.BoolOp):
            for k, operand in enumerate(e.values):
                self.emit(Op(result, "mov", self.expr(operand), node=operand))
                if k == len(e.values) - 1:
                    break
                more = self.new_block("more")
                if isinstance(e.op, ast.And):
                    self.end(Branch(result, more.label, after.label, e))
                else:
                    self.end(Branch(result, after.label, more.label, e))
                self.current = more
        elif isinstance(e, ast.IfExp):
            yes, no = self.new_block("yes"), self.new_block("no")
            self.cond(e.test, yes.label, no.label)
            for block, part in ((yes, e.body), (no, e.orelse)):
                self.current = block
                self.emit(Op(result, "mov", self.expr(part), node=part))
                self.end(Jump(after.label))
        else:  # a < b < c: 1 if every comparison holds
            yes, no = self.new_block("yes"), self.new_block("no")
            self.cond(e, yes.label, no.label)
            for block, value in ((yes, 1), (no, 0)):
                self.current = block
                self.emit(Op(result, "mov", value, node=e))
                self.end(Jump(after.label))
        self.start(after)
        return result

    def cond(self, e: ast.expr, yes: str, no: str) -> None:
        """Branch to ``yes`` if ``e`` is true (non-zero), else to ``no``; ends the current block."""
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
            return self.cond(e.operand, no, yes)
        if isinstance(e, ast.BoolOp):
            for operand in e.values[:-1]:
                more = self.new_block("more")
                if isinstance(e.op, ast.And):
                    self.cond(operand, more.label, no)
                else:
                    self.cond(operand, yes, more.label)
                self.current = more
            return self.cond(e.values[-1], yes, no)
        if isinstance(e, ast.Compare):
            left = self.expr(e.left)
            for k, (op, right_node) in enumerate(zip(e.ops, e.comparators)):
                right = self.expr(right_node)
                last = k == len(e.ops) - 1
                target = yes if last else self.new_block("more").label
                self.compare_branch(op, left, right, target, no, e)
                if not last:
                    self.current = self.blocks[target]
                left = right
            return
        self.end(Branch(self.expr(e), yes, no, e))

    def compare_branch(self, op: ast.cmpop, a: Value, b: Value, yes: str, no: str, node: ast.AST) -> None:
        kind = type(op)
        # against 0 and 1 the unsigned comparisons are tests for zero: no ALU op needed
        if isinstance(a, int) and not isinstance(b, int):
            flipped = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}
            kind = flipped.get(kind, kind)
            a, b = b, a
        if b == 0 and kind in (ast.Eq, ast.LtE):
            return self.end(Branch(a, no, yes, node))
        if b == 0 and kind in (ast.NotEq, ast.Gt):
            return self.end(Branch(a, yes, no, node))
        if b == 1 and kind is ast.Lt:
            return self.end(Branch(a, no, yes, node))
        if b == 1 and kind is ast.GtE:
            return self.end(Branch(a, yes, no, node))
        if kind in (ast.Eq, ast.NotEq):
            t = self.arith("eq", a, b, node)
            return self.end(Branch(t, yes, no, node) if kind is ast.Eq else Branch(t, no, yes, node))
        if kind in (ast.Lt, ast.GtE):
            t = self.arith("lt", a, b, node)
            return self.end(Branch(t, yes, no, node) if kind is ast.Lt else Branch(t, no, yes, node))
        if kind in (ast.Gt, ast.LtE):
            t = self.arith("lt", b, a, node)
            return self.end(Branch(t, yes, no, node) if kind is ast.Gt else Branch(t, no, yes, node))
        raise self.err(f"the comparison {_SYMBOL.get(kind, kind.__name__)} is not in the subset; compare "
                       "with == != < <= > >=", node)

    # -- calls ---------------------------------------------------------------------------------

    def callee(self, e: ast.Call) -> tuple[str, bool]:
        if not isinstance(e.func, ast.Name):
            raise self.err("call a function or library program by its plain name (methods and attributes "
                           "are not in the subset)", e.func)
        name = e.func.id
        if name in self.locals:
            raise self.err(f"{name!r} is a variable, not a function", e.func)
        if name in self.unit.functions:
            return name, True
        if self.is_program(name):
            return name, False
        known = sorted(set(self.unit.functions) | {"min", "max"})
        if hasattr(builtins, name):
            raise self.err(f"the builtin {name}() is not in the subset; the builtins allowed are min() and max()",
                           e.func)
        raise self.err(f"unknown function {name!r}{did_you_mean(name, known)}: call a function defined beside "
                       f"this one ({', '.join(self.unit.functions)}), min(), max(), or a library program", e.func)

    def result_register(self, e: ast.Call) -> int:
        for kw in e.keywords:
            if kw.arg == "result":
                v = kw.value
                if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value[:1] in "rR" \
                        and v.value[1:].isdigit() and int(v.value[1:]) < 15:
                    return int(v.value[1:])
                raise self.err("result= names the register a library program leaves its result in, as a "
                               "string: result=\"r3\" (r0..r14)", v)
            raise self.err(f"calls take positional arguments (into r0, r1, ...) and optionally result=\"rN\"; "
                           f"got the keyword {kw.arg!r}", kw)
        return self.result_of(e.func.id) if not isinstance(e.func, ast.Name) or e.func.id not in \
            self.unit.functions else 0

    def call_args(self, e: ast.Call, callee: str, internal: bool) -> list[Value]:
        if any(isinstance(a, ast.Starred) for a in e.args):
            raise self.err("*args is not in the subset", e)
        if internal:
            params = self.unit.functions[callee].node.args.args
            if len(e.args) != len(params):
                raise self.err(f"{callee}() takes {len(params)} argument{'s' * (len(params) != 1)}, "
                               f"got {len(e.args)}", e)
            if e.keywords:
                raise self.err(f"call {callee}() with positional arguments", e)
        elif len(e.args) > 15:
            raise self.err("at most 15 arguments fit in registers r0..r14", e)
        return [self.expr(a) for a in e.args]

    def builtin(self, e: ast.Call) -> bool:
        """``min(...)`` or ``max(...)``, unless the function defines or calls its own of that name."""
        return isinstance(e.func, ast.Name) and e.func.id in ("min", "max") and e.func.id not in self.locals \
            and e.func.id not in self.unit.functions

    def call(self, e: ast.Call, want: bool) -> Value:
        if self.builtin(e):
            if len(e.args) < 2 or e.keywords or any(isinstance(a, ast.Starred) for a in e.args):
                raise self.err(f"{e.func.id}() takes two or more integers, min(a, b, ...)", e)
            value = self.expr(e.args[0])
            for a in e.args[1:]:
                value = self.arith(e.func.id, value, self.expr(a), e)
            return value
        callee, internal = self.callee(e)
        result = 0 if internal else self.result_register(e)
        args = self.call_args(e, callee, internal)
        dst = self.temp() if want else None
        self.emit(Call(dst, callee, args, internal, result, e))
        return dst if dst is not None else 0


def _assigned(node: ast.FunctionDef) -> set[str]:
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
    return names


def lower(source: Source, unit: Unit, is_program: Callable[[str], bool],
          result_of: Callable[[str], int] = lambda name: 0) -> Function:
    """The control-flow graph of one function of ``unit``."""
    return Lowering(source, unit, is_program, result_of).run()


__all__ = ["collect", "lower", "Unit", "Source", "error", "ALLOWED", "MEMORY"]
