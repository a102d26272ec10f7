"""Programs, the library Λ, and linking them into one address space (paper §3.1).

A :class:`Program` is a list of :class:`Instruction`\\ s (what the assembler
produced: mnemonics, operands as written, labels, source line numbers). A
:class:`Library` is a set of named programs; :meth:`Library.link` lays the
programs a machine needs into one :class:`Image`:

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

import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import attrs

from ..errors import AssemblyError, UnknownNameError

#: the general registers an assembled program may name by default (r0 .. r15)
MAX_REGISTERS = 16
LINK = "lr"


# -- the instruction set -------------------------------------------------------------------------

@attrs.frozen
class Form:
    """How an instruction is written: ``rX = NAME a, b`` (``writes``) or ``NAME a, b``."""

    mnemonic: str
    writes: bool
    operands: tuple[str, ...]  # operand roles, e.g. ("a", "b"), ("a", "t"), ("t",)
    op: str | None = None  # the ALU op it runs, if any
    doc: str = ""

    def syntax(self) -> str:
        args = ", ".join(self.operands)
        text = f"{self.mnemonic} {args}".rstrip()
        return f"rX = {text}" if self.writes else text


#: control, memory and move instructions; ALU instructions come from the registered ops
CONTROL_FORMS: tuple[Form, ...] = (
    Form("STOP", False, (), doc="halt: add this instruction's weight to h"),
    Form("MOV", True, ("a",), doc="rX <- a (ADD a, 0 without the ALU)"),
    Form("READ", True, ("a",), doc="rX <- M[a] (eq. 2)"),
    Form("WRITE", False, ("a", "b"), doc="M[a] <- b (eqs. 3-4)"),
    Form("JEZ", False, ("a", "t"), doc="if a = 0 go to t (eq. 6)"),
    Form("JMP", False, ("t",), doc="go to t"),
    Form("CALL", False, ("t",), doc="lr <- c + 1; go to t"),
    Form("RET", False, (), doc="go to lr"),
)
CONTROL = {form.mnemonic: form for form in CONTROL_FORMS}
#: the built-in ALU instructions and their arities (DESIGN.md); plug-in ops add more
BUILTIN_ALU_ARITY = {"zero": 0, "inc": 1, "dec": 1, "add": 2, "sub": 2, "mul": 2, "div": 2, "mod": 2,
                     "min": 2, "max": 2, "eq": 2, "lt": 2}
JUMPS = ("JEZ", "JMP", "CALL", "RET")
#: instructions after which control never reaches the next line
NO_FALL_THROUGH = ("STOP", "JMP", "RET")


def alu_form(op: str, arity: int) -> Form:
    """The instruction ``rX = OP a, b`` for an ALU op of the given arity."""
    return Form(op.upper(), True, ("a", "b")[:arity], op=op)


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
        from .assembler import disassemble

        return disassemble(self)

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

    def line_of(self, index: int) -> int | None:
        return self.instructions[index].line


# -- the library ---------------------------------------------------------------------------------

class Library:
    """Named programs that can ``CALL`` one another (paper §3.1).

    ``Library([p, q])``, ``library.add(program)``, ``library["name"]``. A call
    to a name the library lacks falls back to the registered programs
    (``diffcomp.program(name)``) unless ``registered=False``. :meth:`link`
    lays the programs a machine needs out in one address space.
    """

    def __init__(self, programs: Iterable[Program] = (), *, registered: bool = True) -> None:
        self._programs: dict[str, Program] = {}
        self.registered = registered
        for program in programs:
            self.add(program)

    @classmethod
    def of_registered(cls) -> "Library":
        """Every registered program, in registration order."""
        from ..registry import names

        return cls((_registered(name) for name in names("program")), registered=True)

    def add(self, program: Program) -> "Library":
        if not isinstance(program, Program):
            raise TypeError(f"a Library holds diffcomp.Program objects (from diffcomp.assemble), "
                            f"got {type(program).__name__}")
        if program.name in self._programs and self._programs[program.name] is not program:
            raise ValueError(f"the library already has a program named {program.name!r}")
        self._programs[program.name] = program
        return self

    def __getitem__(self, name: str) -> Program:
        return self.resolve(name)

    def __contains__(self, name: object) -> bool:
        return name in self._programs

    def __iter__(self) -> Iterator[Program]:
        return iter(self._programs.values())

    def __len__(self) -> int:
        return len(self._programs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._programs)

    def resolve(self, name: str) -> Program:
        """The program called ``name``: this library's, else a registered one."""
        if name in self._programs:
            return self._programs[name]
        if self.registered:
            from ..registry import names

            if name in names("program"):
                return _registered(name)
        known = list(self._programs) + (list(_registered_names()) if self.registered else [])
        raise UnknownNameError("program", name, known)

    def link(self, entries: Sequence[str] | None = None, *, modulus: int | None = None,
             registers: int | None = None) -> "Image":
        """Lay out ``entries`` (default: every program here) and all they call, from address 1."""
        entries = list(self.names if entries is None else entries)
        if not entries:
            raise ValueError("nothing to link: the library is empty and no entry program was named")
        return link([self.resolve(e) for e in entries], self.resolve, modulus=modulus, registers=registers)

    def __repr__(self) -> str:
        return f"Library({list(self._programs)})"


def _registered_names() -> tuple[str, ...]:
    from ..registry import names

    return names("program")


_ASSEMBLED: dict[int, Program] = {}


def _registered(name: str) -> Program:
    from ..registry import lookup

    value = lookup("program", name)
    if isinstance(value, Program):
        return value
    if isinstance(value, str):  # a plug-in may register assembly text
        key = id(value)
        if key not in _ASSEMBLED:
            from .assembler import assemble

            _ASSEMBLED[key] = assemble(value, name=name)
        return _ASSEMBLED[key]
    if isinstance(value, types.FunctionType):  # or a Python function, compiled when first used
        key = id(value)
        if key not in _ASSEMBLED:
            from ..compiler import compile as compile_python

            _ASSEMBLED[key] = compile_python(value, name=name)
        return _ASSEMBLED[key]
    raise TypeError(f"program {name!r} was registered as a {type(value).__name__}; "
                    "expected a diffcomp.Program, assembly text or a Python function")


def program(name: str) -> Program:
    """A registered library program: ``diffcomp.program("insertion_sort")``."""
    if isinstance(name, Program):
        return name
    return _registered(name)


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


__all__ = ["Form", "Operand", "Instruction", "Program", "Library", "Image", "Line", "link", "program",
           "MAX_REGISTERS", "LINK", "CONTROL", "CONTROL_FORMS", "JUMPS", "alu_form"]
