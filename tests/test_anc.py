"""Adaptive compilation (ANC): the tasks, ANC's objective, the program model, hard verification, recipes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import diffcomp
from diffcomp.cli import main
from cli_checks import fails
from diffcomp.model import build_model, build_task
from diffcomp.model.adaptive import (ANCObjective, adapted_text, adapting, hard_run, memory_error,
                                     program_tables, verify)
from diffcomp.model.computer import MachineComputer

TASKS = ("anc-access", "anc-increment", "anc-swap", "anc-list_k", "anc-addition", "anc-sort")


def model_for(task, sharpness: float = 25.0, init: str = "compiled"):
    return build_model({"backbone": "program", "init": init},
                       {"alu": "lookup", "base": task.modulus, "sharpness": sharpness}, task)


# -- tasks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("distribution", ["generic", "biased"])
def test_compiled_programs_solve_their_tasks(name, distribution):
    """The classical reference: each library program, run hard, leaves exactly the answer on the masked cells."""
    task = build_task(name, {"distribution": distribution, "examples": 200}, seed=1)
    machine = model_for(task).machine
    for split in ("train", "validation", "test"):
        items = task.dataset(split).tensors
        run = hard_run(machine, items["numbers"], diffcomp.program(task.program))
        assert bool(run.halted.all())
        assert bool(((run.memory == items["answer"]) | ~items["mask"]).all())
        assert bool(items["mask"].any(-1).all())  # every example asks for something


@pytest.mark.parametrize("name", TASKS)
def test_splits_are_70_15_15_and_deterministic(name):
    task = build_task(name, {"examples": 200}, seed=4)
    sizes = [len(task.dataset(s)) for s in ("train", "validation", "test")]
    assert sizes == [140, 30, 30]
    again = build_task(name, {"examples": 200}, seed=4)
    assert torch.equal(task.dataset("test").tensors["numbers"], again.dataset("test").tensors["numbers"])
    other = build_task(name, {"examples": 200}, seed=5)
    assert not torch.equal(task.dataset("train").tensors["numbers"], other.dataset("train").tensors["numbers"])
    with pytest.raises(ValueError, match="split must be"):
        task.dataset("dev")


def test_biased_distributions_are_narrower():
    access = build_task("anc-access", {"distribution": "biased", "index": 3}, seed=0).dataset("train").tensors
    assert bool((access["numbers"][:, 0] == 3).all())
    generic = build_task("anc-access", {"distribution": "generic"}, seed=0).dataset("train").tensors
    assert len(generic["numbers"][:, 0].unique()) == 7

    swap = build_task("anc-swap", {"distribution": "biased"}, seed=0).dataset("train").tensors
    assert bool((swap["numbers"][:, :2] == torch.tensor([2, 4])).all())

    increment = build_task("anc-increment", {"distribution": "biased"}, seed=0).dataset("train").tensors
    values = increment["numbers"][:, :-1]
    assert bool((values == values[:, :1]).all()) and bool((values > 0).all())

    lists = build_task("anc-list_k", {"distribution": "biased"}, seed=0).dataset("train").tensors["numbers"]
    assert bool((lists[:, 0] == 3).all())
    for row in lists[:20].tolist():  # the nodes follow one another in memory
        node = row[0]
        while row[node] != 0:
            assert row[node] == node + 2
            node = row[node]

    sort = build_task("anc-sort", {"distribution": "biased"}, seed=0).dataset("train").tensors
    strings = sort["numbers"][:, :-1]
    descents = (strings[:, 1:] < strings[:, :-1]).sum(1)
    assert bool((descents <= 1).all())


@pytest.mark.parametrize("options, fragment", [
    ({"distribution": "skewed"}, "distribution must be one of"),
    ({"index": 9}, "index must lie in 0..6"),
    ({"base": 4}, "cells need addresses"),
])
def test_bad_task_options(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_task("anc-access", options, seed=0)


# -- ANC's objective ---------------------------------------------------------------------------------

def test_objective_matches_its_formula():
    """Two steps by hand: L = final·ℓ(M_2) + halting·Σ Δh_t ℓ(M_t) + running·Σ (1 - h_t) + timeout·(1 - h_2)."""
    base = 4
    answer, mask = torch.tensor([[2, 0]]), torch.tensor([[True, False]])
    m0 = torch.full((1, 2, base), 0.25)
    m1 = torch.tensor([[[0.1, 0.1, 0.7, 0.1], [1.0, 0, 0, 0]]])
    m2 = torch.tensor([[[0.0, 0.0, 0.9, 0.1], [0.0, 1.0, 0, 0]]])
    h = [torch.tensor([0.0]), torch.tensor([0.4]), torch.tensor([0.95])]
    w = ANCObjective(final=2.0, halting=3.0, running=0.5, timeout=7.0)
    e1, e2 = -torch.log(torch.tensor(0.7)), -torch.log(torch.tensor(0.9))
    expected = 2 * e2 + 3 * (0.4 * e1 + 0.55 * e2) + 0.5 * (0.6 + 0.05) + 7 * 0.05
    assert torch.allclose(w([m0, m1, m2], h, answer, mask), expected.reshape(1), atol=1e-6)


def test_halting_early_with_the_right_answer_pays():
    """The same right memory, halted after 2 steps or after 4: the earlier run has the lower loss."""
    answer, mask = torch.tensor([[1]]), torch.tensor([[True]])
    right, wrong = torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[1.0, 0.0]]])
    early = ([wrong, right, right, right, right], [torch.tensor([x]) for x in (0.0, 0.0, 1.0, 1.0, 1.0)])
    late = ([wrong, right, right, right, right], [torch.tensor([x]) for x in (0.0, 0.0, 0.0, 0.0, 1.0)])
    objective = ANCObjective()
    assert objective(*early, answer, mask) < objective(*late, answer, mask)
    # halting before the memory is right costs the halting term
    premature = ([wrong, wrong, right], [torch.tensor([x]) for x in (0.0, 1.0, 1.0)])
    in_time = ([wrong, wrong, right], [torch.tensor([x]) for x in (0.0, 0.0, 1.0)])
    assert objective(*premature, answer, mask) > objective(*in_time, answer, mask)


def test_objective_gradcheck(generator):
    answer, mask = torch.tensor([[1, 2, 0]]), torch.tensor([[True, True, False]])
    memories = [torch.rand(1, 3, 4, generator=generator, dtype=torch.float64).softmax(-1).requires_grad_()
                for _ in range(3)]
    halted = [torch.tensor([x], dtype=torch.float64, requires_grad=True) for x in (0.0, 0.3, 0.8)]
    objective = ANCObjective(final=1.0, halting=2.0, running=0.1, timeout=3.0)
    assert torch.autograd.gradcheck(lambda *xs: objective(list(xs[:3]), list(xs[3:]), answer, mask),
                                    (*memories, *halted))


def test_memory_error_is_exact_on_one_hot_memories():
    enc = diffcomp.encoding("unit", base=8)
    memory = enc.encode(torch.tensor([[3, 4, 5]]))
    assert memory_error(memory, torch.tensor([[3, 4, 0]]), torch.tensor([[True, True, False]])).item() == \
        pytest.approx(0.0, abs=1e-6)
    assert memory_error(memory, torch.tensor([[3, 4, 0]]), torch.tensor([[True, True, True]])).item() > 10


@pytest.mark.parametrize("values, fragment", [
    ({"running": -0.1}, "'running' must be a finite number >= 0"),
    ({"final": float("inf")}, "'final' must be a finite number >= 0"),
    ({"halt": 1.0}, "unknown ANC loss weight 'halt'"),
])
def test_bad_weights(values, fragment):
    with pytest.raises(ValueError, match=fragment):
        ANCObjective.from_dict(values)


# -- the program model ---------------------------------------------------------------------------------

def test_program_model_runs_the_compiled_program_exactly():
    task = build_task("anc-list_k", {"distribution": "generic", "examples": 100}, seed=0)
    model = model_for(task)
    batch = task.dataset("test").tensors
    model.eval()
    out = model(batch)
    assert bool(out.correct.all())
    model.train()
    out = model(batch)
    assert bool(out.correct.all())  # sharpness 25: the soft run decodes exactly too
    out.loss.backward()
    grads = [p.grad for p in program_tables(model.machine)]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def test_verify_compares_the_adapted_program_with_the_compiled_one():
    task = build_task("anc-swap", {"distribution": "generic", "examples": 100}, seed=0)
    model = model_for(task)
    result = verify(model, task.dataset("test"))
    assert result["adapted"]["success"] == result["compiled"]["success"] == 1.0
    assert result["adapted"]["steps"] == result["compiled"]["steps"] == 7.0
    assert result["steps_ratio"] == 1.0
    assert "r2 = READ r0" in result["program"]
    # a broken program is caught: the verification runs the text, not the tables
    with torch.no_grad():
        model.machine.E_logits[6].zero_()
        model.machine.E_logits[6, model.machine.column["STOP"]] = 50.0  # RET -> STOP: same answer
        model.machine.E_logits[4].zero_()
        model.machine.E_logits[4, model.machine.column["STOP"]] = 50.0  # the first WRITE -> STOP: wrong
    result = verify(model, task.dataset("test"))
    assert result["adapted"]["success"] < 0.5 and result["adapted"]["steps"] == 5.0
    assert adapted_text(model.machine).count("STOP") == 3  # and the guard


def test_random_init_is_seeded_and_not_the_compiled_program():
    task = build_task("anc-access", {}, seed=0)
    a, b = model_for(task, init="random"), model_for(task, init="random")
    assert torch.equal(a.machine.E_logits, b.machine.E_logits)
    assert adapted_text(a.machine) != adapted_text(model_for(task).machine)
    assert adapted_text(a.machine).rstrip().endswith("STOP")  # the guard is no drawn line


def test_adapting_trains_only_the_named_programs_lines():
    alu = diffcomp.alu("lookup", base=16, ops=("inc",))
    machine = diffcomp.Machine(diffcomp.Library([diffcomp.program("access"), diffcomp.program("swap")]), alu,
                               cells=8, trainable=True, sharpness=5.0)
    holder = nn.Module()
    holder.computer = MachineComputer(machine, programs=machine.entry_points, registers=machine.n_registers, cells=8)
    memory = alu.encoding.encode(torch.tensor([[2, 4, 5, 6, 7, 8, 9, 1]]))
    registers = alu.encoding.encode(torch.zeros(1, 1, dtype=torch.long))
    with adapting(holder, ["swap"]):
        state = machine.run(registers, memory, torch.tensor([[0.5, 0.5]]))
        state.memory.sum().backward()
    swap_lines = torch.tensor([line.program == "swap" for line in machine.image.lines[1:]])
    grad = machine.E_logits.grad
    assert bool(grad[swap_lines].abs().sum() > 0) and bool((grad[~swap_lines] == 0).all())
    with pytest.raises(ValueError, match="'list_k' is not in the machine's library"):
        with adapting(holder, ["list_k"]):
            pass
    frozen = nn.Module()
    frozen.computer = MachineComputer(diffcomp.Machine("access", alu, cells=8), programs=("access",), registers=1,
                                      cells=8)
    with pytest.raises(ValueError, match="has none"):
        with adapting(frozen, True):
            pass


# -- recipes and the command line ---------------------------------------------------------------------



SMALL = ["--set", "variants=[]", "--set", "stages.0.epochs=1", "--set", "task.examples=100"]

NO_PROGRAMS = """\
[task]
name = "arithmetic-onehot"
bits = 4
ops = ["add"]
examples = 100

[model]
backbone = "minimal"

[computer]
alu = "lookup"
base = 16

[[stages]]
kind = "train"
adapt = true
"""


@pytest.mark.parametrize("overrides, fragments", [
    (['stages.0.adapt=["swap"]'], ("stages[0].adapt", "program 'swap' is not in the model's library (access)")),
    (["stages.0.loss.running=-1"], ("stages[0].loss", "'running' must be a finite number >= 0, got -1")),
    (["stages.0.loss.speed=1"], ("unknown ANC loss weight 'speed'",)),
    (["stages.0.adapt=3"], ("adapt must be true",)),
    (["model.backbone=minimal"], ("stages[0].loss", "needs [model] backbone = 'program'")),
    (["stages.0.loss={}", "model.backbone=minimal"], ("stages[1]", "a verify stage runs the adapted program hard")),
    (["computer.library=['swap']"], ("library", "'access'")),
])
def test_bad_adaptation_recipes_exit_2_and_write_nothing(tmp_path, capsys, overrides, fragments):
    out = tmp_path / "run"
    args = ["run", "anc-adapt", *SMALL, "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    fails(capsys, args, *fragments)
    assert not out.exists()


def test_adapt_with_a_computer_that_has_no_programs(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text(NO_PROGRAMS)
    out = tmp_path / "run"
    fails(capsys, ["run", str(path), "--out", str(out)], "adapt", "the computer has no programs")
    assert not out.exists()


@pytest.mark.slow
def test_anc_adapt_recipe_writes_the_adapted_program(tmp_path, capsys):
    """One short adaptation of access: a training curve, the program as assembly, hard verification."""
    out = tmp_path / "run"
    assert main(["run", "anc-adapt", *SMALL, "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    result = summary["stages"]["verify"]
    assert result["compiled"]["success"] == 1.0 and result["compiled"]["steps"] == 5.0
    text = (out / "verify.asm").read_text()
    program = diffcomp.assemble(text, name="adapted")  # the file is assembly that assembles
    items = build_task("anc-access", {"distribution": "biased", "examples": 100}, seed=0).dataset("test").tensors
    right = 0
    for memory, answer in zip(items["numbers"].tolist(), items["answer"].tolist()):
        right += diffcomp.execute(program, memory=memory, base=16).memory[0] == answer[0]
    assert right / len(items["numbers"]) == pytest.approx(result["adapted"]["success"])
    assert (out / "plots" / "adapt.png").exists()
    assert "stages.0.adapt" not in capsys.readouterr().err


def test_no_line_writes_a_constant_register():
    """As in assembly: the destination table gives the constant registers exactly 0, compiled or random."""
    for init in ("compiled", "random"):
        model = model_for(build_task("anc-list_k", {}, seed=0), sharpness=3.0, init=init)
        machine = model.machine
        O = machine.compiled(torch.float32, torch.device("cpu")).O  # (lines, register file)
        assert bool((O[:, machine.image.registers + 1:] == 0).all())


@pytest.mark.slow
def test_access_is_learned_from_random_tables(tmp_path):
    """From scratch: random tables, ANC's loss, and the most likely program is exactly right on held-out inputs."""
    out = tmp_path / "run"
    assert main(["run", "anc-adapt", "--set", "variants=[]", "--set", "model.init=random", "--set",
                 "stages.0.epochs=15", "--set", "stages.0.lr=0.1", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "summary.json").read_text())["stages"]["verify"]
    assert result["adapted"]["success"] == 1.0


def test_the_guard_makes_the_machine_and_the_text_take_the_same_steps():
    """A trained program that runs off its end: the frozen guard STOP costs the step the assembler's STOP costs."""
    task = build_task("anc-access", {"examples": 100}, seed=0)
    model = model_for(task)
    machine = model.machine
    with torch.no_grad():  # access's RET (row 4) becomes a harmless MOV: control runs on into the guard
        machine.E_logits[4].zero_()
        machine.E_logits[4, machine.column["MOV"]] = 50.0
    items = task.dataset("test").tensors
    enc = machine.encoding
    state = machine.run(enc.encode(torch.zeros(len(items["numbers"]), 1, dtype=torch.long)),
                        enc.encode(items["numbers"]))
    run = hard_run(machine, items["numbers"], adapted_text(machine))
    assert bool((state.steps == 6).all()) and bool((run.steps == 6).all())
    assert torch.equal(enc.decode(state.memory), run.memory)
    model.train()
    model(task.dataset("train").tensors).loss.backward()
    guard = len(diffcomp.program("access"))  # its row: address - 1
    assert all(bool((p.grad[guard] == 0).all()) and bool(p.grad.abs().sum() > 0) for p in program_tables(machine))


def test_a_train_stage_adapts_the_programs_of_a_model_with_a_network(tmp_path):
    """adapt in a minimal network's stage: the machine is built trainable and its tables change in that stage
    only; the network's own weights train as usual."""
    from diffcomp.recipe import parse_recipe
    from diffcomp.run import run_recipe
    from diffcomp.train.checkpoint import read_checkpoint

    recipe = parse_recipe("""
        [task]
        name = "fibonacci-onehot"
        depth = 1
        base = 32
        examples = 64
        [model]
        backbone = "minimal"
        [computer]
        alu = "lookup"
        base = 32
        sharpness = 8.0
        [[stages]]
        kind = "train"
        name = "network"
        max_steps = 2
        batch_size = 16
        progress = false
        [[stages]]
        kind = "train"
        name = "programs"
        adapt = ["fibonacci"]
        max_steps = 2
        batch_size = 16
        lr = 0.5
        progress = false
        """.replace("\n        ", "\n"))
    run_recipe(recipe, tmp_path / "run", progress=False)
    network = read_checkpoint(tmp_path / "run" / "checkpoints" / "network.safetensors").group("model")
    programs = read_checkpoint(tmp_path / "run" / "checkpoints" / "programs.safetensors").group("model")
    name = next(k for k in network if k.endswith("E_logits"))
    initial = 8.0 * (network[name] > 0).float()  # the compiled one-hot rows, sharpened
    assert torch.equal(network[name], initial)  # frozen in the stage that does not adapt
    assert not torch.equal(programs[name], network[name])  # trained in the one that does
