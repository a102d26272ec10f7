"""Composing a library: calling conventions, building a :class:`Library`, and chains of programs.

A *chain* runs up to ``K`` programs one after another (the paper's Fig. 1:
parse the string, sort it, count): step ``k`` chooses a program by a
distribution ``selection[:, k]`` over the machine's entry points, runs
:meth:`Machine.run` from the memory and general registers the step before
left, and hands its own final memory and registers on. Chaining sits above
the interpreter: each step is one ordinary run, its final states mixed by
that step's selection (§3.4), so a one-hot selection is exactly the
classical programs run in sequence, and a soft one is differentiable in the
selection, the registers and the memory.

A program states its *calling convention* in its doc comment (the comment
block at the top of its source), one line each::

    ; arguments: r6          (the registers it reads its arguments from; "none")
    ; result: r0             (a register, "memory" for the sequence at cell 0, or "none")

:func:`convention` reads them; a model that learns where to read an answer
reads it from the places its library's programs name.

Example::

    library = diffcomp.library("insertion_sort", "nth", "identity",
                               double="; result: memory\\n r0 = READ 0\\n r0 = ADD r0, r0\\n WRITE 0, r0\\n RET")
    machine = diffcomp.Machine(library, diffcomp.alu("lookup", base=128), cells=8, max_steps=200)
    selection = one_hot([[0, 1]], 3)             # (batch, steps, programs): sort, then nth
    state = run_chain(machine, registers, memory, selection)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from ..errors import AssemblyError
from .interpreter import Machine, State
from .library import Library
from .program import Program

#: where a program leaves its result: a general register's index, the sequence in memory, or nowhere
MEMORY = "memory"
_LINE = re.compile(r"^\s*(arguments|result)\s*:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_REGISTER = re.compile(r"^r(\d+)$")


@attrs.frozen
class Convention:
    """Where a program takes its arguments and leaves its result (from its doc comment).

    ``arguments``: general register indices; ``result``: a register index,
    :data:`MEMORY`, or ``None`` (a program with no result, e.g. ``identity``);
    ``declared``: whether the doc stated a result at all.
    """

    arguments: tuple[int, ...] = ()
    result: int | str | None = None
    declared: bool = False

    @property
    def result_name(self) -> str:
        return "none" if self.result is None else self.result if self.result == MEMORY else f"r{self.result}"


def convention(program: Program) -> Convention:
    """The calling convention ``program`` states in its doc comment (``; arguments: ...``, ``; result: ...``)."""
    found = {key.lower(): value for key, value in _LINE.findall(program.doc or "")}
    arguments: tuple[int, ...] = ()
    text = found.get("arguments", "none").split("(")[0]
    if text.strip().lower() not in ("", "none"):
        names = [a.strip() for a in text.replace(",", " ").split()]
        bad = [a for a in names if not _REGISTER.match(a)]
        if bad:
            raise AssemblyError(f"program {program.name!r}: its doc's 'arguments:' line names {bad[0]!r}; "
                                "write general registers, e.g. 'arguments: r6' or 'arguments: r0, r1' (or 'none')")
        arguments = tuple(int(_REGISTER.match(a).group(1)) for a in names)
    if "result" not in found:
        return Convention(arguments, None, declared=False)
    text = found["result"].split("(")[0].strip().lower()
    if text == MEMORY:
        return Convention(arguments, MEMORY, True)
    if text == "none":
        return Convention(arguments, None, True)
    match = _REGISTER.match(text)
    if match is None:
        raise AssemblyError(f"program {program.name!r}: its doc's 'result:' line says {found['result']!r}; write a "
                            "general register ('result: r0'), 'memory' (the sequence at cell 0) or 'none'")
    return Convention(arguments, int(match.group(1)), True)


def library(*programs: str | Program, **texts: str) -> Library:
    """A :class:`Library` of registered programs (any plug-in's, by name), :class:`Program` objects
    and assembly text (``name=text``), in that order: ``diffcomp.library("insertion_sort", "nth", double=TEXT)``.

    Calls between them resolve inside the library first, then among the
    registered programs. An unknown name is an :class:`~diffcomp.errors.UnknownNameError`
    listing the registered programs; broken text an :class:`~diffcomp.errors.AssemblyError`.
    """
    from .assembler import assemble
    from .library import program as registered

    out = Library()
    for item in programs:
        out.add(item if isinstance(item, Program) else registered(item))
    for name, text in texts.items():
        out.add(assemble(text, name=name, library=out))  # CALL: this library's programs or registered ones
    return out


def check_chain(machine: Machine, steps: int) -> None:
    """``ValueError`` unless ``steps`` chained runs can each finish the longest program the machine runs.

    The machine's ``max_steps`` is per run (per chain step): ``steps`` must be
    a positive integer, and a chain needs every one of its programs to halt
    within ``max_steps``; the check that it can is the caller's (a task knows
    its inputs), this one only refuses nonsense.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"a chain has at least one step; got steps = {steps!r}")


def run_chain(machine: Machine, registers: Tensor, memory: Tensor, selection: Tensor, *,
              max_steps: int | None = None, trace: Callable[[int, State], Any] | None = None) -> State:
    """Run ``selection.shape[1]`` programs in sequence, each step's memory and registers the next's start.

    ``registers`` ``(batch, k <= n_registers, *shape)``, ``memory`` ``(batch,
    cells' <= cells, *shape)``: the first step's inputs, as for
    :meth:`Machine.run`; ``selection`` ``(batch, steps, n_programs)``: a
    distribution over the machine's entry points per step. Returns the last
    step's final :class:`State` (its ``halted`` is the least halting
    probability over the steps, its ``steps`` their sum). ``trace(k,
    state)`` is called after each chain step with that step's final state.
    """
    if not isinstance(selection, Tensor) or selection.dim() != 3:
        raise ValueError(f"selection must be a (batch, steps, {machine.n_programs}) tensor of program probabilities "
                         f"per chain step, got shape {tuple(getattr(selection, 'shape', ()))}")
    check_chain(machine, selection.shape[1])
    halted, steps, state = None, None, None
    for k in range(selection.shape[1]):
        state = machine.run(registers, memory, selection[:, k], max_steps=max_steps)
        registers, memory = state.registers, state.memory
        halted = state.halted if halted is None else torch.minimum(halted, state.halted)
        steps = state.steps if steps is None else steps + state.steps
        if trace is not None:
            trace(k, state)
    return attrs.evolve(state, halted=halted, steps=steps)


def one_hot_chain(names: Sequence[Sequence[str]], entry_points: Sequence[str], *,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """``(batch, steps, programs)`` one-hot selection from program names per row and step."""
    index = {name: k for k, name in enumerate(entry_points)}
    unknown = sorted({n for row in names for n in row if n not in index})
    if unknown:
        raise ValueError(f"the chain names {', '.join(map(repr, unknown))}, which the machine does not run; "
                         f"its programs: {', '.join(entry_points)}")
    ids = torch.tensor([[index[n] for n in row] for row in names])
    return torch.nn.functional.one_hot(ids, len(entry_points)).to(dtype)


__all__ = ["Convention", "convention", "library", "run_chain", "check_chain", "one_hot_chain", "MEMORY"]
