"""The reference step: the paper's eqs. 2-6, one line each, nothing packed and nothing skipped.

Read it beside the paper (§3.2). It is the oracle for the step the machine
runs (:meth:`diffcomp.machine.Interpreter.forward`): the tests check that the
two agree in values and gradients (float64, random soft programs and states,
``CALL``/``RET``, program selection); ``benchmarks/machine.py`` measures how
much faster the other one is.

A program is, per line ``l``, a distribution over instructions ``E_l`` and
three distributions over registers: the operands ``A_l``, ``B_l`` and the
destination ``O_l`` (ANC's form). The counter ``c`` is a distribution over
lines (with the halting probability ``h``, ``Σ c + h = 1``), so one step runs
every line at once, each weighted by ``c_l`` ("superposition").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .interpreter import Compiled, Interpreter, State


def step(machine: "Interpreter", state: "State", program: "Compiled") -> "State":
    """``S_{t+1} = I(S_t, ι)``: one step of the differentiable register machine."""
    from .interpreter import EPS, State, _hold_halted

    E, A, B, O = program.E, program.A, program.B, program.O  # (lines, instructions), (lines, registers) x3
    c, h, R, M = state.counter, state.halted, state.register_file, state.memory  # (batch, lines), (batch,), ...
    col = machine.column  # instruction name -> column of E
    ops = [col[op.upper()] for op in machine.ops]  # the ALU instructions' columns

    # ι = Σ_l c_l E_l: the probability that each instruction runs now
    iota = c @ E  # (batch, instructions)

    def weight(name: str) -> Tensor:  # (batch,)
        return iota[:, col[name]]

    # the operand and destination addresses, given that the machine still runs
    running = c.sum(-1, keepdim=True).clamp_min(EPS)  # (batch, 1): Σ_l c_l = 1 - h
    a, b, o = (c @ X / running for X in (A, B, O))  # (batch, registers) each

    # eq. 2 on the registers: u_j = R_ij a_i, v_j = R_ij b_i
    u = torch.einsum("bi,bi...->b...", a, R)  # (batch, *shape)
    v = torch.einsum("bi,bi...->b...", b, R)

    # eq. 7: o_l = T_ijkl f_i u_j v_k, with f the distribution over ALU ops given that one runs
    p_alu = iota[:, ops].sum(-1)  # (batch,)
    q = p_alu.clamp_min(EPS)  # (no 1/0; o is linear in f, so q·o below is p_alu's share either way)
    alu_out = machine.alu(machine._alu_ops(iota[:, ops] / q[:, None]), u, v)  # (batch, *shape)

    # eq. 2 on the memory: the number at address u
    address = machine.memory.address(u)  # (batch, cells): the number u as a distribution over cells
    read = torch.einsum("bi,bi...->b...", address, M)
    if machine.addressing == "zero":  # the address's mass beyond the cells reads the number 0
        read = read + _per_row(1 - address.sum(-1), read) * machine.encoding.encode([0]).reshape(read.shape[1:]).to(read)

    # CALL: the return address c + 1, as a number (the mass of the CALL lines, moved one line on)
    after_call = torch.roll(c * E[:, col["CALL"]], 1, dims=-1)  # (batch, lines), mass p_CALL
    link = machine.encoding.from_categorical(after_call)  # (batch, *shape), mass p_CALL

    # eq. 5: every instruction that produces a number writes it to the destination o, each with its probability
    writers = {"ALU": (q, alu_out), "MOV": (weight("MOV"), u), "READ": (weight("READ"), read)}
    p_write = p_alu + weight("MOV") + weight("READ") + weight("CALL")  # (batch,)
    value = sum(_per_row(p, x) * x for p, x in writers.values()) + link  # Σ_k p_k c_k: (batch, *shape)
    o_ = _per_row(o, R)  # (batch, registers, 1, ...)
    R = (1 - _per_row(p_write, o_) * o_) * R + o_ * value.unsqueeze(1)  # (1 - p o) ⊙ R + o ⊗ (p c)

    # eqs. 3-4: WRITE stores v at address u, with its probability p
    p = _per_row(weight("WRITE"), M)  # (batch, 1, 1, ...)
    at = _per_row(address, M)  # (batch, cells, 1, ...)
    M_write = (1 - at) * M + at * v.unsqueeze(1)  # eq. 3
    M = (1 - p) * M + p * M_write  # eq. 4

    # eq. 6: each line's mass moves on to the next line (inc(c)) unless it jumps to l
    zero = machine.encoding.probability_zero(u)  # (batch,): the JEZ condition, P(a = 0)
    jumps = E[:, col["JMP"]] + E[:, col["CALL"]] + E[:, col["RET"]]  # (lines,): always jump
    falls = 1 - E[:, col["STOP"]] - jumps - zero[:, None] * E[:, col["JEZ"]]  # (batch, lines): goes to inc(c)
    inc = torch.roll(c * falls, 1, dims=-1)  # (batch, lines): the last line runs onto 0, the halting address
    to_u = machine.targets(u)  # (batch, lines): the jump destination l of JMP, CALL, RET (u as a line)
    to_v = machine.targets(v)  # JEZ's destination
    counter = inc + (weight("JMP") + weight("CALL") + weight("RET"))[:, None] * to_u \
        + (weight("JEZ") * zero)[:, None] * to_v

    # halting: STOP's weight and whatever reached address 0 move to h
    h = h + weight("STOP") + counter[:, 0]
    counter = torch.cat([torch.zeros_like(counter[:, :1]), counter[:, 1:]], dim=1)
    steps = state.steps + (state.halted < machine.halt_threshold).long()
    return _hold_halted(state, State(M, R, counter, h, steps, state.n_registers))


def _per_row(weights: Tensor, like: Tensor) -> Tensor:
    """``(batch, ...)`` weights broadcast against ``like`` (trailing dimensions of size 1)."""
    return weights.reshape(*weights.shape, *([1] * (like.dim() - weights.dim())))


__all__ = ["step"]
