"""The reference step (eqs. 2-6 as written) is the oracle: the machine's step equals it, values and gradients.

Float64, random soft programs (trainable logits at low sharpness, so every
line is a mixture of every instruction), random soft states, programs that
``CALL`` and ``RET``, and a library run under a program selection.
"""

from __future__ import annotations

import random

import pytest
import torch

import diffcomp
from diffcomp.alu import alu as make_alu
from diffcomp.machine import Library, Machine
from diffcomp.machine.reference import step as reference_step
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)
from test_machine import random_program, soft


def _state(machine: Machine, generator: torch.Generator, batch: int, sharp: float = 1.0):
    n = machine.encoding.modulus
    registers = soft(generator, batch, machine.n_registers, n, sharp=sharp).requires_grad_()
    memory = soft(generator, batch, machine.cells, n, sharp=sharp).requires_grad_()
    return registers, memory


def _compare_runs(machine: Machine, registers, memory, selection=None, *, steps: int) -> None:
    """Whole runs, stepped by each step function: equal final states and equal gradients to every input."""
    inputs = [registers, memory] + ([selection] if selection is not None else []) + list(machine.parameters())
    outs = []
    for reference in (False, True):
        state = machine.run(registers, memory, selection, max_steps=steps, reference=reference)
        weights = torch.linspace(-1, 1, state.memory.numel(), dtype=state.memory.dtype).view_as(state.memory)
        loss = (state.memory * weights).sum() + state.register_file.square().sum() + state.counter[:, -1].sum() \
            + state.halted.sum()
        grads = torch.autograd.grad(loss, inputs)
        outs.append((state.memory, state.register_file, state.counter, state.halted, state.steps, *grads))
    for fast, ref in zip(*outs):
        assert torch.allclose(fast, ref, atol=1e-10, rtol=1e-8), (fast - ref).abs().max()


@pytest.mark.parametrize("seed", range(4))
def test_random_soft_programs_match_the_reference_step(seed):
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    text = random_program(rng, length=8, base=16, control=True, calls=seed % 2 == 0)
    machine = Machine(diffcomp.assemble(text, encoding=diffcomp.encoding("unit", base=16)),
                      make_alu("lookup", base=16), cells=5, registers=4, trainable=True, sharpness=1.5)
    machine.double()
    registers, memory = _state(machine, generator, 3)
    _compare_runs(machine, registers, memory, steps=6)


def test_one_step_matches_on_a_sharp_program_with_soft_state(generator):
    """A frozen (one-hot) program: the machine's step skips instructions without weight; the reference never does."""
    machine = Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32), cells=5, max_steps=40)
    registers, memory = _state(machine, generator, 4, sharp=3.0)
    _compare_runs(machine, registers, memory, steps=12)
    with torch.no_grad():
        state = machine.initial_state(registers, memory, torch.full((4,), machine.image.entries["insertion_sort"]))
        program = machine.compiled(torch.float64, torch.device("cpu"))
        for _ in range(10):
            fast, ref = machine(state, program), reference_step(machine, state, program)
            for x, y in zip((fast.memory, fast.register_file, fast.counter, fast.halted),
                            (ref.memory, ref.register_file, ref.counter, ref.halted)):
                assert torch.allclose(x, y, atol=1e-12)
            state = fast


def test_call_and_ret_under_a_soft_selection_match_the_reference_step(generator):
    library = Library([diffcomp.assemble("r0 = ADD r0, 3\nCALL twice\nWRITE 0, r0\nRET", name="plus3", library=["twice"]),
                       diffcomp.assemble("r0 = MUL r0, 2\nRET", name="twice"),
                       diffcomp.assemble("JEZ r1, out\nr0 = DEC r0\nout: RET", name="maybe")])
    machine = Machine(library, make_alu("lookup", base=16), cells=2, trainable=True, sharpness=4.0)
    machine.double()
    registers, memory = _state(machine, generator, 3, sharp=2.0)
    selection = soft(generator, 3, machine.n_programs).requires_grad_()
    _compare_runs(machine, registers, memory, selection, steps=9)


def test_the_circuit_alu_matches_the_reference_step(generator):
    alu = make_alu("circuit", bits=4)
    text = "r1 = READ r0\nJEZ r1, out\nr2 = ADD r1, r2\nWRITE r0, r2\nr0 = INC r0\nCALL f\nout: STOP\nf: r3 = SUB r2, 1\nRET"
    machine = Machine(diffcomp.assemble(text), alu, cells=4, trainable=True, sharpness=3.0)
    machine.double()
    registers = torch.rand(2, machine.n_registers, 4, generator=generator, dtype=torch.float64).requires_grad_()
    memory = torch.rand(2, 4, 4, generator=generator, dtype=torch.float64).requires_grad_()
    _compare_runs(machine, registers, memory, steps=6)


def test_the_reference_step_passes_gradcheck(generator):
    machine = Machine(diffcomp.assemble("r1 = READ r0\nJEZ r1, out\nr2 = ADD r1, r2\nWRITE r0, r2\nout: STOP"),
                      make_alu("lookup", base=6), cells=2, max_steps=4)
    registers, memory = _state(machine, generator, 1)

    def run(r, m):
        state = machine.run(r, m, reference=True)
        return state.memory, state.register_file, state.counter, state.halted

    assert torch.autograd.gradcheck(run, (registers, memory), fast_mode=True)


def test_a_step_without_host_syncs_gives_the_same_run(generator):
    """``skipping = False`` (what CUDA graphs and torch.compile need) runs every instruction: the same results."""
    machine = Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32), cells=5, max_steps=60)
    enc = machine.encoding
    registers, memory = enc.encode([[0], [0]]), enc.encode([[9, 3, 7, 0, 0], [4, 0, 0, 0, 0]])
    with torch.no_grad():
        skipping = machine.run(registers, 0.9 * memory + 0.1 / 32)
        machine.skipping = False
        plain = machine.run(registers, 0.9 * memory + 0.1 / 32)
    for name in ("memory", "register_file", "counter", "halted", "steps"):
        assert torch.allclose(getattr(skipping, name).double(), getattr(plain, name).double(), atol=1e-6), name


@pytest.mark.parametrize("trainable", [False, True])
def test_a_step_confined_to_one_thread_matches_the_reference_step(trainable, generator):
    """With two torch threads a run confines its steps to one (forward and backward): the same values and gradients."""
    text = "r1 = READ r0\nJEZ r1, out\nr2 = LT r1, r2\nWRITE r0, r2\nr0 = INC r0\nCALL f\nout: STOP\nf: r3 = DEC r2\nRET"
    machine = Machine(diffcomp.assemble(text), make_alu("lookup", base=16), cells=4, trainable=trainable,
                      sharpness=3.0)
    machine.double()
    registers, memory = _state(machine, generator, 3, sharp=2.0)
    torch.set_num_threads(2)  # (the autouse fixture restores the count)
    _compare_runs(machine, registers, memory, steps=8)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("stepping", ["plain", "fused"])
def test_a_frozen_librarys_step_writes_only_the_registers_its_lines_name(stepping, generator):
    """The rows past the last destination any line names (the argument register ``nth`` only reads, the link
    register, the constants) are never written: the step leaves them out of the write, and its values and
    gradients still equal the reference step's, under a soft selection over a library whose counter spreads."""
    library = diffcomp.library("insertion_sort", "nth", "count", "max")
    machine = Machine(library, make_alu("lookup", base=40), cells=5, max_steps=30)
    machine.double()
    machine.stepping = stepping
    program = machine.compiled(torch.float64, torch.device("cpu"))
    destinations = {line.out for line in machine.image.lines}
    assert program.written == max(destinations) + 1 < machine.image.register_file
    registers, memory = _state(machine, generator, 3, sharp=1.5)
    selection = soft(generator, 3, machine.n_programs).requires_grad_()
    _compare_runs(machine, registers, memory, selection, steps=10)
    trainable = Machine(library, make_alu("lookup", base=40), cells=5, trainable=True)
    assert trainable.compiled(torch.float64, torch.device("cpu")).written == trainable.image.register_file
