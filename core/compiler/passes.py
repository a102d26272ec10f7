"""Passes over the IR: liveness, constant folding, dead-code removal, jump threading.

Constants are exact Python integers; the machine reduces them mod its range
``n``. Addition, subtraction and multiplication commute with that reduction,
so they fold for any ``n`` — when the result is no larger than the largest
constant the function wrote (``40 * 3`` in a function that writes nothing
above 63 stays an instruction: 120 is not a number of a base-64 machine,
where 40 and 3 are). The other ops (``// % min max == <`` and the
test of a branch) do not: ``200 // 2`` is not ``(200 mod 128) // 2``. They
fold only when every operand is 0 or 1 (the same number for every ``n``), or
when the compiler is told ``n`` (``compile(..., base=n)``). Identities that
hold for every ``n`` (``x * 0``, ``x // 1``, ``min(x, x)``, ``x < 0``, …)
always apply.
"""

from __future__ import annotations

from collections.abc import Iterable

from .ir import Block, Branch, Call, Function, Jump, JumpTable, Op, Read, Return, TailCall, Value, Var

VARYING = object()


# -- liveness ------------------------------------------------------------------------------------

def liveness(fn: Function) -> tuple[dict[str, set[Var]], dict[str, set[Var]]]:
    """``(live_in, live_out)`` per block: the variables whose value may still be read."""
    use: dict[str, set[Var]] = {}
    define: dict[str, set[Var]] = {}
    for block in fn:
        u, d = set(), set()
        for i in block.instructions:
            u |= {v for v in i.uses() if isinstance(v, Var) and v not in d}
            d |= set(i.defs())
        u |= {v for v in block.terminator.uses() if isinstance(v, Var) and v not in d}
        use[block.label], define[block.label] = u, d
    live_in = {label: set() for label in fn.blocks}
    live_out = {label: set() for label in fn.blocks}
    order = fn.reverse_postorder()[::-1]
    changed = True
    while changed:
        changed = False
        for label in order:
            block = fn.blocks[label]
            out = set().union(*(live_in[s] for s in block.successors())) if block.successors() else set()
            new_in = use[label] | (out - define[label])
            if out != live_out[label] or new_in != live_in[label]:
                live_out[label], live_in[label], changed = out, new_in, True
    return live_in, live_out


def live_after(block: Block, out: set[Var]) -> list[set[Var]]:
    """The live variables after each instruction of ``block`` (then before its terminator)."""
    live = set(out) | {v for v in block.terminator.uses() if isinstance(v, Var)}
    after: list[set[Var]] = []
    for i in reversed(block.instructions):
        after.append(set(live))
        live -= set(i.defs())
        live |= {v for v in i.uses() if isinstance(v, Var)}
    return after[::-1]


# -- constants -----------------------------------------------------------------------------------

def _certain(values: Iterable[int], modulus: int | None) -> bool:
    return modulus is not None or all(0 <= v < 2 for v in values)


def evaluate(op: str, a: int, b: int | None, modulus: int | None) -> int:
    """``op`` on constants as the machine computes it (``modulus`` None: before the reduction)."""
    if modulus is not None:
        a, b = a % modulus, (b % modulus if b is not None else None)
    if op == "mov":
        value = a
    elif op == "add":
        value = a + b
    elif op == "sub":
        value = a - b
    elif op == "mul":
        value = a * b
    elif op == "div":
        value = a // b if b else 0
    elif op == "mod":
        value = a % b if b else 0
    elif op == "min":
        value = min(a, b)
    elif op == "max":
        value = max(a, b)
    elif op == "eq":
        value = int(a == b)
    elif op == "lt":
        value = int(a < b)
    else:
        raise ValueError(f"unknown op {op!r}")
    return value % modulus if modulus is not None else value


RING = ("mov", "add", "sub", "mul")


def simplify(op: str, a: Value, b: Value | None, modulus: int | None, limit: int = 0
             ) -> tuple[str, Value, Value | None]:
    """Fold constants and apply identities; ``("mov", x, None)`` when the result is a plain value.

    Without ``modulus``, a sum, difference or product folds only when it is no
    larger than ``limit`` (the largest constant the source wrote) or an operand.
    """
    if isinstance(a, int) and (b is None or isinstance(b, int)):
        operands = [a] + ([b] if b is not None else [])
        if op in RING and modulus is None:
            value = evaluate(op, a, b, None)
            if abs(value) <= max([limit] + [abs(v) for v in operands]):  # no larger than the source wrote
                return "mov", value, None
        elif op in RING or _certain(operands, modulus):
            return "mov", evaluate(op, a, b, modulus), None
    if op == "mov":
        return op, a, b
    if op in ("add", "sub") and b == 0 or op == "mul" and b == 1 or op == "div" and b == 1:
        return "mov", a, None
    if op == "add" and a == 0 or op == "mul" and a == 1:
        return "mov", b, None
    if op == "mul" and (a == 0 or b == 0) or op == "mod" and (b == 1 or a == 0) or op == "div" and a == 0:
        return "mov", 0, None
    if a == b and isinstance(a, Var):
        if op in ("min", "max"):
            return "mov", a, None
        if op in ("sub", "lt", "mod"):
            return "mov", 0, None
        if op == "eq":
            return "mov", 1, None
    if op == "lt" and b == 0 or op == "min" and (a == 0 or b == 0):
        return "mov", 0, None  # nothing is below 0
    if op == "max" and b == 0:
        return "mov", a, None
    if op == "max" and a == 0:
        return "mov", b, None
    return op, a, b


def fold_constants(fn: Function, modulus: int | None = None, limit: int = 0) -> bool:
    """Propagate constants through the graph and fold what they decide; True if anything changed."""
    consts_in: dict[str, dict[Var, object]] = {label: {} for label in fn.blocks}
    consts_in[fn.entry] = {p: VARYING for p in fn.params}
    order = fn.reverse_postorder()
    reached = {fn.entry}

    def transfer(block: Block, state: dict[Var, object], rewrite: bool) -> dict[Var, object]:
        state = dict(state)

        def value(v: Value) -> Value:
            if isinstance(v, Var) and isinstance(state.get(v, VARYING), int):
                return state[v]
            return v

        for i in block.instructions:
            if isinstance(i, Op):
                op, a, b = simplify(i.op, value(i.a), value(i.b) if i.b is not None else None, modulus, limit)
                state[i.dst] = a if op == "mov" and isinstance(a, int) else VARYING
                if rewrite:
                    i.op, i.a, i.b = op, a, b
            else:
                if rewrite:
                    i.replace(value)
                for d in i.defs():
                    state[d] = VARYING
        if rewrite:
            block.terminator.replace(value)
        return state

    changed = True
    while changed:
        changed = False
        for label in order:
            if label not in reached:
                continue
            block = fn.blocks[label]
            out = transfer(block, consts_in[label], rewrite=False)
            for s in _live_successors(block, out, modulus):
                if s not in reached:
                    reached.add(s)
                    consts_in[s], changed = dict(out), True
                    continue
                old = consts_in[s]
                merged = dict(old)
                for var, c in out.items():  # a variable not yet assigned on one path takes the other's
                    if var in old and old[var] is not c and old[var] != c:
                        merged[var] = VARYING
                    elif var not in old:
                        merged[var] = c
                if merged != old:
                    consts_in[s], changed = merged, True
    edited = False
    for label in order:
        if label not in reached:
            continue
        block = fn.blocks[label]
        before = [str(i) for i in block.instructions] + [str(block.terminator)]
        transfer(block, consts_in[label], rewrite=True)
        t = block.terminator
        if isinstance(t, Branch) and isinstance(t.cond, int) and _certain([t.cond], modulus):
            nonzero = t.cond % modulus != 0 if modulus is not None else t.cond != 0
            block.terminator = Jump(t.nonzero if nonzero else t.zero)
        edited |= before != [str(i) for i in block.instructions] + [str(block.terminator)]
    return edited


def _live_successors(block: Block, state: dict[Var, object], modulus: int | None) -> list[str]:
    t = block.terminator
    if isinstance(t, Branch):
        c = t.cond if isinstance(t.cond, int) else state.get(t.cond, VARYING)
        if isinstance(c, int) and _certain([c], modulus):
            nonzero = c % modulus != 0 if modulus is not None else c != 0
            return [t.nonzero if nonzero else t.zero]
    return block.successors()


# -- dead code -----------------------------------------------------------------------------------

def remove_dead_code(fn: Function) -> bool:
    """Drop instructions whose results nobody reads (a call stays: it may write memory)."""
    changed_any = False
    while True:
        _, live_out = liveness(fn)
        changed = False
        for block in fn:
            after = live_after(block, live_out[block.label])
            kept = []
            for i, live in zip(block.instructions, after):
                if isinstance(i, (Op, Read)) and i.dst not in live:
                    changed = True
                    continue
                if isinstance(i, Op) and i.op == "mov" and i.a == i.dst:
                    changed = True
                    continue
                if isinstance(i, Call) and i.dst is not None and i.dst not in live:
                    i.dst = None
                    changed = True
                kept.append(i)
            block.instructions = kept
        changed_any |= changed
        if not changed:
            return changed_any


def remove_unreachable(fn: Function) -> bool:
    reachable = set(fn.reverse_postorder())
    dead = [label for label in fn.blocks if label not in reachable]
    for label in dead:
        del fn.blocks[label]
    return bool(dead)


# -- jumps ---------------------------------------------------------------------------------------

def thread_jumps(fn: Function) -> bool:
    """Jumps to empty blocks go straight on; jumps to a bare return become it; chains merge."""
    changed = False

    def forward(label: str) -> str:
        seen = set()
        while label not in seen:
            seen.add(label)
            block = fn.blocks[label]
            if block.instructions or not isinstance(block.terminator, Jump):
                return label
            label = block.terminator.target
        return label  # an empty infinite loop: leave it

    for block in fn:
        t = block.terminator
        if isinstance(t, Jump):
            new = forward(t.target)
            target = fn.blocks[new]
            if not target.instructions and isinstance(target.terminator, (Return, TailCall)):
                block.terminator = _copy(target.terminator)
                changed = True
            elif new != t.target:
                t.target, changed = new, True
        elif isinstance(t, JumpTable):
            new = [forward(x) for x in t.targets]
            if new != t.targets:
                t.targets, changed = new, True
        elif isinstance(t, Branch):
            nz, z = forward(t.nonzero), forward(t.zero)
            if (nz, z) != (t.nonzero, t.zero):
                t.nonzero, t.zero, changed = nz, z, True
            if t.nonzero == t.zero:
                block.terminator, changed = Jump(t.nonzero), True
    entry = forward(fn.entry)
    if entry != fn.entry:
        fn.entry, changed = entry, True
    changed |= remove_unreachable(fn)
    # merge a block into its only predecessor when that one just jumps to it
    preds = fn.predecessors()
    for label in list(fn.blocks):
        if label not in fn.blocks:
            continue
        block = fn.blocks[label]
        while isinstance(block.terminator, Jump):
            nxt = block.terminator.target
            if nxt == label or nxt == fn.entry or len(preds.get(nxt, [])) != 1:
                break
            other = fn.blocks.pop(nxt)
            block.instructions += other.instructions
            block.terminator = other.terminator
            for s in other.successors():
                preds[s] = [label if p == nxt else p for p in preds[s]]
            changed = True
    return changed


def _copy(t):
    if isinstance(t, Return):
        return Return(t.value, t.node)
    return TailCall(t.callee, list(t.args), t.internal, t.node)


# -- legal operands ------------------------------------------------------------------------------

def legalize(fn: Function, temp) -> None:
    """Negative constants cannot be immediates: ``x + -3`` becomes ``x - 3``, others go through a register."""
    for block in fn:
        out = []

        def positive(v: Value, node) -> Value:
            if isinstance(v, int) and v < 0:
                t = temp()
                out.append(Op(t, "sub", 0, -v, node))
                return t
            return v

        for i in block.instructions:
            if isinstance(i, Op):
                if i.op in ("add", "sub") and isinstance(i.b, int) and i.b < 0:
                    i.op, i.b = ("sub" if i.op == "add" else "add"), -i.b
                elif i.op == "add" and isinstance(i.a, int) and i.a < 0:
                    i.op, i.a, i.b = "sub", i.b, -i.a
                elif i.op == "mov" and isinstance(i.a, int) and i.a < 0:
                    i.op, i.a, i.b = "sub", 0, -i.a
                else:
                    i.a = positive(i.a, i.node)
                    if i.b is not None:
                        i.b = positive(i.b, i.node)
            else:
                i.replace(lambda v, i=i: positive(v, getattr(i, "node", None)))
            out.append(i)
        block.terminator.replace(lambda v: positive(v, getattr(block.terminator, "node", None)))
        block.instructions = out


# -- switches ------------------------------------------------------------------------------------

#: a chain of at least this many ``x == k`` tests becomes a jump table
SWITCH_CASES = 4


def switch_tables(fn: Function, temp) -> bool:
    """A chain of tests ``x == 0``, ``x == 1``, ... on one variable becomes a bounds check and a jump table.

    Each test costs two steps (``EQ``, ``JEZ``), so the k-th case of a chain
    costs 2k; through a table every case costs the same four (``LT``,
    ``JEZ``, the computed jump, the table's jump).
    """
    preds = fn.predecessors()
    changed = False
    for label in list(fn.blocks):
        if label not in fn.blocks:
            continue
        chain = _chain(fn, label, preds)
        if chain is None:
            continue
        x, cases, default, blocks = chain
        size = max(cases) + 1
        targets = [cases.get(k, default) for k in range(size)]
        head = fn.blocks[label]
        node = getattr(head.terminator, "node", None)
        t = temp()
        dispatch = Block(f"{label}.table")
        dispatch.terminator = JumpTable(x, targets, node)
        head.instructions = [Op(t, "lt", x, size, node)]
        head.terminator = Branch(t, dispatch.label, default, node)
        fn.blocks[dispatch.label] = dispatch
        changed = True
    if changed:
        remove_unreachable(fn)
    return changed


def _chain(fn: Function, label: str, preds) -> tuple[Var, dict[int, str], str, list[str]] | None:
    """``(x, {k: target}, default, blocks)`` if a chain of equality tests on ``x`` starts at ``label``."""
    cases: dict[int, str] = {}
    blocks = []
    x = None
    at = label
    while True:
        block = fn.blocks[at]
        test = _equality(block)
        if test is None or (x is not None and test[0] != x) or (at != label and preds[at] != [blocks[-1]]):
            break
        x, k, yes, no = test
        cases.setdefault(k, yes)
        blocks.append(at)
        at = no
    if x is None or len(cases) < SWITCH_CASES or max(cases) >= 2 * len(cases) + 2:
        return None
    default = at
    return x, cases, default, blocks


def _equality(block: Block) -> tuple[Var, int, str, str] | None:
    """``(x, k, equal, different)`` for a block that is just ``if x == k``."""
    t = block.terminator
    if not isinstance(t, Branch) or not isinstance(t.cond, Var):
        return None
    if not block.instructions:
        return t.cond, 0, t.zero, t.nonzero  # if x == 0
    if len(block.instructions) != 1:
        return None
    i = block.instructions[0]
    if isinstance(i, Op) and i.op == "eq" and i.dst == t.cond and i.dst.temporary:
        if isinstance(i.a, Var) and isinstance(i.b, int) and i.b >= 0:
            return i.a, i.b, t.nonzero, t.zero
        if isinstance(i.b, Var) and isinstance(i.a, int) and i.a >= 0:
            return i.b, i.a, t.nonzero, t.zero
    return None


def optimize(fn: Function, modulus: int | None = None, temp=None) -> Function:
    """Run the passes to a fixed point."""
    remove_unreachable(fn)
    limit = max([abs(v) for b in fn for i in [*b.instructions, b.terminator] for v in i.uses() if isinstance(v, int)],
                default=0)
    for _ in range(50):
        changed = fold_constants(fn, modulus, limit)
        changed |= remove_unreachable(fn)
        changed |= remove_dead_code(fn)
        changed |= thread_jumps(fn)
        if not changed:
            break
    if temp is not None and switch_tables(fn, temp):
        remove_dead_code(fn)
    return fn


__all__ = ["liveness", "live_after", "fold_constants", "remove_dead_code", "remove_unreachable",
           "thread_jumps", "legalize", "optimize", "simplify", "evaluate"]
