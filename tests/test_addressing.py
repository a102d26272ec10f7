"""``addressing = "zero"``: a memory address beyond the cells reads 0 and a write there is lost.

Checked three ways, as every differentiable part: exact on one-hot inputs
(the soft machine against the integer run and a Python reference), the
machine's step against the reference step (eqs. 2-6 as written) in values
and gradients, and ``gradcheck`` in float64; then the encodings' address
maps, the fused step's fallback, the recipe field and its bad values.
"""

from __future__ import annotations

import random

import pytest
import torch

import diffcomp
from diffcomp.alu import alu as make_alu
from diffcomp.errors import RecipeError
from diffcomp.machine import Machine
from diffcomp.machine import fused
from diffcomp.machine.memory import Memory
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)
from test_exact import _both, _random_inputs, _same
from test_machine import random_program
from test_reference_step import _compare_runs, _state


@pytest.mark.parametrize("seed", range(6))
def test_random_programs_run_alike_soft_and_on_integers(seed):
    """Random programs whose addresses often fall beyond the 5 cells: the soft machine on one-hot inputs and the
    integer run leave the same state."""
    rng = random.Random(seed)
    text = random_program(rng, length=10, base=16, control=seed % 3 != 0, calls=seed % 2 == 1)
    machine = Machine(diffcomp.assemble(text), make_alu("lookup", base=16), cells=5, registers=4, max_steps=40,
                      addressing="zero")
    _same(*_both(machine, *_random_inputs(rng, machine, 12, dtype=torch.float64)))


def test_a_binary_encoding_runs_alike_soft_and_on_integers():
    rng = random.Random(3)
    alu = make_alu("circuit", bits=4)
    text = random_program(rng, length=7, base=16, control=True, calls=True)
    machine = Machine(diffcomp.assemble(text, encoding=alu.encoding), alu, cells=6, registers=4, max_steps=30,
                      addressing="zero")
    _same(*_both(machine, *_random_inputs(rng, machine, 6)))


@pytest.mark.parametrize("addressing", ["wrap", "zero"])
def test_reads_and_writes_beyond_the_cells_against_a_python_reference(addressing):
    """``r1 = READ r0; WRITE r2, r3``: what each mode gives, for every address from 0 to 15, on 5 cells."""
    machine = Machine(diffcomp.assemble("r1 = READ r0\nWRITE r2, r3\nSTOP"), make_alu("lookup", base=16), cells=5,
                      registers=4, addressing=addressing)
    enc, cells = machine.encoding, 5
    rows = [(a, w, v) for a in range(16) for w, v in ((a, 9), ((a + 7) % 16, 11))]
    start = [3, 1, 4, 1, 5]
    registers = enc.encode([[a, 0, w, v] for a, w, v in rows], dtype=torch.float64)
    memory = enc.encode([start] * len(rows), dtype=torch.float64)
    for run in _both(machine, registers, memory):
        got_r1 = enc.decode(run.registers[:, 1]).tolist()
        got_memory = enc.decode(run.memory).tolist()
        for (a, w, v), r1, cells_after in zip(rows, got_r1, got_memory):
            expected = list(start)
            if addressing == "wrap":
                assert r1 == start[a % cells]
                expected[w % cells] = v
            else:
                assert r1 == (start[a] if a < cells else 0)
                if w < cells:
                    expected[w] = v
            assert cells_after == expected, (a, w, v)


def test_the_nth_program_reads_zero_past_memory_at_any_size():
    """The library's ``nth`` with k beyond the string: with wrap the answer depends on the memory's size (k - 1 +
    cells is letter k again); with zero it is 0 at every size."""
    alu = make_alu("lookup", base=128)
    for cells in (7, 13):
        answers = {}
        for addressing in ("wrap", "zero"):
            machine = Machine(diffcomp.program("nth"), alu, cells=cells, max_steps=60, addressing=addressing)
            memory = alu.encoding.encode([[104, 105, 0] + [0] * (cells - 3)], dtype=torch.float64)
            registers = alu.encoding.encode([[0] * 6 + [cells]], dtype=torch.float64)  # k - 1 = cells
            answers[addressing] = [int(alu.encoding.decode(s.registers[0, 0])) for s in _both(machine, registers,
                                                                                             memory)]
        assert answers == {"wrap": [104, 104], "zero": [0, 0]}


@pytest.mark.parametrize("seed", range(3))
def test_random_soft_programs_match_the_reference_step(seed):
    """Soft programs, soft states: addresses spread over all 16 numbers, 11 of them beyond the 5 cells."""
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    text = random_program(rng, length=8, base=16, control=True, calls=seed % 2 == 0)
    machine = Machine(diffcomp.assemble(text, encoding=diffcomp.encoding("unit", base=16)),
                      make_alu("lookup", base=16), cells=5, registers=4, trainable=True, sharpness=1.5,
                      addressing="zero")
    machine.double()
    registers, memory = _state(machine, generator, 3)
    _compare_runs(machine, registers, memory, steps=6)


def test_a_run_passes_gradcheck(generator):
    machine = Machine(diffcomp.assemble("r1 = READ r0\nJEZ r1, out\nr2 = ADD r1, r2\nWRITE r0, r2\nout: STOP"),
                      make_alu("lookup", base=6), cells=2, max_steps=4, addressing="zero")
    registers, memory = _state(machine, generator, 2)

    def run(r, m):
        state = machine.run(r, m)
        return state.memory, state.register_file, state.counter, state.halted

    assert torch.autograd.gradcheck(run, (registers, memory), fast_mode=True)


def test_memory_load_reads_zero_for_the_mass_beyond():
    """``load`` against the dense sum: ``sum_{k < cells} P(u = k) M_k + P(u >= cells) zero``, unit and binary."""
    generator = torch.Generator().manual_seed(0)
    unit = diffcomp.encoding("unit", base=8)
    u = torch.rand(4, 8, generator=generator, dtype=torch.float64).softmax(-1)
    M = torch.rand(4, 3, 8, generator=generator, dtype=torch.float64).softmax(-1)
    memory = Memory(unit, 3, "zero")
    dense = torch.einsum("bk,bkw->bw", u[:, :3], M)
    dense[:, 0] += u[:, 3:].sum(-1)
    assert torch.allclose(memory.load(M, memory.address(u)), dense)
    assert torch.allclose(memory.load(M, memory.address(u)).sum(-1), torch.ones(4, dtype=torch.float64))
    binary = diffcomp.encoding("binary", bits=3)
    bits = torch.rand(4, 3, generator=generator, dtype=torch.float64)
    Mb = torch.rand(4, 5, 3, generator=generator, dtype=torch.float64)
    memory = Memory(binary, 5, "zero")
    p = binary.categorical(bits, 8)  # P(u = k) for every k < 8, enumerated
    assert torch.allclose(memory.address(bits), p[:, :5])
    assert torch.allclose(memory.load(Mb, memory.address(bits)), torch.einsum("bk,bkw->bw", p[:, :5], Mb))


@pytest.mark.parametrize("name, options, size", [("unit", {"base": 16}, 5), ("unit", {"base": 16}, 16),
                                                  ("binary", {"bits": 5}, 7), ("binary", {"bits": 5}, 16),
                                                  ("binary", {"bits": 5}, 32)])
def test_categorical_below_is_the_enumerated_distribution_cut_at_size(name, options, size):
    enc = diffcomp.encoding(name, **options)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(6, *enc.shape, generator=generator, dtype=torch.float64)
    if name == "unit":
        x = x.softmax(-1)
    full = enc.categorical(x, enc.modulus)
    assert torch.allclose(enc.categorical_below(x, size), full[:, :size])
    onehot = enc.encode([0, size - 1, min(size, enc.modulus - 1)], dtype=torch.float64)
    below = enc.categorical_below(onehot, size)
    assert below.sum(-1).tolist() == [1.0, 1.0, 1.0 if size == enc.modulus else 0.0]
    with pytest.raises(ValueError, match="categorical_below needs a size from 1"):
        enc.categorical_below(x, enc.modulus + 1)


def test_the_fused_step_falls_back_to_the_plain_step():
    machine = Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32), cells=5,
                      addressing="zero")
    assert "addressing" in fused.supports(machine)
    assert fused.supports(Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32), cells=5)) is None


def test_resizing_keeps_the_addressing():
    machine = Machine(diffcomp.program("nth"), make_alu("lookup", base=16), cells=5, addressing="zero")
    machine.resize_memory(9)
    assert machine.memory.addressing == "zero" and machine.memory.cells == 9
    assert "addressing='zero'" in repr(machine.memory)


def test_bad_addressing_is_a_clear_error():
    with pytest.raises(ValueError, match="addressing must be 'wrap' .* or 'zero'.*got 'modulo'"):
        Machine(diffcomp.program("nth"), make_alu("lookup", base=16), cells=5, addressing="modulo")
    with pytest.raises(ValueError, match="at most 16 cells"):
        Machine(diffcomp.program("nth"), make_alu("lookup", base=16), cells=20, addressing="zero")


def test_the_recipe_field_reaches_every_machine_the_computer_runs(tmp_path):
    from diffcomp.model import build_model, build_task

    task = build_task("mixed", {"lengths": [1, 2], "examples": 40}, 0)
    model = build_model({"backbone": "llama", "hidden_size": 16, "layers": 1, "heads": 2, "parser": "attention",
                         "tokenizer": "byte"},
                        {"alu": "lookup", "base": 128, "readout": "learned", "addressing": "zero"}, task)
    computer = model.computer
    assert computer.machine.addressing == "zero"
    assert computer._single("nth").addressing == "zero"
    # the computer's integer runs (its decided runs and the argument search) read 0 past memory too
    import numpy as np

    cells = computer.cells
    registers = np.zeros((2, computer.registers), dtype=np.int64)
    registers[:, 6] = [1, cells]  # letter 2; an index one memory size past letter 1
    memory = np.zeros((2, cells), dtype=np.int64)
    memory[:, :2] = [104, 105]
    beyond = np.zeros(2, dtype=bool)
    out_r, _ = computer._run_chosen_ints(registers, memory, np.full(2, computer.programs.index("nth")), beyond=beyond)
    assert out_r[:, 0].tolist() == [105, 0] and beyond.tolist() == [False, True]
    with pytest.raises(RecipeError, match="addressing.*'wrap'.*'zero'"):
        build_model({"backbone": "llama", "hidden_size": 16, "layers": 1, "heads": 2, "parser": "attention",
                     "tokenizer": "byte"}, {"alu": "lookup", "base": 128, "addressing": "modulo"}, task)


@pytest.mark.parametrize("addressing, expected", [("wrap", [105, 104]), ("zero", [105, 0])])
def test_the_numpy_engine_addresses_memory_as_the_model_does(tmp_path, addressing, expected):
    """A saved library model answered by the NumPy engine: ``nth`` one memory size past letter 1 wraps back to it
    or reads 0, as the recipe's addressing says."""
    import numpy as np

    from diffcomp.inference.model import NumpyModel
    from diffcomp.model import build_model, build_task

    task = build_task("mixed", {"lengths": [1, 2], "examples": 40}, 0)
    model = build_model({"backbone": "llama", "hidden_size": 16, "layers": 1, "heads": 2, "parser": "span",
                         "parser_options": {"values": "embeddings", "start": "before", "shared_values": True},
                         "tokenizer": "byte"},
                        {"alu": "lookup", "base": 128, "readout": "learned", "selection": "marginal",
                         "addressing": addressing}, task)
    model.save_pretrained(tmp_path / "model")
    fast = NumpyModel(tmp_path / "model")
    registers = np.zeros((2, fast.face["registers"]), dtype=np.int64)
    registers[:, 6] = [1, fast.cells]
    memory = np.zeros((2, fast.cells), dtype=np.int64)
    memory[:, :2] = [104, 105]
    nth = fast.face["entry_points"].index("nth")
    out_registers, _, _ = fast.run(registers, memory, np.full((2, 1), nth))
    assert out_registers[:, 0].tolist() == expected
