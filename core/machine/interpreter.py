"""The differentiable interpreter ``I: S_t, ι -> S_{t+1}`` and the machine Δ (paper §3.2, eqs. 1-7).

The state is ``S = (M, R, c, h)`` (eq. 1). A program is, per line, a
distribution over instructions and three distributions over registers (the
destination ``o`` and the operands ``a``, ``b``), as in ANC. Each step runs
every instruction at once (superposition), weighted by the instruction
distribution at the counter:

1. ``p = c E``: the probability of each instruction this step; the operand
   and destination distributions are ``c A``, ``c B``, ``c O`` conditioned on
   the machine still running. Operands are read from the registers (eq. 2).
2. Every instruction that produces a value (the ALU ops of eq. 7, ``MOV``,
   ``READ``, ``CALL``'s return address) contributes it weighted by its
   probability; the registers are written with the total (eq. 5). Memory is
   written only by ``WRITE``, in proportion to its weight (eqs. 3-4).
3. The counter follows eq. 6: each line's mass moves to the next line, except
   the part that jumps (``JEZ`` with the probability that its operand is 0,
   ``JMP``/``CALL``/``RET`` always) to the target's distribution over lines.
   ``STOP``'s weight, and any mass that reaches address 0 (the halting
   address), moves to ``h``; ``Σ c + h = 1`` throughout.

Instructions whose weight is exactly zero cost nothing: the ALU receives an op
distribution with exact zeros, and reads, writes and jumps with no weight are
skipped (unless a gradient must flow through their weight).

Example::

    alu = diffcomp.alu("lookup", base=32)
    machine = diffcomp.Machine(diffcomp.program("insertion_sort"), alu, cells=8, max_steps=400)
    memory = alu.encoding.encode([[3, 1, 2, 0, 0, 0, 0, 0]])          # (batch, cells, base)
    registers = alu.encoding.encode([[0] * machine.n_registers])      # (batch, registers, base)
    state = machine.run(registers, memory)
    alu.encoding.decode(state.memory)                                 # tensor([[1, 2, 3, 0, ...]])

With a :class:`~diffcomp.machine.Library` and ``selection`` ``(batch,
n_programs)``, every selected program runs from the same initial state (folded
into the batch) and the final states are mixed by the selection (§3.4).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from ..alu import ALU
from ..errors import AssemblyError
from ..threads import run_on_one_thread
from .memory import Addresses, Memory, Registers
from . import exact as integers
from . import fused, multistep
from .isa import CONTROL_FORMS
from .library import Library, program as registered_program
from .program import Image, Line, Program
from .reference import step as reference_step

#: below this running mass the operand distributions are no longer renormalised (no 1/0)
EPS = 1e-6
#: the ways a run that records a gradient can step (:attr:`Interpreter.stepping`)
STEPPINGS = ("plain", "fused", "compiled")
#: the machine's own instructions (columns of E), before one column per ALU op
CONTROL_COLUMNS = tuple(form.mnemonic for form in CONTROL_FORMS)
#: the per-step weights a step uses by name (the first columns of ``Compiled.W``)
SCALARS = ("STOP", "MOV", "READ", "WRITE", "JEZ", "CALL", "JUMP", "WRITES", "ALU")
S = {name: k for k, name in enumerate(SCALARS)}


@attrs.define
class State:
    """``S = (M, R, c, h)`` (eq. 1) for a batch.

    ``memory`` ``(batch, cells, *shape)``; ``register_file`` ``(batch,
    registers + 1 + constants, *shape)`` (general registers, ``lr``, the
    constant registers); ``counter`` ``(batch, lines)``; ``halted``
    ``(batch,)``; ``steps`` ``(batch,)`` how many steps each row ran before it
    halted.
    """

    memory: Tensor
    register_file: Tensor
    counter: Tensor
    halted: Tensor
    steps: Tensor
    n_registers: int

    @property
    def registers(self) -> Tensor:
        """The general registers ``r0 ..``: ``(batch, registers, *shape)``."""
        return self.register_file[:, : self.n_registers]

    @property
    def link(self) -> Tensor:
        """The link register ``lr``: ``(batch, *shape)``."""
        return self.register_file[:, self.n_registers]


#: a row whose counter holds less running mass than this keeps its state (see :func:`_hold_halted`)
SPENT = 1e-5


def _hold_halted(old: State, new: State, always: bool = False) -> State:
    """``new``, but the rows with (almost) no running mass left (``counter.sum() < SPENT``) keep their ``old`` state.

    A batch runs until its last row reaches the halting threshold, and a row
    past it goes on running what mass it has left (up to ``1 - threshold``).
    Once that is spent, all a row's counter holds is rounding residue, which
    can be negative; stepping it divided the residue by the near-zero running
    mass, and the state grew until it overflowed to NaN. Such a row stops.
    """
    done = old.counter.sum(-1) < SPENT  # (batch,)
    if not always and not bool(done.any()):  # (a run drops spent rows before stepping: see Machine._loop)
        return new

    def keep(before: Tensor, after: Tensor) -> Tensor:
        return torch.where(done.view(-1, *([1] * (after.dim() - 1))), before, after)

    return State(keep(old.memory, new.memory), keep(old.register_file, new.register_file),
                 keep(old.counter, new.counter), keep(old.halted, new.halted), new.steps, new.n_registers)


@attrs.frozen
class Compiled:
    """The program as probabilities, in one dtype, ready for a run.

    ``E`` ``(lines, columns)`` and ``A``/``B``/``O`` ``(lines, registers)``.
    ``W`` is what a step multiplies the counter with: the weights of
    :data:`SCALARS` (instructions, and the groups ``JUMP`` = JMP + CALL + RET,
    ``WRITES`` = everything that writes a register, ``ALU`` = every ALU op),
    then one column per ALU op, then ``A``, ``B``, ``O``: one matrix product
    gives every weight and distribution of the step.
    """

    E: Tensor
    A: Tensor
    B: Tensor
    O: Tensor
    W: Tensor  # (lines, len(SCALARS) + ops + 3 * registers)
    constants: Tensor  # (constants, *shape)
    #: the leading rows of the register file a line can write: a frozen program writes none of the rest (its
    #: constants and the registers it only reads), and a step leaves them as they are (all of them if trainable)
    written: int
    stay: Tensor  # (lines,) 1 - the weight of STOP, JMP, CALL, RET: the mass that falls through (JEZ aside)
    jez: Tensor  # (lines,) the weight of JEZ
    not_halting: Tensor  # (lines,) 0 at the halting address, 1 elsewhere


class Interpreter(nn.Module):
    """One step of the differentiable register machine over a linked :class:`Image`.

    Compiled programs are frozen (buffers holding one-hot distributions) by
    default; ``trainable=True`` holds them as logits (parameters), initialised
    "sharpened" as in ANC: ``sharpness`` times the one-hot rows. Sharpness
    trades exactness for gradient: each choice leaks about ``e^-sharpness`` of
    its mass, and a leak feeds on itself over a run (roughly geometrically in
    the number of steps), so long programs need sharp logits — at 25 a
    40-step insertion sort still decodes exactly, at 10 it does not.
    """

    def __init__(self, image: Image, alu: ALU, *, cells: int, halt_threshold: float = 0.99,
                 trainable: bool = False, sharpness: float = 25.0, strict: bool = False,
                 addressing: str = "wrap") -> None:
        super().__init__()
        if not isinstance(alu, ALU):
            raise TypeError(f"the machine needs a diffcomp.ALU (e.g. diffcomp.alu('lookup', base=128)), "
                            f"got {type(alu).__name__}")
        if not 0 < halt_threshold <= 1:
            raise ValueError(f"halt_threshold must be in (0, 1], got {halt_threshold!r}")
        self.image, self.alu, self.encoding = image, alu, alu.encoding
        self.ops: tuple[str, ...] = tuple(alu.ops)
        self.columns = CONTROL_COLUMNS + tuple(op.upper() for op in self.ops)
        self.column = {name: k for k, name in enumerate(self.columns)}
        self._check_ops(image)
        self.memory = Memory(alu.encoding, cells, addressing)
        self.cells, self.halt_threshold, self.trainable, self.strict = cells, halt_threshold, trainable, strict
        #: skip instructions without weight when no gradient is needed; each step then reads the weights back
        #: to the host (a sync): set False for CUDA graphs and torch.compile, which need a step without one
        self.skipping = True
        self.stepping, self.steps_per_call = "fused", 8
        self.lines = len(image)
        self.targets = Addresses(alu.encoding, self.lines)  # a number -> a distribution over lines

        E, A, B, O = self._one_hot(image)
        # which of SCALARS some line can run: a weight that is always exactly 0 is never needed
        self.live = tuple(bool(x) for x in self._scalars(E).any(0).tolist())
        if trainable:
            self.live = (True,) * len(SCALARS)
            self.E_logits = nn.Parameter(sharpness * E[1:])
            self.A_logits = nn.Parameter(sharpness * A[1:])
            self.B_logits = nn.Parameter(sharpness * B[1:])
            self.O_logits = nn.Parameter(sharpness * O[1:])
        else:
            for name, x in zip("EABO", (E, A, B, O)):
                self.register_buffer(name, x, persistent=False)
        self.register_buffer("constants", alu.encoding.encode(list(image.constants)), persistent=False)
        self.register_buffer("not_halting", (torch.arange(self.lines) > 0).float(), persistent=False)

    @property
    def addressing(self) -> str:
        """How a memory address beyond the cells is taken: ``"wrap"`` or ``"zero"`` (see :class:`Machine`)."""
        return self.memory.addressing

    @property
    def stepping(self) -> str:
        """How a run that records a gradient steps (where :func:`.fused.supports` the machine; else, and without
        a gradient, ``"plain"``).

        ``"fused"`` (the default: one autograd node a step, the backward
        written out, :mod:`.fused`), ``"compiled"`` (the same, compiled by
        ``torch.compile`` where it can be, :attr:`steps_per_call` steps a
        call, :mod:`.multistep`: a minute or two to compile, then faster) or
        ``"plain"`` (this module's step, differentiated by autograd operation
        by operation). Every way gives the same results.
        """
        return self._stepping

    @stepping.setter
    def stepping(self, value: str) -> None:
        if value not in STEPPINGS:
            raise ValueError(f"stepping must be one of {', '.join(map(repr, STEPPINGS))}, got {value!r}")
        self._stepping = value

    @property
    def steps_per_call(self) -> int:
        """The steps one compiled call advances (``stepping = "compiled"``; 1: one step a call, :mod:`.fused`)."""
        return self._steps_per_call

    @steps_per_call.setter
    def steps_per_call(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"steps_per_call must be a whole number >= 1, got {value!r}")
        self._steps_per_call = value

    # -- the program --------------------------------------------------------------------------

    def _check_ops(self, image: Image) -> None:
        for line in image.lines[1:]:
            if line.mnemonic not in self.column:
                i = line.instruction
                raise AssemblyError(f"{line.mnemonic} needs the ALU op {line.mnemonic.lower()!r}, which the ALU "
                                    f"{self.alu.name}({self.encoding}) lacks; its ops: {', '.join(self.ops)}",
                                    i.line if i else None, i.source if i else None)

    def _one_hot(self, image: Image) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        L, R, K = len(image), image.register_file, len(self.columns)
        E, A, B, O = torch.zeros(L, K), torch.zeros(L, R), torch.zeros(L, R), torch.zeros(L, R)
        for address, line in enumerate(image.lines):
            if address:  # the halting address runs nothing
                E[address, self.column[line.mnemonic]] = 1
            A[address, line.a] = B[address, line.b] = O[address, line.out] = 1
        return E, A, B, O

    def compiled(self, dtype: torch.dtype, device: torch.device) -> Compiled:
        """The program's distributions in ``dtype`` on ``device``, once per run."""
        if self.trainable:
            def rows(logits: Tensor, first: Tensor) -> Tensor:
                return torch.cat([first, logits.softmax(-1)]).to(dtype)

            zero = self.E_logits.new_zeros(1, len(self.columns))
            first = nn.functional.one_hot(torch.zeros(1, dtype=torch.long, device=zero.device),
                                          self.image.register_file).to(zero.dtype)
            E, A, B, O = rows(self.E_logits, zero), rows(self.A_logits, first), rows(self.B_logits, first), \
                rows(self.O_logits, first)
        else:
            E, A, B, O = (x.to(dtype) for x in (self.E, self.A, self.B, self.O))
        E, A, B, O = (x.to(device) for x in (E, A, B, O))
        return Compiled(E, A, B, O, torch.cat([self._scalars(E), E[:, len(CONTROL_COLUMNS):], A, B, O], 1),
                        self.constants.to(device, dtype), self._written(),
                        1 - self._scalars(E)[:, [S["STOP"], S["JUMP"]]].sum(1),
                        E[:, self.column["JEZ"]], self.not_halting.to(device, dtype))

    def _written(self) -> int:
        """:attr:`Compiled.written`: one past the last register any line of a frozen program names as its
        destination (the whole register file for a trainable program, whose writes may go anywhere).

        Every line counts, not only the lines that write: a step writes at
        the counter's mixture of destinations with the mixture's write
        probability (eq. 5), so a destination named by a line that does not
        write is still written when another line does."""
        if self.trainable:
            return self.image.register_file
        return max(line.out for line in self.image.lines) + 1

    def _scalars(self, E: Tensor) -> Tensor:
        """The weights of :data:`SCALARS` per line: ``(lines, len(SCALARS))``."""
        col, alu = self.column, E[:, len(CONTROL_COLUMNS):].sum(-1)
        jump = E[:, col["JMP"]] + E[:, col["CALL"]] + E[:, col["RET"]]
        writes = alu + E[:, col["MOV"]] + E[:, col["READ"]] + E[:, col["CALL"]]
        named = [E[:, col[name]] for name in SCALARS[:6]]
        return torch.stack([*named, jump, writes, alu], 1)

    def most_likely_image(self) -> Image:
        """The program as the argmax of each distribution (what a trained program has become)."""
        prog = self.compiled(torch.float32, torch.device("cpu"))
        E, A, B, O = (x.argmax(-1).tolist() for x in (prog.E, prog.A, prog.B, prog.O))
        lines = [self.image.lines[0]] + [Line(self.columns[E[k]], O[k], A[k], B[k], None, line.program)
                                         for k, line in enumerate(self.image.lines) if k]
        return attrs.evolve(self.image, lines=tuple(lines))

    def resize_memory(self, cells: int) -> None:
        """Give the machine ``cells`` memory cells (with ``addressing="wrap"``, addresses are then taken modulo
        the new count).

        Nothing the machine learns depends on the count, so a machine built
        for short inputs can run longer ones.
        """
        self.memory = Memory(self.encoding, cells, self.addressing)
        self.cells = cells

    def replace_alu(self, alu: ALU) -> None:
        """Swap the ALU (e.g. a table for a circuit): same encoding, every op the program runs."""
        if alu.encoding != self.encoding:
            raise ValueError(f"the new ALU's numbers are {alu.encoding}, the machine's are {self.encoding}; "
                             "wrap it with diffcomp.swap(...) to convert")
        missing = [op for op in self.ops if op not in alu.ops]
        if missing:
            raise ValueError(f"the new ALU lacks op(s) {', '.join(missing)} that the machine runs; it has "
                             f"{', '.join(alu.ops)}")
        self.alu = alu

    # -- one step -----------------------------------------------------------------------------

    def forward(self, state: State, program: Compiled | None = None) -> State:
        """``S_{t+1} = I(S_t)``: one step of every instruction in superposition."""
        return self._step(state, program or self.compiled(state.counter.dtype, state.counter.device))

    def _step(self, state: State, prog: Compiled, hold: bool = True) -> State:
        """:meth:`forward`; ``hold=False`` when the caller has already taken out the spent rows (a run does)."""
        n, ops = len(SCALARS), len(self.ops)
        c, R, M = state.counter, state.register_file, state.memory  # (batch, lines), (batch, regs, *shape), ...
        mix = c @ prog.W  # (batch, scalars + ops + 3·regs): every weight and distribution of this step at once
        running = c.sum(-1, keepdim=True).clamp_min(EPS)  # condition the operands on not having halted
        abo = (mix[:, n + ops:] / running).unflatten(1, (3, -1))  # (batch, 3, regs): a, b, o
        u, v = Registers.read(R, abo[:, :2]).unbind(1)  # (batch, *shape) each: the operands (eq. 2)
        weight = mix[:, :n].unbind(1)  # (batch,) each: the probability that each of SCALARS runs now

        # skip what has no weight, unless a gradient flows through its weight (then ∂/∂weight needs it)
        skip = self.skipping and not (torch.is_grad_enabled() and mix.requires_grad)
        active = (mix[:, :n] != 0).any(0).tolist() if skip or self.strict else None  # one sync

        def needed(name: str) -> bool:
            return self.live[S[name]] and (not skip or active[S[name]])

        def rows(name: str) -> Tensor:  # a weight against numbers: (batch, 1, ...)
            return _rows(weight[S[name]], u)

        if self.strict:
            self._check_sharp(c, weight, u, v, active)

        # the value written to the destination register: each writer weighted by its probability (eq. 5)
        terms = []  # Σ_k p_k c_k
        if needed("ALU"):
            den = rows("ALU").clamp_min(EPS)  # the ALU sees a distribution over its ops
            terms.append(den * self.alu(self._alu_ops(mix[:, n:n + ops] / den.view(-1, 1)), u, v))  # eq. 7
        if needed("MOV"):
            terms.append(rows("MOV") * u)
        address = self.memory.address(u) if needed("READ") or needed("WRITE") else None  # (batch, cells)
        if needed("READ"):
            terms.append(rows("READ") * self.memory.load(M, address))  # eq. 2
        if needed("CALL"):  # the return address c + 1, as a number
            after = torch.roll(c * prog.E[:, self.column["CALL"]], 1, dims=-1)  # (batch, lines)
            terms.append(self.encoding.from_categorical(after))
        value = functools.reduce(torch.add, terms) if terms else torch.zeros_like(u)
        k = prog.written  # no line names a row past k as its destination: those rows stay as they are
        written = Registers.write(R[:, :k], abo[:, 2, :k], value, weight[S["WRITES"]])  # eq. 5
        R = torch.cat([written, R[:, k:]], 1) if k < R.shape[1] else written
        if needed("WRITE"):
            M = Memory.write(M, address, rows("WRITE") * v, weight[S["WRITE"]])  # eqs. 3-4

        # the counter (eq. 6): fall through to inc(c) unless jumping; STOP and address 0 halt
        z = self.encoding.probability_zero(u)  # (batch,) P(a = 0), the JEZ condition
        counter = torch.roll(c * (prog.stay - z[:, None] * prog.jez), 1, dims=-1)  # inc(c); the end runs onto 0
        if needed("JUMP"):
            counter = counter + weight[S["JUMP"]][:, None] * self.targets(u)
        if needed("JEZ"):
            counter = counter + (weight[S["JEZ"]] * z)[:, None] * self.targets(v)
        halted = state.halted + weight[S["STOP"]] + counter[:, 0]
        # the mass at address 0 has moved to h. Rounding can leave a line's mass a little below 0, and a negative
        # mass feeds on itself (a JEZ weighs the jump by it, an ALU op by it over a small total), growing
        # geometrically over a long run until the state overflows: the counter is held at or above -SPENT
        # (a floor, not 0, so that a finite difference at a decided counter sees no kink)
        counter = (counter * prog.not_halting).clamp_min(-SPENT)
        steps = state.steps + (state.halted < self.halt_threshold).long()
        new = State(M, R, counter, halted, steps, state.n_registers)
        return _hold_halted(state, new, not self.skipping) if hold else new

    def _confined_step(self, state: State, prog: Compiled, hold: bool) -> State:
        """:meth:`_step` with its small operations on one thread, forward and backward (:mod:`diffcomp.threads`).

        A step is a few hundred operations on tensors of a few thousand
        numbers; spread over threads each pays a barrier, many times slower
        on a busy machine. With one torch thread (or large tensors) this is
        :meth:`_step` itself.
        """
        names = [f.name for f in attrs.fields(Compiled) if isinstance(getattr(prog, f.name), Tensor)]

        def step(M: Tensor, R: Tensor, c: Tensor, h: Tensor, steps: Tensor, *tensors: Tensor):
            new = self._step(State(M, R, c, h, steps, state.n_registers),
                             attrs.evolve(prog, **dict(zip(names, tensors))), hold)
            return new.memory, new.register_file, new.counter, new.halted, new.steps

        out = run_on_one_thread(step, state.memory, state.register_file, state.counter, state.halted, state.steps,
                                *(getattr(prog, name) for name in names))
        return State(*out, state.n_registers)

    def _alu_ops(self, q: Tensor) -> Tensor:
        """Op probabilities in the machine's op order -> the ALU's op order (after a swap)."""
        if tuple(self.alu.ops) == self.ops:
            return q
        index = torch.tensor([self.alu.ops.index(op) for op in self.ops], device=q.device)
        return q.new_zeros(q.shape[0], len(self.alu.ops)).index_copy(1, index, q)

    def _alu_ops_back(self, g: Tensor) -> Tensor:
        """A gradient over the ALU's ops -> over the machine's ops (the adjoint of :meth:`_alu_ops`)."""
        if tuple(self.alu.ops) == self.ops:
            return g
        return g[:, [self.alu.ops.index(op) for op in self.ops]]

    def _check_sharp(self, c: Tensor, weight: Sequence[Tensor], u: Tensor, v: Tensor,
                     active: list[bool]) -> None:
        """Sharp runs: an address beyond memory or a jump beyond the program is an error, not a wrap."""
        decode = self.encoding.decode
        checks = []  # (rows, numbers, limit, what)
        if active[S["READ"]] or active[S["WRITE"]]:
            checks.append((weight[S["READ"]] + weight[S["WRITE"]] > 0.5, u, self.cells, "memory address"))
        if active[S["JUMP"]]:
            checks.append((weight[S["JUMP"]] > 0.5, u, self.lines, "jump to"))
        if active[S["JEZ"]]:
            checks.append((weight[S["JEZ"]] * self.encoding.probability_zero(u) > 0.5, v, self.lines, "jump to"))
        for rows, x, limit, what in checks:
            bad = rows & (decode(x) >= limit)
            if bool(bad.any()):
                r = int(bad.nonzero()[0, 0])
                self._out_of_range(int(c[r].argmax()), int(decode(x[r])), what)

    def _out_of_range(self, address: int, number: int, what: str) -> None:
        """The error of a strict run whose instruction at ``address`` addressed memory or jumped beyond it."""
        where = self.image.where(address)
        if what == "memory address":
            raise ValueError(f"{where}: memory address {number} is out of range: the memory has "
                             f"{self.cells} cells (0..{self.cells - 1}); give the run more cells")
        raise ValueError(f"{where}: jump to address {number}, beyond the linked program "
                         f"(addresses 0..{self.lines - 1})")

    def _exact_program(self) -> integers.Program:
        """The image as integer arrays for :mod:`.exact`, built once per ALU."""
        if getattr(self, "_integers", (None, None))[0] is not self.alu:
            self._integers = (self.alu, integers.Program.of(self))
        return self._integers[1]


def _rows(weights: Tensor, like: Tensor) -> Tensor:
    """``(batch,)`` weights broadcast against ``(batch, *shape)``."""
    return weights.reshape(-1, *([1] * (like.dim() - 1)))


class Machine(Interpreter):
    """The differentiable computer Δ over a program or a library Λ (paper §3, Fig. 2).

    ``Machine(program_or_library, alu, *, cells, max_steps=1000, halt_threshold=0.99,
    entry_points=None, registers=None, trainable=False, sharpness=25.0, strict=False, addressing="wrap")``

    - ``program_or_library``: a :class:`Program`, a :class:`Library`, a
      sequence of programs, or a registered program's name;
    - ``entry_points``: the programs a ``selection`` chooses among (default:
      the program, or every program of the library, in order);
    - ``registers``: how many general registers (default: as many as the
      programs name);
    - ``cells``: memory cells; ``max_steps`` and ``halt_threshold``: a run
      stops when every row's halting probability reaches the threshold, or
      after ``max_steps``;
    - ``addressing``: a memory address beyond the cells is taken modulo
      them (``"wrap"``, the paper's) or points nowhere (``"zero"``: it reads
      0 and a write there is lost; see :mod:`diffcomp.machine.memory`). With
      ``"wrap"`` a learned argument can answer by wrapping (``k - 1 +
      cells`` for "letter k"), which holds at the trained memory size only.

    :meth:`run` takes ``registers`` ``(batch, k, *shape)`` and ``memory``
    ``(batch, cells', *shape)`` as distributions (``k <= n_registers`` and
    ``cells' <= cells``; the rest start at 0) and an optional ``selection``
    ``(batch, n_programs)``, and returns the final :class:`State`.
    """

    def __init__(self, program: Program | Library | Sequence[Program] | str, alu: ALU, *, cells: int,
                 max_steps: int = 1000, halt_threshold: float = 0.99, entry_points: Sequence[str] | None = None,
                 registers: int | None = None, trainable: bool = False, sharpness: float = 25.0,
                 strict: bool = False, addressing: str = "wrap") -> None:
        library, default = _as_library(program)
        entries = tuple(default if entry_points is None else entry_points)
        if not isinstance(alu, ALU):
            raise TypeError(f"the machine needs a diffcomp.ALU (e.g. diffcomp.alu('lookup', base=128)), "
                            f"got {type(alu).__name__}")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        image = library.link(entries, modulus=alu.encoding.modulus, registers=registers)
        super().__init__(image, alu, cells=cells, halt_threshold=halt_threshold, trainable=trainable,
                         sharpness=sharpness, strict=strict, addressing=addressing)
        self.entry_points: tuple[str, ...] = entries
        self.max_steps, self.library = max_steps, library

    @property
    def n_registers(self) -> int:
        """The general registers ``r0 ..`` a run's ``registers`` tensor may fill."""
        return self.image.registers

    @property
    def n_programs(self) -> int:
        return len(self.entry_points)

    # -- runs ---------------------------------------------------------------------------------

    def initial_state(self, registers: Tensor, memory: Tensor, entries: Tensor) -> State:
        """``S_0``: the given registers and memory, ``lr`` at the halting address, ``c`` at each row's entry."""
        batch, enc = registers.shape[0], self.encoding
        dtype, device = registers.dtype, registers.device

        def zeros(count: int) -> Tensor:
            return enc.encode(torch.zeros(batch, count, dtype=torch.long), dtype=dtype, device=device)

        prog_constants = self.constants.to(device, dtype).expand(batch, *self.constants.shape)
        R = torch.cat([registers, zeros(self.n_registers - registers.shape[1] + 1), prog_constants], dim=1)
        M = torch.cat([memory.to(dtype), zeros(self.cells - memory.shape[1])], dim=1)
        counter = nn.functional.one_hot(entries, self.lines).to(dtype)  # (batch, lines)
        return State(M, R, counter, registers.new_zeros(batch), torch.zeros(batch, dtype=torch.long, device=device),
                     self.n_registers)

    def run(self, registers: Tensor, memory: Tensor, selection: Tensor | None = None, *,
            max_steps: int | None = None, trace: Callable[[int, State], Any] | None = None,
            reference: bool = False, exact: bool | None = None) -> State:
        """Run from ``registers`` and ``memory`` until every row halts or ``max_steps``; the final state.

        With ``selection`` ``(batch, n_programs)``, each selected program runs
        from the same initial state (programs folded into the batch; zero
        weights skipped unless the selection needs a gradient) and the final
        states are mixed by the selection (paper §3.4). ``trace(step, state)``
        is called before each step. ``reference=True`` steps with the
        reference step (:mod:`.reference`, eqs. 2-6 as written) instead.

        When nothing is in doubt — every number of ``registers`` and
        ``memory`` decided (one-hot), ``selection`` one program per row, a
        frozen program, and no gradient asked for (``torch.no_grad()``, or
        no input that requires one) — the run is exact on integers
        (:mod:`.exact`): the same final state, many times faster.
        ``exact=False`` forces the soft machine; ``exact=True`` insists on
        the integer run (an error if something is in doubt).
        """
        self._check_inputs(registers, memory, selection)
        batch, device = registers.shape[0], registers.device
        entries = torch.tensor([self.image.entries[name] for name in self.entry_points], device=device)
        steps = self.max_steps if max_steps is None else max_steps
        if exact is not False and not reference:
            doubt = self._doubt(registers, memory, selection)
            if exact and doubt:
                raise ValueError(f"exact=True, but the run is not decided: {doubt}")
            if not doubt:
                which = entries[0].expand(batch) if selection is None else entries[selection.argmax(-1)]
                return integers.run(self, registers, memory, which, steps, trace)
        if selection is None:
            rows = torch.arange(batch, device=device)
            start = self.initial_state(registers, memory, entries[0].expand(batch))
        else:
            if selection.requires_grad:
                rows, which = (x.flatten() for x in torch.meshgrid(torch.arange(batch, device=device),
                                                                   torch.arange(self.n_programs, device=device),
                                                                   indexing="ij"))
            else:
                rows, which = selection.nonzero(as_tuple=True)
            start = self.initial_state(registers[rows], memory[rows], entries[which])
        state = self._loop(start, steps, trace, reference)
        if selection is None:
            return state
        return _mix(state, selection[rows, which], rows, batch)

    def run_from(self, state: State, *, max_steps: int | None = None,
                 trace: Callable[[int, State], Any] | None = None) -> State:
        """Run the soft machine from a given ``S_0`` (e.g. :meth:`initial_state` with a learned start, as ANC
        learns its registers and instruction pointer) until every row halts or ``max_steps``: the final state."""
        return self._loop(state, self.max_steps if max_steps is None else max_steps, trace)

    def _doubt(self, registers: Tensor, memory: Tensor, selection: Tensor | None) -> str | None:
        """Why this run cannot be exact on integers (None if it can)."""
        inputs = (registers, memory) if selection is None else (registers, memory, selection)
        if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
            return "a gradient is asked for"
        if not integers.supports(self):
            return ("the program is trainable" if self.trainable else
                    f"the ALU {self.alu.name!r} does not promise exact results on one-hot inputs"
                    if not getattr(self.alu, "exact", False) else f"{self.encoding} is too wide for int64")
        if not (self.encoding.is_decided(registers) and self.encoding.is_decided(memory)):
            return "the registers or the memory hold numbers in doubt (not exactly encoded integers)"
        if selection is not None and not (((selection == 0) | (selection == 1)).all()
                                          and (selection.sum(-1) == 1).all()):
            return "the selection is not one program per row"
        return None

    def _loop(self, state: State, max_steps: int, trace: Callable[[int, State], Any] | None,
              reference: bool = False) -> State:
        """Step until every row halts or ``max_steps``.

        A row whose running mass is spent (see :func:`_hold_halted`) would
        keep its state from then on, so it leaves the batch: later steps run
        on the rows still running, and the final states are put back together.
        """
        program = self.compiled(state.counter.dtype, state.counter.device)
        # a run takes the spent rows out before each step unless it traces (then the step holds them)
        hold = trace is not None or not self.skipping
        if reference:
            advance = functools.partial(reference_step, self)
        elif self.stepping != "plain" and not hold and fused.supports(self) is None and _records(state, program):
            if self.stepping == "compiled" and self.steps_per_call > 1:
                return multistep.run(self, state, program, max_steps)
            advance = functools.partial(fused.step, self, compiled=self.stepping == "compiled")
        else:
            advance = functools.partial(self._confined_step, hold=hold)
        batch, threshold = state.counter.shape[0], self.halt_threshold
        rows = torch.arange(batch, device=state.counter.device)  # the batch rows `state` holds
        finished: list[tuple[Tensor, State, int]] = []  # (rows, their final state, the step they left at)
        stuck = False  # a row left below the halting threshold: the run goes on to max_steps
        ran = max_steps
        for step in range(max_steps):
            if trace is None:
                spent = state.counter.sum(-1) < SPENT  # (rows,)
                if bool(spent.any()):
                    finished.append((rows[spent], _select(state, spent), step))
                    stuck = stuck or bool((finished[-1][1].halted < threshold).any())
                    state, rows = _select(state, ~spent), rows[~spent]
            if not len(rows) or (not stuck and bool((state.halted >= threshold).all())):
                ran = max_steps if stuck else step
                break
            if trace is not None:
                trace(step, state)
            state = advance(state, program)
        if not finished:
            return state
        # a row that left at step s would have counted a step each later step while below the threshold
        finished = [(r, attrs.evolve(s, steps=s.steps + (s.halted < threshold).long() * (ran - at)), at)
                    for r, s, at in finished]
        parts = [(rows, state)] + [(r, s) for r, s, _ in finished]
        index = torch.cat([r for r, _ in parts])

        def join(name: str) -> Tensor:
            x = torch.cat([getattr(s, name) for _, s in parts])
            return x.new_zeros(batch, *x.shape[1:]).index_copy(0, index, x)

        return State(join("memory"), join("register_file"), join("counter"), join("halted"), join("steps"),
                     state.n_registers)

    def _check_inputs(self, registers: Tensor, memory: Tensor, selection: Tensor | None) -> None:
        enc, shape = self.encoding, tuple(self.encoding.shape)
        for name, x, most in (("registers", registers, self.n_registers), ("memory", memory, self.cells)):
            if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
                raise ValueError(f"{name} must be a floating-point tensor of encoded numbers (e.g. "
                                 f"machine.encoding.encode(ints)), got {getattr(x, 'dtype', type(x).__name__)}")
            if x.dim() != 2 + len(shape) or tuple(x.shape[2:]) != shape or x.shape[1] > most:
                what = "registers" if name == "registers" else "cells"
                raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (batch, {what} <= {most}, "
                                 f"{', '.join(map(str, shape))}): one number per row in {enc}")
        if memory.shape[0] != registers.shape[0]:
            raise ValueError(f"registers and memory have batch sizes {registers.shape[0]} and {memory.shape[0]}")
        if selection is None:
            if self.n_programs != 1:
                raise ValueError(f"this machine has {self.n_programs} entry points ({', '.join(self.entry_points)}); "
                                 f"pass selection, a (batch, {self.n_programs}) tensor of program probabilities")
        elif tuple(selection.shape) != (registers.shape[0], self.n_programs) or not selection.dtype.is_floating_point:
            raise ValueError(f"selection has shape {tuple(selection.shape)} and dtype {selection.dtype}; expected "
                             f"floating-point probabilities of shape (batch, {self.n_programs}) over "
                             f"{', '.join(self.entry_points)}")


def _records(state: State, program: Compiled) -> bool:
    """Whether a run from ``state`` records a graph for a gradient (else the plain step skips what has no weight)."""
    tensors = (state.memory, state.register_file, state.counter, state.halted, program.W)
    return torch.is_grad_enabled() and any(x.requires_grad for x in tensors)


def _select(state: State, rows: Tensor) -> State:
    """The rows ``rows`` (a boolean mask) of a batch's state."""
    return State(state.memory[rows], state.register_file[rows], state.counter[rows], state.halted[rows],
                 state.steps[rows], state.n_registers)


def _mix(state: State, weights: Tensor, rows: Tensor, batch: int) -> State:
    """Σ_p s_p S_p: mix the folded per-program final states back into the batch (paper §3.4)."""
    def mix(x: Tensor) -> Tensor:
        w = weights.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return x.new_zeros(batch, *x.shape[1:]).index_add(0, rows, w * x)

    steps = state.steps.new_zeros(batch).scatter_reduce(0, rows, state.steps, "amax")
    return State(mix(state.memory), mix(state.register_file), mix(state.counter), mix(state.halted), steps,
                 state.n_registers)


def _as_library(program: Any) -> tuple[Library, tuple[str, ...]]:
    if isinstance(program, Library):
        return program, program.names
    if isinstance(program, Program):
        return Library([program]), (program.name,)
    if isinstance(program, str):
        p = registered_program(program)
        return Library([p]), (p.name,)
    if isinstance(program, Sequence) and program and all(isinstance(p, Program) for p in program):
        library = Library(program)
        return library, library.names
    raise TypeError(f"a machine runs a Program, a Library, a list of Programs or a registered program's name; "
                    f"got {type(program).__name__}")


__all__ = ["State", "Interpreter", "Machine", "Compiled", "EPS"]
