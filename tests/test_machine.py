"""The differentiable machine: memory and registers (eqs. 2-5), the interpreter (eq. 6), selection, gradients.

Checked three ways: exact against the plain Python reference interpreter on
one-hot inputs (random programs, straight-line and with loops and calls),
``gradcheck`` in float64 on short soft runs, and against the dense-table ALU
(eq. 7) on soft inputs.
"""

from __future__ import annotations

import random

import pytest
import torch

import diffcomp
from diffcomp.alu import alu as make_alu  # = diffcomp.alu, robust to the module shadowing it (see the report)
from diffcomp.machine import Library, Machine, Memory, Registers, State
from diffcomp.machine.memory import Addresses, probability_zero
from reference_machine import DenseTableALU, ReferenceError, one_thread  # noqa: F401 (an autouse fixture)
from reference_machine import run as reference


def unit(base: int):
    return diffcomp.encoding("unit", base=base)


def soft(generator: torch.Generator, *shape: int, dtype=torch.float64, sharp: float = 1.0) -> torch.Tensor:
    """Random distributions over the last dimension."""
    return (sharp * torch.randn(*shape, generator=generator, dtype=dtype)).softmax(-1)


# -- memory and registers (eqs. 2-5) ---------------------------------------------------------------

def test_read_is_a_dot_product_with_the_address(generator):
    M, a = soft(generator, 3, 5, 7), soft(generator, 3, 5)  # (batch, cells, base), (batch, cells)
    expected = torch.stack([sum(a[k, i] * M[k, i] for i in range(5)) for k in range(3)])
    assert torch.allclose(Memory.read(M, a), expected)  # eq. 2
    assert torch.allclose(Registers.read(M, a), expected)
    one_hot = torch.nn.functional.one_hot(torch.tensor([4, 0, 2]), 5).double()
    assert torch.equal(Memory.read(M, one_hot), M[torch.arange(3), torch.tensor([4, 0, 2])])


def test_write_is_the_mixture_of_eqs_3_and_4(generator):
    M, a, c = soft(generator, 2, 4, 6), soft(generator, 2, 4), soft(generator, 2, 6)
    p = torch.tensor([0.3, 1.0], dtype=torch.float64)
    written = (1 - a[..., None]) * M + a[..., None] * c[:, None, :]  # eq. 3
    expected = (1 - p[:, None, None]) * M + p[:, None, None] * written  # eq. 4
    out = Memory.write(M, a, p[:, None] * c, p)
    assert torch.allclose(out, expected)
    assert torch.allclose(out.sum(-1), torch.ones(2, 4, dtype=torch.float64))  # still distributions
    assert torch.equal(Memory.write(M, a, 0 * c, torch.zeros(2, dtype=torch.float64)), M)  # p = 0 writes nothing


def test_register_write_with_several_writers_keeps_distributions(generator):
    R, o = soft(generator, 2, 5, 8), soft(generator, 2, 5)
    values, probs = soft(generator, 3, 2, 8), torch.tensor([[0.2, 0.1], [0.3, 0.0], [0.1, 0.5]], dtype=torch.float64)
    out = Registers.write(R, o, (probs[..., None] * values).sum(0), probs.sum(0))
    assert torch.allclose(out.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    # one writer, certain, one-hot address: eq. 5 exactly
    hot = torch.nn.functional.one_hot(torch.tensor([1, 3]), 5).double()
    exact = Registers.write(R, hot, values[0], torch.ones(2, dtype=torch.float64))
    assert torch.equal(exact[0, 1], values[0, 0]) and torch.equal(exact[1, 3], values[0, 1])
    assert torch.equal(exact[0, 0], R[0, 0])


def test_memory_and_register_updates_pass_gradcheck(generator):
    M, a, c = soft(generator, 2, 3, 4), soft(generator, 2, 3), soft(generator, 2, 4)
    p = torch.tensor([0.4, 0.9], dtype=torch.float64)
    inputs = tuple(x.clone().requires_grad_() for x in (M, a, c, p))
    assert torch.autograd.gradcheck(lambda M, a, c, p: Memory.write(M, a, p[:, None] * c, p), inputs)
    assert torch.autograd.gradcheck(Registers.read, inputs[:2])


def test_addresses_are_numbers_taken_modulo_the_cells():
    enc = unit(16)
    to_cells = Addresses(enc, 6)
    assert to_cells(enc.encode([0, 5, 7, 15])).argmax(-1).tolist() == [0, 5, 1, 3]
    wide = diffcomp.encoding("binary", bits=32)  # no exact converter to unit(6): through unit(8)
    assert Addresses(wide, 6)(wide.encode([0, 5, 3])).argmax(-1).tolist() == [0, 5, 3]
    assert probability_zero(enc.encode([0, 3]), enc).tolist() == [1, 0]
    assert probability_zero(wide.encode([0, 3]), wide).tolist() == [1, 0]


# -- random programs against the reference interpreter -------------------------------------------

BINARY = ("ADD", "SUB", "MUL", "DIV", "MOD", "MIN", "MAX", "EQ", "LT")


def random_program(rng: random.Random, *, length: int, base: int, control: bool, calls: bool = False,
                   registers: int = 4) -> str:
    """Assembly text: ALU ops, moves, reads and writes; with ``control``, jumps to random labels."""
    def src() -> str:
        return f"r{rng.randrange(registers)}" if rng.random() < 0.7 else str(rng.randrange(base))

    def reg() -> str:
        return f"r{rng.randrange(registers)}"

    labels = [f"L{k}" for k in range(max(1, length // 4))]
    at = {rng.randrange(length): label for label in labels}
    labels = list(at.values())
    lines = []
    for i in range(length):
        kind = rng.choices(["alu2", "alu1", "mov", "read", "write", "jez", "jmp", "call", "stop"],
                           [6, 2, 1, 2, 2, 2 if control else 0, 1 if control else 0, 1 if calls else 0,
                            0.3 if control else 0])[0]
        text = {
            "alu2": lambda: f"{reg()} = {rng.choice(BINARY)} {src()}, {src()}",
            "alu1": lambda: f"{reg()} = {rng.choice(['INC', 'DEC'])} {src()}" if rng.random() < 0.8 else f"{reg()} = ZERO",
            "mov": lambda: f"{reg()} = MOV {src() if rng.random() < 0.8 else 'lr'}",
            "read": lambda: f"{reg()} = READ {src()}",
            "write": lambda: f"WRITE {src()}, {src()}",
            "jez": lambda: f"JEZ {src()}, {rng.choice(labels)}",
            "jmp": lambda: f"JMP {rng.choice(labels)}",
            "call": lambda: "CALL sub",
            "stop": lambda: "STOP",
        }[kind]()
        lines.append(f"{at[i] + ':' if i in at else '':<6}{text}")
    lines.append("      STOP")
    if calls:
        lines += ["sub:  r0 = INC r0", "      JEZ r1, back", f"      {reg()} = ADD {src()}, {src()}", "back: RET"]
    return "\n".join(lines)


def run_against_reference(text: str, rng: random.Random, *, base: int, batch: int, max_steps: int,
                          alu: diffcomp.ALU | None = None) -> None:
    program = diffcomp.assemble(text, encoding=unit(base) if alu is None else alu.encoding)
    cells = base
    alu = alu or make_alu("lookup", base=base)
    machine = Machine(program, alu, cells=cells, registers=4, max_steps=max_steps, halt_threshold=0.5, strict=True)
    memory = [[rng.randrange(base) for _ in range(cells)] for _ in range(batch)]
    registers = [[rng.randrange(base) for _ in range(4)] for _ in range(batch)]
    enc = alu.encoding
    with torch.no_grad():  # the soft machine, and the exact run on integers (tests/test_exact.py)
        for exact in (True, False):  # (the soft machine's state is returned)
            state = machine.run(enc.encode(registers), enc.encode(memory), exact=exact)
            _check_against_reference(state, machine, text, memory, registers, base=base, batch=batch,
                                     max_steps=max_steps)
    return state


def _check_against_reference(state, machine, text, memory, registers, *, base, batch, max_steps):
    enc, cells = machine.encoding, machine.cells
    for k in range(batch):
        expected = reference(machine.image, memory[k], registers[k], modulus=base, cells=cells, max_steps=max_steps)
        got = (enc.to_ints(state.memory[k]), enc.to_ints(state.registers[k]), int(enc.decode(state.link[k])),
               bool(state.halted[k] >= 0.5), int(state.steps[k]))
        assert got == (expected.memory, expected.registers, expected.link, expected.halted, expected.steps), \
            f"row {k} differs from the reference on\n{text}"
        if expected.halted:  # sharp all the way: h is 1, nothing left on the counter
            assert state.halted[k] > 1 - 1e-6 and state.counter[k].sum() < 1e-6


def test_one_hot_runs_are_exact_with_an_exact_alu():
    """Every probability stays exactly 0 or 1: the machine adds no error of its own."""
    rng = random.Random(7)
    text = random_program(rng, length=10, base=16, control=True, calls=True)
    state = run_against_reference(text, rng, base=16, batch=8, max_steps=60, alu=DenseTableALU(16))
    for x in (state.memory, state.register_file, state.counter, state.halted):
        assert ((x == 0) | (x == 1)).all()


def test_out_of_range_addresses_and_jumps_are_errors_in_both_interpreters():
    cases = [("r1 = READ r0\nSTOP", [5], "memory address 5 is out of range: the memory has 4 cells"),
             ("WRITE r0, r0\nSTOP", [4], "memory address 4 is out of range"),
             ("JMP r0\nSTOP", [9], "jump to address 9, beyond the linked program")]
    for text, registers, message in cases:
        program = diffcomp.assemble(text)
        machine = Machine(program, make_alu("lookup", base=16), cells=4, strict=True)
        enc = machine.encoding
        for exact in (False, True):  # the soft machine and the run on integers
            with pytest.raises(ValueError, match=f"line 1 of 'main': {message}"):
                machine.run(enc.encode([registers]), enc.encode([[0] * 4]), exact=exact)
        with pytest.raises(ReferenceError):
            reference(machine.image, [0] * 4, registers, modulus=16)


@pytest.mark.parametrize("seed", range(6))
def test_random_straight_line_programs_match_the_reference(seed):
    rng = random.Random(seed)
    run_against_reference(random_program(rng, length=rng.randrange(4, 16), base=16, control=False), rng,
                          base=16, batch=8, max_steps=40)


@pytest.mark.parametrize("seed", range(8))
def test_random_programs_with_jumps_and_calls_match_the_reference(seed):
    rng = random.Random(100 + seed)
    text = random_program(rng, length=rng.randrange(6, 11), base=16, control=True, calls=seed % 2 == 0)
    run_against_reference(text, rng, base=16, batch=8, max_steps=60)  # halting or not: the same state


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(16))
def test_many_random_programs_match_the_reference(seed):
    rng = random.Random(1000 + seed)
    text = random_program(rng, length=rng.randrange(8, 24), base=32, control=seed % 4 != 0, calls=seed % 3 == 0,
                          registers=4)
    run_against_reference(text, rng, base=32, batch=8, max_steps=100)


@pytest.mark.parametrize("seed", range(2))
def test_random_programs_on_the_circuit_alu_match_the_reference(seed):
    rng = random.Random(200 + seed)
    text = random_program(rng, length=10, base=16, control=True, calls=True)
    run_against_reference(text, rng, base=16, batch=4, max_steps=40, alu=make_alu("circuit", bits=4))


# -- soft runs: the dense reference, gradients, normalisation --------------------------------------

BRANCHY = """
        r1 = READ r0
        JEZ r1, skip
        CALL double
skip:   WRITE r0, r2
        STOP
double: r2 = ADD r1, r2
        RET
"""  # 7 lines and the halting address: base 8 can address it


def soft_state(generator, batch: int, machine: Machine, dtype=torch.float64, sharp: float = 1.0):
    n = machine.encoding.modulus
    return (soft(generator, batch, machine.n_registers, n, dtype=dtype, sharp=sharp),
            soft(generator, batch, machine.cells, n, dtype=dtype, sharp=sharp))


def test_soft_run_equals_the_dense_table_reference_in_values_and_gradients(generator):
    program = diffcomp.assemble(BRANCHY)
    fast = Machine(program, make_alu("lookup", base=8), cells=3, max_steps=8)
    dense = Machine(program, DenseTableALU(8), cells=3, max_steps=8)
    registers, memory = soft_state(generator, 4, fast)
    outs = []
    for machine in (fast, dense):
        r, m = registers.clone().requires_grad_(), memory.clone().requires_grad_()
        state = machine.run(r, m)
        loss = (state.memory * torch.arange(8.0, dtype=torch.float64)).sum() + state.registers[:, 2, 5].sum()
        assert 0.05 < state.halted.min() and state.halted.max() < 0.999  # soft: partly halted, partly not
        loss.backward()
        outs.append((state.memory, state.register_file, state.counter, state.halted, r.grad, m.grad))
    for x, y in zip(*outs):
        assert torch.allclose(x, y, atol=1e-12)


def test_gradcheck_on_a_short_soft_run(generator):
    machine = Machine(diffcomp.assemble(BRANCHY), make_alu("lookup", base=8), cells=2, max_steps=6)
    registers, memory = soft_state(generator, 1, machine)

    def run(r, m):
        state = machine.run(r, m)
        return state.memory, state.register_file, state.counter, state.halted

    assert torch.autograd.gradcheck(run, (registers.requires_grad_(), memory.requires_grad_()), fast_mode=True)


def test_gradcheck_at_one_hot_inputs():
    """At a sharp point the branches not taken still get their gradient (their ops are not skipped).

    With the dense table: the lookup's fast kernels clamp tiny negative round-off to 0, so finite
    differences that push a probability below 0 see a kink there (outside the simplex).
    """
    machine = Machine(diffcomp.assemble(BRANCHY), DenseTableALU(8), cells=2, max_steps=6)
    enc = machine.encoding
    registers, memory = enc.encode([[0, 0, 2]], dtype=torch.float64), enc.encode([[1, 4]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda r, m: machine.run(r, m).memory,
                                    (registers.requires_grad_(), memory.requires_grad_()), fast_mode=True)


def test_gradcheck_through_trainable_program_logits(generator):
    machine = Machine(diffcomp.assemble(BRANCHY), make_alu("lookup", base=8), cells=2, max_steps=5,
                      trainable=True, sharpness=2.0)
    registers, memory = soft_state(generator, 1, machine)
    machine.double()
    names = ("E_logits", "O_logits")

    def run(E, O):
        params = dict(zip(names, (E, O)))
        state = machine.initial_state(registers, memory, torch.full((1,), machine.image.entries["main"]))
        for _ in range(5):
            state = torch.func.functional_call(machine, params, (state,))
        return state.register_file

    logits = tuple(getattr(machine, n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(run, logits, fast_mode=True)


def test_gradients_reach_the_initial_state_and_the_program_logits(generator):
    machine = Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32), cells=5,
                      max_steps=80, trainable=True)
    enc = machine.encoding
    memory = enc.encode([[9, 3, 7, 0, 0]]).requires_grad_()
    registers = enc.encode([[0] * machine.n_registers]).requires_grad_()
    state = machine.run(registers, memory)
    assert enc.to_ints(state.memory[0]) == [3, 7, 9, 0, 0]
    (-torch.log(state.memory[0, 0, 3])).backward()
    for tensor in (memory, registers, machine.E_logits, machine.A_logits, machine.B_logits, machine.O_logits):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_compiled_programs_are_frozen_unless_trainable():
    frozen = Machine(diffcomp.assemble(BRANCHY), make_alu("lookup", base=8), cells=3)
    assert list(frozen.parameters()) == [] and frozen.E.shape == (len(frozen.image), len(frozen.columns))
    trainable = Machine(diffcomp.assemble(BRANCHY), make_alu("lookup", base=8), cells=3, trainable=True)
    assert {n for n, _ in trainable.named_parameters()} == {"E_logits", "A_logits", "B_logits", "O_logits"}
    assert diffcomp.disassemble(trainable) == diffcomp.disassemble(frozen)  # the most likely program


LOOPING = """
loop:   r1 = READ r0
        r2 = ADD r1, r2
        WRITE r2, r1
        r0 = INC r0
        JEZ r3, loop
        r3 = DEC r3
        r4 = LT r2, r1
        JEZ r4, loop
        STOP
"""


def check_normalised(state: State) -> None:
    ones = torch.ones((), dtype=state.memory.dtype)
    assert torch.isfinite(state.memory).all() and torch.isfinite(state.register_file).all()
    assert torch.allclose(state.memory.sum(-1), ones, atol=1e-5)
    assert torch.allclose(state.register_file.sum(-1), ones, atol=1e-5)
    assert torch.allclose(state.counter.sum(-1) + state.halted, ones, atol=1e-5)
    assert (state.counter >= -1e-7).all() and (state.memory >= -1e-7).all()


LOOPING_OPS = ("add", "inc", "dec", "lt")


def test_probabilities_stay_normalised_over_1000_soft_steps(generator):
    machine = Machine(diffcomp.assemble(LOOPING), make_alu("lookup", base=16, ops=LOOPING_OPS), cells=8,
                      max_steps=1000, halt_threshold=1.0)
    registers = soft(generator, 2, 5, 16, dtype=torch.float32, sharp=2.0)
    memory = soft(generator, 2, 8, 16, dtype=torch.float32, sharp=2.0)
    with torch.no_grad():
        state = machine.run(registers, memory)
    check_normalised(state)
    assert int(state.steps.max()) == 1000 and (state.halted > 0.01).all()  # it ran long, partly halting


@pytest.mark.slow
def test_a_fully_soft_trainable_program_stays_normalised_with_finite_gradients(generator):
    machine = Machine(diffcomp.assemble(LOOPING), make_alu("lookup", base=16, ops=LOOPING_OPS), cells=8,
                      max_steps=300, halt_threshold=1.0, trainable=True)
    with torch.no_grad():  # a program in superposition everywhere
        for p in machine.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    registers = soft(generator, 2, 5, 16, dtype=torch.float32).requires_grad_()
    state = machine.run(registers, soft(generator, 2, 8, 16, dtype=torch.float32))
    check_normalised(state)
    assert int(state.steps.max()) == 300
    state.registers[:, 0, 3].sum().backward()
    assert torch.isfinite(registers.grad).all() and all(torch.isfinite(p.grad).all() for p in machine.parameters())


# -- halting, selection, skipping, swapping --------------------------------------------------------

def test_a_run_stops_once_every_row_halts_and_counts_steps():
    machine = Machine(diffcomp.assemble("r0 = INC r0\nJEZ r1, end\nr0 = INC r0\nend: STOP"),
                      make_alu("lookup", base=8), cells=1, max_steps=50)
    enc = machine.encoding
    state = machine.run(enc.encode([[0, 0], [0, 1]]), enc.encode([[0], [0]]))
    assert state.halted.tolist() == [1.0, 1.0] and state.steps.tolist() == [3, 4]
    assert enc.to_ints(state.registers) == [[1, 0], [2, 1]]
    stuck = Machine(diffcomp.assemble("top: r0 = INC r0\nJMP top"), make_alu("lookup", base=8), cells=1,
                    max_steps=7)
    state = stuck.run(enc.encode([[0]]), enc.encode([[0]]))
    assert state.halted.item() == 0 and state.steps.item() == 7 and enc.to_ints(state.registers[0]) == [4]


def test_resize_memory_runs_longer_inputs_with_the_same_machine():
    program = diffcomp.program("insertion_sort")
    machine = Machine(program, make_alu("lookup", base=32, ops=program.ops), cells=4, registers=1, max_steps=400)
    enc = machine.encoding
    with pytest.raises(ValueError, match="memory has shape"):
        machine.run(enc.encode([[0]]), enc.encode([[9, 4, 7, 2, 8, 5, 6, 1, 0]]))
    machine.resize_memory(9)
    assert machine.cells == 9
    with torch.no_grad():
        state = machine.run(enc.encode([[0]]), enc.encode([[9, 4, 7, 2, 8, 5, 6, 1, 0]]))
    assert enc.to_ints(state.memory) == [[1, 2, 4, 5, 6, 7, 8, 9, 0]]


def test_a_spent_row_keeps_its_state_and_a_row_with_mass_left_runs_on():
    # rounding can leave a halted row's counter slightly negative; stepping it divided the residue by its
    # near-zero running mass, and the state grew until it overflowed (a NaN loss in training). Row 0: spent;
    # row 1: past a 0.99 halting threshold but with 0.5% of its mass still running, which goes on.
    machine = Machine(diffcomp.assemble(LOOPING), make_alu("lookup", base=16, ops=LOOPING_OPS), cells=8)
    enc = machine.encoding
    start = machine.initial_state(enc.encode(torch.zeros(2, 5, dtype=torch.int64)),
                                  enc.encode(torch.zeros(2, 8, dtype=torch.int64)), torch.tensor([1, 1]))
    counter = torch.full_like(start.counter, -2e-6)
    counter[0, 1] = 3e-8
    counter[1] = 0.005 * start.counter[1]
    state = State(start.memory, start.register_file, counter, torch.tensor([1.0, 0.995]), start.steps,
                  start.n_registers)
    after = state
    with torch.no_grad():
        for _ in range(50):
            after = machine(after)
    assert torch.equal(after.counter[0], state.counter[0]) and torch.equal(after.register_file[0],
                                                                             state.register_file[0])
    assert torch.isfinite(after.memory).all() and torch.isfinite(after.register_file).all()
    moved = state
    with torch.no_grad():
        for _ in range(4):  # up to r0 = INC r0 (the program loops every 5 steps)
            moved = machine(moved)
    assert not torch.equal(moved.counter[1], state.counter[1])  # the mass left still runs
    assert not torch.equal(moved.register_file[1], state.register_file[1])


def two_programs() -> Library:
    return Library([diffcomp.assemble("r0 = ADD r0, 3\nWRITE 0, r0\nRET", name="plus3"),
                    diffcomp.assemble("r0 = MUL r0, 2\nRET", name="double")])


def test_selection_mixes_the_programs_results(generator):
    alu = make_alu("lookup", base=16)
    machine = Machine(two_programs(), alu, cells=2, max_steps=10)
    enc = machine.encoding
    registers, memory = enc.encode([[5], [1]], dtype=torch.float64), enc.encode([[0, 0], [0, 0]], dtype=torch.float64)
    selection = torch.tensor([[0.25, 0.75], [1.0, 0.0]], dtype=torch.float64)
    state = machine.run(registers, memory, selection)
    alone = [Machine(two_programs(), alu, cells=2, entry_points=[name]).run(registers, memory)
             for name in ("plus3", "double")]
    expected = 0.25 * alone[0].registers[0] + 0.75 * alone[1].registers[0]
    assert torch.allclose(state.registers[0], expected)
    assert enc.to_ints(state.registers[1]) == [4] and enc.to_ints(state.memory[1]) == [4, 0]
    assert torch.allclose(state.halted, torch.ones(2, dtype=torch.float64))
    # with a gradient on the selection every program runs, so d(result)/d(selection) is each program's result
    selection = selection.clone().requires_grad_()
    machine.run(registers, memory, selection).registers[:, 0, 8].sum().backward()
    assert torch.allclose(selection.grad[0], torch.tensor([1.0, 0.0], dtype=torch.float64))  # 5 + 3 = 8
    assert torch.allclose(selection.grad[1], torch.tensor([0.0, 0.0], dtype=torch.float64))


class CountingALU(DenseTableALU):
    """Records the op distributions it is given."""

    def __init__(self, base, ops=None):
        super().__init__(base, ops)
        self.calls = []

    def compute(self, op, a, b):
        self.calls.append(op.detach().clone())
        return super().compute(op, a, b)


def test_instructions_with_zero_weight_do_not_pay_for_their_op(monkeypatch):
    alu = CountingALU(8, ops=("add", "mul", "lt"))
    machine = Machine(diffcomp.assemble("r1 = READ r0\nr2 = MOV r1\nWRITE r0, r2\nr3 = MUL r1, r2\nSTOP"), alu,
                      cells=2, max_steps=10)
    reads = []
    monkeypatch.setattr(Memory, "read", staticmethod(lambda M, a: reads.append(1) or torch.einsum("bi,bi...->b...", a, M)))
    enc = machine.encoding
    with torch.no_grad():
        machine.run(enc.encode([[0, 0, 0, 0]]), enc.encode([[3, 0]]), exact=False)  # the soft machine
    assert len(alu.calls) == 1 and alu.calls[0].tolist() == [[0.0, 1.0, 0.0]]  # one MUL step, exact zeros
    assert len(reads) == 1  # only the READ step reads memory


def test_the_alu_can_be_swapped_for_a_circuit():
    program = diffcomp.program("insertion_sort")
    table = make_alu("lookup", base=32, ops=program.ops)
    machine = Machine(program, table, cells=6, max_steps=200)
    enc = machine.encoding
    memory, registers = enc.encode([[5, 31, 2, 9, 0, 0]]), enc.encode([[0]])
    before = enc.to_ints(machine.run(registers, memory).memory[0])
    machine.replace_alu(diffcomp.swap(table, "circuit", bits=5))
    assert enc.to_ints(machine.run(registers, memory).memory[0]) == before == [2, 5, 9, 31, 0, 0]
    with pytest.raises(ValueError, match="numbers are binary"):
        machine.replace_alu(make_alu("circuit", bits=5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    machine = Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32), cells=5).cuda()
    enc = machine.encoding
    state = machine.run(enc.encode([[0]], device="cuda"), enc.encode([[4, 2, 3, 0, 0]], device="cuda"))
    assert state.memory.device.type == "cuda" and enc.to_ints(state.memory[0].cpu()) == [2, 3, 4, 0, 0]


# -- bad input -------------------------------------------------------------------------------------

def test_bad_run_inputs_say_what_was_expected():
    machine = Machine(two_programs(), make_alu("lookup", base=16), cells=2)
    enc = machine.encoding
    r, m = enc.encode([[1]]), enc.encode([[0, 0]])
    with pytest.raises(ValueError, match=r"pass selection, a \(batch, 2\) tensor"):
        machine.run(r, m)
    with pytest.raises(ValueError, match=r"selection has shape \(1, 3\).*\(batch, 2\) over plus3, double"):
        machine.run(r, m, torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"memory has shape \(1, 3, 16\); expected \(batch, cells <= 2, 16\)"):
        machine.run(r, enc.encode([[0, 0, 0]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="floating-point tensor of encoded numbers"):
        machine.run(torch.zeros(1, 1, 16, dtype=torch.long), m, torch.ones(1, 2))
    with pytest.raises(ValueError, match="batch sizes 1 and 2"):
        machine.run(r, enc.encode([[0, 0], [0, 0]]), torch.ones(1, 2))
    with pytest.raises(diffcomp.AssemblyError, match="needs the ALU op 'mul'"):
        Machine(two_programs(), make_alu("lookup", base=16, ops=("add",)), cells=2)
    with pytest.raises(ValueError, match="positive whole number of cells"):
        Machine(two_programs(), make_alu("lookup", base=16), cells=0)
