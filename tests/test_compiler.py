"""diffcomp.compile: differential tests (machine, hard and soft, against Python under the machine's integers),
the passes, the calling convention, and every CompileError."""

from __future__ import annotations

import random
import textwrap

import pytest
import torch
from hypothesis import given, settings, strategies as st

import diffcomp
from diffcomp.alu import alu as make_alu
from diffcomp.compiler import run_python
from diffcomp.machine import Library, Machine
from diffcomp.plugins.programs.python import FUNCTIONS, sample
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)
from reference_machine import run as reference

BASE = 64  # small enough that arithmetic wraps often; the stack of a recursive program needs BASE cells
SOFT_STEPS = 80  # the longest run compared on the soft machine

ARITHMETIC = """
def arith(a, b):
    x = (a * 3 + b) // (b - a) % 7     # b - a wraps; // and % by 0 give 0
    y = -a + min(a, b, 9) - max(a, 5)
    return x * y + (a % 0) + (b // 0)
"""

BRANCHES = """
def classify(a, b, c):
    if a < b:
        if b < c:
            return 1
        elif a == c or not b:
            return 2
        else:
            return a and b
    elif a >= b > c:
        return (a or c) + 3
    return b if c != 0 else -a
"""

LOOPS = """
LIMIT = 50

def loops(n, k):
    total = 0
    i = 0
    while i < n:
        i += 1
        if i % 3 == 0:
            continue
        if total > LIMIT:
            break
        total = total + i * k
    for j in range(k, n):
        total -= j
        if j == 40:
            break
    return total
"""

RECURSION = """
def tri(n):
    if n == 0:
        return 0
    return n + tri(n - 1)          # not a tail call: n is saved across it
"""

FIBONACCI = """
def fibonacci(a, b, d):
    if d == 0:
        return a
    x = fibonacci(b, a + b, d - 1)   # a CALL per level; its arguments rotate through r0..r2
    return x
"""

TAIL = """
def gcd(a, b):
    if b == 0:
        return a
    return gcd(b, a % b)           # a tail call: a loop
"""

MUTUAL = """
def is_even(n):
    if n == 0:
        return 1
    return is_odd(n - 1)

def is_odd(n):
    if n == 0:
        return 0
    return is_even(n - 1)

def parity(a, b):
    e = is_even(a)                 # kept across the next call
    return e + 2 * is_odd(b) + 4 * e
"""

MEMORY = """
def rsum(i):
    x = mem[i]
    if x == 0:
        return 0
    return x + rsum(i + 1)

def weighted(w):
    s = rsum(0)
    i = 0
    while mem[i] != 0:
        mem[i] = mem[i] * w
        i += 1
    mem[i + 1] = s
    return s
"""

LIBRARY_CALLS = """
def sort_and_rank(d):
    insertion_sort()                    # a hand-written program on memory
    s = mem[0] + 2 * mem[1] + 4 * mem[2] + 8 * mem[3]
    f = fibonacci(0, 1, d, result="r3") # one that leaves its result in r3 (its stack: cells 0..d-1)
    return f + s
"""

SWITCH = """
def switch(op, a, b):
    if op == 0:
        r = a + b
    elif op == 1:
        r = a - b
    elif op == 3:            # a gap: op 2 goes to the default
        r = a * b
    elif op == 4:
        return min(a, b)
    elif op == 5:
        r = a // b
    else:
        r = 7
    if r == 2 or r == 5 or r == 9 or r == 11:   # not a table: a chain on r with a gap too wide
        r += 1
    return r + op
"""

SPILLS = """
def many(a):
    v0 = mem[0] + a
    v1 = mem[1] + a
    v2 = mem[2] + a
    v3 = mem[3] + a
    v4 = mem[4] + a
    v5 = mem[5] + a
    v6 = mem[6] + a
    v7 = mem[7] + a
    v8 = mem[8] + a
    v9 = mem[9] + a
    v10 = mem[10] + a
    v11 = mem[11] + a
    v12 = mem[12] + a
    v13 = mem[13] + a
    v14 = mem[14] + a
    v15 = mem[15] + a
    v16 = mem[16] + a
    return v0 + v1 + v2 + v3 + v4 + v5 + v6 + v7 + v8 + v9 + v10 + v11 + v12 + v13 + v14 + v15 + v16
"""

DEEP = """
def deep(n):
    if n == 0:
        return 1
    v0 = mem[0] * n
    v1 = mem[1] * n
    v2 = mem[2] * n
    v3 = mem[3] * n
    v4 = mem[4] * n
    v5 = mem[5] * n
    v6 = mem[6] * n
    v7 = mem[7] * n
    v8 = mem[8] * n
    v9 = mem[9] * n
    v10 = mem[10] * n
    v11 = mem[11] * n
    v12 = mem[12] * n
    v13 = mem[13] * n
    v14 = mem[14] * n
    v15 = mem[15] * n
    r = deep(n - 1)                 # 17 values live across a recursive call: a frame, and saves
    return r + v0 + v1 + v2 + v3 + v4 + v5 + v6 + v7 + v8 + v9 + v10 + v11 + v12 + v13 + v14 + v15
"""

SWAPS = """
def rotate(a, b, c):
    a, b, c = b, c, a
    return helper(c, a, b)

def helper(x, y, z):
    return x * 49 + y * 7 + z
"""


def run_both(source: str, name: str | None, cases: list[tuple[list[int], list[int]]], *, programs=None,
             compare_from: int = 0, base: int = BASE, max_steps: int = 3000, soft_steps: int = None):
    """Compile ``source``; run every case on the reference machine (hard), the tensor machine (soft, one batch)
    and as Python; assert the three agree. Returns the compiled program."""
    program = diffcomp.compile(source, name)
    width = max(len(args) for args, _ in cases) or 1
    image = Library([program]).link([program.name], modulus=base, registers=max(width, program.registers))
    regs = [list(args) + [0] * (width - len(args)) for args, _ in cases]
    mems = [list(memory) + [0] * (base - len(memory)) for _, memory in cases]
    hard = [reference(image, m, r, modulus=base, cells=base, max_steps=max_steps) for r, m in zip(regs, mems)]
    for (args, memory), h in zip(cases, hard):
        expected = run_python(source, args, memory, base=base, name=name, programs=programs)
        assert h.halted, (args, memory)
        if expected.value is not None:
            assert h.registers[0] == expected.value, (args, memory, h.registers[0], expected.value)
        assert h.memory[compare_from:len(memory)] == expected.memory[compare_from:], (args, memory)

    # soft: the differentiable machine on one-hot inputs, with a gradient path open. Its float rounding grows
    # along a run (see test_soft_execution_drifts_on_long_runs), so it is compared on runs of up to SOFT_STEPS.
    soft_steps = soft_steps or SOFT_STEPS
    short = [k for k, h in enumerate(hard) if h.steps <= soft_steps]
    assert short, "no case short enough for the soft machine: add one"
    machine = Machine(program, make_alu("lookup", base=base, ops=image.ops or None), cells=base,
                      registers=max(width, program.registers), max_steps=soft_steps + 1)
    enc = machine.encoding
    with torch.enable_grad():
        memory = enc.encode([mems[k] for k in short], dtype=torch.float64).requires_grad_()
        state = machine.run(enc.encode([regs[k] for k in short], dtype=torch.float64), memory)
    for row, k in enumerate(short):
        h = hard[k]
        assert bool(state.halted[row] > 0.5)
        assert enc.to_ints(state.registers[row])[:len(h.registers)] == h.registers
        assert enc.to_ints(state.memory[row]) == h.memory
        assert int(state.steps[row]) == h.steps
    return program


word = st.integers(0, BASE - 1)
FEW = settings(max_examples=6, deadline=None, derandomize=True)


@FEW
@given(st.lists(st.tuples(word, word), min_size=1, max_size=12))
def test_arithmetic_wraps_and_divides_by_zero_like_the_alu(pairs):
    run_both(ARITHMETIC, None, [([a, b], []) for a, b in pairs + [(0, 0), (5, 5), (63, 1)]])


@FEW
@given(st.lists(st.tuples(word, word, word), min_size=1, max_size=12))
def test_nested_ifs_and_or_not_chains_and_early_returns(triples):
    fixed = [(1, 2, 3), (1, 2, 1), (1, 0, 0), (3, 2, 1), (3, 3, 0), (0, 0, 0), (5, 9, 2)]
    run_both(BRANCHES, None, [(list(t), []) for t in triples + fixed])


@FEW
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20)), min_size=1, max_size=8))
def test_while_for_break_continue(pairs):
    run_both(LOOPS, None, [([n, k], []) for n, k in pairs + [(50, 7), (0, 0), (4, 2), (45, 44)]])


@FEW
@given(st.lists(st.integers(0, 20), min_size=1, max_size=6))
def test_recursion_saves_live_values_on_the_stack(ns):
    program = run_both(RECURSION, None, [([n], []) for n in ns + [0, 1, 3, 20]])
    assert "CALL tri" in str(program) and "WRITE r15, lr" in str(program)


@FEW
@given(st.lists(st.tuples(word, word, st.integers(0, 12)), min_size=1, max_size=6))
def test_recursion_with_arguments_that_rotate(triples):
    run_both(FIBONACCI, None, [(list(t), []) for t in triples + [(0, 1, 0), (0, 1, 2), (0, 1, 10)]])


@FEW
@given(st.lists(st.tuples(word, word), min_size=1, max_size=10))
def test_tail_calls_become_loops(pairs):
    program = run_both(TAIL, None, [([a, b], []) for a, b in pairs + [(48, 18), (0, 0), (7, 0)]])
    assert "CALL" not in str(program) and "r15" not in str(program)


@FEW
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=6))
def test_mutual_recursion_and_values_kept_across_calls(pairs):
    run_both(MUTUAL, "parity", [([a, b], []) for a, b in pairs + [(0, 0), (3, 4)]])


@FEW
@given(st.lists(st.lists(st.integers(1, BASE - 1), max_size=6), min_size=1, max_size=5), word)
def test_memory_and_recursion_over_memory(arrays, w):
    cases = [([w], a + [0, 0]) for a in arrays]
    run_both(MEMORY, "weighted", cases)


@FEW
@given(st.lists(st.tuples(st.integers(0, 8), word, word), min_size=1, max_size=10))
def test_if_chains_on_one_variable_become_a_jump_table(triples):
    fixed = [(k, 6, 3) for k in range(8)] + [(63, 1, 1)]
    program = run_both(SWITCH, None, [(list(t), []) for t in triples + fixed])
    assert "JMP r" in str(program)  # the computed jump into the table


@FEW
@given(st.lists(st.tuples(word, st.lists(word, min_size=17, max_size=17)), min_size=1, max_size=4))
def test_more_live_values_than_registers_spill_to_the_stack(cases):
    program = run_both(SPILLS, None, [([a], memory) for a, memory in cases] + [([1], list(range(17)))], base=128,
                       soft_steps=150)  # straight-line code: no branch for the soft machine's rounding to feed
    assert "r15 = SUB r15" in str(program)  # a frame for the spilled values


@FEW
@given(st.lists(st.tuples(st.integers(0, 2), st.lists(word, min_size=16, max_size=16)), min_size=1, max_size=3))
def test_spills_and_recursion_together(cases):  # n = 0 and 1 run soft too
    run_both(DEEP, None, [([n], memory) for n, memory in cases] + [([0], [1] * 16), ([1], list(range(16)))],
             base=128, soft_steps=150)


@FEW
@given(st.lists(st.tuples(word, word, word), min_size=1, max_size=8))
def test_tuple_assignment_and_argument_rotation(triples):
    run_both(SWAPS, "rotate", [(list(t), []) for t in triples])


def test_calls_to_hand_written_programs():
    def insertion_sort(mem):
        n = mem.cells.index(0)
        mem.cells[:n] = sorted(mem.cells[:n])

    def fibonacci(mem, a, b, d):  # its stack (cells 0..d-1) is not compared
        for _ in range(int(d)):
            a, b = b, a + b
        return a

    cases = [([d], [5, 3, 9, 1, 0, 7, 0, 0]) for d in range(0, 6)] + [([4], [2, 0, 8, 8, 8, 8, 8, 8])]
    program = run_both(LIBRARY_CALLS, None, cases, compare_from=6, base=128,
                       programs={"insertion_sort": insertion_sort, "fibonacci": fibonacci})
    assert "CALL insertion_sort" in str(program) and "CALL fibonacci" in str(program)


@pytest.mark.xfail(strict=True, reason="the soft machine's float rounding grows about 2x per loop iteration "
                   "(counter and registers feed each other through JEZ): after ~100 steps of this loop it "
                   "no longer matches the sharp run; a machine issue, recorded here")
def test_soft_execution_drifts_on_long_runs():
    program = diffcomp.compile(LOOPS)
    image = Library([program]).link([program.name], modulus=BASE)
    hard = reference(image, [0] * BASE, [50, 7], modulus=BASE, cells=BASE)
    machine = Machine(program, make_alu("lookup", base=BASE, ops=image.ops), cells=BASE, registers=5,
                      max_steps=1000)
    enc = machine.encoding
    state = machine.run(enc.encode([[50, 7]], dtype=torch.float64), enc.encode([[0] * BASE], dtype=torch.float64),
                        exact=False)  # the soft machine itself (decided inputs would otherwise run exactly)
    assert enc.to_ints(state.registers[0])[0] == hard.registers[0] == 30


def expressions():
    """Random expressions of the subset over a, b, c (as source text)."""
    leaf = st.sampled_from(["a", "b", "c", "0", "1", "2", "3", "7", "40", "63"])

    def extend(inner):
        binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "//", "%", "<", "<=", ">", ">=", "==", "!=",
                                                   "and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
        unary = st.tuples(st.sampled_from(["-", "not "]), inner).map(lambda t: f"({t[0]}{t[1]})")
        calls = st.tuples(st.sampled_from(["min", "max"]), inner, inner).map(lambda t: f"{t[0]}({t[1]}, {t[2]})")
        ternary = st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})")
        return binary | unary | calls | ternary

    return st.recursive(leaf, extend, max_leaves=8)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(expressions(), expressions(), st.lists(st.tuples(word, word, word), min_size=3, max_size=3),
       st.sampled_from([None, BASE]))
def test_random_expressions_compute_what_python_does(e1, e2, inputs, base):
    """Folding, identities, branches on values and the allocator, against Python on random programs."""
    source = f"def f(a, b, c):\n    x = {e1}\n    if x < {e2}:\n        c = x * 3\n    return x + c - {e2}\n"
    program = diffcomp.compile(source, base=base)
    image = Library([program]).link([program.name], modulus=BASE, registers=max(3, program.registers))
    for args in inputs + [(0, 0, 0)]:
        hard = reference(image, [0], list(args), modulus=BASE, cells=1)
        assert hard.halted and hard.registers[0] == run_python(source, args, base=BASE).value, source


# -- the code the passes make ---------------------------------------------------------------------

def instructions(program) -> list[str]:
    return [str(i) for i in program.instructions]


def test_constant_folding_and_dead_code():
    program = diffcomp.compile("""
def f(a):
    x = 2 * 3 + 1          # folded
    unused = a * 9         # dead
    if 1 < 0:              # decided at compile time
        return a
    return x - 10          # a negative constant: 0 - 3
""")
    assert instructions(program) == ["r0 = SUB 0, 3", "RET"]


def test_non_ring_ops_fold_only_when_the_base_cannot_change_them():
    source = "def f():\n    return 200 // 2\n"
    assert "DIV" in str(diffcomp.compile(source))  # 200 is 72 at base 128, so this cannot fold without the base
    assert instructions(diffcomp.compile(source, base=128)) == ["r0 = MOV 36", "RET"]
    assert diffcomp.execute(diffcomp.compile(source), base=256).registers[0] == 100


def test_register_allocation_needs_no_moves_for_a_simple_function():
    assert instructions(diffcomp.compile("def add(a, b):\n    return a + b\n")) == ["r0 = ADD r0, r1", "RET"]


def test_jump_threading_leaves_no_jump_to_a_jump():
    program = diffcomp.compile("""
def f(a, b):
    while a != 0:
        if b < a:
            a -= 1
        else:
            if b == 0:
                break
            b -= 1
    return a + b
""")
    labels = dict(program.labels)
    for i in program.instructions:
        if i.mnemonic in ("JMP", "JEZ"):
            target = program.instructions[labels[i.operands[-1].value]]
            assert target.mnemonic != "JMP", str(program)


def samples(seed: int, count: int):
    rng = random.Random(seed)
    for function in FUNCTIONS:
        for _ in range(count):
            yield (function.__name__, *sample(function.__name__, rng))


def test_compiled_builtins_take_no_more_steps_than_the_hand_written_ones():
    """The 1.25x target (benchmarks/compiler.py prints the table), checked on the same inputs both ways."""
    for name, memory, registers in samples(seed=1, count=3):
        asm = diffcomp.execute(name, memory=memory, registers=registers, cells=len(memory))
        py = diffcomp.execute(f"{name}_py", memory=memory, registers=registers, cells=len(memory))
        assert py.steps <= 1.25 * asm.steps, (name, py.steps, asm.steps)


@pytest.mark.slow
def test_compiled_builtins_compute_what_the_hand_written_ones_do():
    for name, memory, registers in samples(seed=2, count=8):
        asm = diffcomp.execute(name, memory=memory, registers=registers, cells=len(memory))
        py = diffcomp.execute(f"{name}_py", memory=memory, registers=registers, cells=len(memory))
        if name == "fibonacci":
            assert py.registers[0] == asm.registers[3]
        elif name == "calculator":
            assert py.registers[0] == asm.registers[0]
        else:
            assert py.memory == asm.memory, name


# -- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, words", [
    ("    return 1.5\n", "floats are not in the subset"),
    ("    x = [1, 2]\n    return 0\n", "lists"),
    ("    def g():\n        return 1\n    return 0\n", "nested functions (closures)"),
    ("    import os\n    return 0\n", "imports"),
    ("    return a / 2\n", "use // for the machine's integer division"),
    ("    return b\n", "unknown name 'b'"),
    ("    return a.real\n", "attributes"),
    ("    return len(a)\n", "the builtin len() is not in the subset"),
    ("    return nope(a)\n", "unknown function 'nope'"),
    ("    for i in [1, 2]:\n        pass\n    return 0\n", "for x in range(stop)"),
    ("    while a:\n        a -= 1\n    else:\n        pass\n    return 0\n", "'while ... else'"),
    ("    if a:\n        y = 1\n    return y\n", "variable 'y' may be read before it is assigned"),
    ("    break\n", "'break' outside a loop"),
    ("    return a[0]\n", "only 'mem' can be indexed"),
    ("    return f(a, a)\n", "f() takes 1 argument, got 2"),
    ("    return insertion_sort(result=3)\n", "result=\"r3\""),
    ("    return a << 1\n", "the operator << is not in the subset"),
    ("    return a is a\n", "the comparison is is not in the subset"),
])
def test_compile_errors_say_where_and_what_is_allowed(body, words):
    source = "def f(a):\n" + body
    with pytest.raises(diffcomp.CompileError) as info:
        diffcomp.compile(source, filename="prog.py")
    message = str(info.value)
    assert words in message, message
    assert message.startswith("prog.py:") and info.value.line >= 1 and info.value.column >= 1
    assert isinstance(info.value, ValueError) and isinstance(info.value, diffcomp.DiffcompError)


def test_a_syntax_error_has_its_position():
    with pytest.raises(diffcomp.CompileError, match=r"^<source>:2:\d+: not valid Python"):
        diffcomp.compile("def f(a):\n    return (a\n")


def test_sixteen_parameters_do_not_fit_in_registers():
    source = "def wide(" + ", ".join(f"p{k}" for k in range(16)) + "):\n    return p0\n"
    with pytest.raises(diffcomp.CompileError, match=r"^<source>:1:1: in wide\(\): 16 parameters; at most 15"):
        diffcomp.compile(source)


def test_errors_point_into_the_file_of_a_function_object():
    def uses_a_float(a):
        return a * 0.5

    with pytest.raises(diffcomp.CompileError) as info:
        diffcomp.compile(uses_a_float)
    assert info.value.file == __file__
    assert "return a * 0.5" in str(info.value)


def test_a_function_object_compiles_with_its_helpers_and_module_constants():
    program = diffcomp.compile(_outer)
    assert program.name == "_outer" and "_helper" in program.labels
    result = diffcomp.execute(program, registers=[5], cells=128)  # the call saves lr on the stack
    assert result.registers[0] == run_python(_outer, [5]).value == 5 * 3 + 7


SCALE = 3


def _helper(x):
    return x * SCALE


def _outer(a):
    return _helper(a) + 7


def test_stack_needs_the_memory_the_convention_says():
    program = diffcomp.compile(RECURSION)
    with pytest.raises(ValueError, match="out of range"):
        diffcomp.execute(program, registers=[3], cells=8, base=64)
    assert diffcomp.execute(program, registers=[3], cells=64, base=64).registers[0] == 6


def test_source_with_several_functions_needs_a_name_when_ambiguous():
    with pytest.raises(diffcomp.CompileError, match="name one of: f, g"):
        diffcomp.compile("def f():\n    return 1\n\ndef g():\n    return 2\n")
    assert diffcomp.compile("def f():\n    return 1\n\ndef g():\n    return 2\n", "g").name == "g"


def test_docstring_becomes_the_program_doc():
    program = diffcomp.compile(textwrap.dedent('''
        def double(x):
            """Twice x."""
            return x + x
    '''))
    assert "Twice x." in program.doc and "r0 = x" in program.doc
