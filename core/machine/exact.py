"""Exact execution: the machine on integers, for runs in which nothing is in doubt.

When every input is decided (one-hot: each number exactly an encoded
integer, the program selection exactly one program per row), the program is
frozen and no gradient is asked for, the soft machine (eqs. 2-7) computes
exactly what a classical register machine computes, only slower: every number
is a distribution over ``n`` values and every step a few hundred tensor
operations. :func:`run` executes the same linked image on integers instead,
the whole batch at once (NumPy arrays; one gather per step for the ALU), and
returns the :class:`~diffcomp.machine.interpreter.State` the soft machine
would return, re-encoded with the machine's own encoding.

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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .interpreter import Interpreter, State

#: the largest modulus whose op tables are built (``modulus²`` entries per op); above it ops run on tensors
MAX_TABLE_MODULUS = 256
#: the largest modulus run on integers at all: int64 holds every value, and a product of two wraps modulo
#: 2**64, which a modulus that is a power of two up to 2**32 divides (what 32-bit circuits need)
MAX_MODULUS = 1 << 32

_CONTROL = ("STOP", "MOV", "READ", "WRITE", "JEZ", "JMP", "CALL", "RET")
STOP, MOV, READ, WRITE, JEZ, JMP, CALL, RET = range(len(_CONTROL))
ALU = len(_CONTROL)  # an ALU instruction


def supports(machine: "Interpreter") -> bool:
    """Whether ``machine`` can run on integers: a frozen program, an exact ALU, numbers that fit in int64."""
    modulus = machine.encoding.modulus
    fits = modulus <= 1 << 31 or (modulus <= MAX_MODULUS and modulus & (modulus - 1) == 0)
    return not machine.trainable and getattr(machine.alu, "exact", False) and fits


class Program:
    """A linked image as integer arrays, one entry per line, so that a step is a few gathers for the whole batch.

    ``source`` says where a line's register value comes from (0: the ALU, 1:
    the operand ``a`` (MOV), 2: memory (READ), 3: ``c + 1`` (CALL)); a line
    that writes no register writes a scratch register instead, and a line
    that does not WRITE writes a scratch cell, so that every row of a step
    does the same operations.
    """

    def __init__(self, machine: "Interpreter") -> None:
        image, ops = machine.image, machine.ops
        self.lines = lines = len(image)
        code = [_CONTROL.index(line.mnemonic) if line.mnemonic in _CONTROL else ALU for line in image.lines]
        code[0] = STOP  # the halting address runs nothing (no row is ever there)
        self.code = np.array(code, dtype=np.int64)
        self.op = np.array([ops.index(line.mnemonic.lower()) if c == ALU else 0
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
        self.modulus = modulus = machine.encoding.modulus
        self.op_defs = tuple(machine.alu.op_defs[machine.alu.ops.index(op)] for op in ops)
        self.used = sorted({int(k) for k, c in zip(self.op, code) if c == ALU})
        self.tables = None
        if modulus <= MAX_TABLE_MODULUS:  # op(j, k) for every operand pair: one gather per step
            tables = np.zeros((len(ops), modulus, modulus), dtype=np.int64)
            for k in self.used:
                tables[k] = self.op_defs[k].table(modulus).numpy()
            self.tables = tables.reshape(-1)
        self.op_offset = self.op * modulus * modulus  # where each line's op table starts in ``tables``

    def alu(self, op: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``op_k(u, v) mod modulus`` for each row's op index ``k``."""
        n = self.modulus
        if self.tables is not None:
            return self.tables[(op * n + u) * n + v]
        out = np.zeros_like(u)
        for k in self.used:
            rows = np.nonzero(op == k)[0]
            if len(rows):
                out[rows] = self.op_defs[k].apply(torch.from_numpy(u[rows]), torch.from_numpy(v[rows]), n).numpy()
        return out


def run(machine: "Interpreter", registers: Tensor, memory: Tensor, entries: Tensor, max_steps: int,
        trace: Callable[[int, "State"], Any] | None = None) -> "State":
    """Run from decided ``registers`` ``(batch, k, *shape)`` and ``memory``, each row from its entry address."""
    from .interpreter import State

    enc, P = machine.encoding, machine._exact_program()
    batch, dtype, device = registers.shape[0], registers.dtype, registers.device
    n, width, cells = machine.n_registers, machine.image.register_file + 1, machine.cells
    R = np.zeros((batch, width), dtype=np.int64)  # r0.., lr = 0, the constants, a scratch register
    R[:, : registers.shape[1]] = enc.decode(registers).cpu().numpy()
    R[:, n + 1: width - 1] = np.array(machine.image.constants, dtype=np.int64)
    M = np.zeros((batch, cells + 1), dtype=np.int64)  # the cells and a scratch cell
    M[:, : memory.shape[1]] = enc.decode(memory).cpu().numpy()
    pc = entries.cpu().numpy().astype(np.int64).copy()  # 0 once a row has halted
    steps = np.zeros(batch, dtype=np.int64)
    rows, ran = np.nonzero(pc != 0)[0], 0  # (read by state(); set below)
    R_, M_ = R.reshape(-1), M.reshape(-1)  # flat views: one index per element
    address, target = machine.memory.address.of_ints, machine.targets.of_ints

    def state() -> "State":
        steps[rows] = ran
        counter = torch.zeros(batch, P.lines, dtype=dtype)
        running = torch.from_numpy(pc != 0)
        counter[running, torch.from_numpy(pc)[running]] = 1
        return State(enc.encode(torch.from_numpy(M[:, :cells]), dtype=dtype, device=device),
                     enc.encode(torch.from_numpy(R[:, :-1]), dtype=dtype, device=device), counter.to(device),
                     (~running).to(dtype).to(device), torch.from_numpy(steps.copy()).to(device), n)

    rows = np.nonzero(pc != 0)[0]  # the rows still running; each has run `ran` steps
    r_row, m_row = rows * width, rows * (cells + 1)  # where their registers and cells start in R_ and M_
    ran = 0
    for step in range(max_steps):
        if not len(rows):
            break
        if trace is not None:
            trace(step, state())
        at = pc[rows]
        after, jez = P.next[at], P.jez[at]
        u, v = R_[r_row + P.a[at]], R_[r_row + P.b[at]]  # the operands (eq. 2 on the registers)
        if machine.strict:
            _check(machine, at, u, P.memory[at], cells, "memory address")
        cell = address(u)
        # the value each row writes (eq. 5): the ALU's (eq. 7), a, the memory's (eq. 2) or c + 1
        alu = P.tables[P.op_offset[at] + u * P.modulus + v] if P.tables is not None else P.alu(P.op[at], u, v)
        R_[r_row + P.out[at]] = np.choose(P.source[at], (alu, u, M_[m_row + cell], after))
        M_[m_row + np.where(P.stores[at], cell, cells)] = v  # WRITE (eqs. 3-4); other rows write the scratch cell
        # the counter (eq. 6): the next line, or the jump's target; 0 halts
        taken = P.jumps[at] | (jez & (u == 0))
        to = np.where(jez, v, u)
        if machine.strict:
            _check(machine, at, to, taken, P.lines, "jump to")
        nxt = np.where(taken, target(to), after)
        pc[rows] = nxt
        ran += 1
        if not nxt.all():  # some rows halted: they ran `ran` steps
            halted = nxt == 0
            steps[rows[halted]] = ran
            running = ~halted
            rows, r_row, m_row = rows[running], r_row[running], m_row[running]
    return state()


def _check(machine: "Interpreter", at: np.ndarray, numbers: np.ndarray, where: np.ndarray, limit: int,
           what: str) -> None:
    """The soft machine's strict error for the first row (of ``where``) whose number is ``limit`` or more."""
    bad = np.nonzero(where & (numbers >= limit))[0]
    if len(bad):
        machine._out_of_range(int(at[bad[0]]), int(numbers[bad[0]]), what)


__all__ = ["run", "supports", "Program"]
