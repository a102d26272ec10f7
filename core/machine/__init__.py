"""The differentiable computer Δ and its program library Λ (paper §3, Fig. 2).

- :mod:`.memory`: :class:`Memory` and :class:`Registers`, reads and writes as
  dot products and probability mixtures (eqs. 2-5);
- :mod:`.isa`: the instruction set (every instruction's form; the ALU
  instructions are the registered ops);
- :mod:`.program`: :class:`Program` and linking programs into one address
  space (``CALL``/``RET`` through the link register ``lr``);
- :mod:`.assembler`: :func:`assemble` and :func:`disassemble`;
- :mod:`.library`: the :class:`Library` Λ and the registered programs;
- :mod:`.interpreter`: :class:`State` ``(M, R, c, h)`` (eq. 1), the
  :class:`Interpreter` step (superposition, eq. 6) and the :class:`Machine`
  (runs, batches, program selection, §3.4);
- :mod:`.execute`: :func:`execute`, a sharp run on integers;
- :mod:`.chain`: calling conventions, :func:`library` and :func:`run_chain`
  (programs chosen per step and run in sequence).

Sharp, on integers::

    >>> diffcomp.execute("insertion_sort", memory=[3, 1, 2, 0], base=32).memory
    [1, 2, 3, 0]

Batched and differentiable, on distributions (what a language model drives)::

    alu = diffcomp.alu("lookup", base=64)
    library = diffcomp.Library([diffcomp.program("insertion_sort"), diffcomp.program("bubble_sort")])
    machine = diffcomp.Machine(library, alu, cells=8, max_steps=300)
    registers = torch.softmax(logits_r, -1)     # (batch, k <= machine.n_registers, 64)
    memory = torch.softmax(logits_m, -1)        # (batch, cells <= 8, 64)
    selection = torch.softmax(logits_p, -1)     # (batch, 2): which program to run
    state = machine.run(registers, memory, selection)
    state.memory, state.registers, state.counter, state.halted   # final distributions
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_package

# The parts without torch (programs, the assembler, the library) are imported here; the rest (the soft
# machine and what runs it) on first use, so that assembling and the exact machine on integers import no
# torch: public name -> the module that defines it.
from .assembler import assemble, disassemble
from .library import Library, program
from .program import Image, Instruction, Operand, Program

_LAZY: dict[str, str] = {
    "Convention": ".chain", "convention": ".chain", "run_chain": ".chain",
    "HaltingWarning": ".execute", "Result": ".execute", "TraceStep": ".execute", "execute": ".execute",
    "Interpreter": ".interpreter", "Machine": ".interpreter", "State": ".interpreter",
    "Memory": ".memory", "Registers": ".memory",
}


def library(*programs: str | Program, **texts: str) -> Library:
    """:func:`diffcomp.machine.chain.library`: a library of registered programs, programs and assembly text."""
    from .chain import library as build

    return build(*programs, **texts)


__all__ = ["Memory", "Registers", "Interpreter", "Machine", "State", "Program", "Library", "Image", "Instruction",
           "Operand", "assemble", "disassemble", "execute", "program", "Result", "TraceStep", "HaltingWarning",
           "Convention", "convention", "library", "run_chain"]

lazy_package(__name__)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time these resolve lazily
    from .chain import Convention, convention, run_chain
    from .execute import HaltingWarning, Result, TraceStep, execute
    from .interpreter import Interpreter, Machine, State
    from .memory import Memory, Registers
