"""The compiler's intermediate representation: functions as control-flow graphs of three-address code.

A :class:`Function` is a graph of :class:`Block`\\ s. Each block is a list of
instructions on *values* (a :class:`Var`, a virtual register, or a Python
``int``, a constant kept exact and reduced mod the machine's range only when
it is emitted) and ends in one terminator:

=============================  ==================================================
``Op(dst, op, a, b)``          ``dst = op(a, b)``; ``op`` is an ALU op or ``"mov"``
``Read(dst, addr)``            ``dst = mem[addr]``
``Write(addr, value)``         ``mem[addr] = value``
``Call(dst, callee, args)``    ``dst = callee(*args)`` by the calling convention
``Jump(target)``               go to a block
``Branch(cond, nonzero, zero)`` go to ``nonzero`` if ``cond != 0`` else ``zero``
``Return(value)``              leave ``value`` in r0 and return
``TailCall(callee, args)``     ``return callee(*args)`` without a new frame
``JumpTable(index, targets)``  go to ``targets[index]`` (a ``switch``)
=============================  ==================================================

Every instruction keeps the Python AST node it came from, so a later pass can
name the line and column of what it cannot do.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

import attrs


@attrs.frozen
class Var:
    """A virtual register: a Python variable (its name) or a temporary (``$t3``)."""

    name: str

    @property
    def temporary(self) -> bool:
        return self.name.startswith("$")

    def __str__(self) -> str:
        return self.name


Value = Var | int

#: ALU ops the compiler emits; ``mov`` is a copy
OPS = ("mov", "add", "sub", "mul", "div", "mod", "min", "max", "eq", "lt")


@attrs.define(eq=False)
class Op:
    dst: Var
    op: str
    a: Value
    b: Value | None = None
    node: ast.AST | None = None

    def uses(self) -> list[Value]:
        return [self.a] if self.b is None else [self.a, self.b]

    def defs(self) -> list[Var]:
        return [self.dst]

    def replace(self, f) -> None:
        self.a = f(self.a)
        if self.b is not None:
            self.b = f(self.b)

    def __str__(self) -> str:
        return f"{self.dst} = {self.op} {', '.join(map(str, self.uses()))}"


@attrs.define(eq=False)
class Read:
    dst: Var
    addr: Value
    node: ast.AST | None = None

    def uses(self) -> list[Value]:
        return [self.addr]

    def defs(self) -> list[Var]:
        return [self.dst]

    def replace(self, f) -> None:
        self.addr = f(self.addr)

    def __str__(self) -> str:
        return f"{self.dst} = mem[{self.addr}]"


@attrs.define(eq=False)
class Write:
    addr: Value
    value: Value
    node: ast.AST | None = None

    def uses(self) -> list[Value]:
        return [self.addr, self.value]

    def defs(self) -> list[Var]:
        return []

    def replace(self, f) -> None:
        self.addr, self.value = f(self.addr), f(self.value)

    def __str__(self) -> str:
        return f"mem[{self.addr}] = {self.value}"


@attrs.define(eq=False)
class Call:
    """A call by the calling convention: ``args`` into r0.., the result from register ``result``."""

    dst: Var | None
    callee: str
    args: list[Value]
    internal: bool  # a function of this compilation (a label) or another library program
    result: int = 0
    node: ast.AST | None = None

    def uses(self) -> list[Value]:
        return list(self.args)

    def defs(self) -> list[Var]:
        return [self.dst] if self.dst is not None else []

    def replace(self, f) -> None:
        self.args = [f(a) for a in self.args]

    def __str__(self) -> str:
        call = f"{self.callee}({', '.join(map(str, self.args))})"
        return f"{self.dst} = {call}" if self.dst is not None else call


Instruction = Op | Read | Write | Call


@attrs.define(eq=False)
class Jump:
    target: str

    def uses(self) -> list[Value]:
        return []

    def replace(self, f) -> None:
        pass

    def targets(self) -> list[str]:
        return [self.target]

    def __str__(self) -> str:
        return f"jump {self.target}"


@attrs.define(eq=False)
class Branch:
    cond: Value
    nonzero: str
    zero: str
    node: ast.AST | None = None

    def uses(self) -> list[Value]:
        return [self.cond]

    def replace(self, f) -> None:
        self.cond = f(self.cond)

    def targets(self) -> list[str]:
        return [self.nonzero, self.zero]

    def __str__(self) -> str:
        return f"if {self.cond} goto {self.nonzero} else {self.zero}"


@attrs.define(eq=False)
class Return:
    value: Value | None
    node: ast.AST | None = None

    def uses(self) -> list[Value]:
        return [] if self.value is None else [self.value]

    def replace(self, f) -> None:
        if self.value is not None:
            self.value = f(self.value)

    def targets(self) -> list[str]:
        return []

    def __str__(self) -> str:
        return f"return {'' if self.value is None else self.value}".rstrip()


@attrs.define(eq=False)
class TailCall:
    """``return callee(*args)``: the arguments into r0.., then a jump (the callee returns for us)."""

    callee: str
    args: list[Value]
    internal: bool
    node: ast.AST | None = None

    def uses(self) -> list[Value]:
        return list(self.args)

    def replace(self, f) -> None:
        self.args = [f(a) for a in self.args]

    def targets(self) -> list[str]:
        return []

    def __str__(self) -> str:
        return f"return {self.callee}({', '.join(map(str, self.args))})  ; tail call"


@attrs.define(eq=False)
class JumpTable:
    """Go to ``targets[index]`` (``0 <= index < len(targets)``, checked before): a computed jump into a table."""

    index: Value
    targets: list[str]
    node: ast.AST | None = None

    def uses(self) -> list[Value]:
        return [self.index]

    def replace(self, f) -> None:
        self.index = f(self.index)

    def __str__(self) -> str:
        return f"goto [{', '.join(self.targets)}][{self.index}]"


Terminator = Jump | Branch | Return | TailCall | JumpTable


@attrs.define(eq=False)
class Block:
    label: str
    instructions: list[Instruction] = attrs.field(factory=list)
    terminator: Terminator | None = None

    def successors(self) -> list[str]:
        if self.terminator is None:
            return []
        if isinstance(self.terminator, JumpTable):
            return list(dict.fromkeys(self.terminator.targets))
        targets = self.terminator.targets()
        return targets[:1] if len(targets) == 2 and targets[0] == targets[1] else targets


@attrs.define(eq=False)
class Function:
    """One Python function as a control-flow graph; ``blocks`` keeps insertion order, ``entry`` first."""

    name: str
    params: list[Var]
    blocks: dict[str, Block]
    entry: str
    file: str
    node: ast.FunctionDef
    lines: list[str]  # the source file's lines, for messages

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks.values())

    def predecessors(self) -> dict[str, list[str]]:
        preds: dict[str, list[str]] = {label: [] for label in self.blocks}
        for block in self:
            for s in block.successors():
                preds[s].append(block.label)
        return preds

    def reverse_postorder(self) -> list[str]:
        seen, order = set(), []

        def visit(label: str) -> None:  # iterative, so deep graphs do not hit the recursion limit
            stack = [(label, iter(self.blocks[label].successors()))]
            seen.add(label)
            while stack:
                at, it = stack[-1]
                nxt = next((s for s in it if s not in seen), None)
                if nxt is None:
                    stack.pop()
                    order.append(at)
                else:
                    seen.add(nxt)
                    stack.append((nxt, iter(self.blocks[nxt].successors())))

        visit(self.entry)
        return order[::-1]

    def calls(self) -> list[Call | TailCall]:
        out: list[Call | TailCall] = [i for b in self for i in b.instructions if isinstance(i, Call)]
        out += [b.terminator for b in self if isinstance(b.terminator, TailCall)]
        return out

    def dump(self) -> str:
        """The graph as text, for debugging and tests."""
        out = [f"def {self.name}({', '.join(map(str, self.params))}):"]
        for block in self:
            out.append(f"  {block.label}:")
            out.extend(f"    {i}" for i in block.instructions)
            out.append(f"    {block.terminator}")
        return "\n".join(out)
