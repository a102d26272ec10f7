"""Programs, and linking them into one address space (paper §3.1).

A :class:`Program` is a list of :class:`Instruction`\\ s (what the assembler
produced: mnemonics, operands as written, labels, source line numbers). A
:class:`~diffcomp.machine.library.Library` is a set of named programs;
:func:`link` lays the programs a machine needs into one :class:`Image`:

- address 0 is the *halting address*: control that reaches it halts (the
  counter's mass there moves to ``h``). The link register ``lr`` starts at 0,
  so a library program run on its own halts at its final ``RET``;
- the entry programs follow from address 1, then every program they ``CALL``
  (transitively), each once;
- the register file is ``r0 .. r{n-1}`` (general), ``lr`` (the link
  register, index ``n``), then one constant register per distinct constant:
  immediates, label addresses and program entry addresses. Jump targets and
  return addresses are numbers in the machine's encoding, so an image longer
  than the encoding can count is an :class:`~diffcomp.errors.AssemblyError`,
  never a silent wrap-around.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
import attrs

from ..errors import AssemblyError
from .isa import (CONTROL, CONTROL_FORMS, JUMPS, LINK, MAX_REGISTERS, NO_FALL_THROUGH, Form,  # noqa: F401
                  alu_form)


# -- programs ------------------------------------------------------------------------------------

@attrs.frozen
class Operand:
    """One operand as written: ``r3``, ``lr``, ``5``, a label or a program name."""

    kind: str  # "register", "link", "immediate", "label", "program"
    value: int | str

    def __str__(self) -> str:
        if self.kind == "register":
            return f"r{self.value}"
        return LINK if self.kind == "link" else str(self.value)

    @property
    def is_register(self) -> bool:
        return self.kind in ("register", "link")


@attrs.frozen
class Instruction:
    """One line of a program: ``out = MNEMONIC operands``; ``line`` is the source line number."""

    mnemonic: str
    out: Operand | None
    operands: tuple[Operand, ...]
    line: int | None = attrs.field(default=None, eq=False)
    source: str | None = attrs.field(default=None, eq=False)

    def __str__(self) -> str:
        text = f"{self.mnemonic} {', '.join(map(str, self.operands))}".rstrip()
        return f"{self.out} = {text}" if self.out is not None else text


@attrs.frozen(eq=False)
class Program:
    """A named, assembled program: instructions, labels (name -> instruction index), its doc.

    ``doc`` is the comment block at the top of the source, where a library
    program states its calling convention. Build one with
    :func:`diffcomp.assemble`; print it back with :func:`diffcomp.disassemble`
    (or ``str(program)``).
    """

    name: str
    instructions: tuple[Instruction, ...]
    labels: Mapping[str, int] = attrs.field(factory=dict)
    doc: str = ""
    source: str | None = attrs.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.instructions)

    def __iter__(self) -> Iterator[Instruction]:
        return iter(self.instructions)

    def __str__(self) -> str:
        return listing(self)

    @property
    def registers(self) -> int:
        """How many general registers the program names (highest ``rI`` + 1)."""
        used = [o.value for i in self.instructions for o in (i.out, *i.operands)
                if o is not None and o.kind == "register"]
        return max(used, default=-1) + 1

    @property
    def calls(self) -> tuple[str, ...]:
        """The programs this one names (``CALL name`` or an address taken), in order of first use."""
        names = [o.value for i in self.instructions for o in i.operands if o.kind == "program"]
        return tuple(dict.fromkeys(names))

    @property
    def ops(self) -> tuple[str, ...]:
        """The ALU ops the program's instructions run, in order of first use."""
        ops = [i.mnemonic.lower() for i in self.instructions if i.mnemonic not in CONTROL]
        return tuple(dict.fromkeys(ops))


# -- linking -------------------------------------------------------------------------------------

@attrs.frozen
class Line:
    """One line of a linked image: register-file indices for ``out``, ``a`` and ``b``."""

    mnemonic: str
    out: int
    a: int
    b: int
    instruction: Instruction | None  # None for the halting address
    program: str | None


@attrs.frozen
class Image:
    """Programs linked into one address space: what the interpreter compiles into tensors.

    ``lines[0]`` is the halting address. Register-file layout: ``r0 ..
    r{registers-1}``, ``lr`` at index ``registers``, then :attr:`constants`.
    """

    lines: tuple[Line, ...]
    entries: Mapping[str, int]  # program name -> address of its first instruction
    registers: int
    constants: tuple[int, ...]
    labels: Mapping[int, str]  # address -> a name for disassembly
    programs: tuple[Program, ...]

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def link_register(self) -> int:
        return self.registers

    @property
    def register_file(self) -> int:
        return self.registers + 1 + len(self.constants)

    def register_name(self, index: int) -> str:
        if index < self.registers:
            return f"r{index}"
        if index == self.registers:
            return LINK
        return str(self.constants[index - self.registers - 1])

    def constant_register(self, value: int) -> int:
        return self.registers + 1 + self.constants.index(value)

    def where(self, address: int) -> str:
        """``"line 7 of 'insertion_sort'"`` for an address, for messages."""
        line = self.lines[address]
        if line.instruction is None:
            return "the halting address"
        at = f"line {line.instruction.line}" if line.instruction.line is not None else f"address {address}"
        return f"{at} of {line.program!r}"

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(op for p in self.programs for op in p.ops))


def link(entries: Sequence[Program], resolve: Callable[[str], Program], *, modulus: int | None = None,
         registers: int | None = None) -> Image:
    """Link ``entries`` and every program they call into an :class:`Image`.

    ``resolve(name)`` finds a called program. ``modulus`` is the machine
    encoding's range: every address and constant must be below it.
    """
    programs: dict[str, Program] = {}
    queue = list(entries)
    while queue:
        p = queue.pop(0)
        if p.name in programs:
            if programs[p.name] is not p:
                raise AssemblyError(f"two different programs are both named {p.name!r}; "
                                    "give one of them another name")
            continue
        programs[p.name] = p
        for index, instruction in enumerate(p.instructions):
            for operand in instruction.operands:
                if operand.kind == "program" and operand.value not in programs:
                    try:
                        queue.append(resolve(operand.value))
                    except LookupError as exc:
                        raise AssemblyError(f"{instruction.mnemonic} names program {operand.value!r}, which "
                                            f"is not in the library: {exc}", instruction.line,
                                            instruction.source) from None

    base: dict[str, int] = {}
    address = 1  # 0 is the halting address
    for p in programs.values():
        base[p.name] = address
        address += len(p)
    size = address
    if modulus is not None and size > modulus:
        _too_long(programs, base, modulus, size)

    def value_of(owner: Program, operand: Operand) -> int:
        if operand.kind == "immediate":
            return int(operand.value)
        if operand.kind == "label":
            return base[owner.name] + owner.labels[operand.value]
        return base[operand.value]  # a program: its entry address

    constants = sorted({value_of(p, o) for p in programs.values() for i in p.instructions
                        for o in i.operands if not o.is_register})
    if modulus is not None:
        for p in programs.values():
            for i in p.instructions:
                for o in i.operands:
                    if o.kind == "immediate" and int(o.value) >= modulus:
                        raise AssemblyError(f"immediate {o.value} is out of range: the machine's numbers "
                                            f"are 0..{modulus - 1}", i.line, i.source)
    n = max([registers or 0, 1, *(p.registers for p in programs.values())])
    index = {value: n + 1 + k for k, value in enumerate(constants)}

    def register(owner: Program, operand: Operand | None) -> int:
        if operand is None:
            return 0
        if operand.kind == "register":
            return int(operand.value)
        if operand.kind == "link":
            return n
        return index[value_of(owner, operand)]

    lines = [Line("STOP", 0, 0, 0, None, None)]
    labels: dict[int, str] = {}
    for p in programs.values():
        labels[base[p.name]] = p.name
        for label, at in p.labels.items():
            labels.setdefault(base[p.name] + at, f"{p.name}.{label}" if len(programs) > 1 else label)
        for i in p.instructions:
            ops = [register(p, o) for o in i.operands]
            if i.mnemonic == "RET":
                a, b = n, 0
            elif i.mnemonic == "JEZ":
                a, b = ops
            else:
                a, b = (ops + [0, 0])[:2]
            out = n if i.mnemonic == "CALL" else register(p, i.out)
            lines.append(Line(i.mnemonic, out, a, b, i, p.name))
    return Image(tuple(lines), {name: base[name] for name in programs}, n, tuple(constants), labels,
                 tuple(programs.values()))


def _too_long(programs: Mapping[str, Program], base: Mapping[str, int], modulus: int, size: int) -> None:
    names = ", ".join(f"{name} ({len(p)})" for name, p in programs.items())
    for name, p in programs.items():
        if base[name] + len(p) > modulus:
            first = p.instructions[modulus - base[name]] if modulus >= base[name] else p.instructions[0]
            raise AssemblyError(
                f"program too long for the counter: the linked image needs {size} addresses (the halting "
                f"address 0 and {size - 1} instructions: {names}), but the machine's numbers are "
                f"0..{modulus - 1}, so this instruction of {name!r} would be at address {modulus}, which no "
                f"register can hold; use a "
                "larger base (or more bits) or link fewer programs", first.line, first.source)


# -- a program's text ---------------------------------------------------------------------------

def listing(program: Program) -> str:
    """A program's assembly text: its doc as comments, then one instruction per line with its labels."""
    lines = [f"; {line}".rstrip() for line in program.doc.splitlines()] if program.doc else []
    if lines:
        lines.append("")
    at: dict[int, list[str]] = {}
    for label, index in program.labels.items():
        at.setdefault(index, []).append(label)
    for index, instruction in enumerate(program.instructions):
        lines.extend(with_labels(at.get(index, []), str(instruction)))
    return "\n".join(lines) + "\n"


def with_labels(labels: list[str], text: str) -> list[str]:
    """``text`` indented as an instruction, after its ``labels`` (a short last label shares its line)."""
    out = [f"{label}:" for label in labels[:-1]]
    if labels and len(labels[-1]) < 7:
        out.append(f"{labels[-1] + ':':<8}{text}")
        return out
    if labels:
        out.append(f"{labels[-1]}:")
    out.append(f"{'':<8}{text}")
    return out


def __getattr__(name: str) -> Any:
    """Names that moved, still importable from here: the library (:mod:`.library`), the ops' arities (:mod:`.isa`)."""
    if name in ("Library", "program"):
        import importlib

        return getattr(importlib.import_module(f"{__package__}.library"), name)  # (the package's ``library`` is a function)
    if name == "BUILTIN_ALU_ARITY":  # the registered ops' arities (it was a copy of plugins/ops.py)
        from .isa import arities

        return arities()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Form", "Operand", "Instruction", "Program", "Library", "Image", "Line", "link", "listing",
           "MAX_REGISTERS", "LINK", "CONTROL", "CONTROL_FORMS", "JUMPS", "alu_form"]
