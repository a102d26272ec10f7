"""The instruction set: every instruction's form (what it writes, its operands), in one place.

The machine's own instructions (control, memory, ``MOV``) are listed here; the
ALU instructions are the registered ops (``diffcomp.Op``), one instruction
``rX = OP a, b`` per op with the op's own arity, so a plug-in op is an
instruction as soon as it is registered and nothing copies the ops' table.

The assembler (:mod:`.assembler`), the linker (:mod:`.program`) and the
interpreter (:mod:`.interpreter`) read the instruction set from here.

=========================  =====================================
instruction                effect
=========================  =====================================
``STOP``                   halt: add the instruction's weight to ``h``
``rX = MOV a``             ``rX <- a``
``rX = READ a``            ``rX <- M[a]`` (eq. 2)
``WRITE a, b``             ``M[a] <- b`` (eqs. 3-4)
``JEZ a, t``               if ``a = 0`` go to ``t`` (eq. 6)
``JMP t``                  go to ``t``
``CALL t``                 ``lr <- c + 1``; go to ``t``
``RET``                    go to ``lr``
``rX = OP a, b``           ``rX <- op(a, b)`` for each registered op (eq. 7)
=========================  =====================================
"""

from __future__ import annotations

import attrs

#: the general registers an assembled program may name by default (r0 .. r15)
MAX_REGISTERS = 16
#: the link register's name: ``CALL`` writes the return address there, ``RET`` jumps to it
LINK = "lr"


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


#: control, memory and move instructions, in the order of the interpreter's first columns
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
#: instructions that move the counter somewhere other than the next line
JUMPS = ("JEZ", "JMP", "CALL", "RET")
#: instructions after which control never reaches the next line
NO_FALL_THROUGH = ("STOP", "JMP", "RET")


def alu_form(op: str, arity: int) -> Form:
    """The instruction ``rX = OP a, b`` for an ALU op of the given arity."""
    return Form(op.upper(), True, ("a", "b")[:arity], op=op)


def form(mnemonic: str) -> Form | None:
    """The form of ``mnemonic`` (any case): a control instruction or a registered op's; None if neither."""
    upper = mnemonic.upper()
    if upper in CONTROL:
        return CONTROL[upper]
    from ..registry import get_registry

    registry, op = get_registry(), mnemonic.lower()
    if op.isidentifier() and op in registry.names("op"):
        return alu_form(op, registry.get("op", op).arity)
    return None


def forms() -> dict[str, Form]:
    """Every instruction there is: the control instructions, then one per registered ALU op."""
    from ..registry import get_registry

    registry = get_registry()
    table = dict(CONTROL)
    for op in registry.names("op"):
        table.setdefault(op.upper(), alu_form(op, registry.get("op", op).arity))
    return table


def arities() -> dict[str, int]:
    """``{op: arity}`` for every registered ALU op (what ``diffcomp.Op.arity`` says)."""
    return {f.op: len(f.operands) for f in forms().values() if f.op is not None}


__all__ = ["Form", "CONTROL_FORMS", "CONTROL", "JUMPS", "NO_FALL_THROUGH", "LINK", "MAX_REGISTERS", "alu_form",
           "form", "forms", "arities"]
