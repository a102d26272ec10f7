"""What sits between the parser and the answer head: an ALU, or a machine over a library.

A computer says what it needs (:meth:`Computer.targets`: parser targets) and
returns named outputs, each ``(batch, count, *encoding.shape)``:

- :class:`ALUComputer` calls an ALU once (one-step arithmetic, §4.2): it needs
  an ``op`` choice and two ``operands``; it returns ``result``.
- :class:`MachineComputer` runs a :class:`diffcomp.Machine` over a library
  (§3.4): it needs ``registers``, ``memory`` and a ``program`` selection; every
  program runs from the same initial state and the final states are mixed by
  the selection. It returns ``registers`` and ``memory``. With ``steps = K >
  1`` it runs a chain: a program chosen per step, each step starting from the
  memory and registers the one before left (:func:`diffcomp.machine.run_chain`).
- :class:`NoComputer` is the baseline without a computer: the parser's own
  classification of each answer number is the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..alu import ALU
from ..encodings import NumberEncoding
from .parsers import Target

SELECTIONS = ("mix", "sample", "marginal")
#: how a chain is chosen: one classifier per step (its probability their product), or one over whole chains
CHOICES = ("steps", "chains")
#: how a chain is decided in evaluation: the most likely chain, or the most likely member of the most likely
#: group of chains that compute the same function where the answer is read
DECISIONS = ("chain", "function")
#: the most values ``argument_search`` tries (each chain that reads the argument runs once per value)
MAX_SEARCHED_VALUES = 1024
#: with ``selection = "marginal"``, training runs every chain on the decided parse when there are at most this many
DECIDED_CHAINS = 256
#: inputs on which :meth:`MachineComputer.answers_alike` compares two chains, and each program's step budget there
ALIKE_PROBES, ALIKE_STEPS = 192, 4096


class Computer(nn.Module):
    """The interface: ``alu``, :attr:`encoding`, :meth:`targets`, :meth:`outputs`, ``forward(inputs, right=None)``.

    ``right`` (given in training, by a model that knows the answers): a
    function ``right(outputs, count) -> (batch, count)`` bool saying which of
    ``count`` runs per question (outputs as ``forward`` returns them, a
    question's rows together) answer right. A computer that chooses what to
    run may ask it; the others ignore it.
    """

    alu: ALU
    #: options a train stage may change for its own duration (a stage's ``computer`` table): options of how the
    #: computer trains, never of its weights or of what it computes at evaluation
    stage_options: ClassVar[tuple[str, ...]] = ()

    @property
    def encoding(self) -> NumberEncoding:
        return self.alu.encoding

    def set_stage_options(self, **changes: Any) -> dict[str, Any]:
        """Apply a stage's ``changes``; returns the values they replaced (to restore after the stage). A
        ``ValueError`` names an option no stage may change, or a value this computer cannot train with; then
        nothing changes."""
        unknown = [name for name in changes if name not in self.stage_options]
        if unknown:
            allowed = ", ".join(self.stage_options) or "none"
            raise ValueError(f"a stage cannot change the computer option {unknown[0]!r}; the options a stage may "
                             f"change for this computer: {allowed}")
        current = {name: getattr(self, name) for name in self.stage_options}
        self._check_stage_options({**current, **changes})
        for name, value in changes.items():
            setattr(self, name, type(current[name])(value))
        return {name: current[name] for name in changes}

    def _check_stage_options(self, options: dict[str, Any]) -> None:
        """``ValueError`` unless this computer can train with ``options`` (every name of :attr:`stage_options`)."""

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

    def forward(self, inputs: dict[str, torch.Tensor], right=None) -> dict[str, torch.Tensor]:
        operands = inputs["operands"]  # (batch, 2, *shape)
        result = self.alu(inputs["op"][:, 0], operands[:, 0], operands[:, 1])  # (batch, *shape)
        return {"result": result.unsqueeze(1)}


class MachineComputer(Computer):
    """A differentiable machine over a library of programs, selected by a distribution (§3.4).

    ``machine`` is a :class:`diffcomp.Machine` whose ``run(registers, memory,
    selection)`` returns a state with ``.registers`` ``(batch, registers, *shape)``
    and ``.memory`` ``(batch, cells, *shape)``. Compiled programs are frozen
    (buffers) unless the machine was built with trainable programs.

    - ``steps``: how many programs run one after another (a chain; default 1).
      The parser chooses a program per step (target ``program``, ``steps``
      outputs); a library with ``identity`` lets a chain stop early.
    - ``choice``: ``"steps"`` (the default) chooses a chain one step at a
      time, each step a classifier of its own, ``pi(c) = prod_k q_k(c_k)``;
      ``"chains"`` (``selection = "marginal"`` only) chooses whole chains,
      one classifier over the ``programs ** steps`` of them (target
      ``chain``, one output; chain ``c`` runs programs ``c_1 ... c_K`` with
      ``c = sum_k c_k * programs ** (K - k)``, the first step the most
      significant), ``pi(c)`` its probability. With per-step choices a chain
      two steps need is only as likely as the product of two probabilities
      that other chains push down: where one program answers a question
      right by chance on many strings (``nth`` alone, its argument at the
      position of "the 3rd smallest" letter), its first step and its
      ``identity`` both rise, and the chain that is always right
      (``insertion_sort`` then ``nth``) falls with the square of either,
      too unlikely to gain from being right. Over whole chains it falls
      only as any wrong chain does. The per-step choices then read
      ``program`` as the chain distribution's marginals (what the
      explanation and the decided run's steps show), and the decision is
      the most likely chain.
    - ``arguments``: the general registers the parser writes (e.g. ``(6,)``,
      the argument register of the sequence library); the others start at 0.
      ``None``: the parser writes every register.
    - ``selection``: ``"mix"`` runs every program with weight and mixes the
      final states by the selection (exact and differentiable, one run per
      program); ``"sample"`` draws one program per step and example in
      training (only drawn programs run) and sets :attr:`log_q` for the
      model's score-function gradient; in evaluation the parser's decision
      (its most likely program) runs. Without a gradient (evaluation), the
      decided programs run on machines of their own program alone: each
      group of rows stops when its own program halts, on a small image with
      only its own ALU ops. (In training the whole library's machine runs
      the drawn programs: on soft inputs a program seldom halts before
      ``max_steps``, and one run of every row costs less than one per program.)
      ``"marginal"``: each question runs ``samples`` whole chains, each one
      program per step, on rows of its own, and the answer's probability is
      the marginal over them, ``P = sum_c pi(c) P_c(answer)`` with ``pi(c)``
      the product of the chain's step probabilities (output ``weight``: see
      :func:`~diffcomp.model.heads.marginal_output`). The chains are the
      most likely half of the ``samples`` (``pi`` ranks them), then, in
      training, others drawn uniformly (so every chain is tried), in
      evaluation the next most likely. With ``samples`` at least the number
      of chains (``programs ** steps``) it is the exact expectation. In
      training the two things a soft run mixes are trained apart: the soft
      runs train the parse (memory, arguments, readout), the chains run
      weighed alike (a chain drawn to explore trains the arguments it reads,
      however unlikely it is); the choice learns from every chain run on the
      *decided* parse (exact and cheap; output ``decided``), by ``-log`` of
      the probability of choosing a chain that answers right
      (:func:`~diffcomp.model.heads.right_choice_loss`). On a soft parse
      every program's answer is blurred alike, so a soft run says little
      about which program is right; a decided run says it exactly.
    - ``samples``: with ``"sample"``, how many chains each question draws in
      training (its rows repeated; at least 2 gives each draw a baseline from
      the same question's other draws, see :func:`~diffcomp.model.heads.answer_output`);
      :attr:`drawn` says how many the last forward drew. With ``"marginal"``:
      how many chains each question runs (training and soft evaluation).
    - ``soft_samples`` (``"marginal"`` only; default ``samples``): how many
      of a question's ``samples`` chains run *soft* in training (evaluation
      runs all ``samples``). The decided runs come first; then the chains
      whose decided run answers right (``forward``'s ``right``; the most
      likely first), then the others in the order above (the most likely
      half, then the drawn ones), the first ``soft_samples`` of them.
      The soft loss is then the marginal over the chains that ran soft,
      weighed alike: ``-log (1/s') sum_{c ran soft} sum_place w(place)
      P_{c, place}(answer)`` (``s' = soft_samples``); the choice still
      learns from every decided run. :attr:`ran` holds the chains that ran
      soft in the last forward.
    - ``decision``: how evaluation decides a chain from the choice. ``"chain"``
      (the default): the most likely chain. ``"function"``: the chains that
      compute the same function where the answer is read (they answer alike
      on every :meth:`answers_alike` probe at the decided readout place;
      without a learned readout, in the whole final state) pool their
      probability, and the most likely chain of the most likely pool runs
      (:meth:`decide_chain`). The marginal loss is indifferent among chains
      that answer alike, so a question that many chains answer (``sort``:
      ``insertion_sort`` then ``identity``, or then ``max``, ...) spreads its
      probability over them, and one chain that a similar kind concentrates
      on (``insertion_sort`` then ``reverse``) can be the most likely alone.
      It needs a machine that runs on integers (an exact ALU, frozen programs).
    - ``explore``: the weight of the program choices' mean entropy, taken
      off the training loss (a bonus for keeping choices open): drawn
      choices can settle on one program that answers many kinds of question
      half right before the right ones were ever tried. With ``choice =
      "chains"`` the entropy of the distribution over chains, divided by
      ``steps`` (the same scale: for independent steps the two are equal).
    - ``argument_search``: with ``"marginal"``, the choice's decided runs
      also try every value of the argument register (the parser writes at
      most one; with none, as for a library whose programs take no
      argument, there is nothing to search), and the loss on them becomes ``-log sum_c pi(c)
      sum_v P(arg = v) [chain c with argument v answers right]``: the exact
      probability, under the parse's own distributions, of choosing a chain
      and an argument that answer right (the memory at its decided values).
      It trains the argument's distribution and the choice together from
      exact runs: without it a chain that reads an argument is right only
      once the argument's most likely value is, so neither the choice (which
      then prefers a program that answers by chance) nor the argument (which
      then trains only when that chain is drawn) gets started. A chain runs
      with the decided argument up to the first program whose convention
      lists the argument register (a program that states no convention
      counts as reading it), then once per value; the runs are on integers,
      and the outcomes of a question that coincide are counted once, their
      probabilities summed (output ``searched``, which the loss reads in
      place of ``decided``). A run that reads or writes memory beyond its
      cells counts as wrong (weight 0): the machine wraps such an address
      around memory, so a value that answers only by wrapping (``k - 1 +
      cells`` for "letter k") would be learned as the argument at the
      trained memory size and fail at any other.
    - ``argument_loss`` (with ``argument_search``; default 0: none): the
      weight of a loss of the argument's own, ``-log sum_{c reads} pi'(c)
      sum_v P(arg = v) [c with v answers right]``, ``pi'`` the probabilities
      of the chains that read the argument, renormalised among them (no
      gradient). In the loss above a chain that does not read the argument
      and answers right by chance (a count of 1 by ``length`` on a one-letter
      string) takes most of the probability, and the argument's share of the
      gradient shrinks with it; here only the chains that read it count.
      Output ``searched["argument_weight"]``: these probabilities per outcome.
    - ``decided_argument_loss`` (with ``argument_search``; default 0: none):
      the weight of the choice's loss with the argument at its decided (most
      likely) value, ``-log sum_c pi(c) [c with the decided argument answers
      right]``, over the same runs (those at other values left out; no
      gradient to the argument). The searched loss above lets a chain that
      reads the argument answer a question through any value, at that
      value's probability: ``nth`` alone answers "the 3rd smallest letter"
      at the letter's position in the unsorted string, a value no word of
      the question names, and the tail of the argument's distribution holds
      more of the right probability than a chain the choice has all but
      ruled out (``insertion_sort`` then ``nth`` at probability 1e-6). At
      the decided value such a chain is right only by chance, and where the
      only right chain is one the choice ruled out, ``-log`` of its
      probability gives the choice a gradient of full size toward it.
    - ``credit_power`` ``b`` (``"marginal"`` only; default 1): how the
      choice's gradient shares the credit among a question's runs that answer
      right. At 1 it is ``-log P(right)``'s: each right (chain, readout
      place) in proportion to its probability, so a chain the model has all
      but ruled out learns next to nothing where it is right, and a chain
      that is right by chance on many questions keeps the credit (``nth``
      alone, its argument guessing the position of "the 3rd smallest"
      letter, against ``insertion_sort`` then ``nth``). Below 1 the gradient
      is that of ``-(1/b) log sum (S w(place))^b`` over the right (chain,
      final state, place), ``S`` the summed ``pi(c) P(arg = v)`` of the
      chain's runs ending in that state (``pi(c)`` alone without
      ``argument_search``): each right chain's share is its probability to
      the power ``b``, renormalised, so unlikely right chains get more (the
      "meritocratic" update of Guu et al. 2017, *From language to programs*).
      The loss's value stays ``-log P(right)``. The discount multiplies in
      before the power.
    - ``chain_discount`` (``"marginal"``, chains of two or more steps; default
      1: none): a preference for shorter chains in the choice's loss. Each
      decided run's probability is multiplied by ``chain_discount ** (n - 1)``,
      ``n`` the programs other than ``identity`` its chain runs (at least 1),
      so the loss becomes ``-log sum_c pi(c) d^(n(c) - 1) [c answers right]``
      and, of two chains that answer alike, the shorter is preferred. A
      single-program question is answered right by many two-step chains
      (``max`` alone, or ``insertion_sort`` then ``max``); without the
      preference the first step can settle on the program most kinds can
      start with (``insertion_sort``) for every question, and the kinds that
      cannot start with it (``reverse``, ``nth``) are then answered wrong. A
      discount well below 1 has the opposite fault: a chain that needs two
      programs loses to one program that is right by chance on short
      strings (counting distinct letters without sorting first).
    - ``readouts``: where an answer may be read (``"memory"``, ``"r0"``, ...):
      the computer then also asks for a choice among them (target
      ``readout``) and passes it on to the answer head
      (:class:`~diffcomp.model.heads.ChosenReadout`).
    """

    stage_options: ClassVar[tuple[str, ...]] = ("explore", "chain_discount", "argument_loss", "credit_power",
                                                "decided_argument_loss")

    def __init__(self, machine: nn.Module, *, programs: Sequence[str], registers: int, cells: int,
                 steps: int = 1, arguments: Sequence[int] | None = None, selection: str = "mix",
                 readouts: Sequence[str] = (), samples: int = 1, explore: float = 0.0,
                 soft_samples: int | None = None, argument_search: bool = False,
                 chain_discount: float = 1.0, argument_loss: float = 0.0, credit_power: float = 1.0,
                 choice: str = "steps", decision: str = "chain", decided_argument_loss: float = 0.0) -> None:
        super().__init__()
        #: ``()``: the mean entropy of the program choices in the last training forward (``None`` otherwise)
        self.entropy: torch.Tensor | None = None
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        if samples > 1 and selection == "mix":
            raise ValueError("samples > 1 applies to selection = 'sample' or 'marginal' (a mixture runs every "
                             "program)")
        self.samples, self.drawn = samples, 1
        if soft_samples is not None:
            if isinstance(soft_samples, bool) or not isinstance(soft_samples, int) or soft_samples < 1:
                raise ValueError(f"soft_samples must be a positive integer, got {soft_samples!r}")
            if selection != "marginal":
                raise ValueError(f"soft_samples applies to selection = 'marginal' (how many of a question's chains "
                                 f"run soft in training), not to selection = {selection!r}")
            if soft_samples > samples:
                raise ValueError(f"soft_samples = {soft_samples} is more than samples = {samples}: it says how many "
                                 f"of a question's {samples} chains run soft in training (1 to {samples})")
        #: how many of a question's ``samples`` chains run soft in training (``selection = "marginal"``)
        self.soft_samples = samples if soft_samples is None else soft_samples
        #: ``(batch, s, steps)``: the chains each question ran soft in the last marginal forward
        self.ran: torch.Tensor | None = None
        self._singles: dict[str, nn.Module] = {}  # program -> a machine running it alone (built when first needed)
        self._alike: dict[tuple, bool] = {}  # (chain, chain, place, cells) -> whether they answer alike
        self._probes: dict[tuple, tuple] = {}  # (chain, cells) -> its runs over the probes (_probe)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"a machine computer runs a chain of at least 1 program; got steps = {steps!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES} (one classifier per chain step, or one over whole "
                             f"chains), got {choice!r}")
        if choice == "chains" and selection != "marginal":
            raise ValueError(f"choice = 'chains' (one classifier over whole chains) needs selection = 'marginal', "
                             f"which runs whole chains; got selection = {selection!r}")
        #: ``"steps"`` (a classifier per chain step) or ``"chains"`` (one over whole chains)
        self.choice = choice
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS} (the most likely chain, or the most likely of the "
                             f"most likely group of chains that answer alike), got {decision!r}")
        if decision == "function":
            from ..machine import exact

            if not exact.supports(machine):
                raise ValueError("decision = 'function' groups the chains that answer alike by running them on "
                                 "integers: the machine must run decided inputs exactly (an exact ALU, frozen "
                                 "programs); this one trains its programs or its ALU is not exact")
        #: ``"chain"`` (the most likely chain) or ``"function"`` (see the class doc)
        self.decision = decision
        self._pools: dict[tuple, torch.Tensor] = {}  # (place, cells) -> each chain's pool (decide_chain)
        self.machine = machine
        self.programs = tuple(programs)
        self.registers, self.cells, self.steps = registers, cells, steps
        self.arguments = None if arguments is None else tuple(arguments)
        self.selection, self.readouts = selection, tuple(readouts)
        #: ``(batch,)``: log-probability of the programs drawn in the last training forward (``selection="sample"``)
        self.log_q: torch.Tensor | None = None
        #: ``(batch, steps)``: the program each example ran at each step in the last forward (argmax when mixed)
        self.chosen: torch.Tensor | None = None
        if not isinstance(argument_search, bool):
            raise ValueError(f"argument_search must be true or false, got {argument_search!r}")
        if argument_search:
            if selection != "marginal":
                raise ValueError("argument_search applies to selection = 'marginal' (its decided runs try the "
                                 f"argument's values); got selection = {selection!r}")
            if self.arguments is None or len(self.arguments) > 1:
                raise ValueError("argument_search tries every value of one argument register; this computer's "
                                 "parser writes " + ("every register" if self.arguments is None else
                                                     f"{len(self.arguments)} argument registers") +
                                 " (a learned readout over a library whose programs take one argument register "
                                 "has one)")
            from ..machine import exact

            if not exact.supports(machine):
                raise ValueError("argument_search runs the chains on integers: the machine must run decided inputs "
                                 "exactly (an exact ALU, frozen programs); this one trains its programs or its "
                                 "ALU is not exact")
            if self.encoding.modulus > MAX_SEARCHED_VALUES:
                raise ValueError(f"argument_search runs every chain that reads the argument once per value: the "
                                 f"encoding has {self.encoding.modulus} values (at most {MAX_SEARCHED_VALUES})")
        self.argument_search = argument_search
        self._check_stage_options({"explore": explore, "chain_discount": chain_discount,
                                   "argument_loss": argument_loss, "credit_power": credit_power,
                                   "decided_argument_loss": decided_argument_loss})
        #: weight of the selection's entropy, subtracted from the training loss (keeps choices from collapsing)
        self.explore = float(explore)
        #: the choice's loss weighs a chain of ``n`` programs (besides ``identity``) by ``chain_discount ** (n - 1)``
        self.chain_discount = float(chain_discount)
        #: weight of the argument's own loss over the chains that read it (see the class doc)
        self.argument_loss = float(argument_loss)
        #: the power of each right chain's probability in its share of the choice's gradient (see the class doc)
        self.credit_power = float(credit_power)
        #: weight of the choice's loss with the argument at its decided value (see the class doc)
        self.decided_argument_loss = float(decided_argument_loss)
        if selection == "marginal" and len(self.programs) ** steps > 1 << 16:
            raise ValueError(f"selection = 'marginal' ranks every chain: {len(self.programs)} programs over {steps} "
                             f"steps are {len(self.programs) ** steps} chains (at most {1 << 16}); use fewer steps "
                             "or selection = 'sample'")

    def _check_stage_options(self, options: dict[str, Any]) -> None:
        explore, chain_discount, argument_loss, credit_power, decided_argument_loss = (
            options[k] for k in self.stage_options)
        if isinstance(explore, bool) or not isinstance(explore, (int, float)) or explore < 0:
            raise ValueError(f"explore must be a non-negative number, got {explore!r}")
        if isinstance(chain_discount, bool) or not isinstance(chain_discount, (int, float)) or not (
                0 < chain_discount <= 1):
            raise ValueError(f"chain_discount must be a number in (0, 1] (1: no preference for shorter chains), got "
                             f"{chain_discount!r}")
        if chain_discount < 1:
            if self.selection != "marginal" or self.steps < 2 or "identity" not in self.programs:
                raise ValueError("chain_discount prefers chains that stop early (through `identity`) among those "
                                 "the choice's decided runs find right: it needs selection = 'marginal', steps of "
                                 f"2 or more and `identity` in the library; got selection = {self.selection!r}, steps "
                                 f"= {self.steps}, " + ("`identity` in the library" if "identity" in self.programs
                                                 else "no `identity` in the library"))
        for name, value in (("argument_loss", argument_loss), ("decided_argument_loss", decided_argument_loss)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number (0: none), got {value!r}")
            if value and not self.argument_search:
                raise ValueError(f"{name} weighs a loss on the runs argument_search tries: set argument_search = "
                                 f"true, or {name} = 0")
        if isinstance(credit_power, bool) or not isinstance(credit_power, (int, float)) or not (
                0 < credit_power <= 1):
            raise ValueError(f"credit_power must be a number in (0, 1] (1: the probability of choosing a right "
                             f"chain), got {credit_power!r}")
        if credit_power < 1 and self.selection != "marginal":
            raise ValueError("credit_power shares the credit among the chains whose exact runs answer right: it "
                             f"needs selection = 'marginal'; this computer has selection = {self.selection!r}")

    @property
    def alu(self) -> ALU:
        return self.machine.alu

    def targets(self) -> tuple[Target, ...]:
        count = self.registers if self.arguments is None else len(self.arguments)
        chosen = (Target("chain", 1, len(self.programs) ** self.steps) if self.choice == "chains"
                  else Target("program", self.steps, len(self.programs)))
        out = ((Target("registers", count),) if count else ()) + (Target("memory", self.cells), chosen)
        return out + ((Target("readout", 1, len(self.readouts)),) if self.readouts else ())

    def outputs(self) -> tuple[tuple[str, int], ...]:
        return (("registers", self.registers), ("memory", self.cells))

    def resize_memory(self, cells: int) -> None:
        """Run the machine with ``cells`` memory cells (its parser must then write that many)."""
        self.machine.resize_memory(cells)
        self.cells = cells
        self._singles = {}

    def replace_alu(self, alu: ALU) -> None:
        old = self.machine.alu
        if tuple(alu.ops) != tuple(old.ops):
            raise ValueError(f"the new ALU has ops {alu.ops}; the machine's programs use {old.ops}")
        self.machine.replace_alu(alu)
        self._singles = {}

    def _single(self, name: str) -> nn.Module:
        """A machine that runs program ``name`` alone (same ALU, cells and registers as :attr:`machine`)."""
        if name not in self._singles:
            from ..machine import Machine

            m = self.machine
            single = Machine(m.library.resolve(name), m.alu, cells=self.cells, max_steps=m.max_steps,
                             halt_threshold=m.halt_threshold, registers=self.registers, addressing=m.addressing)
            single.stepping, single.steps_per_call = m.stepping, m.steps_per_call
            self._singles[name] = single.to(m.constants.device)
        return self._singles[name]

    def _run_chosen(self, registers: torch.Tensor, memory: torch.Tensor, chosen: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row runs its one program ``chosen`` ``(batch,)`` on that program's own machine."""
        out_r, out_m = torch.zeros_like(registers), torch.zeros_like(memory)
        for p in chosen.unique().tolist():
            rows = (chosen == p).nonzero().squeeze(1)
            state = self._single(self.programs[p]).run(registers[rows], memory[rows],
                                                       max_steps=self.machine.max_steps)
            out_r = out_r.index_copy(0, rows, state.registers.to(out_r.dtype))
            out_m = out_m.index_copy(0, rows, state.memory.to(out_m.dtype))
        return out_r, out_m

    def _registers(self, inputs: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """The initial general registers: the parsed ones, or zeros with the arguments in their places."""
        if self.arguments is None:
            return inputs["registers"]
        batch = like.shape[0]
        zero = self.encoding.encode(torch.zeros(batch, self.registers, dtype=torch.long), dtype=like.dtype,
                                    device=like.device)
        if not self.arguments:
            return zero
        index = torch.tensor(self.arguments, device=like.device)
        return zero.index_copy(1, index, inputs["registers"].to(like.dtype))

    def run(self, inputs: dict[str, torch.Tensor], *, trace=None):
        """The machine's final :class:`~diffcomp.machine.State` for a one-step library on the parser's ``inputs``;
        ``trace(step, state)`` is called before each step (see :meth:`diffcomp.Machine.run`)."""
        if self.steps != 1:
            raise ValueError(f"this computer chains {self.steps} programs; a traced run follows one program")
        return self.machine.run(self._registers(inputs, inputs["memory"]), inputs["memory"], inputs["program"][:, 0],
                                trace=trace)

    def forward(self, inputs: dict[str, torch.Tensor], right=None) -> dict[str, torch.Tensor]:
        from ..machine.chain import run_chain

        self.log_q, self.drawn, self.entropy = None, 1, None
        if self.choice == "chains":  # each step's choice: the marginal of the distribution over chains
            inputs = {**inputs, "program": self.step_choices(inputs["chain"][:, 0])}
        if self.training and self.explore:
            q = self._choice_of(inputs)  # (batch, [steps,] classes)
            entropy = -(q * torch.log(q.clamp_min(1e-30))).sum(-1)
            self.entropy = entropy.mean() / (self.steps if self.choice == "chains" else 1)
        if self.selection == "sample" and self.training and self.samples > 1:  # each question, samples times
            self.drawn = self.samples
            inputs = {k: v.repeat_interleave(self.samples, 0) for k, v in inputs.items()}
        selection = inputs["program"]  # (batch, steps, programs)
        if self.selection == "marginal" and not _one_hot(selection):
            return self._marginal(inputs, right)
        memory = inputs["memory"]
        if self.selection == "sample" and self.training:
            drawn = torch.multinomial(selection.detach().flatten(0, 1), 1).view(selection.shape[:2])  # (batch, steps)
            self.log_q = torch.log(selection.gather(2, drawn.unsqueeze(-1)).squeeze(-1).clamp_min(1e-30)).sum(1)
            selection = nn.functional.one_hot(drawn, selection.shape[-1]).to(selection.dtype)
        chosen = selection.detach().argmax(-1)  # (batch, steps)
        self.chosen = chosen[:: self.drawn]
        registers = self._registers(inputs, memory)
        one_hot = not selection.requires_grad and _one_hot(selection)
        if one_hot and not torch.is_grad_enabled() and not self.machine.trainable:  # only what carries weight runs
            for k in range(self.steps):
                registers, memory = self._run_chosen(registers, memory, chosen[:, k])
            out = {"registers": registers, "memory": memory}
        else:
            if self.steps == 1:
                state = self.machine.run(registers, memory, selection[:, 0])
            else:
                state = run_chain(self.machine, registers, memory, selection)
            out = {"registers": state.registers, "memory": state.memory}
        return self.outputs_of(out["registers"], out["memory"], inputs)

    def outputs_of(self, registers: torch.Tensor, memory: torch.Tensor,
                   inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What :meth:`forward` returns for a run that ended in ``registers`` and ``memory``."""
        out = {"registers": registers, "memory": memory}
        if self.readouts:
            out["readout"] = inputs["readout"][:, 0]  # (batch, readouts): the head's choice
        return out

    def step_choices(self, chains: torch.Tensor) -> torch.Tensor:
        """``(batch, steps, programs)``: each step's program distribution, the marginal of ``chains``
        ``(batch, programs ** steps)``, a distribution over whole chains (``choice = "chains"``)."""
        n, steps = len(self.programs), self.steps
        if chains.shape[-1] != n ** steps:
            raise ValueError(f"a distribution over this computer's chains has {n} ** {steps} = {n ** steps} "
                             f"classes, got {chains.shape[-1]}")
        grid = chains.reshape(-1, *[n] * steps)
        return torch.stack([grid.sum(dim=[d for d in range(1, steps + 1) if d != k + 1]) if steps > 1 else grid
                            for k in range(steps)], 1)

    def _choice_of(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The parsed choice :meth:`chains` reads: ``program`` ``(batch, steps, programs)``, or with ``choice =
        "chains"`` the distribution over whole chains ``(batch, programs ** steps)``."""
        return inputs["chain"][:, 0] if self.choice == "chains" else inputs["program"]

    def _number(self, chains: torch.Tensor) -> torch.Tensor:
        """Each chain's number (its class over whole chains, the first step the most significant) from its
        program indices ``(..., steps)``."""
        place = len(self.programs) ** torch.arange(self.steps - 1, -1, -1, device=chains.device)
        return (chains * place).sum(-1)

    def chains(self, selection: torch.Tensor, count: int, *, explore: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` chains per question from ``selection``: ``(batch, count, steps)`` program indices and their
        probabilities ``(batch, count)`` (differentiable).

        ``selection`` is each step's choice ``(batch, steps, programs)`` (a
        chain's probability the product of its steps'), or a distribution
        over whole chains ``(batch, programs ** steps)`` (``choice =
        "chains"``, in the order of the class doc). The most likely
        ``ceil(count / 2)`` chains come first; then, with ``explore``, chains
        drawn uniformly from the rest, else the next most likely. ``count``
        at least ``programs ** steps``: every chain.
        """
        whole = selection.dim() == 2  # over whole chains
        batch, steps, n = (selection.shape[0], self.steps, len(self.programs)) if whole else selection.shape
        table = torch.cartesian_prod(*[torch.arange(n, device=selection.device)] * steps).view(-1, steps)  # (C, K)
        if whole:
            if selection.shape[1] != table.shape[0]:
                raise ValueError(f"a distribution over this computer's chains has {table.shape[0]} classes, got "
                                 f"{selection.shape[1]}")
            log_pi = torch.log(selection.clamp_min(1e-30))
        else:
            log_q = torch.log(selection.clamp_min(1e-30))  # (batch, steps, programs)
            log_pi = sum(log_q[:, k, table[:, k]] for k in range(steps))  # (batch, C): the chains' log-probabilities
        count = min(count, table.shape[0])
        score = log_pi.detach()
        if explore:
            top = -(-count // 2)
            best = score.topk(top, dim=1).indices
            first = torch.arange(top, 0, -1, dtype=score.dtype, device=score.device).expand(batch, -1) + 1
            noise = torch.rand_like(score).scatter(1, best, first)  # the best first, in order; then uniform
            index = noise.topk(count, dim=1).indices
        else:
            index = score.topk(count, dim=1).indices
        return table[index], log_pi.gather(1, index).exp()

    def discount(self, chains: torch.Tensor) -> torch.Tensor:
        """``chain_discount ** (n - 1)`` for ``chains`` ``(..., steps)`` (program indices), ``n`` the programs other
        than ``identity`` each runs (at least 1): the factor of its probability in the choice's loss."""
        if self.chain_discount == 1:
            return torch.ones(chains.shape[:-1], device=chains.device)
        programs = (chains != self.programs.index("identity")).sum(-1).clamp_min(1)
        return self.chain_discount ** (programs - 1).double()

    def _marginal(self, inputs: dict[str, torch.Tensor], right=None) -> dict[str, torch.Tensor]:
        """``selection = "marginal"``: every question's chains on rows of their own (see the class doc); in
        training the decided runs first, then the soft runs of the ``soft_samples`` chains they pick."""
        selection = self._choice_of(inputs)
        chains, weight = self.chains(selection, self.samples, explore=self.training)  # (batch, s, K), (batch, s)
        self.chosen = chains[:, 0]  # the most likely chain
        decided = searched = None
        if self.training:  # the choice learns from every chain on the decided parse (or from these chains)
            every = len(self.programs) ** self.steps <= DECIDED_CHAINS
            runs, runs_weight = self.chains(selection, DECIDED_CHAINS, explore=True) if every else (chains, weight)
            runs_weight = runs_weight * self.discount(runs).to(runs_weight)
            if self.argument_search and self.arguments:  # the choice and the argument learn together
                searched = self._search_arguments(inputs, runs, runs_weight)
                # the decided runs then only say which of the question's own chains answer right
                runs, runs_weight = chains, weight * self.discount(chains).to(weight)
            with torch.no_grad():
                decided = self._run_decided(inputs, runs)
            decided["weight"], decided["chains"] = runs_weight.flatten(), runs.shape[1]
            if self.credit_power < 1 and searched is None:  # each chain a run of its own
                decided["credit"] = _powered(runs_weight, self.credit_power).flatten()
                decided["credit_power"] = self.credit_power
            if self.soft_samples < chains.shape[1]:
                known = None if right is None else self._right_of(chains, runs, right(decided, runs.shape[1]))
                chains = self._soft_chains(chains, weight, known)
        self.drawn, self.ran = chains.shape[1], chains
        # the soft run reads the parse through views of its own, so that a question it must run again can have
        # this run's gradient cut where it enters the parse (see _rerun_decided)
        soft = {k: v.view_as(v) if v.requires_grad else v for k, v in inputs.items()}
        out = self._run_chains(soft, chains)
        unsound = _unsound(out).view(chains.shape[:2]).any(1)  # (batch,)
        if bool(unsound.any()):  # rerun those questions on their decided parse (no gradient to their parse)
            out = self._rerun_decided(inputs, chains, out, unsound, soft)
        # in training the choices learn from the decided runs; the soft runs train the parse for the chains run,
        # weighed alike (a chain drawn to explore trains the arguments it reads however unlikely it is)
        if self.training:
            out["weight"] = torch.full(chains.shape[:2], 1 / self.drawn, dtype=weight.dtype,
                                       device=weight.device).flatten()
            out["decided"] = decided
            if searched is not None:
                out["searched"] = searched
        else:
            out["weight"] = weight.flatten()
        return out

    def _rerun_decided(self, inputs: dict[str, torch.Tensor], chains: torch.Tensor, out: dict[str, torch.Tensor],
                       unsound: torch.Tensor, soft: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``out`` of :meth:`_run_chains` (run on ``soft``, views of ``inputs``) with the rows of the questions
        ``unsound`` ``(batch,)`` run again, alone, on their decided parse (each number at its most likely value, no
        gradient to it: an exact run where the machine allows); the other questions keep their rows, and their
        gradients, as they were.

        The first run's rows of those questions stay in the graph, and their backward meets the infinities of
        their forward: a zero gradient times an infinity is NaN. Their gradient is cut where it enters the parse
        (a hook on each view in ``soft``). A machine with parameters of its own (a trainable program or ALU)
        would gather NaN from those rows too: there the whole batch runs again, as one run."""
        if any(p.requires_grad for p in self.machine.parameters()):
            parse = self._decided(inputs)
            where = {k: torch.where(unsound.view(-1, *[1] * (v.dim() - 1)), parse[k], v)
                     for k, v in inputs.items() if k in parse}
            return self._run_chains({**inputs, **where}, chains)
        sound = ~unsound  # torch.where, not a product: the cut rows' gradient holds NaN, and NaN * 0 is NaN
        for view in soft.values():
            if view.requires_grad:
                view.register_hook(lambda g: torch.where(sound.view(-1, *[1] * (g.dim() - 1)), g, torch.zeros_like(g)))
        q = unsound.nonzero().squeeze(1)
        parse = self._decided({k: v[q] for k, v in inputs.items() if k in ("registers", "memory")})
        again = self._run_chains({k: parse[k] if k in parse else v[q] for k, v in inputs.items()}, chains[q])
        count = chains.shape[1]
        rows = (q[:, None] * count + torch.arange(count, device=q.device)).flatten()
        return {k: v.index_copy(0, rows, again[k].to(v.dtype)) for k, v in out.items()}

    def _search_arguments(self, inputs: dict[str, torch.Tensor], chains: torch.Tensor, weight: torch.Tensor
                          ) -> dict[str, torch.Tensor]:
        """``argument_search``: each question's ``chains`` ``(batch, C, steps)`` (of probabilities ``weight``
        ``(batch, C)``) run exactly on the decided memory, for every value of the argument register where a chain
        reads it. Returns the distinct outcomes of each question as rows, ``G`` a question (padded with rows of
        weight 0): ``registers`` (those no readout place reads set to 0), ``memory`` (one-hot), ``readout``,
        ``weight`` ``(batch * G,)`` (the summed ``pi(c) P(arg = v)`` of the runs that ended there,
        differentiable) and ``chains`` (``G``)."""
        batch, count, steps = chains.shape
        values, where = self.encoding.modulus, self.arguments[0]
        # the distinct states reached so far, a table (R, M); a run is (question, chain, value or -1 while the
        # decided argument stands) and the index of its state in the table: runs share states, and a state is
        # copied per value only once, however many runs grow from it
        R, M = self._decided_ints(inputs)
        start = R[:, where].copy()  # each question's decided argument
        table = chains.cpu().numpy().reshape(batch * count, steps)
        question = np.repeat(np.arange(batch), count)
        chain = np.arange(batch * count)
        value = np.full(batch * count, -1)
        state = question.copy()
        beyond = np.zeros(len(question), dtype=bool)  # runs that addressed memory beyond its cells
        reads = self._reading_programs()
        for k in range(steps):
            program = table[chain, k]
            # from the first program that reads the argument, once per value (while the runs so far left it as
            # decided: a program before it that wrote it made the chain's outcome independent of the value)
            expand = (value < 0) & reads[program] & (R[state, where] == start[question])
            if expand.any():
                grow, keep = np.nonzero(expand)[0], np.nonzero(~expand)[0]
                grown, of = np.unique(state[grow], return_inverse=True)  # the states that grow, each once
                tried = np.tile(np.arange(values), len(grown))
                new_R = np.repeat(R[grown], values, axis=0)
                new_R[:, where] = tried
                state = np.concatenate([state[keep], len(R) + (of.reshape(-1)[:, None] * values
                                                               + np.arange(values)).reshape(-1)])
                R, M = np.concatenate([R, new_R]), np.concatenate([M, np.repeat(M[grown], values, axis=0)])
                rows = np.concatenate([keep, np.repeat(grow, values)])
                value = np.concatenate([value[keep], np.tile(np.arange(values), len(grow))])
                question, chain, program, beyond = question[rows], chain[rows], program[rows], beyond[rows]
            # each distinct (program, state) runs once; what the runs leave, once each by content (chains that
            # differ, and values that differ, often end alike)
            pairs, inverse = np.unique(program * len(R) + state, return_inverse=True)
            ran, at = pairs // len(R), pairs % len(R)
            wrapped = np.zeros(len(pairs), dtype=bool)
            out_R, out_M = self._run_chosen_ints(R[at], M[at], ran, beyond=wrapped)
            first, outcome = _distinct(np.concatenate([out_R, out_M], axis=1))
            inverse = inverse.reshape(-1)
            R, M, state = out_R[first], out_M[first], outcome[inverse]
            beyond = beyond | wrapped[inverse]
        at_decided = ((value < 0) | (value == start[question])) & ~beyond  # the argument as the parse decided it
        return self._searched_rows(inputs, weight, question, chain, np.where(beyond, -2, value), R, M, state,
                                   at_decided)

    def _reading_programs(self) -> np.ndarray:
        """``(programs,)`` bools: whether each program reads the argument register (its convention lists it, or
        it states none)."""
        from ..machine.chain import convention

        library = self.machine.library
        found = []
        for name in self.programs:
            conv = convention(library.resolve(name))
            found.append(self.arguments[0] in conv.arguments or not (conv.declared or conv.arguments))
        return np.array(found, dtype=bool)

    def _searched_rows(self, inputs, weight, question, chain, value, R, M, state, at_decided
                       ) -> dict[str, torch.Tensor]:
        """The runs' distinct outcomes per question as rows (see :meth:`_search_arguments`): run ``i`` of
        ``question[i]``, ``chain[i]`` and ``value[i]`` (-1: none tried; -2: a run that wrapped an address) ended
        in registers ``R[state[i]]`` and memory ``M[state[i]]``; ``at_decided[i]``: whether it ran with the
        argument at the parse's decided value (or read none)."""
        enc = self.encoding
        batch = weight.shape[0]
        # P(arg = v) for every question and value, from the parser's distribution of the argument (differentiable)
        probs = inputs["registers"][:, :1]  # (batch, 1, *shape)
        values = torch.arange(enc.modulus, device=probs.device)
        logp, _ = enc.log_likelihood(probs.repeat_interleave(enc.modulus, 0), values.repeat(batch).unsqueeze(1),
                                     1e-30)
        p_value = logp.sum(-1).exp().view(batch, enc.modulus)  # (batch, values)
        # an outcome is what the readout may read (memory, the result registers); the other registers are 0
        read = [int(place[1:]) for place in self.readouts if place.startswith("r")]
        _, pair, per_run = np.unique(question * len(R) + state, return_index=True, return_inverse=True)
        at = state[pair]  # each (question, final state) once
        shown = np.zeros_like(R[at])
        shown[:, read] = R[at][:, read]
        outcome = np.concatenate([question[pair, None], shown, M[at]], axis=1)
        first, group = _distinct(outcome)
        group = group[per_run.reshape(-1)]
        order = np.argsort(outcome[first, 0], kind="stable")  # the outcomes of a question together
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        distinct, group = outcome[first[order]], rank[group]
        # each run's probability: its chain's, times its argument value's where it tried one
        q, c, v = (torch.from_numpy(a).to(probs.device) for a in (question, chain, value))
        run_weight = weight.flatten()[c] * torch.where(v >= 0, p_value[q, v.clamp_min(0)], torch.ones_like(p_value[q, 0]))
        run_weight = run_weight.masked_fill(v == -2, 0)  # a run that wrapped an address around memory: never right
        at = torch.from_numpy(group).to(probs.device)
        summed = run_weight.new_zeros(len(distinct)).index_add(0, at, run_weight)
        if self.credit_power < 1:  # each chain's right runs summed over the values tried, then powered
            _, first, link = np.unique(chain * len(distinct) + group, return_index=True, return_inverse=True)
            per_chain = run_weight.new_zeros(len(first)).index_add(
                0, torch.from_numpy(link.reshape(-1)).to(probs.device), run_weight)
            credit = run_weight.new_zeros(len(distinct)).index_add(  # each (chain, state) into its outcome
                0, at[torch.from_numpy(first).to(probs.device)], _powered(per_chain, self.credit_power))
        if self.argument_loss:  # the same runs, of the chains that read the argument only, those renormalised
            reading = np.unique(chain[value != -1])  # the (question, chain) pairs that tried values
            chain_p = weight.flatten().detach()
            norm = torch.zeros(batch, dtype=chain_p.dtype, device=chain_p.device).index_add(
                0, torch.from_numpy(reading // weight.shape[1]).to(probs.device), chain_p[reading])
            share = chain_p[c] / norm[q].clamp_min(1e-30)
            arg_weight = torch.where(v >= 0, share * p_value[q, v.clamp_min(0)], torch.zeros_like(share))
            arg_summed = torch.zeros_like(summed).index_add(0, at, arg_weight)
        if self.decided_argument_loss:  # the runs at the decided argument, each at its chain's probability
            decided_weight = weight.flatten()[c] * torch.from_numpy(at_decided).to(probs.device)
            decided_summed = torch.zeros_like(summed).index_add(0, at, decided_weight)
        # distinct outcomes of each question, padded to the most any question has with weight-0 copies of its first
        owner = distinct[:, 0]
        per = np.bincount(owner, minlength=batch)
        width = int(per.max())
        first = np.concatenate([[0], np.cumsum(per)[:-1]])
        slot = np.arange(len(distinct)) - first[owner]
        index = np.repeat(first[:, None], width, axis=1)  # (batch, width): the padding copies the first
        index[owner, slot] = np.arange(len(distinct))
        real = np.zeros((batch, width), dtype=bool)
        real[owner, slot] = True
        flat = torch.from_numpy(index.reshape(-1)).to(probs.device)
        dtype = inputs["memory"].dtype
        registers = enc.encode(torch.from_numpy(distinct[:, 1:1 + self.registers]), dtype=dtype, device=probs.device)
        memory = enc.encode(torch.from_numpy(distinct[:, 1 + self.registers:]), dtype=dtype, device=probs.device)
        rows = {k: v.repeat_interleave(width, 0) for k, v in inputs.items() if k == "readout"}
        out = self.outputs_of(registers[flat], memory[flat], rows)
        real_rows = torch.from_numpy(real.reshape(-1)).to(summed)
        out["weight"] = summed[flat] * real_rows
        if self.argument_loss:
            out["argument_weight"] = arg_summed[flat] * real_rows
        if self.decided_argument_loss:
            out["decided_weight"] = decided_summed[flat] * real_rows
        if self.credit_power < 1:
            out["credit"], out["credit_power"] = credit[flat] * real_rows, self.credit_power
        out["chains"] = width
        return out

    def _right_of(self, chains: torch.Tensor, runs: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``(batch, s)``: whether each of ``chains`` ``(batch, s, K)`` answers right, from ``right`` ``(batch, r)``
        of the decided ``runs`` ``(batch, r, K)`` (which hold every chain of ``chains``)."""
        if tuple(right.shape) != tuple(runs.shape[:2]):
            raise ValueError(f"right() must say, per question, which of its {runs.shape[1]} decided runs answer "
                             f"right: a ({runs.shape[0]}, {runs.shape[1]}) bool tensor, got {tuple(right.shape)}")
        known = torch.zeros(runs.shape[0], len(self.programs) ** self.steps, dtype=torch.bool, device=chains.device)
        known.scatter_(1, self._number(runs), right.to(chains.device))
        return known.gather(1, self._number(chains))

    def _soft_chains(self, chains: torch.Tensor, weight: torch.Tensor, right: torch.Tensor | None) -> torch.Tensor:
        """The ``soft_samples`` of each question's ``chains`` ``(batch, s, K)`` that run soft: those that answer
        right (``right`` ``(batch, s)``; the most likely, by ``weight``, first), then the others in their order;
        returned in the order of ``chains``."""
        s = chains.shape[1]
        position = torch.arange(s, device=chains.device).expand(chains.shape[0], -1)
        likely = weight.detach().argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(position).scatter_(1, likely, position)  # 0: the most likely
        key = position + s if right is None else torch.where(right, rank, position + s)
        pick = key.argsort(dim=1, stable=True)[:, : self.soft_samples].sort(1).values  # (batch, soft_samples)
        return chains.gather(1, pick.unsqueeze(-1).expand(-1, -1, chains.shape[2]))

    def _decided_ints(self, inputs: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """The parsed registers ``(batch, registers)`` and memory ``(batch, cells)`` at their most likely values,
        as int64 arrays (what the decided runs start from on integers)."""
        memory = inputs["memory"].detach()
        return tuple(self.encoding.decode(x).cpu().numpy().astype(np.int64)
                     for x in (self._registers(inputs, memory), memory))

    def _decided(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The parsed memory and registers, each number at its most likely value (one-hot, no gradient)."""
        enc = self.encoding
        return {k: enc.encode(enc.decode(inputs[k].detach()), dtype=inputs[k].dtype, device=inputs[k].device)
                for k in ("registers", "memory") if k in inputs}

    def _run_chains(self, inputs: dict[str, torch.Tensor], chains: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each question's ``chains`` ``(batch, s, steps)`` on rows of their own (``batch * s``, a question's together)."""
        from ..machine.chain import run_chain

        count, n = chains.shape[1], len(self.programs)
        rows = {k: v.repeat_interleave(count, 0) for k, v in inputs.items()}
        one = nn.functional.one_hot(chains.flatten(0, 1), n).to(rows["memory"].dtype)  # (b*s, K, P)
        state = run_chain(self.machine, self._registers(rows, rows["memory"]), rows["memory"], one)
        return self.outputs_of(state.registers, state.memory, rows)

    def _run_decided(self, inputs: dict[str, torch.Tensor], chains: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`_run_chains` on the decided parse (each number at its most likely value), without gradient: what
        each chain leaves, exactly.

        Each step runs once per distinct (question, chain prefix), not once
        per chain (a question's chains share their first programs: ten
        first steps for the hundred chains of ten programs over two steps),
        and each program on a machine of its own, which halts when its rows
        do. Where the machine runs on integers (:func:`diffcomp.machine.exact.supports`:
        an exact ALU, frozen programs), the parse is decoded once, every
        step runs on integers (:meth:`_run_chosen_ints`) and the final
        states are encoded once; otherwise each step runs the soft machines
        (:meth:`_run_chosen`). The two leave the same states, bit for bit.
        """
        from ..machine import exact

        batch, count, steps = chains.shape
        enc, memory = self.encoding, inputs["memory"]
        flat = chains.flatten(0, 1)  # (batch * count, steps)
        state = torch.arange(batch, device=chains.device).repeat_interleave(count)  # each row's state so far
        ints = exact.supports(self.machine)
        if ints:  # (batch, registers) and (batch, cells) integers
            registers, memory = self._decided_ints(inputs)
        else:
            registers, memory = (enc.decide(x.detach()) for x in (self._registers(inputs, memory), memory))
        for k in range(steps):
            runs, state = torch.unique(torch.stack([state, flat[:, k]], 1), dim=0, return_inverse=True)
            if ints:
                at = runs[:, 0].cpu().numpy()
                registers, memory = self._run_chosen_ints(registers[at], memory[at], runs[:, 1].cpu().numpy())
            else:
                registers, memory = self._run_chosen(registers[runs[:, 0]], memory[runs[:, 0]], runs[:, 1])
        if ints:
            at = state.cpu().numpy()
            like = inputs["memory"]
            registers, memory = (enc.encode(torch.from_numpy(x[at]), dtype=like.dtype, device=like.device)
                                 for x in (registers, memory))
        else:
            registers, memory = registers[state], memory[state]
        rows = {k: v.repeat_interleave(count, 0) for k, v in inputs.items() if k == "readout"}
        return self.outputs_of(registers, memory, rows)

    def decide_chain(self, parsed: dict[str, torch.Tensor], decided: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
        """With ``decision = "function"``, the decided choice (``program`` or ``chain``, one-hot) from the parser's
        distributions ``parsed`` and the other targets' decisions ``decided`` (the readout's among them): the most
        likely chain of the most likely pool of chains that answer alike where the readout reads (see the class
        doc); ``{}`` with ``decision = "chain"`` (each target's most likely value stands)."""
        if self.decision == "chain":
            return {}
        name = "chain" if self.choice == "chains" else "program"
        n, steps = len(self.programs), self.steps
        chains, weight = self.chains(self._choice_of(parsed).detach(), n ** steps, explore=False)  # most likely first
        number = self._number(chains)  # (batch, C): each chain's class
        place = (decided["readout"][:, 0].argmax(-1).tolist() if self.readouts and "readout" in decided
                 else [None] * len(chains))
        best = torch.empty(len(chains), dtype=torch.long, device=chains.device)
        for where in set(place):
            rows = torch.tensor([i for i, p in enumerate(place) if p == where], device=chains.device)
            pool = self._pool_of(None if where is None else self.readouts[where]).to(chains.device)[number[rows]]
            mass = torch.zeros(len(rows), int(pool.max()) + 1, dtype=weight.dtype, device=weight.device)
            mass.scatter_add_(1, pool, weight[rows])
            member = pool == mass.argmax(1, keepdim=True)  # (rows, C): the most likely pool's chains
            first = member.to(torch.int8).argmax(1)  # its most likely chain (the chains come most likely first)
            best[rows] = number[rows].gather(1, first.unsqueeze(1)).squeeze(1)
        like = parsed[name]
        if self.choice == "chains":
            return {name: nn.functional.one_hot(best, n ** steps).to(like.dtype).unsqueeze(1)}
        return {name: nn.functional.one_hot(torch.stack(torch.unravel_index(best, (n,) * steps), 1), n).to(like.dtype)}

    def _pool_of(self, place: str | None) -> torch.Tensor:
        """``(programs ** steps,)``: each chain's pool, the chains that answer alike at ``place`` (``None``: in
        the whole final state) on every :meth:`answers_alike` probe sharing one number (once per memory size)."""
        import itertools

        key = (place, self.cells)
        if key not in self._pools:
            found: dict[bytes, int] = {}
            pools = []
            for chain in itertools.product(self.programs, repeat=self.steps):
                registers, memory, ok = self._probe(chain)
                if place is None:
                    out = np.concatenate([registers, memory], 1)
                else:
                    out = memory if place == "memory" else registers[:, int(place[1:]) : int(place[1:]) + 1]
                # a run that addressed memory beyond its cells answers nothing (as answers_alike counts it)
                pools.append(found.setdefault(np.where(ok[:, None], out, -1).tobytes(), len(found)))
            self._pools[key] = torch.tensor(pools)
        return self._pools[key]

    def answers_alike(self, first: Sequence[str], second: Sequence[str], place: str) -> bool | None:
        """Whether the chains ``first`` and ``second`` (program names, run in order from one start) leave the
        same answer at ``place`` (``"memory"``, or a register such as ``"r0"``) on every one of
        :data:`ALIKE_PROBES` fixed inputs: zero-terminated strings of 1 to 8 numbers (half of them over four
        values, so that numbers repeat), the argument register a number of the string, a position in it or
        another number (a run that addresses memory beyond its cells answers nothing, and answers alike only
        another such run); ``None`` where this machine cannot run them on integers, or a name is not in its
        library. ``(insertion_sort, max)`` answers at ``r0`` as ``max`` does; ``count_distinct`` does not as
        ``(insertion_sort, count_distinct)`` does. Each answer is cached."""
        from ..machine import exact

        if place != "memory" and not (place.startswith("r") and place[1:].isdigit()
                                      and int(place[1:]) < self.registers):
            raise ValueError(f"answers are compared in memory or in one of r0..r{self.registers - 1}, not {place!r}")
        first, second = tuple(first), tuple(second)
        if first == second:
            return True
        if not exact.supports(self.machine) or any(name not in self.programs for name in first + second):
            return None
        key = (first, second, place, self.cells)
        if key not in self._alike:
            (r1, m1, ok1), (r2, m2, ok2) = (self._probe(chain) for chain in (first, second))
            if place == "memory":
                same = (m1 == m2).all(1)
            else:
                same = r1[:, int(place[1:])] == r2[:, int(place[1:])]
            # a run that addressed memory beyond its cells answers nothing: alike only where both did
            self._alike[key] = bool(np.where(ok1 & ok2, same, ok1 == ok2).all())
        return self._alike[key]

    def _probe(self, chain: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``chain`` run on integers over the :meth:`answers_alike` probes: the final registers, memory and
        whether every step kept to its cells (once per chain and memory size: a chain is compared with many)."""
        key = (chain, self.cells)
        if key not in self._probes:
            self._probes[key] = self._run_probes(chain)
        return self._probes[key]

    def _run_probes(self, chain: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = np.random.default_rng(0)
        n, cells, modulus = ALIKE_PROBES, self.cells, self.encoding.modulus
        length = g.integers(1, max(2, min(cells, 9)), n)  # (at most cells - 1: the terminator fits)
        few = g.choice(np.arange(1, modulus), size=(n, 4))
        wide = g.integers(1, modulus, (n, cells))
        narrow = np.take_along_axis(few, g.integers(0, 4, (n, cells)), 1)
        values = np.where(np.arange(n)[:, None] % 2 == 0, narrow, wide)
        memory = np.where(np.arange(cells) < length[:, None], values, 0)
        registers = np.zeros((n, self.registers), dtype=np.int64)
        if self.arguments:
            which = np.arange(n) % 3  # a number of the string, a position in it, any number
            picked = memory[np.arange(n), g.integers(0, length)]
            registers[:, self.arguments[0]] = np.where(
                which == 0, picked, np.where(which == 1, g.integers(0, length), g.integers(0, modulus, n)))
        beyond = np.zeros(n, dtype=bool)  # each step sets the rows it addressed beyond the cells in
        for name in chain:
            registers, memory = self._run_chosen_ints(registers, memory, np.full(n, self.programs.index(name)),
                                                      beyond=beyond, max_steps=ALIKE_STEPS)
        return registers, memory, ~beyond

    def _run_chosen_ints(self, registers: np.ndarray, memory: np.ndarray, chosen: np.ndarray,
                         beyond: np.ndarray | None = None, max_steps: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_run_chosen` on integers: ``registers`` ``(batch, registers)``, ``memory`` ``(batch, cells)``
        and ``chosen`` ``(batch,)`` int64 arrays; each row runs its program's linked image alone
        (:func:`diffcomp.machine.exact.run_ints`) and the final general registers and cells come back.
        ``beyond`` ``(batch,)`` bool, given: set for the rows that addressed memory beyond its cells;
        ``max_steps``: each program's step budget (by default the machine's)."""
        from ..machine import exact

        out_r, out_m = np.zeros_like(registers), np.zeros_like(memory)
        for p in np.unique(chosen).tolist():
            rows = np.nonzero(chosen == p)[0]
            machine = self._single(self.programs[p])
            entry = machine.image.entries[self.programs[p]]
            flags = None if beyond is None else np.zeros(len(rows), dtype=bool)
            run = exact.run_ints(machine._exact_program(), registers[rows], memory[rows],
                                 np.full(len(rows), entry, dtype=np.int64), general=machine.n_registers,
                                 cells=machine.cells,
                                 max_steps=self.machine.max_steps if max_steps is None else max_steps,
                                 index=self.encoding.categorical_index, beyond=flags,
                                 addressing=machine.addressing)
            out_r[rows], out_m[rows] = run.registers[:, : self.registers], run.memory
            if beyond is not None:
                beyond[rows] |= flags
        return out_r, out_m


def _distinct(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of the integer array ``rows`` ``(n, width)``: the index of each one's first occurrence
    ``(d,)`` and, per row, which of them it is ``(n,)``.

    Grouped by a 64-bit hash of each row (a sort of ``n`` numbers, where sorting whole rows took seconds on the
    argument search's hundred thousand runs), then checked: rows whose hash collides with a different row's
    are grouped by their contents instead.
    """
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    weights = (np.arange(rows.shape[1], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
               + np.uint64(0xBF58476D1CE4E5B9)) | np.uint64(1)
    with np.errstate(over="ignore"):
        mixed = rows.astype(np.uint64) * weights
        mixed ^= mixed >> np.uint64(29)
        mixed *= np.uint64(0x94D049BB133111EB)
        h = mixed.sum(1, dtype=np.uint64)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if not (rows == rows[first[inverse]]).all():  # a collision: by the rows themselves
        _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
    return first, inverse


def _powered(weight: torch.Tensor, power: float) -> torch.Tensor:
    """``weight ** power``, 0 where ``weight`` is 0 (and no gradient there: the power's slope is infinite at 0)."""
    return torch.where(weight > 0, weight.clamp_min(1e-30) ** power, torch.zeros_like(weight))


def _unsound(outputs: dict[str, torch.Tensor], slack: float = 1e-3) -> torch.Tensor:
    """``(rows,)``: rows whose final memory or registers are not probabilities (not finite, or outside [0, 1]).

    A soft run on a parse that is almost, but not quite, one-hot can lose its
    probability mass to rounding once nearly all of it has halted: the
    conditioning on the mass still running divides rounding residue by a
    tiny number, and the state grows without bound.
    """
    bad = None
    for key in ("memory", "registers"):
        x = outputs[key].detach().flatten(1)
        rows = ~torch.isfinite(x).all(1) | (x.amax(1) > 1 + slack) | (x.amin(1) < -slack)
        bad = rows if bad is None else bad | rows
    return bad


def _one_hot(selection: torch.Tensor) -> bool:
    """Whether every step's choice is one program (a decision)."""
    return bool((selection.detach().amax(-1) == 1).all())


class NoComputer(Computer):
    """No computer: the parser classifies each number of the answer itself (the baseline).

    Same backbone, tokenizer and data as a computer-augmented model; the
    parser's target ``answer`` (``length`` numbers) is the answer.
    """

    def __init__(self, encoding: NumberEncoding, length: int) -> None:
        super().__init__()
        self._encoding, self.length = encoding, length
        self.alu = None

    @property
    def encoding(self) -> NumberEncoding:
        return self._encoding

    def targets(self) -> tuple[Target, ...]:
        return (Target("answer", self.length),)

    def outputs(self) -> tuple[tuple[str, int], ...]:
        return (("answer", self.length),)

    def replace_alu(self, alu: ALU) -> None:
        raise ValueError("this model has no computer ([computer] kind = 'none'), so there is no ALU to swap")

    def forward(self, inputs: dict[str, torch.Tensor], right=None) -> dict[str, torch.Tensor]:
        return {"answer": inputs["answer"]}
