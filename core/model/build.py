"""Builders from plain config tables, for recipes: ``build_task`` and ``build_model``.

The accepted keys, their types and defaults are :data:`MODEL_FIELDS` and
:data:`COMPUTER_FIELDS` (``diffcomp.schema.Field``), so a recipe can be
checked in full before any work starts::

    [model]                          [computer]
    backbone = "llama"               alu = "lookup"       # + the ALU's own options:
    hidden_size = 128                base = 128           #   base (lookup), bits (circuit)
    layers = 4                       ops = ["add", "mul"] # default: the task's ops
    heads = 4                        library = ["fibonacci"]   # default: the task's programs
    kv_heads = 2                     max_steps = 64       # default: the task's
    tokenizer = "byte"               cells = 16           # default: the task's
    parser = "pooled"                trainable_programs = false
                                     sharpness = 25.0     # trainable programs: logits = this x one-hot
    parser_layer = 3                 # default: all layers but the last

``backbone = "program"`` is ANC's model (:mod:`diffcomp.model.adaptive`): the
machine alone, the task giving its memory, the program's tables its weights
(``init = "random"`` draws them). ``backbone = "minimal"`` is the one-hot network of §4.1 (the transformer keys
are ignored; ``routing = "sample"`` trains its routes by sampling them);
``"pretrained"`` loads the causal LM in the local folder ``path`` (and, unless
``tokenizer`` says otherwise, its tokenizer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import RecipeError
from ..machine.interpreter import STEPPINGS
from ..schema import Field, check_table
from .minimal import ROUTINGS
from .tasks import Task

if TYPE_CHECKING:
    from ..machine import Program

BACKBONES = ("llama", "minimal", "pretrained", "program")
#: the ALU ops a program model may adapt a program to use besides its own (ANC's instruction set)
ANC_OPS = ("zero", "inc", "dec", "add", "sub", "min", "max")


def _positive(value: Any) -> str | None:
    return None if value is None or value >= 1 else "must be at least 1"


def _parser_name(value: Any) -> str | None:
    from ..registry import names

    known = names("parser")
    return None if value in known else f"is not a registered parser; registered parsers: {', '.join(known)}"


MODEL_FIELDS: dict[str, Field] = {
    "backbone": Field((str,), "llama", "the network around the computer", choices=BACKBONES),
    "hidden_size": Field((int,), 128, "llama: hidden size", check=_positive),
    "layers": Field((int,), 4, "llama: decoder layers", check=_positive),
    "heads": Field((int,), 4, "llama: attention heads", check=_positive),
    "kv_heads": Field((int,), 2, "llama: key-value heads", check=_positive),
    "intermediate_size": Field((int,), None, "llama: MLP width (default 4 * hidden_size)", check=_positive),
    "attention_dropout": Field((int, float), 0.0, "llama: dropout on the attention weights in training (transformers' "
                               "attention_dropout; answering is unchanged)",
                               check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
    "path": Field((str,), "", "pretrained: a local folder holding a causal LM (save_pretrained output)"),
    "tokenizer": Field((str,), "auto", "'byte', 'words', 'llama3', a local tokenizer folder, or 'auto' (byte, or the "
                       "pretrained model's own)"),
    "parser": Field((str,), "pooled", "a registered parser: 'pooled' (the paper's), 'attention' or 'span'",
                    check=_parser_name),
    "parser_layer": Field((int,), None, "which decoder layer feeds the parser (default: all but the last)",
                          check=_positive),
    "parser_options": Field((dict,), {}, "options of the parser, e.g. {pool = 'mean'}"),
    "routing": Field((str,), "mix", "minimal: how the routes train: 'mix' (a softmax mixture, backpropagated; the "
                     "paper's) or 'sample' (each example draws its routes; a score-function gradient)",
                     choices=ROUTINGS),
    "init": Field((str,), "compiled", "program: the program's tables start 'compiled' (adaptive compilation) or "
                  "'random' (learning from scratch)", choices=("compiled", "random")),
    "initial": Field((str,), "fixed", "program: what of the initial state trains with the tables: 'fixed' (none), "
                     "'constants' (the program's immediates) or 'learned' (ANC's: registers, constants and the line "
                     "the run starts at)", choices=("fixed", "constants", "learned")),
    "initial_sharpness": Field((int, float), None, "program: the learned initial state's logits are this times "
                               "its compiled values (default: the computer's sharpness; lower learns, e.g. 3)",
                               check=lambda v: None if v > 0 else "must be positive"),
}

COMPUTER_FIELDS: dict[str, Field] = {
    "ops": Field((list,), None, "ALU ops (default: the ops the task needs)"),
    "library": Field((list,), None, "names of library programs (default: the programs the task needs)"),
    "max_steps": Field((int,), None, "machine steps per run (default: the task's)", check=_positive),
    "cells": Field((int,), None, "memory cells (default: the task's)", check=_positive),
    "registers": Field((int,), None, "registers (default: the task's)", check=_positive),
    "addressing": Field((str,), "wrap", "a memory address beyond the cells: 'wrap' (taken modulo the cells, the "
                        "paper's) or 'zero' (it reads 0 and a write there is lost: what a program reads does not "
                        "depend on the memory's size, so an argument cannot answer by wrapping at the trained "
                        "size only)", choices=("wrap", "zero")),
    "trainable_programs": Field((bool,), False, "train the compiled programs too (default: frozen, §4.3)"),
    "sharpness": Field((int, float), 25.0, "trainable programs: the compiled tables' logits are this times the "
                       "one-hot rows (ANC's 'sharpening'; lower trains more easily, decodes less exactly)",
                       check=lambda v: None if v > 0 else "must be positive"),
    "kind": Field((str,), "machine", "'machine' (an ALU, or a machine over a library), or 'none': the baseline "
                  "without a computer (the parser classifies each number of the answer)", choices=("machine", "none")),
    "steps": Field((int,), None, "programs chained per question, one chosen per step (default: the longest chain "
                   "the task needs, or 1)", check=_positive),
    "selection": Field((str,), "mix", "how the program choices train: 'mix' (every program runs, states mixed), "
                       "'sample' (one drawn per step and example; a score-function gradient) or 'marginal' (each "
                       "question runs `samples` whole chains, the answer's probability the mixture over them)",
                       choices=("mix", "sample", "marginal")),
    "samples": Field((int,), 1, "with selection = 'sample': chains drawn per question in training (2 or more: "
                     "each draw's baseline is the same question's other draws); with 'marginal': chains run per "
                     "question (the most likely half, the rest drawn from the others)", check=_positive),
    "soft_samples": Field((int,), None, "with selection = 'marginal': how many of a question's `samples` chains run "
                          "soft in training (default: all `samples`); those whose decided run answers right first, "
                          "then the most likely half, then the drawn ones", check=_positive),
    "choice": Field((str,), "steps", "how a chain is chosen: 'steps' (a classifier per step, a chain's probability "
                    "their product) or 'chains' (with selection = 'marginal': one classifier over every chain, so a "
                    "chain two steps need is not as unlikely as the product of its steps')",
                    choices=("steps", "chains")),
    "decision": Field((str,), "chain", "how evaluation decides a chain: 'chain' (the most likely) or 'function' "
                      "(the chains that answer alike where the answer is read pool their probability; the most "
                      "likely chain of the most likely pool runs)", choices=("chain", "function")),
    "explore": Field((float,), 0.0, "weight of the program choices' entropy, a bonus taken off the training loss "
                     "(keeps drawn choices from settling on one program early)"),
    "argument_search": Field((bool,), False, "with selection = 'marginal': the choice's exact runs also try every "
                             "value of the argument register, so the argument and the choice train together (the "
                             "loss: -log P(choosing a chain and an argument value that answer right))"),
    "chain_discount": Field((int, float), 1.0, "with selection = 'marginal' and chains: the choice's loss weighs a "
                            "chain of n programs (besides identity) by chain_discount ** (n - 1), preferring the "
                            "shorter of two chains that answer alike (1: no preference)",
                            check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
    "argument_loss": Field((int, float), 0.0, "with argument_search: the weight of the argument's own loss, -log "
                           "P(an argument value that answers right | a chain that reads it), beside the choice's "
                           "(0: none)", check=lambda v: None if v >= 0 else "must be non-negative"),
    "decided_argument_loss": Field((int, float), 0.0, "with argument_search: the weight of the choice's loss with "
                                   "the argument at its decided (most likely) value, -log P(choosing a chain that "
                                   "answers right with it), beside the loss that tries every value (0: none)",
                                   check=lambda v: None if v >= 0 else "must be non-negative"),
    "credit_power": Field((int, float), 1.0, "with selection = 'marginal': the choice's gradient shares the credit "
                          "among the chains that answer right in proportion to their probability to this power (1: "
                          "-log P(choosing a right chain); below 1 the chains the model all but ruled out get more)",
                          check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
    "readout": Field((str,), "task", "where the answer is read: 'task' (where the task says) or 'learned' (the model "
                     "chooses among memory and the library's result registers; the parser writes only the "
                     "library's argument registers)", choices=("task", "learned")),
    "stepping": Field((str,), "fused", "how the machine steps when a gradient is recorded: 'fused' (one autograd "
                      "node a step), 'compiled' (the fused step through torch.compile, 8 steps a call: a minute or "
                      "two to compile, then faster; uncompiled, with a warning, where it cannot compile) or 'plain' "
                      "(autograd operation by operation); the same results", choices=STEPPINGS),
}

#: the longest chain a machine computer runs (each step is a whole run of the machine)
MAX_CHAIN = 8


def model_fields() -> dict[str, Field]:
    """The ``[model]`` keys: name -> :class:`diffcomp.schema.Field`."""
    return dict(MODEL_FIELDS)


def computer_fields() -> dict[str, Field]:
    """The ``[computer]`` keys besides ``alu`` and the ALU's own options (``base``, ``bits``)."""
    return dict(COMPUTER_FIELDS)


def build_task(name: str, options: dict[str, Any] | None = None, seed: int = 0) -> Task:
    """The registered task ``name`` with ``options``, generated from ``seed``."""
    from ..registry import build

    task = build("task", name, {"seed": seed, **(options or {})})
    if not isinstance(task, Task):
        raise ValueError(f"task {name!r} built a {type(task).__name__}, not a diffcomp.model.Task")
    return task


def task_ops(table: dict[str, Any]) -> tuple[str, ...]:
    """The ALU ops a ``[task]`` table's task needs (without generating any data)."""
    options = {k: v for k, v in table.items() if k != "name"}
    try:
        return build_task(table["name"], options, seed=int(options.pop("seed", 0))).ops
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"[task]: {exc}") from None


def build_model(model: dict[str, Any], computer: dict[str, Any], task: Task, *,
                programs: Mapping[str, Program] | None = None, backbone_config: dict | None = None,
                load_weights: bool = True) -> nn.Module:
    """The model a recipe describes, for ``task``: an :class:`AugmentedModel` or a :class:`MinimalNetwork`.

    Initialisation is seeded by ``task.seed`` and leaves the global RNG untouched. ``programs`` (name ->
    :class:`~diffcomp.Program`) are the library's programs, instead of the registered ones (a saved model
    brings its own), and ``backbone_config`` a saved LLaMA's transformers config (built by
    :func:`~diffcomp.model.backbones.llama_from_config`). The model keeps what it was built from as
    ``build_config`` (for ``save_pretrained``). ``load_weights=False`` builds a pretrained backbone from
    its config alone, on the meta device (no memory, no weights read): enough to check a recipe.
    """
    m = check_table(model, MODEL_FIELDS, "[model]")
    alu_name = computer.get("alu", "lookup")
    c = check_table({k: v for k, v in computer.items() if k in COMPUTER_FIELDS}, COMPUTER_FIELDS, "[computer]")
    alu_options = {k: v for k, v in computer.items() if k not in COMPUTER_FIELDS and k != "alu"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        built = _build(m, alu_name, alu_options, c, task, programs, backbone_config, load_weights)
    built.check_task(task)
    built.build_config = {"model": m, "computer": dict(computer), "task": task}
    return built


def _build(m: dict[str, Any], alu_name: str, alu_options: dict[str, Any], c: dict[str, Any], task: Task,
           programs: Mapping[str, Program] | None, backbone_config: dict | None = None,
           load_weights: bool = True) -> nn.Module:
    from ..alu import alu as build_alu
    from .augmented import AugmentedModel, check_ops
    from .computer import ALUComputer
    from .minimal import MinimalNetwork

    if m["backbone"] == "program":
        return _program_model(m, alu_name, alu_options, c, task)
    for key in ("init", "initial", "initial_sharpness"):
        if m[key] != MODEL_FIELDS[key].default:
            raise RecipeError(f"[model]: {key} = {m[key]!r} applies to backbone = 'program' only (ANC's model: the "
                              f"program's tables are its weights); leave {key} out")
    if c["kind"] == "none":
        return _no_computer(m, c, task, backbone_config, load_weights)
    uses_machine = task.uses_machine or bool(c["library"])
    ops = tuple(c["ops"]) if c["ops"] is not None else (task.ops or None)
    if uses_machine and c["ops"] is None:
        ops = _library_ops(c["library"] or task.programs, task.ops, programs)
    alu = build_alu(alu_name, **alu_options, **({"ops": ops} if ops is not None else {}))
    check_ops(task, alu)
    computer = _machine_computer(alu, c, task, programs) if uses_machine else ALUComputer(alu)
    if m["backbone"] == "minimal":
        return MinimalNetwork(computer, slots=task.slots, answer_length=task.answer_length, task_ops=task.ops,
                              seed=task.seed, routing=m["routing"])
    if m["routing"] != "mix":
        raise RecipeError(f"[model]: routing = {m['routing']!r} applies to backbone = 'minimal' only (a "
                          f"{m['backbone']!r} backbone parses with its parser); leave routing out")
    from .heads import Readout
    from .parsers import build_parser

    backbone, tokenizer = _language_model(m, backbone_config, load_weights)
    parser = build_parser(m["parser"], backbone.hidden_size, computer.targets(), computer.encoding,
                          m["parser_options"])
    if getattr(computer, "readouts", ()):
        from .heads import ChosenReadout

        head = ChosenReadout(computer.readouts, computer.encoding, task.answer_length)
    else:
        source, start = task.answer_from
        head = Readout(source, start, task.answer_length)
    return AugmentedModel(backbone, tokenizer, parser, computer, head)


def _language_model(m: dict[str, Any], backbone_config: dict | None = None, load_weights: bool = True):
    """The backbone and tokenizer a ``[model]`` table names (``backbone_config``: a saved LLaMA's config)."""
    from . import backbones
    from .tokenizers import load_tokenizer

    if m["backbone"] == "pretrained":
        if not m["path"]:
            raise RecipeError("[model]: backbone = 'pretrained' needs path = the local folder of a causal LM")
        backbone = backbones.pretrained(m["path"], parser_layer=m["parser_layer"], load_weights=load_weights)
        tokenizer = load_tokenizer(m["path"] if m["tokenizer"] == "auto" else m["tokenizer"])
    elif backbone_config is not None:
        tokenizer = load_tokenizer("byte" if m["tokenizer"] == "auto" else m["tokenizer"])
        backbone = backbones.llama_from_config(backbone_config)
    else:
        tokenizer = load_tokenizer("byte" if m["tokenizer"] == "auto" else m["tokenizer"])
        backbone = backbones.llama(tokenizer.vocab_size, hidden_size=m["hidden_size"], layers=m["layers"],
                                   heads=m["heads"], kv_heads=m["kv_heads"], intermediate_size=m["intermediate_size"],
                                   parser_layer=m["parser_layer"], attention_dropout=m["attention_dropout"])
    return backbone, tokenizer


def _no_computer(m: dict[str, Any], c: dict[str, Any], task: Task, backbone_config: dict | None = None,
                 load_weights: bool = True) -> nn.Module:
    """The baseline: the same backbone, tokenizer and parser, and no computer (``[computer] kind = 'none'``)."""
    from ..encodings import encoding
    from .augmented import AugmentedModel
    from .computer import NoComputer
    from .heads import Readout
    from .parsers import build_parser

    if m["backbone"] == "minimal":
        raise RecipeError("[computer]: kind = 'none' needs a language model backbone ('llama' or 'pretrained'); the "
                          "minimal network is routes into a computer")
    backbone, tokenizer = _language_model(m, backbone_config, load_weights)
    computer = NoComputer(encoding("unit", base=task.modulus), task.answer_length)
    parser = build_parser(m["parser"], backbone.hidden_size, computer.targets(), computer.encoding,
                          m["parser_options"])
    return AugmentedModel(backbone, tokenizer, parser, computer, Readout("answer", 0, task.answer_length))


def _program_model(m: dict[str, Any], alu_name: str, alu_options: dict[str, Any], c: dict[str, Any], task: Task):
    """ANC's model (:class:`~diffcomp.model.adaptive.ProgramModel`): the machine alone, running the task's program."""
    from ..alu import alu as build_alu
    from ..machine import Library, Machine, program
    from .adaptive import ProgramModel
    from .computer import MachineComputer

    if not task.uses_machine or len(task.programs) != 1:
        raise RecipeError(f"[model]: backbone = 'program' runs one library program on a memory; task "
                          f"{task.name!r} runs {len(task.programs)} (use an anc-* task)")
    entry = task.programs[0]
    names = tuple(c["library"] or task.programs)
    if entry not in names:
        raise RecipeError(f"[computer].library: task {task.name!r} runs the program {entry!r}, which the library "
                          f"({', '.join(names)}) lacks")
    ops = tuple(c["ops"]) if c["ops"] is not None else _library_ops(names, ANC_OPS + task.ops, None)
    alu = build_alu(alu_name, **alu_options, ops=ops)
    cells = c["cells"] or task.cells
    if cells < task.cells:
        raise ValueError(f"task {task.name!r} needs at least {task.cells} memory cells, got cells = {cells}")
    from .adaptive import guarded

    machine = Machine(Library([guarded(program(n)) if n == entry else program(n) for n in names]), alu, cells=cells,
                      entry_points=[entry], max_steps=c["max_steps"] or task.max_steps, registers=c["registers"],
                      trainable=True, sharpness=float(c["sharpness"]), addressing=c["addressing"])
    computer = MachineComputer(machine, programs=machine.entry_points, registers=machine.n_registers, cells=cells)
    sharp = m["initial_sharpness"]
    return ProgramModel(computer, entry, init=m["init"], initial=m["initial"], sharpness=float(c["sharpness"]),
                        initial_sharpness=None if sharp is None else float(sharp), seed=task.seed)


def _library_ops(names, extra: tuple[str, ...], programs: Mapping[str, Program] | None) -> tuple[str, ...]:
    ops: dict[str, None] = dict.fromkeys(extra)
    for name in names:
        ops.update(dict.fromkeys(_program(name, programs).ops))
    return tuple(ops)


def _program(name: str, programs: Mapping[str, Program] | None) -> Program:
    """The library program ``name``: from ``programs`` when given, else the registered one."""
    from ..machine import program

    if programs is None:
        return program(name)
    if name not in programs:
        raise ValueError(f"the library names program {name!r}, which is not among the programs given "
                         f"({', '.join(programs)})")
    return programs[name]



def check_library(c: dict[str, Any], task: Task, programs: Mapping[str, Program] | None = None) -> tuple[str, ...]:
    """The library a ``[computer]`` table names for ``task`` (default: the task's programs), checked.

    ``ValueError`` (one message saying what would be valid) for: a program
    nobody registered, a task needing a program the library lacks, a chain
    longer than the computer runs (``steps``) or than :data:`MAX_CHAIN`, and,
    with ``readout = "learned"``, a program whose result is in a register
    the parser writes as an argument (the readout could not tell its answer
    from the question) or that does not say where it leaves its result.
    """
    from ..errors import UnknownNameError
    from ..machine.chain import convention
    from ..registry import names as registered

    known = tuple(programs) if programs is not None else registered("program")
    names = tuple(c.get("library") or task.programs)
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise UnknownNameError("program", str(name), known)

    def program(name: str) -> Program:
        return _program(name, programs)

    missing = [p for p in task.programs if p not in names]
    if missing:
        raise ValueError(f"task {task.name!r} runs the program(s) {', '.join(missing)}, which the library "
                         f"({', '.join(names)}) lacks; add them to [computer] library")
    needed = getattr(task, "chain_length", 1)
    steps = c.get("steps") or needed
    if steps > MAX_CHAIN:
        raise ValueError(f"[computer] steps = {steps}: a chain runs the machine once per step, at most {MAX_CHAIN} "
                         f"steps (each up to max_steps = {c.get('max_steps') or task.max_steps} machine steps)")
    if needed > steps:
        raise ValueError(f"task {task.name!r} asks questions that chain {needed} programs, but [computer] steps = "
                         f"{steps} lets the machine run only {steps} per question; set steps >= {needed}")
    if steps > 1 and "identity" not in names and needed < steps:
        raise ValueError(f"a chain of {steps} steps answering questions that need fewer programs must be able to "
                         "stop early: add 'identity' to [computer] library")
    if c.get("readout") == "learned":
        arguments = {a for n in names for a in convention(program(n)).arguments}
        for n in names:
            conv = convention(program(n))
            if not conv.declared:
                raise ValueError(f"program {n!r} does not say where it leaves its result, so a learned readout "
                                 "cannot read it: its doc needs a line '; result: r0' (a register), "
                                 "'; result: memory' or '; result: none'")
            if isinstance(conv.result, int) and conv.result in arguments:
                users = sorted(m for m in names if conv.result in convention(program(m)).arguments)
                raise ValueError(f"program {n!r} leaves its result in r{conv.result}, which the readout cannot "
                                 f"tell from the question: {', '.join(users)} take their argument there (the parser "
                                 "writes it); give the programs different result and argument registers")
    return names


def readout_places(names: Sequence[str], programs: Mapping[str, Program] | None = None) -> tuple[str, ...]:
    """Where a learned readout may read: ``memory`` and every result register the programs name, in order."""
    from ..machine.chain import MEMORY, convention

    places = {}
    for n in names:
        result = convention(_program(n, programs)).result
        if result == MEMORY:
            places["memory"] = None
        elif isinstance(result, int):
            places[f"r{result}"] = None
    return tuple(places) or ("memory",)


def _machine_computer(alu, c: dict[str, Any], task: Task, programs: Mapping[str, Program] | None = None):
    """A :class:`MachineComputer` over the library (default: the task's programs)."""
    from ..machine import Library, Machine
    from ..machine.chain import convention
    from .computer import MachineComputer

    names = check_library(c, task, programs)
    cells = c["cells"] or task.cells
    if cells < task.cells:
        raise ValueError(f"task {task.name!r} needs at least {task.cells} memory cells, got cells = {cells}")
    learned = c["readout"] == "learned"
    arguments = (sorted({a for n in names for a in convention(_program(n, programs)).arguments}) if learned
                 else None)
    registers = max([c["registers"] or 0, *(a + 1 for a in arguments)]) if learned else c["registers"]
    library = Library([_program(n, programs) for n in names], registered=programs is None)
    if programs is not None:  # the programs they call come from the same place
        for p in programs.values():
            if p.name not in library:
                library.add(p)
    machine = Machine(library, alu, cells=cells, entry_points=names,
                      max_steps=c["max_steps"] or task.max_steps, registers=registers,
                      trainable=c["trainable_programs"], sharpness=float(c["sharpness"]), addressing=c["addressing"])
    machine.stepping = c["stepping"]
    return MachineComputer(machine, programs=machine.entry_points, registers=machine.n_registers, cells=cells,
                           steps=c["steps"] or getattr(task, "chain_length", 1), arguments=arguments,
                           selection=c["selection"], readouts=readout_places(names, programs) if learned else (),
                           samples=c["samples"], explore=c["explore"], soft_samples=c["soft_samples"],
                           argument_search=c["argument_search"], chain_discount=c["chain_discount"],
                           argument_loss=c["argument_loss"], credit_power=c["credit_power"],
                           choice=c["choice"], decision=c["decision"],
                           decided_argument_loss=c["decided_argument_loss"])
