"""``diffcomp.execute``: run a program sharp, on integers, and get integers back.

It is the differentiable machine on one-hot inputs (exact: every probability
is 0 or 1), with the sharp checks on: an address beyond memory or a jump beyond
the program is an error rather than a wrap-around, and a run that reaches its
step limit without halting says so (a :class:`HaltingWarning`, or
:class:`~diffcomp.errors.HaltingError` with ``on_limit="raise"``).
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from ..alu import ALU
from ..errors import HaltingError, UnknownNameError
from .assembler import assemble
from .interpreter import Machine, State
from .isa import MAX_REGISTERS, form
from .library import Library, program as registered
from .program import Program


class HaltingWarning(UserWarning):
    """A run reached its step limit without halting; its result is not an answer."""


@attrs.frozen
class Result:
    """What a sharp run ended with: decoded ``memory`` and ``registers`` (``registers[i]`` is rI)."""

    memory: list[int]
    registers: list[int]
    halted: bool
    steps: int
    link: int = 0

    def as_dict(self) -> dict[str, Any]:
        """``{"memory": [...], "registers": [...], "halted": ..., "steps": ...}`` (the CLI's ``--json``)."""
        return {"memory": self.memory, "registers": self.registers, "halted": self.halted, "steps": self.steps}


@attrs.frozen
class TraceStep:
    """One step of a traced run: the state *before* the instruction at ``address`` runs."""

    step: int
    address: int
    program: str | None
    instruction: str
    registers: list[int]
    link: int


def execute(program: Program | str, memory: Sequence[int] = (), registers: Sequence[int] = (),
            cells: int | None = None, base: int = 128, alu: str | ALU = "lookup", max_steps: int = 10_000, *,
            library: Library | None = None, on_limit: str = "warn",
            trace: Callable[[TraceStep], Any] | None = None, recorder: Any = None) -> Result:
    """Run ``program`` sharp on integer ``memory`` and ``registers``.

    ``program`` is a :class:`Program`, a registered program's name, or
    assembly text. The memory has ``max(len(memory), cells)`` cells; the
    registers are ``r0 ..`` (as many as given or as the program names, the
    rest start at 0). ``alu`` is a registered ALU's name, built with ``base``
    (``bits`` for a binary ALU, so ``base`` must then be a power of two) and
    the ops the program needs, or an :class:`~diffcomp.ALU`. ``CALL`` can
    reach every registered program, and those of ``library``. ``on_limit`` (``"warn"``, ``"raise"``,
    ``"ignore"``) says what a run that does not halt within ``max_steps``
    does; ``trace`` is called with a :class:`TraceStep` before every step.
    ``recorder`` (a :class:`~diffcomp.machine.plot.Recorder`) keeps the run's
    states, to draw them with :func:`~diffcomp.machine.plot.plot_run`.
    """
    if on_limit not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_limit must be 'warn', 'raise' or 'ignore', got {on_limit!r}")
    memory, registers = _ints("memory", memory), _ints("registers", registers)
    if cells is not None and (isinstance(cells, bool) or not isinstance(cells, int) or cells < 0):
        raise ValueError(f"cells must be a non-negative integer, got {cells!r}")
    program = _program(program, max(MAX_REGISTERS, len(registers)), library)
    programs = Library([program, *(p for p in library or () if p.name != program.name)])
    ops = programs.link([program.name]).ops
    alu = make_alu(alu, base, ops)
    size = max(len(memory), cells or 0)
    check_state_size(alu.encoding, max(size, 1), max(MAX_REGISTERS, len(registers)))
    machine = Machine(programs, alu, cells=max(size, 1), entry_points=[program.name],
                      registers=len(registers) or None, max_steps=max_steps, halt_threshold=0.5, strict=True)
    enc = alu.encoding
    R = _encode(enc, "registers", registers)
    M = _encode(enc, "memory", memory)
    hook = _tracer(machine, trace) if trace is not None else None
    if recorder is not None:
        recorder.start(machine)
        hook = _both(hook, recorder) if hook is not None else recorder
    with torch.no_grad():
        state = machine.run(R, M, trace=hook)
    if recorder is not None:
        recorder.finish(state)
    halted = bool(state.halted[0] >= 0.5)
    steps = int(state.steps[0])
    result = Result(enc.to_ints(state.memory[0])[:size], enc.to_ints(state.registers[0]), halted, steps,
                    int(enc.to_ints(state.link[0])))
    if not halted and on_limit != "ignore":
        message = (f"{program.name!r} did not halt within max_steps={max_steps} steps; its registers and memory "
                   "are where it stopped, not an answer (raise max_steps, or check the program for a loop)")
        if on_limit == "raise":
            raise HaltingError(message)
        warnings.warn(message, HaltingWarning, stacklevel=2)
    return result


def _ints(what: str, values: Any) -> list[int]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{what} must be a sequence of integers, got {type(values).__name__}")
    for k, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{what}[{k}] must be an integer, got {v!r}")
    return list(values)


def _encode(enc: Any, what: str, values: list[int]) -> torch.Tensor:
    for k, v in enumerate(values):
        if not 0 <= v < enc.modulus:
            raise ValueError(f"{what}[{k}] = {v} is out of range: the machine's numbers ({enc}) are "
                             f"0..{enc.max_value}")
    return enc.encode([values], dtype=torch.float32).reshape(1, len(values), *enc.shape)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _program(program: Program | str, registers: int, library: Library | None) -> Program:
    if isinstance(program, Program):
        return program
    if not isinstance(program, str):
        raise TypeError(f"execute() runs a Program, a registered program's name or assembly text; "
                        f"got {type(program).__name__}")
    from ..registry import names

    text = program.strip()
    if library is not None and text in library:
        return library[text]
    if text in names("program"):
        return registered(text)
    if _NAME.fullmatch(text) and form(text) is None:
        raise UnknownNameError("program", text, [*(library.names if library else ()), *names("program")])
    return assemble(program, registers=registers, library=library)


#: the most probabilities a sharp run's memory and registers may hold (512 MiB of float32)
MAX_STATE = 2**27


def check_state_size(encoding: Any, cells: int, registers: int) -> None:
    """A clear ``ValueError``, before anything is allocated, when a run's state would not fit in memory."""
    per_number = math.prod(encoding.shape)
    numbers = cells + registers
    if numbers * per_number > MAX_STATE:
        raise ValueError(f"{cells} memory cells and {registers} registers with base {encoding.modulus} would hold "
                         f"{numbers} numbers of {per_number} probabilities each ({encoding}), "
                         f"{numbers * per_number * 4 / 2**30:.3g} GiB; a sharp run keeps them under "
                         f"{MAX_STATE * 4 // 2**20} MiB ({MAX_STATE} probabilities): use fewer cells or a smaller "
                         "base (or the circuit ALU, which holds a number in log2(base) bits)")


def make_alu(alu: str | ALU, base: int, ops: Sequence[str] = ()) -> ALU:
    """An ALU by name, built for ``base`` values (``bits=log2(base)`` for one that counts in bits)."""
    if isinstance(alu, ALU):
        return alu
    if not isinstance(alu, str):
        raise TypeError(f"alu must be a registered ALU's name or a diffcomp.ALU, got {type(alu).__name__}")
    from ..alu import alu as build
    from ..registry import lookup

    if isinstance(base, bool) or not isinstance(base, int) or base < 2:
        raise ValueError(f"base must be an integer of at least 2 (the machine's numbers are 0..base-1), got {base!r}")
    factory = lookup("alu", alu)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    options: dict[str, Any] = {}
    if "bits" in parameters and "base" not in parameters:
        bits = base.bit_length() - 1
        if base != 1 << bits:
            raise ValueError(f"the {alu!r} ALU counts in bits, so base must be a power of two; got {base}")
        options["bits"] = bits
    else:
        options["base"] = base
    if "ops" in parameters and ops:
        options["ops"] = tuple(ops)
    return build(alu, **options)


def _both(first: Callable[[int, State], Any], second: Callable[[int, State], Any]) -> Callable[[int, State], None]:
    def hook(step: int, state: State) -> None:
        first(step, state)
        second(step, state)

    return hook


def _tracer(machine: Machine, fn: Callable[[TraceStep], Any]) -> Callable[[int, State], None]:
    enc, image = machine.encoding, machine.image

    def hook(step: int, state: State) -> None:
        address = int(state.counter[0].argmax())
        line = image.lines[address]
        text = str(line.instruction) if line.instruction is not None else "(halted)"
        fn(TraceStep(step, address, line.program, text, enc.to_ints(state.registers[0]),
                     int(enc.to_ints(state.link[0]))))

    return hook


__all__ = ["execute", "Result", "TraceStep", "HaltingWarning", "make_alu"]
