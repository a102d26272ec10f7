"""The sequence library (plugins/programs) and chains of programs (diffcomp.machine.chain).

Every program runs sharp on random zero-terminated sequences and is checked
against plain Python; chains are checked exact on one-hot selections against
the programs run one after another classically, against a hand-mixed
reference on soft selections, and by gradcheck in float64.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch

import diffcomp
from diffcomp.errors import AssemblyError, UnknownNameError
from diffcomp.machine import Library, Machine
from diffcomp.machine.chain import MEMORY, convention, library, one_hot_chain, run_chain
from diffcomp.plugins.programs import SEQUENCE, step_bound
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)

BASE = 128
ARG = 6  # the argument register of the sequence programs


def _distinct(s: list[int]) -> int:
    return len(set(s))


def _runs(s: list[int]) -> int:  # count_distinct on an unsorted sequence counts runs of equal values
    return sum(1 for i, x in enumerate(s) if i == 0 or x != s[i - 1])


#: name -> (reference on (sequence, k) -> what the program leaves, where: "memory" or a register)
REFERENCE: dict[str, tuple[Callable[[list[int], int], object], object]] = {
    "insertion_sort": (lambda s, k: sorted(s), MEMORY),
    "reverse": (lambda s, k: s[::-1], MEMORY),
    "count": (lambda s, k: s.count(k) % BASE, 0),
    "count_distinct": (lambda s, k: _runs(s), 0),
    "max": (lambda s, k: max(s, default=0), 0),
    "min": (lambda s, k: min(s, default=0), 0),
    "length": (lambda s, k: len(s), 0),
    "sum": (lambda s, k: sum(s) % BASE, 0),
    "nth": (lambda s, k: (s + [0] * 64)[k], 0),
    "identity": (lambda s, k: s, MEMORY),
}

def _cases(rng: random.Random, count: int, longest: int, alphabet: range) -> list[tuple[list[int], int]]:
    out = []
    for _ in range(count):
        n = rng.randrange(longest + 1)
        s = [rng.choice(alphabet) for _ in range(n)]
        k = rng.choice(s) if s and rng.random() < 0.7 else rng.randrange(1, BASE)
        out.append((s, k))
    return out


def _run(machine: Machine, memories: list[list[int]], registers: list[list[int]], selection=None):
    enc = machine.encoding
    with torch.no_grad():
        if selection is not None and selection.dim() == 3:
            return run_chain(machine, enc.encode(registers), enc.encode(memories), selection)
        return machine.run(enc.encode(registers), enc.encode(memories), selection)


def test_the_sequence_library_has_every_program_the_issue_names():
    assert set(SEQUENCE) >= {"insertion_sort", "reverse", "count", "count_distinct", "max", "min", "length", "sum",
                             "nth", "identity"}
    assert set(REFERENCE) == set(SEQUENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_program_is_exact_against_python_on_random_sequences(name):
    rng = random.Random(sum(map(ord, name)))
    cells = 9
    small = range(1, 6) if name in ("count_distinct", "count") else range(1, BASE)  # repeats, so counts matter
    cases = _cases(rng, 24, cells - 1, small) + [([], 3), ([5], 5), ([7] * 8, 7)]
    if name == "nth":
        cases = [(s, rng.randrange(cells)) for s, _ in cases]
    program = diffcomp.program(name)
    machine = Machine(program, diffcomp.alu("lookup", base=BASE, ops=program.ops or None), cells=cells,
                      registers=ARG + 1, max_steps=400, halt_threshold=0.5, strict=True)
    memories = [s + [0] * (cells - len(s)) for s, _ in cases]
    registers = [[rng.randrange(BASE) for _ in range(ARG)] + [k] for _, k in cases]  # junk in r0..r5: ignored
    state = _run(machine, memories, registers)
    enc = machine.encoding
    reference, where = REFERENCE[name]
    for row, (s, k) in enumerate(cases):
        memory, regs = enc.to_ints(state.memory[row]), enc.to_ints(state.registers[row])
        expected = reference(s, k)
        assert bool(state.halted[row] > 0.5)
        if where == MEMORY:
            assert memory[: len(s)] == expected and memory[len(s):] == memories[row][len(s):], (name, s)
        else:
            assert regs[where] == expected, (name, s, k, regs)
            assert memory == memories[row], f"{name} must leave memory alone"
        assert regs[ARG] == k, f"{name} must keep its argument register r{ARG}"
        assert int(state.steps[row]) <= step_bound(name, len(s)), (name, len(s), int(state.steps[row]))


def test_count_distinct_after_a_sort_counts_distinct_values():
    rng = random.Random(5)
    cases = [([rng.randrange(1, 5) for _ in range(rng.randrange(9))], 0) for _ in range(16)]
    machine = Machine(library("insertion_sort", "count_distinct"), diffcomp.alu("lookup", base=BASE), cells=9,
                      max_steps=400, halt_threshold=0.5, registers=ARG + 1)
    memories = [s + [0] * (9 - len(s)) for s, _ in cases]
    selection = one_hot_chain([["insertion_sort", "count_distinct"]] * len(cases), machine.entry_points)
    state = _run(machine, memories, [[0] * 7] * len(cases), selection)
    got = machine.encoding.to_ints(state.registers)
    assert [row[0] for row in got] == [_distinct(s) for s, _ in cases]


def test_every_sequence_program_states_its_convention():
    for name in SEQUENCE:
        c = convention(diffcomp.program(name))
        assert c.declared, name
        assert c.result == REFERENCE[name][1] or (name == "identity" and c.result is None)
        assert ARG not in ([c.result] if isinstance(c.result, int) else []), "a result in the argument register"
    assert convention(diffcomp.program("count")).arguments == (ARG,)
    assert convention(diffcomp.program("nth")).arguments == (ARG,)
    assert convention(diffcomp.program("max")).arguments == ()
    assert not convention(diffcomp.program("access")).declared  # ANC's programs say it in words only


def test_a_malformed_convention_line_is_an_assembly_error():
    bad = diffcomp.assemble("; result: the top of the stack\n RET", name="bad")
    with pytest.raises(AssemblyError, match="general register"):
        convention(bad)
    bad = diffcomp.assemble("; arguments: x1\n; result: r0\n RET", name="bad2")
    with pytest.raises(AssemblyError, match="arguments"):
        convention(bad)


# -- building a library ----------------------------------------------------------------------------------

DOUBLE = """; double: double the first element of the sequence at cell 0.
; arguments: none
; result: memory
        r0 = READ 0
        r0 = ADD r0, r0
        WRITE 0, r0
        RET
"""


class ThirdParty:
    """A plug-in object as a third party would write it: one program, as assembly text."""

    @staticmethod
    @diffcomp.hookimpl
    def register_programs(register):
        register("last_of", "; the last element.\n; arguments: none\n; result: r0\n"
                            "        r1 = MOV 0\nloop:   r2 = READ r1\n        JEZ r2, done\n"
                            "        r0 = MOV r2\n        r1 = INC r1\n        JMP loop\ndone:   RET\n")


@pytest.fixture
def third_party():
    from diffcomp.registry import get_registry

    registry = get_registry()
    if "last_of" not in registry.names("program"):
        diffcomp.register_plugin(ThirdParty)
    yield


def test_a_library_from_registered_programs_text_and_a_plug_in(third_party):
    lib = library("insertion_sort", diffcomp.program("reverse"), "last_of", double=DOUBLE)
    assert lib.names == ("insertion_sort", "reverse", "last_of", "double")
    assert isinstance(lib, Library)
    assert convention(lib["last_of"]).result == 0
    machine = Machine(lib, diffcomp.alu("lookup", base=BASE), cells=6, max_steps=200, halt_threshold=0.5,
                      registers=ARG + 1)
    selection = one_hot_chain([["insertion_sort", "last_of"], ["double", "reverse"]], machine.entry_points)
    state = _run(machine, [[9, 3, 5, 0, 0, 0], [9, 3, 5, 0, 0, 0]], [[0] * 7] * 2, selection)
    assert bool((state.halted > 0.5).all())
    regs, memory = machine.encoding.to_ints(state.registers), machine.encoding.to_ints(state.memory)
    assert regs[0][0] == 9  # the largest, after the sort
    assert memory[1][:4] == [5, 3, 18, 0]  # doubled, then reversed


def test_an_unknown_program_names_the_registered_ones():
    with pytest.raises(UnknownNameError, match="reverse"):
        library("insertion_sort", "revers")


# -- chains --------------------------------------------------------------------------------------------

CHAINS = [("insertion_sort", "nth"), ("insertion_sort", "count_distinct"), ("insertion_sort", "reverse"),
          ("identity", "max"), ("reverse", "identity"), ("count", "identity"), ("reverse", "nth")]


def test_a_one_hot_chain_is_the_programs_run_one_after_another():
    rng = random.Random(11)
    cells = 8
    machine = Machine(library(*SEQUENCE), diffcomp.alu("lookup", base=BASE), cells=cells, max_steps=400,
                      halt_threshold=0.5)
    rows, names = [], []
    for chain in CHAINS:
        for _ in range(3):
            s = [rng.randrange(97, 101) for _ in range(rng.randrange(1, cells))]
            rows.append((s, rng.randrange(len(s)) if "nth" in chain else rng.choice(s)))
            names.append(chain)
    memories = [s + [0] * (cells - len(s)) for s, _ in rows]
    registers = [[0] * ARG + [k] for _, k in rows]
    state = _run(machine, memories, registers, one_hot_chain(names, machine.entry_points))
    enc = machine.encoding
    for row, chain in enumerate(names):
        memory, regs = memories[row], registers[row]
        for name in chain:  # classically, one program after another, each from the last one's state
            result = diffcomp.execute(name, memory=memory, registers=regs)
            memory, regs = result.memory, result.registers[: ARG + 1]
        assert enc.to_ints(state.memory[row]) == memory, chain
        assert enc.to_ints(state.registers[row])[: ARG + 1] == regs, chain


def _small_machine(cells: int = 3) -> Machine:
    return Machine(library("reverse", "max", "identity"), diffcomp.alu("lookup", base=32), cells=cells, max_steps=60,
                   halt_threshold=0.999, registers=ARG + 1)


def test_a_soft_chain_is_each_step_mixed_from_the_step_before():
    torch.manual_seed(0)
    machine = _small_machine()
    memory = (3 * torch.randn(2, 3, 32, dtype=torch.float64)).softmax(-1)
    registers = torch.randn(2, ARG + 1, 32, dtype=torch.float64).softmax(-1)
    selection = torch.randn(2, 2, 3, dtype=torch.float64).softmax(-1)
    state = run_chain(machine, registers, memory, selection)
    # the reference: each program run on its own (a one-hot selection), its final state weighted by hand.
    # (The same linked image: on soft inputs a superposed run blends the jump targets of every line it is
    # on, so its result depends on where the programs lie; with one-hot inputs it does not.)
    eye = torch.eye(3, dtype=torch.float64)
    m, r = memory, registers
    for k in range(2):
        runs = [machine.run(r, m, eye[p].expand(2, 3)) for p in range(3)]
        m = sum(selection[:, k, p, None, None] * run.memory for p, run in enumerate(runs))
        r = sum(selection[:, k, p, None, None] * run.registers for p, run in enumerate(runs))
    torch.testing.assert_close(state.memory, m)
    torch.testing.assert_close(state.registers, r)


def test_a_chain_passes_gradcheck_in_float64():
    machine = _small_machine(cells=3)
    enc = machine.encoding
    a = enc.encode([[5, 9, 0]], dtype=torch.float64)  # two sequences the memory is a blend of
    b = enc.encode([[7, 0, 0]], dtype=torch.float64)
    registers = enc.encode([[0] * (ARG + 1)], dtype=torch.float64)
    torch.manual_seed(1)
    logits = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    blend = torch.randn(1, 3, 1, dtype=torch.float64, requires_grad=True)
    look = torch.randn(3, 32, dtype=torch.float64)

    def f(logits, blend):
        w = blend.sigmoid()
        state = run_chain(machine, registers, w * a + (1 - w) * b, logits.softmax(-1))
        return (state.memory * look).sum((-1, -2)), (state.registers[:, 0] * look[0]).sum(-1)  # a few outputs

    assert torch.autograd.gradcheck(f, (logits, blend), eps=1e-6, atol=1e-5)


def test_a_selection_of_the_wrong_shape_is_refused():
    machine = _small_machine()
    with pytest.raises(ValueError, match="steps"):
        run_chain(machine, torch.zeros(1, 1, 32), torch.zeros(1, 3, 32), torch.ones(1, 3))
    with pytest.raises(ValueError, match="does not run"):
        one_hot_chain([["reverse", "sort"]], machine.entry_points)


def test_the_readme_composing_section_runs_and_says_what_it_claims():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Composing a library", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    enc, state = namespace["enc"], namespace["state"]
    assert enc.decode(state.registers)[:, 0].tolist() == [97, 3]
    assert namespace["library"].names[-1] == "double"
