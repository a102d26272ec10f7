"""The built-in library programs: each against the reference interpreter and against plain Python."""

from __future__ import annotations

import random

import pytest
import torch

import diffcomp
from diffcomp.alu import alu as make_alu  # = diffcomp.alu (see test_machine)
from diffcomp.machine import Library, Machine
from diffcomp.plugins.programs import NAMES
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)
from reference_machine import run as reference


def run_batch(name: str, memories: list[list[int]], registers: list[list[int]], *, base: int,
              max_steps: int = 2000) -> list[tuple[list[int], list[int], int]]:
    """Run a registered program sharp on a batch; check every row against the reference; (memory, registers, steps)."""
    program = diffcomp.program(name)
    machine = Machine(program, make_alu("lookup", base=base, ops=program.ops or None), cells=len(memories[0]),
                      registers=len(registers[0]), max_steps=max_steps, halt_threshold=0.5, strict=True)
    enc = machine.encoding
    with torch.no_grad():
        state = machine.run(enc.encode(registers), enc.encode(memories))
    out = []
    for k in range(len(memories)):
        expected = reference(machine.image, memories[k], registers[k], modulus=base, max_steps=max_steps)
        got = (enc.to_ints(state.memory[k]), enc.to_ints(state.registers[k]), int(state.steps[k]))
        assert expected.halted and bool(state.halted[k] > 0.5)
        assert got == (expected.memory, expected.registers, expected.steps), f"{name} row {k}"
        out.append(got)
    return out


def sequences(rng: random.Random, count: int, length: int, base: int) -> list[list[int]]:
    """Zero-terminated sequences of 0..length non-zero values, padded with zeros to length + 1 cells."""
    out = []
    for _ in range(count):
        n = rng.randrange(length + 1)
        out.append([rng.randrange(1, base) for _ in range(n)] + [0] * (length + 1 - n))
    return out


@pytest.mark.parametrize("name", ["insertion_sort", "bubble_sort"])
def test_the_sorts_sort_the_zero_terminated_sequence_at_cell_0_in_place(name):
    rng = random.Random(3)
    memories = sequences(rng, 8, 6, 32) + [[5, 5, 1, 0, 9, 2, 3], [0, 4, 3, 0, 0, 0, 0], [1] * 6 + [0]]
    for memory, (got, _, _) in zip(memories, run_batch(name, memories, [[0]] * len(memories), base=32)):
        n = memory.index(0)
        assert got == sorted(memory[:n]) + memory[n:]  # only the sequence moves, the rest stays


@pytest.mark.slow
@pytest.mark.parametrize("name, length", [("insertion_sort", 12), ("bubble_sort", 8)])
def test_the_sorts_on_characters_at_base_128(name, length):
    rng = random.Random(12)
    memories = [[rng.randrange(97, 123) for _ in range(length)] + [0] for _ in range(3)]
    for memory, (got, _, _) in zip(memories, run_batch(name, memories, [[0]] * 3, base=128)):
        assert got == sorted(memory[:length]) + [0]


def test_execute_sorts_like_design_md_says():
    assert diffcomp.execute("insertion_sort", memory=[3, 1, 2, 0]).memory == [1, 2, 3, 0]  # base 128, lookup
    assert diffcomp.execute("bubble_sort", memory=[3, 1, 2, 0], base=32).memory == [1, 2, 3, 0]


def test_fibonacci_recurses_eight_steps_per_level():
    depths = list(range(8))
    registers = [[0, 1, d, 0] for d in depths]
    results = run_batch("fibonacci", [[0] * 8] * len(depths), registers, base=128, max_steps=100)
    fib = [0, 1]
    while len(fib) < 10:
        fib.append(fib[-1] + fib[-2])
    for d, (memory, regs, steps) in zip(depths, results):
        assert regs[3] == fib[d] and regs[2] == d
        assert steps == 8 * d + 3  # the paper's Table 1: depth d takes 8·d steps (+ the base case)
    # other first terms, and arithmetic mod the base
    (_, regs, _), = run_batch("fibonacci", [[0] * 7], [[2, 5, 6, 0]], base=32)
    x = [2, 5]
    while len(x) < 7:
        x.append((x[-1] + x[-2]) % 32)
    assert regs[3] == x[6]


def test_fibonacci_needs_a_cell_per_level_of_its_stack():
    with pytest.raises(ValueError, match=r"memory address 3 is out of range: the memory has 3 cells"):
        diffcomp.execute("fibonacci", registers=[0, 1, 4], cells=3, base=32)
    assert diffcomp.execute("fibonacci", registers=[0, 1, 10], cells=10).registers[3] == 55


CALCULATOR = [(0, lambda a, b: a + b), (1, lambda a, b: a - b), (2, lambda a, b: a * b),
              (3, lambda a, b: a // b if b else 0), (4, lambda a, b: a % b if b else 0), (5, min), (6, max),
              (7, lambda a, b: int(a == b)), (8, lambda a, b: int(a < b)), (9, lambda a, b: 0), (40, lambda a, b: 0)]


def test_the_calculator_runs_every_alu_op():
    rng = random.Random(5)
    cases = [(code, rng.randrange(64), rng.choice([0, rng.randrange(64)])) for code, _ in CALCULATOR for _ in range(3)]
    results = run_batch("calculator", [[0]] * len(cases), [[c, a, b] for c, a, b in cases], base=64)
    table = dict(CALCULATOR)
    for (code, a, b), (_, regs, _) in zip(cases, results):
        assert regs[0] == table[code](a, b) % 64, (code, a, b)


def test_the_anc_programs():
    (memory, _, _), = run_batch("access", [[2, 10, 11, 12, 13]], [[0]], base=16)
    assert memory[0] == 12
    (memory, _, _), = run_batch("increment", [[3, 1, 14, 0, 7]], [[0, 0]], base=16)
    assert memory == [4, 2, 15, 0, 7]
    (memory, _, _), = run_batch("swap", [[4, 2, 7, 8, 9]], [[0]], base=16)
    assert memory == [4, 2, 9, 8, 7]
    # list_k: nodes at 5 -> 9 -> 3, values 20, 21, 22 (a node holds next, then value)
    nodes = [5, 0, 0, 0, 22, 9, 20, 0, 0, 3, 21, 0]
    for k, value in enumerate([20, 21, 22]):
        nodes[1] = k
        (memory, _, _), = run_batch("list_k", [list(nodes)], [[0]], base=32)
        assert memory[2] == value


def test_addition_adds_digit_by_digit_with_a_carry():
    rng = random.Random(9)
    n, radix = 4, 10
    memories, pairs = [], []
    for _ in range(6):
        a, b = rng.randrange(radix ** n), rng.randrange(radix ** n)
        digits = [(x // radix ** i) % radix for x in (a, b) for i in range(n)]
        memories.append([radix, n] + digits + [0] * (n + 1))
        pairs.append((a, b))
    for (a, b), (memory, _, _) in zip(pairs, run_batch("addition", memories, [[0]] * 6, base=32)):
        total = sum(d * radix ** i for i, d in enumerate(memory[2 + 2 * n:]))
        assert total == a + b


def test_every_builtin_is_registered_documented_and_ends_with_ret():
    registered = {info.name: info for info in diffcomp.plugins()}["programs"].registered["program"]
    assert set(NAMES) <= set(registered)
    for name in NAMES:
        program = diffcomp.program(name)
        assert program.name == name and program.instructions[-1].mnemonic == "RET"
        assert "in:" in program.doc and "out:" in program.doc  # the calling convention
    assert len(diffcomp.program("insertion_sort")) < 42  # the paper's is 42 instructions long


def test_run_alone_a_library_program_returns_to_the_halting_address():
    result = diffcomp.execute("access", memory=[0, 7], base=16)
    assert result.halted and result.link == 0 and result.steps == 5


def test_an_unknown_program_name_lists_the_registered_ones():
    with pytest.raises(LookupError, match=r"unknown program 'insertion_sor' \(did you mean 'insertion_sort'\?\); "
                                          r"registered programs: access, (access_py, )?addition"):
        diffcomp.program("insertion_sor")
    with pytest.raises(LookupError, match="unknown program 'fibonaci'"):
        diffcomp.execute("fibonaci")


def test_a_user_program_calls_a_library_program_and_continues():
    main = diffcomp.assemble("""
            CALL insertion_sort     ; sorts M[0..] in place
            r0 = READ 0             ; the smallest
            r1 = MOV 2
            r1 = READ r1            ; the third smallest
            STOP
    """)
    result = diffcomp.execute(main, memory=[9, 4, 7, 1, 0], base=32)
    assert result.memory == [1, 4, 7, 9, 0] and result.registers[:2] == [1, 7]


def test_selecting_among_library_programs_mixes_their_results():
    library = Library([diffcomp.program("insertion_sort"), diffcomp.program("increment")])
    machine = Machine(library, make_alu("lookup", base=32), cells=5, max_steps=200)
    enc = machine.encoding
    memory = enc.encode([[4, 2, 3, 0, 0]] * 3)
    registers = enc.encode([[0]] * 3)
    selection = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    state = machine.run(registers, memory, selection)
    assert enc.to_ints(state.memory[0]) == [2, 3, 4, 0, 0]
    assert enc.to_ints(state.memory[1]) == [5, 3, 4, 0, 0]
    sorted_, incremented = enc.encode([2, 3, 4, 0, 0]), enc.encode([5, 3, 4, 0, 0])
    assert torch.allclose(state.memory[2], 0.5 * sorted_ + 0.5 * incremented)
    assert torch.allclose(state.halted, torch.ones(3))
