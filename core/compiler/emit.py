"""Allocated IR -> assembly text, by the calling convention of :mod:`diffcomp.compiler`.

Blocks are laid out so that a jump's target, or a branch's non-zero side,
follows it where it can (the machine's one conditional jump is ``JEZ``: a
fall-through on the non-zero side costs nothing). A call saves the live
values its callee may overwrite, and ``lr``, on the stack (``r15``, growing
down from the top of memory), moves its arguments into r0.. as one parallel
move, and restores after.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import CompileError
from ..machine.isa import LINK
from .ir import Branch, Call, Function, Jump, JumpTable, Op, Read, Return, TailCall, Value, Var, Write
from .regalloc import ALLOCATABLE, Allocation

#: the stack pointer register
SP = 15
_MNEMONIC = {"add": "ADD", "sub": "SUB", "mul": "MUL", "div": "DIV", "mod": "MOD", "min": "MIN", "max": "MAX",
             "eq": "EQ", "lt": "LT"}


def layout(fn: Function) -> list[str]:
    """Block order: chains of fall-throughs, in reverse postorder otherwise."""
    order, placed = [], set()
    for start in fn.reverse_postorder():
        label = start
        while label is not None and label not in placed:
            order.append(label)
            placed.add(label)
            t = fn.blocks[label].terminator
            if isinstance(t, Jump):
                label = t.target
            elif isinstance(t, Branch):
                label = t.nonzero if t.nonzero not in placed else None
            else:
                label = None
    return order


class Emitter:
    def __init__(self, fn: Function, alloc: Allocation, clobbers: Callable[[Call], frozenset[int]],
                 error: Callable[[str, object], CompileError]):
        self.fn, self.alloc, self.clobbers, self.error = fn, alloc, clobbers, error
        self.lines: list[str] = []
        self.prefix = fn.name

    def label(self, block: str) -> str:
        return f"{self.prefix}.{block}"

    def reg(self, v: Var) -> int:
        return self.alloc.registers[v]

    def operand(self, v: Value) -> str:
        return f"r{self.reg(v)}" if isinstance(v, Var) else str(v)

    def out(self, text: str) -> None:
        self.lines.append(f"        {text}")

    def run(self) -> list[str]:
        fn = self.fn
        order = layout(fn)
        targets = {t for b in fn for t in b.successors()}
        self.lines.append(f"{fn.name}:")
        params = [(self.reg(p), ("reg", k)) for k, p in enumerate(fn.params) if p in self.alloc.registers]
        self.parallel_move(params, busy={r for r, _ in params}, node=fn.node)  # from r0.. to their registers
        for k, label in enumerate(order):
            block = fn.blocks[label]
            following = order[k + 1] if k + 1 < len(order) else None
            if label in targets:
                self.lines.append(f"{self.label(label)}:")
            for i in block.instructions:
                self.instruction(i)
            self.terminator(block.terminator, following, block.label)
        used = {word.rstrip(",") for line in self.lines if not line.endswith(":") for word in line.split()}
        return [line for line in self.lines if not line.endswith(":") or line[:-1] in used or line == f"{fn.name}:"]

    # -- instructions --------------------------------------------------------------------------

    def instruction(self, i) -> None:
        if isinstance(i, Op):
            self.op(i)
        elif isinstance(i, Read):
            self.out(f"r{self.reg(i.dst)} = READ {self.operand(i.addr)}")
        elif isinstance(i, Write):
            self.out(f"WRITE {self.operand(i.addr)}, {self.operand(i.value)}")
        elif isinstance(i, Call):
            self.call(i)

    def op(self, i: Op) -> None:
        d = f"r{self.reg(i.dst)}"
        if i.op == "mov":
            self.move(self.reg(i.dst), ("reg", self.reg(i.a)) if isinstance(i.a, Var) else ("const", i.a))
            return
        a, b = self.operand(i.a), self.operand(i.b)
        if i.op == "add" and b == "1" or i.op == "add" and a == "1":
            self.out(f"{d} = INC {a if b == '1' else b}")
        elif i.op == "sub" and b == "1":
            self.out(f"{d} = DEC {a}")
        else:
            self.out(f"{d} = {_MNEMONIC[i.op]} {a}, {b}")

    def move(self, dst: int, src: tuple[str, int]) -> None:
        kind, value = src
        if kind == "reg":
            if value != dst:
                self.out(f"r{dst} = MOV r{value}")
        elif value == 0:
            self.out(f"r{dst} = ZERO")
        elif value < 0:
            self.out(f"r{dst} = SUB 0, {-value}")
        else:
            self.out(f"r{dst} = MOV {value}")

    def parallel_move(self, moves: list[tuple[int, tuple[str, int]]], busy: set[int], node) -> None:
        """Moves that happen at once: ``(dst, src)``, sequenced so no source is overwritten before it is read."""
        pending = {d: s for d, s in moves if s != ("reg", d)}
        reserved = busy | {d for d, _ in moves} | {s[1] for _, s in moves if s[0] == "reg"}  # in place ones too
        while pending:
            sources = {s[1] for s in pending.values() if s[0] == "reg"}
            ready = [d for d in pending if d not in sources]
            if ready:
                d = ready[0]
                self.move(d, pending.pop(d))
                continue
            d = next(iter(pending))  # every destination is another's source: a cycle
            used = reserved | set(pending) | sources
            scratch = next((r for r in ALLOCATABLE if r not in used), None)
            if scratch is None:
                raise self.error("too many values live at a call to rotate its arguments into place; keep "
                                 "fewer values at once", node)
            self.move(scratch, ("reg", d))
            pending = {k: (("reg", scratch) if s == ("reg", d) else s) for k, s in pending.items()}

    def call(self, i: Call) -> None:
        live = self.alloc.live_after[id(i)] - set(i.defs())
        clobbered = self.clobbers(i) | set(range(len(i.args))) | {i.result}
        if SP in clobbered:
            raise self.error(f"{i.callee} writes r{SP}, the stack pointer of compiled code, so it cannot be "
                             "called from compiled code", i.node)
        saved = sorted({self.reg(v) for v in live if self.reg(v) in clobbered})
        names = [f"r{r}" for r in saved] + [LINK]
        for name in names:
            self.out(f"r{SP} = DEC r{SP}")
            self.out(f"WRITE r{SP}, {name}")
        self.args(i.args, live, i.node)
        self.out(f"CALL {i.callee}")
        if i.dst is not None:
            self.move(self.reg(i.dst), ("reg", i.result))
        for name in reversed(names):
            self.out(f"{name} = READ r{SP}")
            self.out(f"r{SP} = INC r{SP}")

    def args(self, args: list[Value], live: set[Var], node) -> None:
        moves = [(k, ("reg", self.reg(a)) if isinstance(a, Var) else ("const", a)) for k, a in enumerate(args)]
        self.parallel_move(moves, busy={self.reg(v) for v in live}, node=node)

    # -- terminators ---------------------------------------------------------------------------

    def terminator(self, t, following: str | None, at: str) -> None:
        if isinstance(t, Jump):
            if t.target != following:
                self.out(f"JMP {self.label(t.target)}")
        elif isinstance(t, Branch):
            cond = self.operand(t.cond)
            self.out(f"JEZ {cond}, {self.label(t.zero)}")
            if t.nonzero != following:
                self.out(f"JMP {self.label(t.nonzero)}")
        elif isinstance(t, Return):
            if t.value is not None:
                self.move(0, ("reg", self.reg(t.value)) if isinstance(t.value, Var) else ("const", t.value))
            self.out("RET")
        elif isinstance(t, TailCall):
            self.args(t.args, set(), t.node)
            self.out(f"JMP {t.callee}")
        elif isinstance(t, JumpTable):
            live = {self.reg(v) for v in self.alloc.live_out.get(at, set())}
            index = self.operand(t.index)
            scratch = next((r for r in ALLOCATABLE if r not in live), None)
            if isinstance(t.index, Var) and self.reg(t.index) not in live:
                scratch = self.reg(t.index)
            if scratch is None:
                raise self.error("too many values live at a switch to compute its jump", t.node)
            table = self.label(f"{at}.entries")
            self.out(f"r{scratch} = ADD {index}, {table}")
            self.out(f"JMP r{scratch}      ; into the table below")
            self.lines.append(f"{table}:")
            for target in t.targets:
                self.out(f"JMP {self.label(target)}")


def emit(fn: Function, alloc: Allocation, clobbers, error) -> list[str]:
    """The assembly lines of one allocated function; its first line is the label ``fn.name``."""
    return Emitter(fn, alloc, clobbers, error).run()


__all__ = ["emit", "layout", "SP"]
