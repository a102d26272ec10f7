"""Several fused steps per call: the compiled run, ``K`` steps of eqs. 2-6 at a time.

Compiled one step at a time (:mod:`.fused`), a step's kernels take a small
part of what the step costs: the rest is paid per call (``torch.compile``'s
guards and wrappers, an autograd node, the run loop's halting checks). Here
one call advances the machine ``K`` steps (``Machine.steps_per_call``), one
autograd node whose forward is ``K`` of :meth:`.fused.Kernels.forward` and
whose backward is their ``K`` adjoints (:meth:`.fused.Kernels.backward`) in
reverse, each compiled once as a whole by ``torch.compile``; the run loop
checks halting between calls only.

The run loop's bookkeeping moves inside the call, as masks: a row whose
running mass is spent (``counter.sum() < SPENT``) keeps its state (its
counter is zeroed before the step, which makes the step the identity on it,
and its old state is kept), where the run loop would take it out of the
batch; once every row still running has halted (and no row was left below
the threshold), or the run's step budget is used up, the rest of the call
holds every row. The states, step counts and gradients are the run loop's
(``tests/test_fused_step.py`` checks them against the reference step). The
batch keeps its size for the whole run, so a call compiles once per batch
size; rows that are done still cost their share of each call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..threads import is_small, one_thread
from .fused import Kernels, call_compiled

if TYPE_CHECKING:
    from .interpreter import Compiled, Interpreter, State


def run(machine: "Interpreter", state: "State", program: "Compiled", max_steps: int) -> "State":
    """Step ``state`` until every row halts or ``max_steps``, ``machine.steps_per_call`` steps a call, compiled.

    The same final state (and gradients) as the run loop stepping
    :func:`.fused.step`; where the steps cannot compile, a warning says so and
    they run uncompiled, with the same results.
    """
    from .interpreter import SPENT, State

    c = state.counter
    chunk = Chunk.of(Kernels.of(machine, c.dtype, c.device), machine.steps_per_call, machine.halt_threshold)
    call = program.E[:, machine.column["CALL"]]
    M, R, h, steps = state.memory, state.register_file, state.halted, state.steps
    stuck = torch.zeros((), dtype=torch.bool, device=c.device)  # a row left below the threshold
    done = 0
    while done < max_steps:
        left = torch.tensor(max_steps - done, device=c.device)  # (a tensor: a short last call compiles nothing new)
        M, R, c, h, steps, stuck = ChunkStep.apply(chunk, M, R, c, h, steps, stuck, left, program.W, program.stay,
                                                   program.jez, call, program.not_halting)
        done += chunk.k
        spent = c.sum(-1) < SPENT
        if bool(spent.all()):  # every row done: one left below the threshold counts steps up to max_steps
            if done < max_steps:
                steps = steps + (h < machine.halt_threshold).long() * (max_steps - done) * stuck.long()
            break
        if not bool(stuck) and bool(((h >= machine.halt_threshold) | spent).all()):
            break
    return State(M, R, c, h, steps, state.n_registers)


class Chunk:
    """``k`` steps of :class:`.fused.Kernels`, forward and backward, as functions of tensors; compiled where they can be."""

    def __init__(self, kernels: Kernels, k: int, threshold: float) -> None:
        self.kernels, self.k, self.threshold, self.ok = kernels, k, threshold, True
        # (the batch is fixed within a run; a new batch size compiles again.) On the CPU the code that calls the
        # kernels is C++ too (inductor's ``cpp_wrapper``): a call of k steps allocates and passes hundreds of
        # small buffers, which Python wrapper code paid for (about 16% of a run at k = 8, measured)
        options = {"cpp_wrapper": True} if kernels.maps.from_lines.device.type == "cpu" else None
        self._compiled = {"forward": torch.compile(self.forward, fullgraph=True, dynamic=False, options=options),
                          "backward": torch.compile(self.backward, fullgraph=True, dynamic=False, options=options)}
        self._started: set[tuple[str, int]] = set()

    @staticmethod
    def of(kernels: Kernels, k: int, threshold: float) -> "Chunk":
        """The chunk of ``k`` steps for these kernels, built (and compiled) once."""
        cache = kernels.__dict__.setdefault("_chunks", {})
        if (k, threshold) not in cache:
            cache[k, threshold] = Chunk(kernels, k, threshold)
        return cache[k, threshold]

    def forward(self, M: Tensor, R: Tensor, c: Tensor, h: Tensor, steps: Tensor, stuck: Tensor, left: Tensor,
                W: Tensor, stay: Tensor, jez: Tensor, call: Tensor, not_halting: Tensor):
        """``k`` steps (the run loop's halting and spent rows as masks); the new state and, per step, the residuals."""
        from .interpreter import SPENT

        saved, actives = [], []
        for i in range(self.k):
            spent = c.sum(-1) < SPENT  # (batch,) the rows the run loop would have taken out
            stuck = stuck | (spent & (h < self.threshold)).any()
            stop = (~stuck & ((h >= self.threshold) | spent).all()) | (left <= i)  # the run loop would stop
            active = ~spent & ~stop
            steps = steps + (~stop & (h < self.threshold)).long()
            M2, R2, c2, h2, residuals, _ = self.kernels.forward(M, R, c * active[:, None].to(c.dtype), h, W, stay,
                                                                jez, call, not_halting, False)
            M = torch.where(active.view(-1, *[1] * (M.dim() - 1)), M2, M)
            R = torch.where(active.view(-1, *[1] * (R.dim() - 1)), R2, R)
            c, h = torch.where(active[:, None], c2, c), torch.where(active, h2, h)
            saved.append(residuals)
            actives.append(active)
        return M, R, c, h, steps, stuck, saved, actives

    def backward(self, saved, actives, gM: Tensor, gR: Tensor, gc: Tensor, gh: Tensor):
        """The adjoints of :meth:`forward`'s ``k`` steps, in reverse: the old state's and the program's gradients."""
        total = [None] * 4  # ∂/∂ W, stay, jez, call, summed over the steps
        for residuals, active in zip(reversed(saved), reversed(actives)):
            a = active.to(gc.dtype)
            am, ar = a.view(-1, *[1] * (gM.dim() - 1)), a.view(-1, *[1] * (gR.dim() - 1))
            kM, kR, kc, kh, *program = self.kernels.backward(residuals, None, gM * am, gR * ar, gc * a[:, None],
                                                             gh * a)
            gM, gR = kM.view(gM.shape) + (1 - am) * gM, kR.view(gR.shape) + (1 - ar) * gR
            gc, gh = a[:, None] * kc + (1 - a[:, None]) * gc, kh + (1 - a) * gh
            total = [g if t is None else t if g is None else t + g for t, g in zip(total, program)]
        return (gM, gR, gc, gh, *total)

    def __call__(self, name: str, *args):
        """:meth:`forward` or :meth:`backward`, compiled (or, where that fails, with a warning, as they are)."""
        eager = getattr(self, name)
        if not self.ok:
            return eager(*args)
        key = (name, int(args[2].shape[0]) if name == "forward" else int(args[4].shape[0]))
        return call_compiled(self, self._compiled[name], eager, args, first=key,
                             what=f"{args[2].dtype} {args[2].device.type}, {self.k} steps a call",
                             describe=f"the machine's steps ({self.k} a call)", stacklevel=6)


class ChunkStep(torch.autograd.Function):
    """``k`` steps as one autograd node: ``(M, R, c, h, steps, stuck) -> (M', R', c', h', steps', stuck')``."""

    @staticmethod
    def forward(ctx, chunk: Chunk, M: Tensor, R: Tensor, c: Tensor, h: Tensor, steps: Tensor, stuck: Tensor,
                left: Tensor, W: Tensor, stay: Tensor, jez: Tensor, call: Tensor, not_halting: Tensor):
        inputs = tuple(x.detach() for x in (M, R, c, h, steps, stuck, left, W, stay, jez, call, not_halting))
        with one_thread(is_small(M, R)):
            M2, R2, c2, h2, steps2, stuck2, saved, actives = chunk("forward", *inputs)
        ctx.chunk, ctx.layout = chunk, [tuple(x is not None for x in residuals) for residuals in saved]
        ctx.save_for_backward(*(x for residuals in saved for x in residuals if x is not None), *actives)
        ctx.mark_non_differentiable(steps2, stuck2)
        return M2, R2, c2, h2, steps2, stuck2

    @staticmethod
    @once_differentiable
    def backward(ctx, gM: Tensor, gR: Tensor, gc: Tensor, gh: Tensor, _steps, _stuck):
        tensors, k = ctx.saved_tensors, len(ctx.layout)
        flat, actives = iter(tensors[:-k]), list(tensors[-k:])
        saved = [tuple(next(flat) if present else None for present in layout) for layout in ctx.layout]
        with one_thread(is_small(gM, gR)):
            gM, gR, gc, gh, gW, g_stay, g_jez, g_call = ctx.chunk("backward", saved, actives, gM.contiguous(),
                                                                  gR.contiguous(), gc.contiguous(), gh.contiguous())
        needs = ctx.needs_input_grad
        return (None, gM, gR, gc, gh, None, None, None, gW if needs[8] else None, g_stay if needs[9] else None,
                g_jez if needs[10] else None, g_call if needs[11] else None, None)


__all__ = ["run", "Chunk", "ChunkStep"]
