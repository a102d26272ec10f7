"""Adaptive compilation (Bunel et al. 2016, *Adaptive Neural Compilation*, ANC).

A program compiled into the differentiable machine is trained, on a
distribution of inputs, to stay correct and become faster. Four pieces:

- :class:`ANCObjective`: ANC's loss on a run's trajectory (below);
- :class:`ProgramModel`: ANC's setting, the machine alone: the task gives
  the initial memory, the answer is the memory the program leaves, and the
  weights are the program's tables (``Machine(trainable=True)``);
  :func:`adapting` says which programs' tables a train stage trains, and
  under which loss;
- :class:`InitialState`: what the run starts from besides the memory, which
  ANC learns too: the registers, the constants and the line it starts at;
- :func:`verify`: the most likely program, read back as assembly text and
  run *hard* (one-hot, exact) on held-out inputs, against the compiled one.

ANC's objective
---------------

Over a run of ``T`` steps, with ``h_t`` the probability that the machine
has halted after step ``t`` (``h_0 = 0``) and ``M_t`` the memory then, and
``ℓ(M) = Σ_{cells i in the mask} -log M[i, answer_i]`` the error of a
memory on the cells that matter::

    L = final    · ℓ(M_T)                                  (ANC's α: the answer at the end)
      + halting  · Σ_t (h_t - h_{t-1}) · ℓ(M_t)            (β: right when it halts, at each step)
      + running  · Σ_t (1 - h_t)                           (γ: mass still running, i.e. time)
      + timeout  · (1 - h_T)                               (δ: not halted by the step limit)

These are the four terms of ANC's loss (§4 of the paper: correctness,
confidence in halting at the right time, efficiency, halting) with the
weights named after what they weigh; ANC's released criterion calls them
α, β, γ, δ. Two differences: ``ℓ`` is the cross-entropy of the answer
(the library's loss everywhere) where ANC's code took the squared distance
between distributions, and the timeout term always counts (ANC's code
dropped it once ``h_T ≥ 0.9``). Because halting early with the right memory
pays through ``halting`` and every running step costs ``running``, a
program that reaches the answer sooner has a lower loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from ..errors import AssemblyError
from .augmented import ComputerModel
from .heads import EPS, Output
from .tasks import Task

#: the logit of a choice a program never makes (its probability is exactly 0; so is its gradient)
NEVER = -1e4
#: the objective's weights, in the order of the docstring's formula
WEIGHTS = ("final", "halting", "running", "timeout")


def _weight(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ValueError(f"the ANC loss weight {attribute.name!r} must be a finite number >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class ANCObjective:
    """ANC's loss weights (see the module docstring); each a finite number ``>= 0``."""

    final: float = attrs.field(default=1.0, validator=_weight)
    halting: float = attrs.field(default=1.0, validator=_weight)
    running: float = attrs.field(default=0.02, validator=_weight)
    timeout: float = attrs.field(default=1.0, validator=_weight)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ANCObjective":
        """From a recipe table; an unknown key or a negative weight is a ``ValueError`` saying what is valid."""
        if not isinstance(values, dict):
            raise ValueError(f"the loss must be a table of ANC weights ({', '.join(WEIGHTS)}), got {values!r}")
        unknown = [k for k in values if k not in WEIGHTS]
        if unknown:
            from ..errors import did_you_mean

            raise ValueError(f"unknown ANC loss weight {unknown[0]!r}{did_you_mean(unknown[0], WEIGHTS)}; "
                             f"the weights: {', '.join(WEIGHTS)}")
        return cls(**values)

    def __call__(self, memories: list[torch.Tensor], halted: list[torch.Tensor], answer: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        """The loss per example ``(batch,)`` over a trajectory.

        ``memories[t]`` ``(batch, cells, base)`` and ``halted[t]`` ``(batch,)``
        after ``t`` steps, ``t = 0 .. T``; ``answer`` ``(batch, cells)``;
        ``mask`` ``(batch, cells)`` bool.
        """
        errors = [memory_error(m, answer, mask) for m in memories]  # each (batch,)
        loss = self.final * errors[-1] + self.timeout * (1 - halted[-1])
        for t in range(1, len(memories)):
            loss = loss + self.halting * (halted[t] - halted[t - 1]) * errors[t] + self.running * (1 - halted[t])
        return loss


def memory_error(memory: torch.Tensor, answer: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``ℓ(M) = Σ_{i in mask} -log M[i, answer_i]``: ``(batch,)``, for unit-encoded ``memory``
    ``(batch, cells, base)``."""
    p = memory.gather(-1, answer.unsqueeze(-1)).squeeze(-1)  # (batch, cells)
    return -(torch.log(p.clamp_min(0) + EPS) * mask).sum(-1)


#: what of its initial state a program model learns (see :class:`InitialState`)
INITIALS = ("fixed", "constants", "learned")


class InitialState(nn.Module):
    """The state a program starts from, but for the memory: ``S_0 = (R, c)`` as ANC learns it.

    ANC's initial module holds the registers' starting values (its programs
    keep their constants there) and the instruction register as trainable
    distributions. Here, ``learn``:

    - ``"fixed"``: the general registers start at 0, the constant registers
      hold the program's immediates, the counter is at the program's first
      line; nothing trains;
    - ``"constants"``: the immediates train (each constant register is a
      distribution over numbers, started at its compiled value): e.g. a
      ``READ 0`` whose ``0`` may become the address a biased input always needs;
    - ``"learned"``: ANC's initial state: the general registers, the
      constants and the line the program starts at all train, so a program
      can start with what its first lines would compute on every input of the
      distribution and skip those lines.

    Each learned part is a table of logits started at ``sharpness`` times its
    compiled value's encoding (``enc.distribution`` turns it into numbers;
    the start is a softmax over the program's lines), so the run starts where
    the compiled program's does. A sharp number's softmax is saturated (its
    gradient about ``e^-sharpness``), so the initial state wants a lower
    sharpness than the tables (ANC's were 2-6); runs from different starts do
    not mix (below), so a soft start costs only the expected loss of its
    starts. The link register stays at the halting address.

    A learned start is a choice among lines, and is run as the machine runs a
    choice among programs (§3.4): one run per line, each from that line
    alone, folded into the batch and weighed by the start's probability
    (:meth:`forward`). Started as one soft counter instead, a start ahead of
    the compiled one would share its registers and operand distributions with
    the compiled run and read what that run has not yet written (in the
    superposed machine a path that holds a little of the mass sees its own
    writes diluted by the rest); run apart, each start is judged on its own run.
    Each start has its own registers, trained on its own run's loss (the
    expected loss's gradient divided by the start's probability), and the
    start's logits take the natural gradient (:meth:`start`): a start that
    skips lines learns what they would have left, then wins if its run is
    better, however unlikely the compiled program made it.
    """

    def __init__(self, machine: nn.Module, program: str, learn: str = "fixed", sharpness: float = 25.0) -> None:
        super().__init__()
        if learn not in INITIALS:
            raise ValueError(f"the initial state must be one of {', '.join(map(repr, INITIALS))}, got {learn!r}")
        self.learn, self.n_registers, self.encoding = learn, machine.n_registers, machine.encoding
        self.entry, self.lines = machine.image.entries[program], machine.lines
        self.register_buffer("compiled_constants", torch.tensor(machine.image.constants, dtype=torch.long),
                             persistent=False)
        enc = self.encoding

        def logits(values: torch.Tensor) -> nn.Parameter:  # (k,) ints -> (k, *shape) logits
            return nn.Parameter(sharpness * (enc.encode(values) - 0.5))

        if learn in ("constants", "learned"):
            self.constant_logits = logits(self.compiled_constants)
        if learn == "learned":
            # the registers each start begins with (starts, registers, *shape): a start reached by skipping lines
            # needs what those lines would have left, and another start other values
            self.register_logits = logits(torch.zeros(self.lines - 1, self.n_registers, dtype=torch.long))
            start = torch.zeros(self.lines - 1)  # the lines a run may start at: every line but the halting address
            start[self.entry - 1] = 1
            self.start_logits = nn.Parameter(sharpness * start)

    def registers(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                  scale: torch.Tensor | None = None) -> torch.Tensor:
        """The general registers each start begins with: ``(starts, registers, *shape)`` (one start, all 0,
        unless learned). ``scale`` ``(starts,)`` multiplies the gradient each start's registers get."""
        if self.learn != "learned":
            return self.encoding.encode(torch.zeros(1, self.n_registers, dtype=torch.long), dtype=dtype, device=device)
        logits = self.register_logits if scale is None else _ScaleGradient.apply(self.register_logits, scale)
        return self.encoding.distribution(logits).to(device, dtype)

    def constants(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """The constant registers ``(constants, *shape)``."""
        if self.learn == "fixed":
            return self.encoding.encode(self.compiled_constants, dtype=dtype, device=device)
        return self.encoding.distribution(self.constant_logits).to(device, dtype)

    def start(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """A learned start's probabilities ``(lines - 1,)`` over the lines ``1 ..``, with the natural gradient.

        The gradient of an expected loss ``Σ_s p_s L_s`` with respect to the
        logits is ``p_s (L_s - L̄)``: a start the compiled program makes
        unlikely (``p_s ≈ e^-sharpness``) would get almost none however much
        better its run, and once pushed down (while its registers were still
        wrong) could not come back. The start's logits get ``L_s - L̄``
        instead, the gradient preconditioned by the inverse Fisher information
        of the softmax (the natural gradient): each start's logit moves by how
        much better its run is than the average, whatever its probability.
        """
        p = self.start_logits.softmax(-1)
        scale = 1 / p.detach().clamp_min(TINY)
        return _ScaleGradient.apply(self.start_logits, scale).softmax(-1).to(device, dtype)

    def forward(self, machine: nn.Module, memory: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """The runs a batch of encoded memories ``(batch, cells', *shape)`` starts on ``machine``.

        Returns ``S_0`` (a :class:`~diffcomp.machine.State`; run it with
        ``machine.run_from``) and the probability of each start ``(starts,)``:
        one start (the program's first line, probability 1) unless the start
        is learned, then one per line, each from that line with a decided
        counter, the rows of start ``k`` at ``k * batch .. (k + 1) * batch``.
        """
        batch, dtype, device = memory.shape[0], memory.dtype, memory.device
        if self.learn == "learned":
            lines, weights = torch.arange(1, self.lines, device=device), self.start(dtype, device)
            scale = 1 / weights.detach().to(self.register_logits.dtype).clamp_min(TINY)  # (starts,)
        else:
            lines, weights = torch.full((1,), self.entry, device=device), torch.ones(1, dtype=dtype, device=device)
            scale = None
        registers = self.registers(dtype, device, scale)  # (starts, registers, *shape)
        starts = registers.shape[0]
        s = machine.initial_state(registers.repeat_interleave(batch, 0),
                                  memory.repeat(starts, *([1] * (memory.dim() - 1))), lines.repeat_interleave(batch))
        constants = self.constants(dtype, device)
        constants = constants.expand(starts * batch, *constants.shape)  # (starts * batch, constants, *shape)
        return attrs.evolve(s, register_file=torch.cat([s.register_file[:, : self.n_registers + 1], constants], 1)), \
            weights

    def decided(self) -> "Decided":
        """The most likely initial state: registers, constants (ints) and the start address."""
        enc = self.encoding
        start = self.entry if self.learn != "learned" else 1 + int(self.start_logits.argmax())
        registers = enc.decode(self.registers())[0 if self.learn != "learned" else start - 1].tolist()
        constants = enc.decode(self.constants()).tolist()
        return Decided(tuple(registers), tuple(constants), start)


#: the smallest probability a gradient is divided by (see :meth:`InitialState.start`)
TINY = 1e-30


class _ScaleGradient(torch.autograd.Function):
    """The identity, whose gradient is multiplied by ``scale`` along the first dimension."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.reshape(-1, *([1] * (grad.dim() - 1))), None


@attrs.frozen
class Decided:
    """A program model's most likely initial state: ``registers`` (r0 ..), ``constants`` (one per constant
    register, in the image's order) and ``start``, the address the run starts at."""

    registers: tuple[int, ...]
    constants: tuple[int, ...]
    start: int


class ProgramModel(ComputerModel):
    """ANC's model: a machine running one program on the memory a task gives.

    ``forward(batch)`` reads ``batch["numbers"]`` (the initial memory,
    ``(batch, cells)``), ``batch["answer"]`` and ``batch["mask"]``; registers
    start at 0. In training the loss is :attr:`objective` (ANC's) over the
    soft run's trajectory. In evaluation (``model.eval()``) the model acts on
    its decisions: the most likely program runs hard, and ``correct`` is
    exact on every masked cell; the loss reported is still the soft run's.

    ``init = "random"`` replaces the compiled tables by random logits
    (``N(0, 1)``, seeded), for learning a program from scratch. Whatever the
    start, no line may write a constant register (as in assembly), and the
    guard line after the program (:func:`guarded`) stays a ``STOP``.
    ``initial`` says what of the initial state trains besides the tables
    (:class:`InitialState`: ``"fixed"``, ``"constants"`` or ``"learned"``,
    ANC's), its logits started ``initial_sharpness`` (default ``sharpness``) times the
    compiled values.
    """

    def __init__(self, computer: nn.Module, program: str, *, objective: ANCObjective | None = None,
                 init: str = "compiled", initial: str = "fixed", sharpness: float = 25.0,
                 initial_sharpness: float | None = None, seed: int = 0) -> None:
        super().__init__()
        machine = computer.machine
        if not machine.trainable:
            raise ValueError("a program model trains its program's tables: build its machine with "
                             "trainable_programs = true")
        if program not in machine.entry_points:
            raise ValueError(f"program {program!r} is not among the machine's entry points "
                             f"({', '.join(machine.entry_points)})")
        self.computer, self.program = computer, program
        self.objective = objective or ANCObjective()
        self.initial = InitialState(machine, program, initial,
                                    sharpness if initial_sharpness is None else initial_sharpness)
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
        # the guard (see :func:`guarded`) stays the compiled STOP: not drawn at random, and no gradient
        guards = torch.tensor([line.instruction is not None and line.instruction.source == GUARD
                               for line in machine.image.lines[1:]])  # (lines - 1,): the tables' rows
        if init == "random":
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for logits in program_tables(machine):
                    drawn = torch.randn(logits.shape, generator=g)
                    logits.copy_(torch.where(guards[:, None], logits, drawn))
        with torch.no_grad():  # as in assembly, no line writes a constant register: their weight is exactly 0
            machine.O_logits[:, machine.image.registers + 1:] = NEVER
        if bool(guards.any()):
            keep = (~guards).float()[:, None]
            for logits in program_tables(machine):
                logits.register_hook(lambda g, keep=keep: g * keep.to(g.device, g.dtype))

    @property
    def machine(self) -> nn.Module:
        return self.computer.machine

    def _start(self, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """The runs from the task's memory, the rest from :attr:`initial` (see :meth:`InitialState.forward`)."""
        machine = self.machine
        device = next(self.parameters()).device
        numbers = batch["numbers"].to(device)  # (batch, cells)
        if numbers.shape[1] > machine.cells:
            raise ValueError(f"the task's memory has {numbers.shape[1]} cells; the machine has {machine.cells}")
        return self.initial(machine, self.encoding.encode(numbers, device=device))  # memory (batch, cells, base)

    def forward(self, batch: dict[str, torch.Tensor]) -> Output:
        device = next(self.parameters()).device
        answer, mask = batch["answer"].to(device), batch["mask"].to(device)
        start, weights = self._start(batch)  # the runs (starts * batch rows), the probability of each start
        memories, halted = [], []

        def record(step: int, state) -> None:  # the state before each step: t = 0 .. T-1
            memories.append(state.memory)
            halted.append(state.halted)

        state = self.machine.run_from(start, trace=record)
        memories.append(state.memory)
        halted.append(state.halted)
        starts = len(weights)
        per_run = self.objective(memories, halted, answer.repeat(starts, 1), mask.repeat(starts, 1))
        loss = (weights[:, None] * per_run.view(starts, -1)).sum(0).mean()  # the expected loss over starts
        state = attrs.evolve(state, memory=torch.einsum("s,sb...->b...", weights,
                                                        state.memory.view(starts, -1, *state.memory.shape[1:])))
        if self.training:
            prediction = self.encoding.decode(state.memory.detach())
            correct = ((prediction == answer) | ~mask).all(-1)
        else:  # the decided program, run hard: exact
            try:
                initial = self.initial.decided()
                run = hard_run(self.machine, batch["numbers"], adapted_text(self.machine, initial), initial)
                prediction, ran = run.memory.to(device), run.halted.to(device)
            except AssemblyError:  # a most likely program that is no program (it writes a constant): wrong
                prediction = torch.full_like(answer, -1)
                ran = torch.zeros_like(mask[:, 0])
            correct = ((prediction == answer) | ~mask).all(-1) & ran
        return Output(loss=loss, logits=torch.log(state.memory.clamp_min(0) + EPS), correct=correct,
                      prediction=prediction)

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if task.text or getattr(task, "answer_from", None) != ("memory", 0) or not task.uses_machine:
            raise ValueError(f"task {task.name!r} does not give a program its memory (the program model runs a "
                             "program on a memory and reads the memory back; e.g. the anc-* tasks)")
        if task.cells > self.machine.cells:
            raise ValueError(f"task {task.name!r} needs {task.cells} memory cells; the machine has "
                             f"{self.machine.cells}")

    def adapt_to_task(self, task: Task) -> None:
        self.check_task(task)
        if task.max_steps > self.machine.max_steps:
            self.machine.max_steps = task.max_steps


#: the source text of the guard line :func:`guarded` appends
GUARD = "STOP  ; guard: control that runs off the end stops here, as in assembly"


def guarded(program: Any) -> Any:
    """``program`` with a ``STOP`` appended, which a program model keeps frozen.

    In the machine, control that runs off the last line reaches the halting
    address for free; assembled text pays a step for the ``STOP`` the
    assembler adds there. A trained program that ended by running off its
    end (its ``RET`` turned into something else) took one step fewer in
    training than its text takes: with the guard, both take the same steps.
    The compiled program never reaches the guard (it ends in ``RET``).
    """
    from ..machine.program import Instruction

    stop = Instruction("STOP", None, (), None, GUARD)
    return attrs.evolve(program, instructions=(*program.instructions, stop))


#: how a program model's tables start
INITS = ("compiled", "random")


def program_tables(machine: nn.Module) -> list[nn.Parameter]:
    """The program's trainable tables (instruction and operand logits), empty if the machine's are frozen."""
    return [p for name, p in machine.named_parameters(recurse=False) if name.endswith("_logits")]


@contextlib.contextmanager
def adapting(model: nn.Module, adapt: bool | Sequence[str], loss: dict[str, Any] | None = None, *,
             freeze_others: bool = False) -> Iterator[None]:
    """For one train stage: train the tables of the programs ``adapt`` names, under ANC's ``loss``.

    ``adapt``: ``True`` (every program of the machine), a list of program
    names (the lines of the others get no gradient), or ``False`` (the
    tables train only if they were built trainable, and not at all with
    ``freeze_others``). ``loss``: the weights of :class:`ANCObjective` for a
    :class:`ProgramModel`. Everything is as it was after the stage.
    """
    machine = getattr(getattr(model, "computer", None), "machine", None)
    tables = program_tables(machine) if machine is not None else []
    if adapt and not tables:
        raise ValueError("the stage asks to train program tables, but the model's computer has none (no machine, "
                         "or a machine built with frozen programs)")
    saved = [p.requires_grad for p in tables]
    hooks = []
    objective = getattr(model, "objective", None)
    try:
        if adapt:
            names = machine.image.entries if adapt is True else adapt
            unknown = [n for n in names if n not in machine.image.entries]
            if unknown:
                raise ValueError(f"program {unknown[0]!r} is not in the machine's library "
                                 f"({', '.join(machine.image.entries)})")
            lines = torch.tensor([line.program in names for line in machine.image.lines[1:]])  # (lines - 1,)
            for p in tables:
                p.requires_grad_(True)
                if not bool(lines.all()):
                    hooks.append(p.register_hook(lambda g, m=lines: g * m.to(g.device, g.dtype)[:, None]))
        elif freeze_others:
            for p in tables:
                p.requires_grad_(False)
        if loss:
            if not isinstance(model, ProgramModel):
                raise ValueError("ANC's loss weighs a program's run on a memory: it needs a ProgramModel")
            model.objective = ANCObjective.from_dict(loss)
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for p, flag in zip(tables, saved):
            p.requires_grad_(flag)
        if loss and objective is not None:
            model.objective = objective


# -- hard verification ---------------------------------------------------------------------------

@attrs.frozen
class HardRun:
    """A batch run hard: the final ``memory`` ``(batch, cells)`` int64, ``steps`` and ``halted`` ``(batch,)``."""

    memory: torch.Tensor
    steps: torch.Tensor
    halted: torch.Tensor


def adapted_text(machine: nn.Module, initial: Decided | None = None) -> str:
    """The machine's most likely program as assembly text (what training has made of the tables).

    With a learned ``initial`` state (:meth:`InitialState.decided`), its
    constants are the text's immediates, the line it starts at is labelled
    ``start`` (when that is not the program's first line), and a comment at
    the top gives the registers it starts with.
    """
    from ..machine.assembler import disassemble

    image = machine.most_likely_image()
    if initial is None:
        return disassemble(image)
    labels = dict(image.labels)
    first = min(a for a, line in enumerate(image.lines) if a and line.program == image.lines[initial.start].program)
    if initial.start != first:
        labels.setdefault(initial.start, "start")
    text = disassemble(attrs.evolve(image, constants=initial.constants, labels=labels))
    notes = []
    if any(initial.registers):
        notes.append("registers start at " + ", ".join(f"r{k} = {v}" for k, v in enumerate(initial.registers)))
    if initial.start != first:
        notes.append(f"the run starts at {labels[initial.start]}")
    return "".join(f"; learned initial state: {note}\n" for note in notes) + text


def hard_run(machine: nn.Module, numbers: torch.Tensor, program: Any, initial: Decided | None = None) -> HardRun:
    """Run ``program`` sharp (one-hot, exact) on a batch of initial memories ``numbers`` ``(batch, cells)``.

    ``program`` is assembly text (e.g. :func:`adapted_text`: what runs is
    exactly the text written) or a :class:`~diffcomp.machine.Program`. It
    runs on ``machine``'s ALU, cells, registers and step limit; registers
    start at 0 and the run at the program's first line, or as ``initial``
    says (its registers, and its start address, which in :func:`adapted_text`'s
    text is the same address as in the machine).
    """
    from ..machine import Library, Machine, assemble
    from ..machine import exact as integers

    code = assemble(program, name="adapted", registers=machine.n_registers) if isinstance(program, str) else program
    hard = Machine(Library([code]), machine.alu, cells=machine.cells, max_steps=machine.max_steps,
                   registers=machine.n_registers, halt_threshold=0.5, addressing=machine.addressing)
    enc, device = machine.encoding, next(iter(machine.alu.buffers()), torch.empty(0)).device
    batch = numbers.shape[0]
    memory = enc.encode(numbers.to(device), device=device)
    values = initial.registers if initial is not None else (0,) * machine.n_registers
    registers = enc.encode(torch.tensor(values, dtype=torch.long, device=device).expand(batch, -1), device=device)
    start = initial.start if initial is not None else hard.image.entries[code.name]
    if not 0 < start < hard.lines:
        raise AssemblyError(f"the run starts at address {start}, beyond the program (addresses 1..{hard.lines - 1})")
    which = torch.full((batch,), start, dtype=torch.long, device=device)
    hard = hard.to(device)
    with torch.no_grad():
        if integers.supports(hard):
            state = integers.run(hard, registers, memory, which, hard.max_steps)
        else:
            state = hard.run_from(hard.initial_state(registers, memory, which))
    return HardRun(enc.decode(state.memory).cpu(), state.steps.cpu(), state.halted.cpu() >= 0.5)


def verify(model: ProgramModel, dataset: Any) -> dict[str, Any]:
    """The adapted program against the compiled one, both run hard on every item of ``dataset``.

    Returns ``{"adapted": {...}, "compiled": {...}, "steps_ratio", "program"}``
    where each side holds ``success`` (the fraction exactly right on every
    masked cell), ``steps`` (mean machine steps), ``halted`` (fraction that
    halted within the step limit); ``program`` is the adapted assembly text.
    A most likely program that cannot be written as assembly (e.g. one that
    writes a constant register) counts as wrong everywhere, with the reason.
    """
    from ..machine import program as registered

    items = dataset.tensors if hasattr(dataset, "tensors") else dataset
    numbers, answer, mask = items["numbers"], items["answer"], items["mask"]
    machine = model.machine

    def score(run: HardRun) -> dict[str, Any]:
        right = ((run.memory == answer) | ~mask).all(-1) & run.halted
        return {"success": right.float().mean().item(), "steps": run.steps.float().mean().item(),
                "halted": run.halted.float().mean().item(), "examples": int(numbers.shape[0])}

    compiled = score(hard_run(machine, numbers, registered(model.program)))
    initial = model.initial.decided()
    text = adapted_text(machine, initial)
    try:
        adapted = score(hard_run(machine, numbers, text, initial))
    except AssemblyError as exc:
        adapted = {"success": 0.0, "steps": float("nan"), "halted": 0.0, "examples": int(numbers.shape[0]),
                   "error": str(exc)}
    return {"adapted": adapted, "compiled": compiled, "steps_ratio": adapted["steps"] / compiled["steps"],
            "program": text, "initial": attrs.asdict(initial)}


__all__ = ["ANCObjective", "ProgramModel", "InitialState", "Decided", "HardRun", "adapting", "adapted_text", "hard_run", "memory_error",
           "program_tables", "verify", "WEIGHTS", "INITS", "INITIALS"]
