"""What sits between the parser and the answer head: an ALU, or a machine over a library.

A computer says what it needs (:meth:`Computer.targets`: parser targets) and
returns named outputs, each ``(batch, count, *encoding.shape)``:

- :class:`ALUComputer` calls an ALU once (one-step arithmetic, §4.2): it needs
  an ``op`` choice and two ``operands``; it returns ``result``.
- :class:`MachineComputer` runs a :class:`diffcomp.Machine` over a library
  (§3.4): it needs ``registers``, ``memory`` and a ``program`` selection; every
  program runs from the same initial state and the final states are mixed by
  the selection. It returns ``registers`` and ``memory``.
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
from torch import nn

from ..alu import ALU
from ..encodings import NumberEncoding
from .parsers import Target


class Computer(nn.Module):
    """The interface: ``alu``, :attr:`encoding`, :meth:`targets`, :meth:`outputs`, ``forward(inputs)``."""

    alu: ALU

    @property
    def encoding(self) -> NumberEncoding:
        return self.alu.encoding

    def targets(self) -> tuple[Target, ...]:
        """What the parser must produce."""
        raise NotImplementedError

    def outputs(self) -> tuple[tuple[str, int], ...]:
        """``(name, count)`` of each output ``forward`` returns."""
        raise NotImplementedError

    def replace_alu(self, alu: ALU) -> None:
        raise NotImplementedError


class ALUComputer(Computer):
    """One ALU call: ``result = alu(op, operands[0], operands[1])`` (eq. 7)."""

    def __init__(self, alu: ALU) -> None:
        super().__init__()
        if not isinstance(alu, ALU):
            raise ValueError(f"ALUComputer needs a diffcomp.ALU, got {type(alu).__name__}")
        self.alu = alu

    def targets(self) -> tuple[Target, ...]:
        return (Target("op", 1, len(self.alu.ops)), Target("operands", 2))

    def outputs(self) -> tuple[tuple[str, int], ...]:
        return (("result", 1),)

    def replace_alu(self, alu: ALU) -> None:
        if tuple(alu.ops) != tuple(self.alu.ops):
            raise ValueError(f"the new ALU has ops {alu.ops}; the trained model selects among {self.alu.ops}")
        self.alu = alu

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        operands = inputs["operands"]  # (batch, 2, *shape)
        result = self.alu(inputs["op"][:, 0], operands[:, 0], operands[:, 1])  # (batch, *shape)
        return {"result": result.unsqueeze(1)}


class MachineComputer(Computer):
    """A differentiable machine over a library of programs, selected by a distribution (§3.4).

    ``machine`` is a :class:`diffcomp.Machine` whose ``run(registers, memory,
    selection)`` returns a state with ``.registers`` ``(batch, registers, *shape)``
    and ``.memory`` ``(batch, cells, *shape)``. Compiled programs are frozen
    (buffers) unless the machine was built with trainable programs.
    """

    def __init__(self, machine: nn.Module, *, programs: Sequence[str], registers: int, cells: int) -> None:
        super().__init__()
        self.machine = machine
        self.programs = tuple(programs)
        self.registers, self.cells = registers, cells

    @property
    def alu(self) -> ALU:
        return self.machine.alu

    def targets(self) -> tuple[Target, ...]:
        return (Target("registers", self.registers), Target("memory", self.cells),
                Target("program", 1, len(self.programs)))

    def outputs(self) -> tuple[tuple[str, int], ...]:
        return (("registers", self.registers), ("memory", self.cells))

    def resize_memory(self, cells: int) -> None:
        """Run the machine with ``cells`` memory cells (its parser must then write that many)."""
        self.machine.resize_memory(cells)
        self.cells = cells

    def replace_alu(self, alu: ALU) -> None:
        old = self.machine.alu
        if tuple(alu.ops) != tuple(old.ops):
            raise ValueError(f"the new ALU has ops {alu.ops}; the machine's programs use {old.ops}")
        self.machine.replace_alu(alu)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = self.run(inputs)
        return {"registers": state.registers, "memory": state.memory}

    def run(self, inputs: dict[str, torch.Tensor], *, trace=None):
        """The machine's final :class:`~diffcomp.machine.State` on the parser's ``inputs``; ``trace(step, state)``
        is called before each step (see :meth:`diffcomp.Machine.run`)."""
        return self.machine.run(inputs["registers"], inputs["memory"], inputs["program"][:, 0], trace=trace)

