"""Exact execution: the machine on integers, for runs in which nothing is in doubt.

When every input is decided (one-hot: each number exactly an encoded
integer, the program selection exactly one program per row), the program is
frozen and no gradient is asked for, the soft machine (eqs. 2-7) computes
exactly what a classical register machine computes, only slower: every number
is a distribution over ``n`` values and every step a few hundred tensor
operations. :func:`run` executes the same linked image on integers instead,
the whole batch at once (NumPy arrays; one gather per step for the ALU).

The module is NumPy only: :func:`run_ints` runs a :class:`Program` on
integer arrays, and is what answers without torch use
(:mod:`diffcomp.inference`). Where Numba is installed (a dependency; the
NumPy path stays as the reference), runs of
:data:`~.compiled_ints.MIN_ROWS` rows or more with no trace and no strict
check take a compiled kernel instead (:mod:`.compiled_ints`), each row to
its end: the same integers, about ten times faster on the hundreds of
thousands of runs the computer makes per training step when it tries every
argument. :func:`run` is the soft machine's door to it: it decodes the
machine's tensors, calls :func:`run_ints`, and returns the
:class:`~diffcomp.machine.interpreter.State` the soft machine would return,
re-encoded with the machine's own encoding (torch is imported there only).

Semantics, the soft machine's on one-hot inputs:

- numbers are ``0 .. modulus-1``; the ALU's ops are the registered
  :class:`~diffcomp.Op` functions reduced modulo the encoding's range (what an
  ALU returns on one-hot inputs);
- a memory address or a jump target is the number taken through the same
  conversions as the soft machine's (:meth:`Addresses.of_ints`: modulo the
  cells, or the lines); with ``strict`` an address beyond memory or a jump
  beyond the program is an error (the same one the soft machine raises);
- address 0 halts; ``STOP`` halts; ``CALL`` writes ``c + 1`` into ``lr``;
- a row counts a step for every instruction it runs; the run ends when every
  row has halted or after ``max_steps``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from . import compiled_ints

if TYPE_CHECKING:
    from torch import Tensor

    from ..ops import Op
    from .interpreter import Interpreter, State
    from .program import Image

#: the largest modulus whose op tables are built (``modulus²`` entries per op); above it ops are applied per step
MAX_TABLE_MODULUS = 256
#: the largest modulus run on integers at all: int64 holds every value, and a product of two wraps modulo
#: 2**64, which a modulus that is a power of two up to 2**32 divides (what 32-bit circuits need)
MAX_MODULUS = 1 << 32

_CONTROL = ("STOP", "MOV", "READ", "WRITE", "JEZ", "JMP", "CALL", "RET")
STOP, MOV, READ, WRITE, JEZ, JMP, CALL, RET = range(len(_CONTROL))
ALU = len(_CONTROL)  # an ALU instruction


def alu_ops(image: "Image") -> list[str]:
    """The ops the ALU lines of ``image`` use, in order of first use (what :class:`Program` needs)."""
    return list(dict.fromkeys(line.mnemonic.lower() for line in image.lines[1:] if line.mnemonic not in _CONTROL))


def fits(modulus: int) -> bool:
    """Whether numbers modulo ``modulus`` run on int64 exactly."""
    return modulus <= 1 << 31 or (modulus <= MAX_MODULUS and modulus & (modulus - 1) == 0)


def supports(machine: "Interpreter") -> bool:
    """Whether ``machine`` can run on integers: a frozen program, an exact ALU, numbers that fit in int64."""
    return not machine.trainable and getattr(machine.alu, "exact", False) and fits(machine.encoding.modulus)


class Program:
    """A linked image as integer arrays, one entry per line, so that a step is a few gathers for the whole batch.

    ``ops`` are the :class:`~diffcomp.Op` definitions of the image's ALU
    columns, in order (an ALU line's mnemonic is ``ops[k].name`` upper-cased);
    numbers are taken modulo ``modulus``.

    ``source`` says where a line's register value comes from (0: the ALU, 1:
    the operand ``a`` (MOV), 2: memory (READ), 3: ``c + 1`` (CALL)); a line
    that writes no register writes a scratch register instead, and a line
    that does not WRITE writes a scratch cell, so that every row of a step
    does the same operations.
    """

    def __init__(self, image: "Image", ops: Sequence["Op"], modulus: int) -> None:
        self.image = image
        names = [op.name for op in ops]
        self.lines = lines = len(image)
        code = [_CONTROL.index(line.mnemonic) if line.mnemonic in _CONTROL else ALU for line in image.lines]
        code[0] = STOP  # the halting address runs nothing (no row is ever there)
        self.code = np.array(code, dtype=np.int64)
        self.op = np.array([names.index(line.mnemonic.lower()) if c == ALU else 0
                            for line, c in zip(image.lines, code)], dtype=np.int64)
        self.a, self.b = (np.array([getattr(line, k) for line in image.lines], dtype=np.int64) for k in "ab")
        self.scratch = image.register_file  # the register a line that writes none writes
        writes = [c in (ALU, MOV, READ, CALL) for c in code]
        self.out = np.array([line.out if w else self.scratch for line, w in zip(image.lines, writes)], dtype=np.int64)
        self.source = np.array([{MOV: 1, READ: 2, CALL: 3}.get(c, 0) for c in code], dtype=np.int64)
        self.memory = np.array([c in (READ, WRITE) for c in code])
        self.stores = np.array([c == WRITE for c in code])
        self.jumps = np.array([c in (JMP, CALL, RET) for c in code])
        self.jez = np.array([c == JEZ for c in code])
        self.next = np.array([0 if c == STOP else (k + 1) % lines for k, c in enumerate(code)], dtype=np.int64)
        self.modulus = modulus
        self.op_defs = tuple(ops)
        self.used = sorted({int(k) for k, c in zip(self.op, code) if c == ALU})
        self.tables = None
        if modulus <= MAX_TABLE_MODULUS:  # op(j, k) for every operand pair: one gather per step
            tables = np.zeros((len(ops), modulus, modulus), dtype=np.int64)
            for k in self.used:
                tables[k] = self.op_defs[k].int_table(modulus)
            self.tables = tables.reshape(-1)
        self.op_offset = self.op * modulus * modulus  # where each line's op table starts in ``tables``

    @classmethod
    def of(cls, machine: "Interpreter") -> Program:
        """The image of ``machine`` (an :class:`~diffcomp.machine.Interpreter`) with its ALU's ops."""
        alu = machine.alu
        return cls(machine.image, [alu.op_defs[alu.ops.index(op)] for op in machine.ops], machine.encoding.modulus)

    def alu(self, at: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``op(u, v) mod modulus`` for the op of each row's line ``at``."""
        n = self.modulus
        if self.tables is not None:
            return self.tables[self.op_offset[at] + u * n + v]
        op, out = self.op[at], np.zeros_like(u)
        for k in self.used:
            rows = np.nonzero(op == k)[0]
            if len(rows):
                out[rows] = self.op_defs[k].apply_ints(u[rows], v[rows], n)
        return out


@attrs.define
class Run:
    """A run on integers: ``memory`` ``(batch, cells)``, ``registers`` ``(batch, registers + 1 + constants)``
    (``r0 ..``, ``lr``, the image's constants), the counter ``pc`` ``(batch,)`` (0 once a row has halted) and
    the ``steps`` each row ran."""

    memory: np.ndarray
    registers: np.ndarray
    pc: np.ndarray
    steps: np.ndarray

    @property
    def halted(self) -> np.ndarray:
        return self.pc == 0


def run_ints(program: Program, registers: np.ndarray, memory: np.ndarray, entries: np.ndarray, *,
             general: int, cells: int, max_steps: int, index: Callable[[np.ndarray, int], np.ndarray],
             out_of_range: Callable[[int, int, str], None] | None = None,
             trace: Callable[[int, Run], Any] | None = None, beyond: np.ndarray | None = None,
             addressing: str = "wrap") -> Run:
    """Run ``program`` from ``registers`` ``(batch, k <= general)`` and ``memory`` ``(batch, cells' <= cells)``
    (integers; the rest start at 0), each row from its entry address, until every row halts or ``max_steps``.

    ``index(numbers, size)``: where a number points among ``size`` places (memory cells, program lines; the
    encoding's ``categorical_index``, ``numbers % size`` for a unit encoding). ``out_of_range(line, number,
    what)``: given, an address beyond memory or a jump beyond the program calls it (it raises: a strict run).
    ``trace(step, run)`` is called before each step with the run so far. ``beyond`` ``(batch,)`` bool, given:
    set for each row that read or wrote a memory address beyond the cells (which ``index`` wraps), the
    rows a strict run would refuse. ``addressing="zero"``: such an address is not wrapped; a read there gives
    0 and a write there is lost (the soft machine's :meth:`~diffcomp.machine.Memory.load`).
    """
    zero = addressing == "zero"
    P, batch = program, registers.shape[0]
    width = P.image.register_file + 1
    R = np.zeros((batch, width), dtype=np.int64)  # r0.., lr = 0, the constants, a scratch register
    R[:, : registers.shape[1]] = registers
    R[:, general + 1: width - 1] = np.array(P.image.constants, dtype=np.int64)
    M = np.zeros((batch, cells + 1), dtype=np.int64)  # the cells and a scratch cell
    M[:, : memory.shape[1]] = memory
    pc = np.asarray(entries, dtype=np.int64).copy()  # 0 once a row has halted
    steps = np.zeros(batch, dtype=np.int64)
    if (trace is None and out_of_range is None and P.tables is not None and batch >= compiled_ints.MIN_ROWS
            and compiled_ints.available() and _modular(index, P.modulus, (cells, P.lines))):  # compiled
        compiled_ints.run_rows(P, R, M, pc, steps, beyond, cells=cells, max_steps=max_steps, zero=zero)
        return Run(M[:, :cells], R[:, :-1], pc, steps)
    R_, M_ = R.reshape(-1), M.reshape(-1)  # flat views: one index per element
    rows = np.nonzero(pc != 0)[0]  # the rows still running; each has run `ran` steps
    r_row, m_row = rows * width, rows * (cells + 1)  # where their registers and cells start in R_ and M_
    ran = 0

    def snapshot() -> Run:
        steps[rows] = ran
        return Run(M[:, :cells], R[:, :-1], pc, steps)

    for step in range(max_steps):
        if not len(rows):
            break
        if trace is not None:
            trace(step, snapshot())
        at = pc[rows]
        after, jez = P.next[at], P.jez[at]
        u, v = R_[r_row + P.a[at]], R_[r_row + P.b[at]]  # the operands (eq. 2 on the registers)
        if out_of_range is not None or beyond is not None:
            outside = P.memory[at] & (u >= cells)  # rows addressing memory beyond its cells
            if out_of_range is not None:
                _check(out_of_range, at, u, outside, "memory address")
            if beyond is not None:
                beyond[rows[outside]] = True
        if zero:  # beyond the cells: the scratch cell for a write (lost), 0 for a read
            far = u >= cells
            cell = np.where(far, cells, u)
            loaded = np.where(far, 0, M_[m_row + cell])
        else:
            cell = index(u, cells)
            loaded = M_[m_row + cell]
        # the value each row writes (eq. 5): the ALU's (eq. 7), a, the memory's (eq. 2) or c + 1
        R_[r_row + P.out[at]] = np.choose(P.source[at], (P.alu(at, u, v), u, loaded, after))
        M_[m_row + np.where(P.stores[at], cell, cells)] = v  # WRITE (eqs. 3-4); other rows write the scratch cell
        # the counter (eq. 6): the next line, or the jump's target; 0 halts
        taken = P.jumps[at] | (jez & (u == 0))
        to = np.where(jez, v, u)
        if out_of_range is not None:
            _check(out_of_range, at, to, taken & (to >= P.lines), "jump to")
        nxt = np.where(taken, index(to, P.lines), after)
        pc[rows] = nxt
        ran += 1
        if not nxt.all():  # some rows halted: they ran `ran` steps
            halted = nxt == 0
            steps[rows[halted]] = ran
            running = ~halted
            rows, r_row, m_row = rows[running], r_row[running], m_row[running]
    return snapshot()


def _modular(index: Callable[[np.ndarray, int], np.ndarray], modulus: int, sizes: Sequence[int]) -> bool:
    """Whether ``index`` takes every number ``0 .. modulus-1`` modulo each of ``sizes`` (what the compiled
    kernel does)."""
    numbers = np.arange(modulus, dtype=np.int64)
    return all(np.array_equal(np.asarray(index(numbers, size)), numbers % size) for size in sizes)


def _check(out_of_range: Callable[[int, int, str], None], at: np.ndarray, numbers: np.ndarray, outside: np.ndarray,
           what: str) -> None:
    """``out_of_range`` for the first row of ``outside`` (the rows whose number is beyond its limit)."""
    bad = np.nonzero(outside)[0]
    if len(bad):
        out_of_range(int(at[bad[0]]), int(numbers[bad[0]]), what)


def run(machine: "Interpreter", registers: "Tensor", memory: "Tensor", entries: "Tensor", max_steps: int,
        trace: Callable[[int, "State"], Any] | None = None) -> "State":
    """:func:`run_ints` for the soft machine: decided ``registers`` ``(batch, k, *shape)`` and ``memory`` in,
    the final :class:`~diffcomp.machine.interpreter.State` out (``trace`` sees a State before each step)."""
    import torch

    from .interpreter import State

    enc, P = machine.encoding, machine._exact_program()
    batch, dtype, device = registers.shape[0], registers.dtype, registers.device

    def state(run: Run) -> State:
        counter = torch.zeros(batch, P.lines, dtype=dtype)
        running = torch.from_numpy(run.pc != 0)
        counter[running, torch.from_numpy(run.pc)[running]] = 1
        return State(enc.encode(torch.from_numpy(run.memory.copy()), dtype=dtype, device=device),
                     enc.encode(torch.from_numpy(run.registers.copy()), dtype=dtype, device=device),
                     counter.to(device), (~running).to(dtype).to(device),
                     torch.from_numpy(run.steps.copy()).to(device), machine.n_registers)

    final = run_ints(P, enc.decode(registers).cpu().numpy(), enc.decode(memory).cpu().numpy(),
                     entries.cpu().numpy(), general=machine.n_registers, cells=machine.cells, max_steps=max_steps,
                     index=enc.categorical_index, out_of_range=machine._out_of_range if machine.strict else None,
                     trace=None if trace is None else (lambda step, now: trace(step, state(now))),
                     addressing=machine.addressing)
    return state(final)


__all__ = ["run", "run_ints", "supports", "fits", "alu_ops", "Program", "Run"]
