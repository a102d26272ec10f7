"""Exact runs on integers: the same final state as the soft machine on one-hot inputs, chosen automatically.

Differential tests: random programs (straight-line, jumps, calls), memory
addresses that wrap (not strict), program selection, a binary encoding with
the circuit ALU; every field of the final state is compared with the soft
machine's (``exact=False``). Then when the machine chooses the exact run and
when it must not.
"""

from __future__ import annotations

import random

import pytest
import torch

import diffcomp
from diffcomp.alu import alu as make_alu
from diffcomp.machine import Library, Machine
from diffcomp.machine import exact as integers
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)
from test_machine import random_program


def _same(exact, soft) -> None:
    assert torch.equal(exact.steps, soft.steps)
    for name in ("memory", "register_file", "counter", "halted"):
        x, y = getattr(exact, name), getattr(soft, name)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert torch.allclose(x, y, atol=1e-6), (name, (x - y).abs().max())


def _both(machine: Machine, *args, **kwargs):
    with torch.no_grad():
        return machine.run(*args, exact=True, **kwargs), machine.run(*args, exact=False, **kwargs)


def _random_inputs(rng: random.Random, machine: Machine, batch: int, dtype=torch.float32):
    enc, n = machine.encoding, machine.encoding.modulus
    registers = [[rng.randrange(n) for _ in range(machine.n_registers)] for _ in range(batch)]
    memory = [[rng.randrange(n) for _ in range(machine.cells)] for _ in range(batch)]
    return enc.encode(registers, dtype=dtype), enc.encode(memory, dtype=dtype)


@pytest.mark.parametrize("seed", range(8))
def test_random_programs_give_the_soft_machines_state(seed):
    rng = random.Random(seed)
    text = random_program(rng, length=10, base=16, control=seed % 4 != 0, calls=seed % 2 == 1)
    # 5 cells and no strict checks: addresses beyond memory wrap, as the soft machine's do
    machine = Machine(diffcomp.assemble(text), make_alu("lookup", base=16), cells=5, registers=4, max_steps=40)
    exact, soft = _both(machine, *_random_inputs(rng, machine, 12, dtype=torch.float64 if seed % 3 else torch.float32))
    _same(exact, soft)
    if seed % 4:  # some rows loop until max_steps: they end where they are, not halted
        assert exact.steps.max() <= 40


def test_one_hot_selection_runs_each_rows_program():
    library = Library([diffcomp.assemble("r0 = ADD r0, 3\nCALL twice\nWRITE 0, r0\nRET", name="plus3",
                                         library=["twice"]),
                       diffcomp.assemble("r0 = MUL r0, 2\nRET", name="twice"),
                       diffcomp.assemble("JEZ r1, out\nr0 = DEC r0\nout: RET", name="maybe")])
    machine = Machine(library, make_alu("lookup", base=16), cells=2)
    rng = random.Random(0)
    registers, memory = _random_inputs(rng, machine, 9)
    selection = torch.nn.functional.one_hot(torch.tensor([0, 1, 2] * 3), 3).float()
    exact, soft = _both(machine, registers, memory, selection)
    _same(exact, soft)
    assert machine.encoding.to_ints(exact.memory[0])[0] == (2 * (machine.encoding.to_ints(registers[0])[0] + 3)) % 16


@pytest.mark.parametrize("seed", range(3))
def test_a_binary_encoding_with_the_circuit_alu(seed):
    rng = random.Random(seed)
    alu = make_alu("circuit", bits=4)
    text = random_program(rng, length=7, base=16, control=True, calls=True)
    machine = Machine(diffcomp.assemble(text, encoding=alu.encoding), alu, cells=6, registers=4, max_steps=30)
    _same(*_both(machine, *_random_inputs(rng, machine, 6)))


def test_the_library_programs_sort_exactly_at_base_128():
    program = diffcomp.program("insertion_sort")
    machine = Machine(program, make_alu("lookup", base=128, ops=program.ops), cells=7, max_steps=500)
    rng = random.Random(3)
    strings = [[rng.randrange(97, 123) for _ in range(6)] + [0] for _ in range(16)]
    enc = machine.encoding
    exact, soft = _both(machine, enc.encode([[0]] * 16), enc.encode(strings))
    _same(exact, soft)
    assert enc.to_ints(exact.memory) == [sorted(s[:-1]) + [0] for s in strings]


def test_the_machine_runs_exactly_only_when_nothing_is_in_doubt(monkeypatch):
    calls = []
    real = integers.run
    monkeypatch.setattr(integers, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    program = diffcomp.assemble("r1 = READ r0\nr1 = INC r1\nWRITE r0, r1\nSTOP")
    machine = Machine(program, make_alu("lookup", base=8), cells=2)
    enc = machine.encoding
    registers, memory = enc.encode([[1]]), enc.encode([[3, 4]])

    def ran_exactly(*args, **kwargs) -> bool:
        before = len(calls)
        state = machine.run(*args, **kwargs)
        assert enc.to_ints(state.memory[0]) == [3, 5]
        return len(calls) > before

    with torch.no_grad():
        assert ran_exactly(registers, memory)  # decided, no gradient: exact
        assert not ran_exactly(registers, 0.9 * memory + 0.1 / 8)  # a number in doubt: soft
    assert ran_exactly(registers, memory)  # grad mode on, but nothing requires a gradient
    assert not ran_exactly(registers, memory.clone().requires_grad_())  # a gradient is asked for
    with torch.no_grad():
        assert ran_exactly(registers, memory.clone().requires_grad_())  # ... unless under no_grad
        assert not ran_exactly(registers, memory, exact=False)
    trainable = Machine(program, make_alu("lookup", base=8), cells=2, trainable=True)
    with torch.no_grad():
        before = len(calls)
        trainable.run(registers, memory)
        assert len(calls) == before  # a trainable program's tables are soft
        with pytest.raises(ValueError, match="the program is trainable"):
            trainable.run(registers, memory, exact=True)
    with pytest.raises(ValueError, match="a gradient is asked for"):
        machine.run(registers, memory.clone().requires_grad_(), exact=True)


def test_an_alu_that_promises_nothing_runs_soft(monkeypatch):
    class Learned(type(make_alu("lookup", base=8))):
        exact = False

    machine = Machine(diffcomp.assemble("r0 = INC r0\nSTOP"), Learned(base=8), cells=1)
    enc = machine.encoding
    monkeypatch.setattr(integers, "run", lambda *a, **k: pytest.fail("ran on integers"))
    with torch.no_grad():
        assert enc.to_ints(machine.run(enc.encode([[2]]), enc.encode([[0]])).registers[0]) == [3]


def test_execute_and_its_trace_use_the_exact_run(monkeypatch):
    calls = []
    real = integers.run
    monkeypatch.setattr(integers, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    seen = []
    result = diffcomp.execute("insertion_sort", memory=[3, 1, 2, 0], base=32, trace=seen.append)
    assert calls and result.memory == [1, 2, 3, 0] and result.halted
    assert len(seen) == result.steps and seen[0].address == 1 and seen[0].program == "insertion_sort"


def test_encodings_say_whether_numbers_are_decided():
    unit, binary = diffcomp.encoding("unit", base=4), diffcomp.encoding("binary", bits=3)
    assert unit.is_decided(unit.encode([0, 3])) and binary.is_decided(binary.encode([5, 7]))
    assert not unit.is_decided(torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    assert not binary.is_decided(torch.tensor([[1.0, 0.3, 0.0]]))


def test_a_run_that_does_not_halt_warns_raises_or_is_ignored_as_asked():
    loop = "top: r0 = INC r0\nJMP top"
    with pytest.warns(diffcomp.machine.HaltingWarning, match="did not halt within max_steps=10"):
        result = diffcomp.execute(loop, base=16, max_steps=10)
    assert not result.halted and result.steps == 10 and result.registers[0] == 5
    with pytest.raises(diffcomp.HaltingError, match="did not halt"):
        diffcomp.execute(loop, base=16, max_steps=10, on_limit="raise")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not diffcomp.execute(loop, base=16, max_steps=10, on_limit="ignore").halted
    with pytest.raises(ValueError, match="on_limit must be 'warn', 'raise' or 'ignore'"):
        diffcomp.execute(loop, base=16, on_limit="stop")


def test_32_bit_numbers_run_exactly_with_wrapping_products():
    alu = make_alu("circuit", bits=32)
    program = diffcomp.assemble("r2 = MUL r0, r1\nr3 = SUB r1, r0\nr4 = ADD r2, r0\nr5 = DIV r0, 7\nSTOP")
    machine = Machine(program, alu, cells=1, registers=6)
    assert integers.supports(machine)
    enc, a, b = alu.encoding, 4_000_000_123, 3_999_999_999
    registers = enc.encode([[a, b, 0, 0, 0, 0]])
    exact, soft = _both(machine, registers, enc.encode([[0]]))
    m = 1 << 32
    assert enc.to_ints(exact.registers[0])[2:] == [a * b % m, (b - a) % m, (a * b + a) % m, a // 7]
    assert enc.to_ints(soft.registers[0]) == enc.to_ints(exact.registers[0])


def test_a_models_decided_evaluation_runs_the_machine_exactly(monkeypatch):
    from diffcomp.model.build import build_model, build_task
    from test_model import route

    calls = []
    real = integers.run
    monkeypatch.setattr(integers, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    task = build_task("sort-onehot", {"lengths": [3, 4], "examples": 40, "alphabet": "abcd"}, seed=0)
    model = build_model({"backbone": "minimal"}, {"alu": "lookup", "base": 128}, task)
    with torch.no_grad():  # the hand-set solution
        route(model.routes["registers"], {}, task.slots)
        route(model.routes["memory"], {c: c for c in range(task.slots)}, task.slots)
        route(model.head.weights, {p: model.computer.registers + p for p in range(task.answer_length)}, 0)
    batch = task.dataset("test").tensors
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert calls and out.correct.all()
    calls.clear()
    model.train()
    model(batch).loss.backward()  # training: gradients through the soft machine
    assert not calls


@pytest.mark.skipif(not integers.compiled_ints.available(), reason="Numba is not installed")
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("addressing", ["wrap", "zero"])
def test_the_compiled_kernel_gives_the_numpy_runs_integers(seed, addressing, monkeypatch):
    import numpy as np

    rng = random.Random(seed)
    text = random_program(rng, length=10, base=32, control=seed % 3 != 0, calls=seed % 2 == 1)
    machine = Machine(diffcomp.assemble(text), make_alu("lookup", base=32), cells=5, registers=4, max_steps=30,
                      addressing=addressing)
    program = machine._exact_program()
    gen = np.random.default_rng(seed)
    registers, memory = gen.integers(0, 32, (64, 3)), gen.integers(0, 32, (64, 5))
    entries = np.where(gen.random(64) < 0.1, 0, machine.image.entries[machine.entry_points[0]])  # some never run

    monkeypatch.setattr(integers.compiled_ints, "MIN_ROWS", 64)  # these 64 rows take the kernel

    def run(compiled: bool):
        monkeypatch.setattr(integers.compiled_ints, "available", lambda: compiled)
        beyond = np.zeros(64, dtype=bool)
        out = integers.run_ints(program, registers, memory, entries, general=machine.n_registers,
                                cells=machine.cells, max_steps=30, index=machine.encoding.categorical_index,
                                beyond=beyond, addressing=addressing)
        return out, beyond

    (fast, fast_beyond), (slow, slow_beyond) = run(True), run(False)
    for name in ("memory", "registers", "pc", "steps"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    assert np.array_equal(fast_beyond, slow_beyond)
    assert (slow.steps == 0).any() and (slow.steps > 0).any()  # rows that never ran and rows that did


def test_only_an_index_modulo_the_size_takes_the_compiled_kernel():
    import numpy as np

    assert integers._modular(np.remainder, 128, (7, 40))
    assert not integers._modular(lambda x, size: np.minimum(x, size - 1), 128, (7,))  # clamps: the NumPy path
