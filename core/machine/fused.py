"""The fused step: eqs. 2-6 as one autograd node, with the backward written out.

The same step as :mod:`.reference` (and :meth:`Interpreter._step`), for
training. Under autograd a step of small tensors costs what its operations
cost to record and replay (a few microseconds each, hundreds a step), not
what they compute. Here the forward runs its operations without a graph, and
the backward is each equation's adjoint, in reverse order: one node a step.

- The ALU answers for itself: :meth:`diffcomp.ALU.vjp` gives its result and
  pullback (the lookup ALU's built-in ops have hand-written adjoints; any
  other ALU is differentiated by autograd inside the pullback).
- The encoding's maps (a number as a distribution over cells or lines, ``P(x
  = 0)``, a line as a number) are linear for a ``linear`` encoding
  (:attr:`diffcomp.NumberEncoding.linear`, ``unit``), so they are matrices
  (:class:`Maps`), built once by applying the maps to the identity.

:func:`supports` says when it applies (a linear encoding); a run that
records a gradient uses it then (``Machine.stepping``, default ``"fused"``),
else the plain step. ``"compiled"`` runs the same forward and backward
through ``torch.compile`` (:meth:`Kernels.compile`; without a C++ compiler it
warns and runs uncompiled). ``tests/test_fused_step.py`` checks every path
against the reference step in values and gradients.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..threads import is_small, one_thread

if TYPE_CHECKING:
    from .interpreter import Compiled, Interpreter, State


def supports(machine: "Interpreter") -> str | None:
    """Why the fused step cannot run this machine (None if it can)."""
    if not getattr(machine.encoding, "linear", False):
        return f"{machine.encoding} is not linear (its addresses are not a matrix product)"
    if machine.strict:
        return "a strict run checks addresses and jumps each step"
    if getattr(machine, "addressing", "wrap") != "wrap":
        return "addressing = 'zero' reads 0 beyond the cells (the plain step does)"
    return None


class Maps:
    """The encoding's linear maps as matrices, for one machine, dtype and device.

    ``to_cells_lines_zero`` ``(numel, cells + lines + 1)``: a number to its
    distribution over memory cells (eq. 2), over program lines (a jump
    target, eq. 6), and ``P(x = 0)`` (JEZ); ``from_lines`` ``(lines,
    numel)``: a distribution over lines as a number (CALL's return address).
    """

    def __init__(self, machine: "Interpreter", dtype: torch.dtype, device: torch.device) -> None:
        enc, shape = machine.encoding, tuple(machine.encoding.shape)
        numel = int(torch.Size(shape).numel())
        numbers = torch.eye(numel, dtype=dtype, device=device).view(numel, *shape)  # each entry of a number alone
        self.cells, self.lines = machine.cells, machine.lines
        self.to_cells_lines_zero = torch.cat([enc.categorical(numbers, machine.cells),
                                              machine.targets(numbers),
                                              enc.probability_zero(numbers).unsqueeze(-1)], -1)
        self.from_lines = enc.from_categorical(torch.eye(machine.lines, dtype=dtype, device=device)).reshape(
            machine.lines, numel)


def step(machine: "Interpreter", state: "State", program: "Compiled", compiled: bool = False) -> "State":
    """``S_{t+1} = I(S_t)`` as one autograd node: the same values and gradients as the reference step.

    ``compiled``: run the kernels compiled (:meth:`Kernels.compile`) where they compile.
    """
    from .interpreter import State

    c = state.counter
    kernels = Kernels.of(machine, c.dtype, c.device)
    if compiled:
        kernels = kernels.compile()
    call = program.E[:, machine.column["CALL"]]  # (lines,)
    M, R, counter, halted = FusedStep.apply(kernels, state.memory, state.register_file, c, state.halted,
                                            program.W, program.stay, program.jez, call, program.not_halting)
    steps = state.steps + (state.halted < machine.halt_threshold).long()
    return State(M, R, counter, halted, steps, state.n_registers)


class Kernels:
    """The step's forward and backward as plain functions of tensors, for one machine, dtype and device.

    :meth:`forward` returns the new state, what the backward needs (the
    residuals, saved by :class:`FusedStep`) and the ALU's pullback
    (:meth:`diffcomp.ALU.vjp`); :meth:`backward` turns the gradients of the
    new state into those of the old state and the program. Compiled
    (:meth:`compile`), only tensors pass between them: the backward asks the
    ALU for its pullback again, from the saved operands.
    """

    def __init__(self, machine: "Interpreter", dtype: torch.dtype, device: torch.device) -> None:
        from .interpreter import S, SCALARS

        self.machine, self.alu, self.maps = machine, machine.alu, Maps(machine, dtype, device)
        self.n, self.ops, self.cells = len(SCALARS), len(machine.ops), machine.cells
        self.live = {name: machine.live[k] for name, k in S.items()}
        self.written = machine._written()  # the register rows some line names as a destination (the rest stay)
        self.shape = tuple(machine.encoding.shape)
        self._compiled: _Compiled | None = None

    def compile(self) -> "Kernels":
        """These kernels compiled by ``torch.compile`` (the batch size left free), or these if they cannot be.

        Compiling takes a while (tens of seconds on a CPU, once per machine,
        dtype and device; torch's cache on disk shortens later ones) and needs
        a C++ compiler on the CPU; if it fails (no compiler, an ALU whose
        pullback cannot be traced), a warning says so and the step runs
        uncompiled, with the same results.
        """
        if self._compiled is None:
            self._compiled = _Compiled(self)
        return self._compiled if self._compiled.ok else self

    @staticmethod
    def of(machine: "Interpreter", dtype: torch.dtype, device: torch.device) -> "Kernels":
        """The machine's kernels, built once per dtype, device, memory size and ALU."""
        cache = machine.__dict__.setdefault("_fused_kernels", {})
        key = (dtype, device, machine.cells, machine.lines, id(machine.alu), machine.live)
        if key not in cache:
            cache[key] = Kernels(machine, dtype, device)
        return cache[key]

    def forward(self, M: Tensor, R: Tensor, c: Tensor, h: Tensor, W: Tensor, stay: Tensor, jez: Tensor,
                call: Tensor, not_halting: Tensor, keep_pullback: bool = True):
        from .interpreter import EPS, S, SPENT

        n, ops, cells, live = self.n, self.ops, self.cells, self.live
        batch = c.shape[0]
        Mf, Rf = M.reshape(batch, cells, -1), R.reshape(batch, R.shape[1], -1)  # (batch, rows, numel)

        # ι = c E, and the operand and destination distributions given that the machine runs
        mix = c @ W  # (batch, scalars + ops + 3·registers)
        total = c.sum(-1, keepdim=True)  # (batch, 1)
        abo = (mix[:, n + ops:] / total.clamp_min(EPS)).unflatten(1, (3, -1))  # (batch, 3, registers): a, b, o
        w = mix[:, :n]  # (batch, scalars): the weight of each of SCALARS
        uv = torch.bmm(abo[:, :2], Rf)  # (batch, 2, numel): the operands u, v (eq. 2)
        u, v = uv[:, 0], uv[:, 1]
        mapped = uv @ self.maps.to_cells_lines_zero  # (batch, 2, cells + lines + 1)
        address, to_u, z, to_v = mapped[:, 0, :cells], mapped[:, 0, cells:-1], mapped[:, 0, -1], mapped[:, 1, cells:-1]

        # the value written to the destination: each writer weighted by its probability (eq. 5)
        value = torch.zeros_like(u)
        den = f = alu_out = read = keep = pullback = None
        if live["ALU"]:  # eq. 7, the ALU seeing a distribution over its ops
            den = w[:, S["ALU"], None].clamp_min(EPS)  # (batch, 1)
            f = mix[:, n:n + ops] / den
            alu_out, pullback = self.alu.vjp(self.machine._alu_ops(f), u.view(batch, *self.shape),
                                             v.view(batch, *self.shape))
            alu_out = alu_out.reshape(batch, -1)
            value = value + den * alu_out
        if live["MOV"]:
            value = value + w[:, S["MOV"], None] * u
        if live["READ"]:
            read = torch.bmm(address.unsqueeze(1), Mf).squeeze(1)  # (batch, numel)
            value = value + w[:, S["READ"], None] * read
        if live["CALL"]:  # the return address c + 1, as a number
            value = value + (c * call).roll(1, -1) @ self.maps.from_lines
        k, o = self.written, abo[:, 2, :self.written]  # (batch, k): no line names a destination past k
        R_new = torch.addcmul((1 - w[:, S["WRITES"], None] * o).unsqueeze(-1) * Rf[:, :k], o.unsqueeze(-1),
                              value.unsqueeze(1))  # (1 - p o) ⊙ R + o ⊗ (Σ p c)
        if k < Rf.shape[1]:  # the rows past k as they were
            R_new = torch.cat([R_new, Rf[:, k:]], 1)
        if live["WRITE"]:  # eqs. 3-4
            keep = 1 - w[:, S["WRITE"], None] * address  # (batch, cells)
            M_new = torch.addcmul(keep.unsqueeze(-1) * Mf, address.unsqueeze(-1),
                                  (w[:, S["WRITE"], None] * v).unsqueeze(1))
        else:
            M_new = Mf.clone()

        # eq. 6: fall through to inc(c) unless jumping; STOP and address 0 halt
        fall = stay - z[:, None] * jez  # (batch, lines)
        counter = (c * fall).roll(1, -1)
        if live["JUMP"]:
            counter = counter + w[:, S["JUMP"], None] * to_u
        if live["JEZ"]:
            counter = counter + (w[:, S["JEZ"]] * z)[:, None] * to_v
        h_new = h + w[:, S["STOP"]] + counter[:, 0]
        # the floor of the plain step (:meth:`Interpreter._step`): rounding's mass a little below 0 is held at -SPENT
        counter = counter * not_halting
        through = not_halting * (counter >= -SPENT)  # (batch, lines): where the counter's gradient passes
        counter = counter.clamp_min(-SPENT)
        residuals = (Mf, Rf, c, W, jez, call, through, mix, total, abo, uv, mapped, value, fall, den, f,
                     alu_out, read, keep)
        return M_new.view(M.shape), R_new.view(R.shape), counter, h_new, residuals, \
            pullback if keep_pullback else None

    def backward(self, residuals, pullback, gM_new: Tensor, gR_new: Tensor, gc_new: Tensor, gh_new: Tensor):
        from .interpreter import EPS, S

        (Mf, Rf, c, W, jez, call, through, mix, total, abo, uv, mapped, value, fall, den, f, alu_out, read,
         keep) = residuals
        n, ops, cells, live = self.n, self.ops, self.cells, self.live
        batch = c.shape[0]
        gM_new, gR_new = gM_new.reshape(Mf.shape), gR_new.reshape(Rf.shape)
        k = self.written
        w, u, v, o = mix[:, :n], uv[:, 0], uv[:, 1], abo[:, 2, :k]
        address, to_u, z, to_v = mapped[:, 0, :cells], mapped[:, 0, cells:-1], mapped[:, 0, -1], mapped[:, 1, cells:-1]
        gw = [torch.zeros_like(z)] * n  # (batch,) each: ∂/∂ the weight of each of SCALARS
        g_to_u = g_to_v = g_address = None

        # eq. 6 and halting
        g_counter = gc_new * through
        g_counter = torch.cat([(g_counter[:, 0] + gh_new)[:, None], g_counter[:, 1:]], 1)  # address 0 went to h
        gw[S["STOP"]] = gh_new
        g_moved = g_counter.roll(-1, -1)  # ∂/∂(c ⊙ fall)
        gc = g_moved * fall
        g_fall = g_moved * c  # (batch, lines)
        gz = -(g_fall * jez).sum(-1)  # (batch,)
        if live["JUMP"]:
            gw[S["JUMP"]] = (g_counter * to_u).sum(-1)
            g_to_u = w[:, S["JUMP"], None] * g_counter
        if live["JEZ"]:
            at_v = (g_counter * to_v).sum(-1)
            gw[S["JEZ"]] = z * at_v
            gz = gz + w[:, S["JEZ"]] * at_v
            g_to_v = (w[:, S["JEZ"]] * z)[:, None] * g_counter

        # eqs. 3-4: the memory write
        g_u = g_v = torch.zeros_like(u)  # (batch, numel)
        if live["WRITE"]:
            p = w[:, S["WRITE"], None]
            q = (gM_new * (v.unsqueeze(1) - Mf)).sum(-1)  # (batch, cells)
            gw[S["WRITE"]] = (address * q).sum(-1)
            g_address = p * q
            g_v = p * torch.bmm(address.unsqueeze(1), gM_new).squeeze(1)
            gM = gM_new * keep.unsqueeze(-1)
        else:
            gM = gM_new

        # eq. 5: the register write
        # (rows past k were not written: their gradient passes as it is, and their destination weights, 0 in
        # every line, get none)
        p, g_written = w[:, S["WRITES"], None], gR_new[:, :k]
        gR = g_written * (1 - p * o).unsqueeze(-1)
        if k < Rf.shape[1]:
            gR = torch.cat([gR, gR_new[:, k:]], 1)
        R_dot = (g_written * Rf[:, :k]).sum(-1)  # (batch, k)
        g_o = (g_written * value.unsqueeze(1)).sum(-1) - p * R_dot  # (a matrix-vector bmm loops over the batch)
        g_o = torch.nn.functional.pad(g_o, (0, Rf.shape[1] - k))  # (batch, registers)
        gw[S["WRITES"]] = -(o * R_dot).sum(-1)
        g_value = torch.bmm(o.unsqueeze(1), g_written).squeeze(1)  # (batch, numel)

        # the writers of the value
        g_ops = torch.zeros_like(mix[:, n:n + ops])
        if live["ALU"]:
            if pullback is None:  # (the ALU's forward again: a compiled backward drops what it does not use)
                pullback = self.alu.vjp(self.machine._alu_ops(f), u.view(batch, *self.shape),
                                        v.view(batch, *self.shape))[1]
            g_f, g_alu_u, g_alu_v = pullback((den * g_value).view(batch, *self.shape))
            g_f = self.machine._alu_ops_back(g_f)
            g_den = (g_value * alu_out).sum(-1) - (g_f * f).sum(-1) / den.squeeze(-1)
            gw[S["ALU"]] = g_den * (w[:, S["ALU"]] >= EPS)  # (clamp_min passes no gradient below EPS)
            g_ops = g_f / den
            g_u, g_v = g_u + g_alu_u.reshape(batch, -1), g_v + g_alu_v.reshape(batch, -1)
        if live["MOV"]:
            gw[S["MOV"]] = (g_value * u).sum(-1)
            g_u = g_u + w[:, S["MOV"], None] * g_value
        if live["READ"]:
            gw[S["READ"]] = (g_value * read).sum(-1)
            g_read = w[:, S["READ"], None] * g_value  # (batch, numel)
            from_read = (Mf * g_read.unsqueeze(1)).sum(-1)  # (batch, cells)
            g_address = from_read if g_address is None else g_address + from_read
            gM = torch.addcmul(gM, address.unsqueeze(-1), g_read.unsqueeze(1))
        g_call = None
        if live["CALL"]:
            g_called = (g_value @ self.maps.from_lines.T).roll(-1, -1)  # ∂/∂(c ⊙ call)
            gc = gc + g_called * call
            g_call = (g_called * c).sum(0)

        # eq. 2: the operands read from the registers, and what was made of them
        zero_cells, zero_lines = torch.zeros_like(mapped[:, 0, :cells]), torch.zeros_like(c)
        g_mapped = torch.stack([
            torch.cat([zero_cells if g_address is None else g_address, zero_lines if g_to_u is None else g_to_u,
                       gz[:, None]], 1),
            torch.cat([zero_cells, zero_lines if g_to_v is None else g_to_v, gz.new_zeros(batch, 1)], 1)], 1)
        g_uv = torch.stack([g_u, g_v], 1) + g_mapped @ self.maps.to_cells_lines_zero.T  # (batch, 2, numel)
        g_ab = torch.bmm(g_uv, Rf.transpose(1, 2))  # (batch, 2, registers)
        gR = torch.baddbmm(gR, abo[:, :2].transpose(1, 2), g_uv)
        g_abo = torch.cat([g_ab, g_o.unsqueeze(1)], 1).flatten(1)  # (batch, 3·registers)

        # ι = c E and the conditioning on the running mass
        running = total.clamp_min(EPS)
        g_mix = torch.cat([torch.stack(gw, 1), g_ops, g_abo / running], 1)
        g_running = -(g_abo * abo.flatten(1)).sum(-1, keepdim=True) / running
        gc = gc + g_mix @ W.T + g_running * (total >= EPS)
        gW = c.T @ g_mix
        g_stay = g_fall.sum(0)
        g_jez = -(g_fall * z[:, None]).sum(0)
        return gM, gR, gc, gh_new, gW, g_stay, g_jez, g_call


#: how long compiling the kernels took, in seconds, per (dtype, device): what the benchmark reports
COMPILE_SECONDS: dict[str, float] = {}


def call_compiled(owner, compiled, eager, args: tuple, *, first: object, what: str, describe: str,
                  stacklevel: int):
    """``compiled(*args)``; where it fails (no C++ compiler, a step torch cannot trace), ``owner.ok = False``, a
    warning, and ``eager(*args)``: the same results, uncompiled. The first call under ``first`` (a key of
    ``owner._started``) compiles: its time goes to ``COMPILE_SECONDS[what]``."""
    start = time.perf_counter()
    try:
        out = compiled(*args)
    except Exception as exc:
        owner.ok = False
        text = str(exc).strip()
        warnings.warn(f"{describe} did not compile ({type(exc).__name__}: {text.splitlines()[0] if text else ''}); "
                      "it runs uncompiled", RuntimeWarning, stacklevel=stacklevel)
        return eager(*args)
    if first not in owner._started:
        owner._started.add(first)
        COMPILE_SECONDS[what] = COMPILE_SECONDS.get(what, 0.0) + time.perf_counter() - start
    return out


class _Compiled:
    """:class:`Kernels` run through ``torch.compile``; ``ok`` False (and a warning) where they do not compile.

    The batch dimension is compiled as a size that varies (a run's batch
    shrinks as rows halt); a batch of one row, which torch would compile
    again as a special case, runs uncompiled.
    """

    def __init__(self, kernels: Kernels) -> None:
        self.kernels, self.ok = kernels, True
        self._forward = torch.compile(kernels.forward, fullgraph=True)
        self._backward = torch.compile(kernels.backward, fullgraph=True)
        self._started: set[str] = set()

    def _call(self, name: str, fn, eager, tensors, *args):
        batch = tensors[0].shape[0]
        if not self.ok or batch < 2:
            return eager(*args)
        if name not in self._started:  # the first call compiles: the batch dimension as a free size
            for x in tensors:
                if isinstance(x, Tensor) and x.dim() and x.shape[0] == batch:
                    torch._dynamo.mark_dynamic(x, 0)
        return call_compiled(self, fn, eager, args, first=name, what=f"{tensors[0].dtype} {tensors[0].device.type}",
                             describe="the machine's fused step", stacklevel=5)

    def forward(self, M, R, c, h, W, stay, jez, call, not_halting, keep_pullback: bool = True):
        args = (M, R, c, h, W, stay, jez, call, not_halting, False)  # (a compiled function returns tensors only)
        return self._call("forward", self._forward, self.kernels.forward, (M, R, c, h), *args)

    def backward(self, residuals, pullback, gM_new, gR_new, gc_new, gh_new):
        batch_tensors = (gM_new, gR_new, gc_new, gh_new, *(x for x in residuals if x is not None))
        return self._call("backward", self._backward, self.kernels.backward, batch_tensors, residuals, None,
                          gM_new, gR_new, gc_new, gh_new)


class FusedStep(torch.autograd.Function):
    """``(M, R, c, h) -> (M', R', c', h')`` for the program ``W``, ``stay``, ``jez``, ``call`` (see :class:`Compiled`)."""

    @staticmethod
    def forward(ctx, kernels: Kernels, M: Tensor, R: Tensor, c: Tensor, h: Tensor, W: Tensor, stay: Tensor,
                jez: Tensor, call: Tensor, not_halting: Tensor):
        inputs = tuple(x.detach() for x in (M, R, c, h, W, stay, jez, call, not_halting))  # (plain tensors in)
        with one_thread(is_small(M, R)):
            M_new, R_new, counter, h_new, residuals, pullback = kernels.forward(*inputs)
        # (the pullback holds nothing but the ALU's inputs, which are among the residuals: see ALU.vjp)
        ctx.kernels, ctx.shapes, ctx.pullback = kernels, (M.shape, R.shape), pullback
        ctx.present = tuple(x is not None for x in residuals)
        ctx.save_for_backward(*(x for x in residuals if x is not None))
        return M_new, R_new, counter, h_new

    @staticmethod
    @once_differentiable
    def backward(ctx, gM_new: Tensor, gR_new: Tensor, gc_new: Tensor, gh_new: Tensor):
        saved = iter(ctx.saved_tensors)
        residuals = tuple(next(saved) if present else None for present in ctx.present)
        with one_thread(is_small(gM_new, gR_new)):
            gM, gR, gc, gh, gW, g_stay, g_jez, g_call = ctx.kernels.backward(residuals, ctx.pullback, gM_new,
                                                                             gR_new, gc_new, gh_new)
        needs = ctx.needs_input_grad
        return (None, gM.view(ctx.shapes[0]), gR.view(ctx.shapes[1]), gc, gh, gW if needs[5] else None,
                g_stay if needs[6] else None, g_jez if needs[7] else None, g_call if needs[8] else None, None)


__all__ = ["step", "supports", "FusedStep", "Kernels", "Maps"]
