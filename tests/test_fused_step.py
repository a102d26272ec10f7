"""The fused step (one autograd node a step, the backward written out) against the reference step and autograd.

Each path a run can take when it records a gradient (``Machine.stepping``:
``plain``, ``fused``, ``compiled``) equals the reference step (eqs. 2-6 as
written) in values and gradients, float64; the ALU pullbacks equal autograd's;
the encoding's maps as matrices equal the maps; a step that cannot compile
falls back to the same step uncompiled. The compiled run's several steps a
call (``Machine.steps_per_call``, :mod:`diffcomp.machine.multistep`) are
checked uncompiled (their masks for spent rows, halting and the step budget)
and, marked slow, compiled.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import diffcomp
from diffcomp.alu import ALU
from diffcomp.alu import alu as make_alu
from diffcomp.machine import Library, Machine, fused, multistep
from diffcomp.machine.interpreter import State
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)
from test_machine import random_program, soft
from test_reference_step import _compare_runs, _state

ADJOINT_OPS = ("zero", "inc", "dec", "add", "sub", "min", "max", "eq", "lt")


@pytest.fixture
def uncompiled(monkeypatch):
    """``torch.compile`` fails (as without a C++ compiler): the compiled run's steps run as they are, with a warning."""
    def broken(fn, **options):
        def raises(*args, **kwargs):
            raise RuntimeError("no C++ compiler here")
        return raises

    monkeypatch.setattr(torch, "compile", broken)


def _check_vjp(alu: ALU, generator: torch.Generator, batch: int = 4) -> None:
    n = alu.encoding.modulus
    shape = (batch, *alu.encoding.shape)
    f = torch.rand(batch, len(alu.ops), generator=generator, dtype=torch.float64)
    u, v = (torch.rand(*shape, generator=generator, dtype=torch.float64) for _ in range(2))  # not normalised
    out, pullback = alu.vjp(f, u, v)
    leaves = [x.clone().requires_grad_() for x in (f, u, v)]
    expected = alu(*leaves)
    grad = torch.randn(*shape, generator=generator, dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-12), n
    wanted = torch.autograd.grad(expected, leaves, grad)
    for _ in range(2):  # a pullback may run twice (gradcheck does)
        for got, want in zip(pullback(grad), wanted):
            assert torch.allclose(got, want, atol=1e-10), (n, (got - want).abs().max())


@pytest.mark.parametrize("base", [2, 7, 16, 33])
def test_the_lookup_alus_adjoints_equal_autograd(base, generator):
    _check_vjp(make_alu("lookup", base=base, ops=ADJOINT_OPS).double(), generator)


def test_an_alu_without_adjoints_is_differentiated_by_autograd(generator):
    """``div`` has no hand-written adjoint, the circuit none at all: ALU.vjp's default (autograd) serves."""
    _check_vjp(make_alu("lookup", base=9, ops=("div", "add")).double(), generator)
    _check_vjp(make_alu("circuit", bits=4, ops=("add", "lt")).double(), generator)


def test_a_linear_encodings_maps_are_the_maps_as_matrices(generator):
    machine = Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32), cells=5)
    maps = fused.Maps(machine, torch.float64, torch.device("cpu"))
    enc, x = machine.encoding, soft(generator, 6, 32)
    mapped = x @ maps.to_cells_lines_zero
    assert torch.allclose(mapped[:, :5], enc.categorical(x, 5))
    assert torch.allclose(mapped[:, 5:-1], machine.targets(x))
    assert torch.allclose(mapped[:, -1], enc.probability_zero(x))
    lines = soft(generator, 6, machine.lines)
    assert torch.allclose(lines @ maps.from_lines, enc.from_categorical(lines))


def test_the_fused_step_needs_a_linear_encoding():
    machine = Machine(diffcomp.assemble("r0 = ADD r0, 1\nSTOP"), make_alu("circuit", bits=4), cells=2)
    assert "not linear" in fused.supports(machine)
    assert fused.supports(Machine(diffcomp.assemble("STOP"), make_alu("lookup", base=4), cells=2)) is None


@pytest.mark.parametrize("stepping", ["plain", "fused"])
@pytest.mark.parametrize("seed", range(3))
def test_each_path_matches_the_reference_step_on_random_soft_programs(stepping, seed):
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    text = random_program(rng, length=8, base=16, control=True, calls=seed != 1)
    machine = Machine(diffcomp.assemble(text, encoding=diffcomp.encoding("unit", base=16)),
                      make_alu("lookup", base=16), cells=5, registers=4, trainable=True, sharpness=1.5)
    machine.double()
    machine.stepping = stepping
    registers, memory = _state(machine, generator, 3)
    _compare_runs(machine, registers, memory, steps=6)


@pytest.mark.parametrize("stepping", ["plain", "fused"])
def test_each_path_matches_the_reference_step_under_a_soft_selection(stepping, generator):
    library = Library([diffcomp.assemble("r0 = ADD r0, 3\nCALL twice\nWRITE 0, r0\nRET", name="plus3", library=["twice"]),
                       diffcomp.assemble("r0 = MUL r0, 2\nRET", name="twice"),
                       diffcomp.assemble("JEZ r1, out\nr0 = DEC r0\nout: RET", name="maybe")])
    machine = Machine(library, make_alu("lookup", base=16), cells=2, trainable=True, sharpness=4.0)
    machine.double()
    machine.stepping = stepping
    registers, memory = _state(machine, generator, 3, sharp=2.0)
    selection = soft(generator, 3, machine.n_programs).requires_grad_()
    _compare_runs(machine, registers, memory, selection, steps=9)


def _one_step(machine: Machine, generator: torch.Generator, batch: int = 2):
    registers, memory = _state(machine, generator, batch, sharp=2.0)
    entries = torch.full((batch,), machine.image.entries[machine.entry_points[0]])
    state = machine.initial_state(registers.detach(), memory.detach(), entries)
    counter = soft(generator, batch, machine.lines).requires_grad_()
    return State(state.memory.requires_grad_(), state.register_file.requires_grad_(), counter,
                 torch.rand(batch, generator=generator, dtype=torch.float64).mul(0.1).requires_grad_(),
                 state.steps, state.n_registers)


def test_the_fused_step_passes_gradcheck(generator):
    """One step, every input soft (the counter too) and the program trainable: float64 gradcheck."""
    text = "r1 = READ r0\nJEZ r1, out\nr2 = LT r1, r2\nWRITE r0, r2\nr0 = INC r0\nCALL f\nout: STOP\nf: r3 = DEC r2\nRET"
    machine = Machine(diffcomp.assemble(text), make_alu("lookup", base=11), cells=3, trainable=True, sharpness=2.0)
    machine.double()
    state = _one_step(machine, generator, batch=1)

    def run(M, R, c, h, *logits):
        program = machine.compiled(torch.float64, torch.device("cpu"))
        new = fused.step(machine, State(M, R, c, h, state.steps, state.n_registers), program)
        return new.memory, new.register_file, new.counter, new.halted

    inputs = (state.memory, state.register_file, state.counter, state.halted)
    assert torch.autograd.gradcheck(lambda *x: run(*x), inputs, fast_mode=True)
    program = machine.compiled(torch.float64, torch.device("cpu"))  # the program's gradient, against the reference
    loss_f = sum(x.sum() for x in run(*inputs)[:2])
    from diffcomp.machine.reference import step as reference_step
    ref = reference_step(machine, State(*inputs, state.steps, state.n_registers), program)
    loss_r = ref.memory.sum() + ref.register_file.sum()
    params = list(machine.parameters())
    for got, want in zip(torch.autograd.grad(loss_f, params), torch.autograd.grad(loss_r, params)):
        assert torch.allclose(got, want, atol=1e-10)


def test_a_run_fuses_only_when_it_records_a_gradient(monkeypatch):
    calls = []
    forward = fused.Kernels.forward
    monkeypatch.setattr(fused.Kernels, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    machine = Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32), cells=4, max_steps=60)
    enc = machine.encoding
    registers, memory = enc.encode([[0]]), 0.9 * enc.encode([[5, 3, 0, 0]]) + 0.1 / 32
    with torch.no_grad():
        quiet = machine.run(registers, memory)  # no gradient: the plain step, skipping what has no weight
    assert not calls
    loud = machine.run(registers, memory.requires_grad_())
    assert calls and torch.allclose(loud.memory, quiet.memory, atol=1e-6)


def test_the_fused_step_saves_less_for_backward_than_the_plain_step(uncompiled):
    """At the benchmark's size (32 strings of 12 characters, base 128, the program's ALU ops), first 100 steps.

    (At small sizes the fused step's per-row residuals, a few numbers a row, can outweigh what the plain
    step saves: e.g. 7% more at a batch of 8, base 64 and 5 cells.)
    """
    program = diffcomp.program("insertion_sort")
    machine = Machine(program, make_alu("lookup", base=128, ops=program.ops), cells=13, max_steps=100)
    enc = machine.encoding
    rng = random.Random(0)
    strings = [[rng.randrange(97, 123) for _ in range(12)] + [0] for _ in range(32)]
    saved = {}
    machine.steps_per_call = 8  # (the compiled run's residuals, saved as its uncompiled form saves them)
    for stepping in ("plain", "fused", "compiled"):
        machine.stepping = stepping
        storages = {}

        def pack(x):
            storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # (uncompiled here: "did not compile")
            state = machine.run(enc.encode([[0]] * 32), enc.encode(strings).requires_grad_())
        state.memory.sum().backward()
        saved[stepping] = sum(storages.values())
    assert saved["fused"] <= saved["plain"] and saved["compiled"] <= saved["plain"], saved


@pytest.mark.parametrize("k", [1, 8])  # one step a call (fused.Kernels.compile), several (multistep)
def test_a_step_that_does_not_compile_runs_uncompiled(k, monkeypatch, generator):
    def broken(fn, **options):
        def raises(*args, **kwargs):
            raise RuntimeError("no C++ compiler here\nmore detail")
        return raises

    monkeypatch.setattr(torch, "compile", broken)
    machine = Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32), cells=4, max_steps=40)
    machine.double()
    registers, memory = _state(machine, generator, 2, sharp=3.0)
    machine.stepping, machine.steps_per_call = "compiled", k
    with pytest.warns(RuntimeWarning, match="did not compile .RuntimeError: no C.. compiler here.; it runs uncompiled"):
        _compare_runs(machine, registers, memory, steps=30)


def _several_steps_a_call(machine: Machine, k: int) -> Machine:
    machine.double()
    machine.stepping, machine.steps_per_call = "compiled", k
    return machine


@pytest.mark.parametrize("k", [3, 8])
@pytest.mark.parametrize("seed", range(3))
def test_several_steps_a_call_match_the_reference_step_on_random_soft_programs(k, seed, uncompiled):
    """The masks that stand in for the run loop's bookkeeping (spent rows, halting, the step budget) included."""
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    text = random_program(rng, length=8, base=16, control=True, calls=seed != 1)
    machine = _several_steps_a_call(Machine(diffcomp.assemble(text, encoding=diffcomp.encoding("unit", base=16)),
                                            make_alu("lookup", base=16), cells=5, registers=4, trainable=True,
                                            sharpness=1.5), k)
    registers, memory = _state(machine, generator, 3)
    with pytest.warns(RuntimeWarning, match=f"steps .{k} a call. did not compile"):
        for steps in (6, 13):  # a budget that ends inside a call, and one that ends on a call's boundary or not
            _compare_runs(machine, registers, memory, steps=steps)


def test_several_steps_a_call_match_the_reference_step_under_a_soft_selection(generator, uncompiled):
    library = Library([diffcomp.assemble("r0 = ADD r0, 3\nCALL twice\nWRITE 0, r0\nRET", name="plus3", library=["twice"]),
                       diffcomp.assemble("r0 = MUL r0, 2\nRET", name="twice"),
                       diffcomp.assemble("JEZ r1, out\nr0 = DEC r0\nout: RET", name="maybe")])
    machine = _several_steps_a_call(Machine(library, make_alu("lookup", base=16), cells=2, trainable=True,
                                            sharpness=4.0), 4)
    registers, memory = _state(machine, generator, 3, sharp=2.0)
    selection = soft(generator, 3, machine.n_programs).requires_grad_()
    with pytest.warns(RuntimeWarning, match="did not compile"):
        _compare_runs(machine, registers, memory, selection, steps=9)


@pytest.mark.parametrize("k", [5, 8])
def test_several_steps_a_call_halt_as_the_run_loop_does(k, uncompiled):
    """Rows that halt at different steps (spent rows held by a mask, not taken out): whole runs to the end."""
    machine = _several_steps_a_call(Machine(diffcomp.program("insertion_sort"), make_alu("lookup", base=32),
                                            cells=6, max_steps=400), k)
    enc = machine.encoding
    strings = [[5, 3, 0, 0, 0], [9, 8, 7, 6, 0], [1, 0, 0, 0, 0], [4, 2, 8, 0, 0]]
    memory = (0.97 * enc.encode(strings) + 0.03 / 32).double().requires_grad_()
    registers = enc.encode([[0]] * 4).double().requires_grad_()
    with pytest.warns(RuntimeWarning, match="did not compile"):
        _compare_runs(machine, registers, memory, steps=400)
        state = machine.run(registers, memory)
    assert len(set(state.steps.tolist())) == 4 and bool((state.halted >= machine.halt_threshold).all())
    assert state.steps.max() < 400  # halted before the budget: the run stopped between calls


@pytest.mark.slow
def test_the_compiled_step_matches_the_reference_step(generator):
    """torch.compile where it works here (a C++ compiler); skipped, not failed, where it cannot compile."""
    text = "r1 = READ r0\nJEZ r1, out\nr2 = LT r1, r2\nWRITE r0, r2\nr0 = INC r0\nCALL f\nout: STOP\nf: r3 = DEC r2\nRET"
    alu = make_alu("lookup", base=16, ops=("lt", "inc", "dec"))  # ops with adjoints: nothing left to autograd
    machine = Machine(diffcomp.assemble(text), alu, cells=4, trainable=True, sharpness=3.0)
    machine.double()
    machine.stepping, machine.steps_per_call = "compiled", 1  # one compiled step a call (fused.Kernels.compile)
    registers, memory = _state(machine, generator, 3, sharp=2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compare_runs(machine, registers, memory, steps=8)
    if any("did not compile" in str(w.message) for w in caught):
        pytest.skip("torch.compile cannot compile the step here (the fallback is tested above)")
    kernels = fused.Kernels.of(machine, torch.float64, torch.device("cpu"))
    assert kernels._compiled is not None and kernels._compiled.ok


@pytest.mark.slow
def test_several_compiled_steps_a_call_match_the_reference_step(generator):
    """K steps a call through torch.compile (a minute or so to compile here); skipped where it cannot compile."""
    text = "r1 = READ r0\nJEZ r1, out\nr2 = LT r1, r2\nWRITE r0, r2\nr0 = INC r0\nCALL f\nout: STOP\nf: r3 = DEC r2\nRET"
    alu = make_alu("lookup", base=16, ops=("lt", "inc", "dec"))
    machine = _several_steps_a_call(Machine(diffcomp.assemble(text), alu, cells=4, trainable=True, sharpness=3.0), 2)
    registers, memory = _state(machine, generator, 3, sharp=2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compare_runs(machine, registers, memory, steps=5)  # two full calls and a short one
    if any("did not compile" in str(w.message) for w in caught):
        pytest.skip("torch.compile cannot compile the steps here (the fallback is tested above)")
    chunk = multistep.Chunk.of(fused.Kernels.of(machine, torch.float64, torch.device("cpu")), 2,
                               machine.halt_threshold)
    assert chunk.ok and ("forward", 3) in chunk._started and ("backward", 3) in chunk._started


def test_a_recipe_chooses_how_the_machine_steps():
    """``[computer] stepping``: the machine (and each program's own machine, for drawn choices) steps that way."""
    from diffcomp.model import build_model, build_task
    from diffcomp.machine.interpreter import Interpreter

    task = build_task("sort", {"lengths": [2], "examples": 16, "alphabet": "abcd"}, seed=0)
    small = {"backbone": "llama", "hidden_size": 16, "layers": 1, "heads": 2, "kv_heads": 1, "parser": "span",
             "parser_options": {"values": "embeddings"}}
    for stepping in ("plain", "fused", "compiled"):
        model = build_model(small, {"alu": "lookup", "base": 128, "stepping": stepping}, task)
        machines = [m for m in model.modules() if isinstance(m, Interpreter)]
        assert machines and all(m.stepping == stepping for m in machines)
    default = build_model(small, {"alu": "lookup", "base": 128}, task)
    assert all(m.stepping == "fused" for m in default.modules() if isinstance(m, Interpreter))


@pytest.mark.parametrize("name,value,fragment", [
    ("stepping", "compild", "stepping must be one of 'plain', 'fused', 'compiled', got 'compild'"),
    ("steps_per_call", 0, "steps_per_call must be a whole number >= 1, got 0"),
    ("steps_per_call", 2.5, "steps_per_call must be a whole number >= 1, got 2.5"),
])
def test_a_machine_refuses_an_unknown_way_of_stepping(name, value, fragment):
    machine = Machine(diffcomp.assemble("STOP"), make_alu("lookup", base=8), cells=3)
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        setattr(machine, name, value)
    assert (machine.stepping, machine.steps_per_call) == ("fused", 8)  # unchanged
