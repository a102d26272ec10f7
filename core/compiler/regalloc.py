"""Register allocation: virtual registers -> r0 .. r14, by graph colouring with coalescing.

Two variables *interfere* when one is written while the other may still be
read; interfering variables need different registers. A copy ``x = y``
between variables that do not interfere is *coalesced* (both get one
register, and the copy disappears). Colouring is greedy, most constrained
first, and prefers the register a value must end up in anyway (a parameter's
``rI``, a returned value's r0, an argument's ``rI``) and, for a value that
lives across a call, a register the callee leaves alone (so it need not be
saved). When a function needs more than the 15 registers at once, the most
crowded variable moves to a slot of a stack frame (:func:`spill`: each use
reads it into a short-lived copy, each assignment writes it back) and
allocation starts again; a :class:`~diffcomp.errors.CompileError` naming the
variable and its line remains only when no spill helps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs

from ..errors import CompileError
from .ir import Call, Function, Op, Return, TailCall, Var
from .passes import live_after, liveness

#: registers the allocator hands out; r15 is the stack pointer (see diffcomp.compiler)
ALLOCATABLE = tuple(range(15))
SP = 15
#: the stack pointer as a variable (always r15), and the prefix of a spilled variable's copies
STACK = Var("$sp")
SPILLED = "$spill"


@attrs.define
class Allocation:
    registers: dict[Var, int]
    live_after: dict[int, set[Var]]  # id(instruction) -> variables live after it
    live_out: dict[str, set[Var]] = attrs.field(factory=dict)  # block -> variables live after it


def allocate(fn: Function, clobbers: Callable[[Call], frozenset[int]], error: Callable[[str, object], CompileError],
             *, spill: bool = False) -> Allocation:
    """Registers for every variable; with ``spill``, :class:`Spill` names one to move to the stack if they run out."""
    live_in, live_out = liveness(fn)
    after_of: dict[int, set[Var]] = {}
    edges: dict[Var, set[Var]] = {}
    hints: dict[Var, list[int]] = {}
    avoid: dict[Var, set[int]] = {}
    moves: list[tuple[Var, Var, int]] = []  # (dst, src, weight)
    first_def: dict[Var, object] = {}
    variables: set[Var] = set(fn.params)

    def node(v: Var) -> None:
        variables.add(v)
        edges.setdefault(v, set())

    def interfere(a: Var, b: Var) -> None:
        if a != b:
            edges.setdefault(a, set()).add(b)
            edges.setdefault(b, set()).add(a)

    for k, p in enumerate(fn.params):
        node(p)
        hints.setdefault(p, []).append(k)
    entry_live = live_in[fn.entry]
    for p in fn.params:  # the parameters arrive together
        for q in entry_live:
            if p in entry_live:
                interfere(p, q)
    loops = _loop_blocks(fn)
    for block in fn:
        weight = 10 if block.label in loops else 1
        afters = live_after(block, live_out[block.label])
        for i, live in zip(block.instructions, afters):
            after_of[id(i)] = live
            for v in i.uses():
                if isinstance(v, Var):
                    node(v)
            for d in i.defs():
                node(d)
                first_def.setdefault(d, i.node)
                for v in live:
                    if not (isinstance(i, Op) and i.op == "mov" and v == i.a):
                        interfere(d, v)
            if isinstance(i, Op) and i.op == "mov" and isinstance(i.a, Var):
                moves.append((i.dst, i.a, weight))
            if isinstance(i, Call):
                across = live - set(i.defs())
                clobbered = clobbers(i) | set(range(len(i.args))) | {i.result}
                for v in across:
                    avoid.setdefault(v, set()).update(clobbered)
                for k, a in enumerate(i.args):
                    if isinstance(a, Var) and a not in live:
                        hints.setdefault(a, []).append(k)
                if i.dst is not None:
                    hints.setdefault(i.dst, []).append(i.result)
        t = block.terminator
        if isinstance(t, Return) and isinstance(t.value, Var):
            hints.setdefault(t.value, []).append(0)
        if isinstance(t, TailCall):
            for k, a in enumerate(t.args):
                if isinstance(a, Var):
                    hints.setdefault(a, []).append(k)
        for v in t.uses():
            if isinstance(v, Var):
                node(v)

    variables.discard(STACK)  # always r15
    edges.pop(STACK, None)
    for near in edges.values():
        near.discard(STACK)
    for coalesce in (True, False):
        colors = _color(fn, variables, edges, hints, avoid, moves if coalesce else [])
        if colors is not None:
            colors[STACK] = SP
            return Allocation(colors, after_of, live_out)
    # spill the most crowded variable that is not itself a spill's short-lived copy
    candidates = [v for v in variables if not v.name.startswith(SPILLED) and v != STACK]
    if spill and candidates:
        raise Spill(max(candidates, key=lambda v: (len(edges.get(v, ())), str(v))))
    # name the first variable that found no register
    colors, failed = _color(fn, variables, edges, hints, avoid, [], report=True)
    line_node = first_def.get(failed)
    what = f"variable {failed.name!r}" if not failed.temporary else "an intermediate value"
    raise error(f"too many values live at once: {what} finds no free register (the machine has "
                f"{len(ALLOCATABLE)} for values, r0..r{ALLOCATABLE[-1]}, and r15 is the stack pointer); "
                "split the function, or keep fewer values at once (memory, mem[i], holds more)", line_node)


class Spill(Exception):
    """Raised by :func:`allocate` with the variable to keep in memory instead."""

    def __init__(self, var: Var):
        super().__init__(var.name)
        self.var = var


def _loop_blocks(fn: Function) -> set[str]:
    """Blocks on a cycle of the graph (a cheap stand-in for loop depth)."""
    succ = {b.label: b.successors() for b in fn}
    on_cycle = set()
    for start in succ:
        stack, seen = list(succ[start]), set()
        while stack:
            x = stack.pop()
            if x == start:
                on_cycle.add(start)
                break
            if x in seen:
                continue
            seen.add(x)
            stack.extend(succ[x])
    return on_cycle


def _color(fn, variables, edges, hints, avoid, moves, report: bool = False):
    # coalesce copies between variables that do not interfere (heaviest first)
    parent = {v: v for v in variables}

    def find(v: Var) -> Var:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    groups = {v: {v} for v in variables}
    neighbours = {v: set(edges.get(v, ())) for v in variables}
    params = set(fn.params)
    for dst, src, _ in sorted(moves, key=lambda m: -m[2]):
        a, b = find(dst), find(src)
        if a == b or any(find(n) == b for n in neighbours[a]):
            continue
        pa = [v for v in groups[a] if v in params]
        pb = [v for v in groups[b] if v in params]
        if pa and pb:  # two parameters arrive in different registers
            continue
        parent[b] = a
        groups[a] |= groups.pop(b)
        neighbours[a] |= neighbours.pop(b)
    roots = list(groups)
    adj = {r: {find(n) for n in neighbours[r]} - {r} for r in roots}
    hint = {r: [h for v in groups[r] for h in hints.get(v, [])] for r in roots}
    bad = {r: set().union(*(avoid.get(v, set()) for v in groups[r])) for r in roots}
    order = sorted(roots, key=lambda r: (-(r in params or any(v in params for v in groups[r])), -len(adj[r]),
                                         -len(hint[r]), str(r)))
    color: dict[Var, int] = {}
    for r in order:
        taken = {color[n] for n in adj[r] if n in color}
        free = [c for c in ALLOCATABLE if c not in taken]
        if not free:
            if report:
                return color, sorted(groups[r], key=str)[0]
            return None
        wanted = [h for h in dict.fromkeys(hint[r]) if h in free]
        others = _others_hints(r, adj, hint, color)
        for candidates in ([h for h in wanted if h not in bad[r]],
                           [c for c in free if c not in bad[r] and c not in others],
                           [c for c in free if c not in bad[r]], wanted, free):
            if candidates:
                choice = candidates[0]
                break
        color[r] = choice
    return {v: color[find(v)] for v in variables}


def _others_hints(r, adj, hint, color) -> set[int]:
    """Registers uncoloured neighbours would like (keep them free if we can)."""
    return {h for n in adj[r] if n not in color for h in hint[n]}


__all__ = ["allocate", "Allocation", "ALLOCATABLE"]


class Frame:
    """A function's stack frame for spilled variables: ``r15 -= size`` on entry, ``+= size`` on every return."""

    def __init__(self, fn: Function):
        from .ir import Block, Jump

        self.slots: dict[Var, int] = {}
        self.prologue = Block("frame", [], Jump(fn.entry))
        self.enter = Op(STACK, "sub", STACK, 0)
        self.prologue.instructions.append(self.enter)
        self.leave: list[Op] = []
        fn.blocks = {"frame": self.prologue, **fn.blocks}
        fn.entry = "frame"
        for block in fn:
            if isinstance(block.terminator, (Return, TailCall)):
                op = Op(STACK, "add", STACK, 0)
                block.instructions.append(op)
                self.leave.append(op)

    def grow(self) -> int:
        slot = len(self.slots)
        for op in [self.enter, *self.leave]:
            op.b = slot + 1
        return slot


def spill(fn: Function, var: Var, frame: Frame, temp: Callable[[], Var]) -> None:
    """Keep ``var`` in a frame slot: a read before each use, a write after each assignment."""
    from .ir import Read, Write

    slot = frame.slots[var] = frame.grow()

    def address(out: list) -> Var:
        if slot == 0:
            return STACK
        a = temp()
        out.append(Op(a, "add", STACK, slot))
        return a

    for block in fn:
        if block is frame.prologue:
            continue
        out: list = []

        def load(v, out=out):
            if v != var:
                return v
            t = Var(f"{SPILLED}{next(_copies)}")
            out.append(Read(t, address(out)))
            return t

        leaving = [i for i in block.instructions if i in frame.leave]
        for i in block.instructions:
            if i in frame.leave:
                continue
            i.replace(load)
            out.append(i)
            if var in i.defs():
                t = Var(f"{SPILLED}{next(_copies)}")
                i.dst = t
                out.append(Write(address(out), t))
        block.terminator.replace(load)
        block.instructions = out + leaving  # the frame goes only after the last read of it
    if var in fn.params:  # it arrives in a register: store it once the frame exists
        frame.prologue.instructions.append(Write(address(frame.prologue.instructions), var))


_copies = itertools.count()
