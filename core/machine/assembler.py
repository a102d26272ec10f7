"""The assembler: assembly text (docs/architecture.md) -> :class:`Program`, and back.

One instruction per line; ``;`` starts a comment; ``label:`` names the next
instruction::

    ; comments start with ';'
    start:  r1 = READ r0        ; operands: registers r0.., integer immediates, labels
            r2 = ADD r1, 1      ; an immediate lives in a constant register the assembler adds
            WRITE r0, r2
            JEZ r2, done
            JMP start
    done:   STOP

Operands are registers (``r0`` .. ``r15`` by default, and ``lr``, the link
register ``CALL`` writes), non-negative integer immediates, labels, and
program names (``CALL insertion_sort``); immediates, labels and program names
become constant registers when the program is linked. ``JEZ``/``JMP``/``CALL``
targets are labels, program names, registers (a computed jump) or ``0``, the
halting address (what :func:`disassemble` writes for a jump that halts). Any
registered ALU op is an instruction: ``rX = XOR a, b`` once a plug-in adds
``xor``. A program whose last instruction could run off its end gets an
implicit ``STOP``.

Every error is an :class:`~diffcomp.errors.AssemblyError` carrying the line
number and saying what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import AssemblyError, did_you_mean
from .isa import LINK, MAX_REGISTERS, NO_FALL_THROUGH, Form, alu_form, form as find_form, forms
from .program import Image, Instruction, Operand, Program, listing, with_labels

if TYPE_CHECKING:
    from ..encodings import NumberEncoding

_LABEL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*:(?!=)")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_REGISTER = re.compile(r"[rR]([0-9]+)")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+|0[xX][0-9a-fA-F]+|0[bB][01]+)")


def assemble(text: str, *, name: str = "main", encoding: NumberEncoding | None = None,
             registers: int = MAX_REGISTERS, library: Any = None) -> Program:
    """Assemble ``text`` into a :class:`Program` named ``name``.

    ``encoding`` (optional) checks immediates and the program's length against
    the machine's numbers now rather than when it is linked; ``registers`` is
    how many general registers it may name; ``library`` is what ``CALL`` may
    name besides the program's own labels: a :class:`~diffcomp.machine.Library`
    (its programs, and the registered ones unless it was made with
    ``registered=False``) or names (default: the registered programs).
    """
    if not isinstance(text, str):
        raise TypeError(f"assemble() takes assembly text (a str), got {type(text).__name__}")
    if not isinstance(registers, int) or registers < 1:
        raise ValueError(f"registers must be a positive integer, got {registers!r}")
    parsed: list[tuple[int, str, str, str | None, str, list[str]]] = []
    labels: dict[str, int] = {}
    label_lines: dict[str, int] = {}
    doc: list[str] = []
    in_header = True
    for number, raw in enumerate(text.splitlines(), start=1):
        code, _, comment = raw.partition(";")
        if in_header and not code.strip():
            if comment.strip() or raw.strip().startswith(";"):
                doc.append(comment[1:] if comment.startswith(" ") else comment)
            elif doc:
                in_header = False
            continue
        in_header = False
        while match := _LABEL.match(code):
            label = match.group(1)
            if label in labels:
                raise AssemblyError(f"duplicate label {label!r} (first defined on line {label_lines[label]})",
                                    number, raw)
            if _REGISTER.fullmatch(label) or label.lower() == LINK:
                raise AssemblyError(f"{label!r} is a register name and cannot be a label", number, raw)
            labels[label], label_lines[label] = len(parsed), number
            code = code[match.end():]
        code = code.strip()
        if not code:
            continue
        out = None
        if "=" in code:
            out, _, code = (part.strip() for part in code.partition("="))
            if not out:
                raise AssemblyError("expected a destination register before '=' (e.g. 'r1 = INC r0')",
                                    number, raw)
        mnemonic, _, rest = code.partition(" ")
        rest = rest.strip()
        args = [a.strip() for a in rest.split(",")] if rest else []
        parsed.append((number, raw, mnemonic, out, rest, args))
    if not parsed:
        raise AssemblyError("the program has no instructions", None)

    names = _library_names(library)
    instructions = [_instruction(number, raw, mnemonic, out, args, labels, name, names, encoding, registers)
                    for number, raw, mnemonic, out, _, args in parsed]
    if instructions[-1].mnemonic not in NO_FALL_THROUGH or any(at == len(instructions) for at in labels.values()):
        instructions.append(Instruction("STOP", None, (), None, "STOP  ; added: the program ran off its end"))
    if encoding is not None and len(instructions) + 1 > encoding.modulus:
        last = instructions[min(encoding.modulus - 1, len(instructions) - 1)]
        raise AssemblyError(f"program too long for the counter: {len(instructions)} instructions and the halting "
                            f"address need {len(instructions) + 1} addresses, but {encoding} holds only "
                            f"0..{encoding.max_value}; use a larger base or a shorter program", last.line, last.source)
    return Program(name, tuple(instructions), labels, "\n".join(doc).strip("\n"), text)


def _library_names(library: Any) -> frozenset[str] | None:
    if library is None:
        return None  # the registered programs, looked up only if a name needs it
    if hasattr(library, "names") and hasattr(library, "registered"):  # a Library
        return frozenset(library.names) | (_registered_names() if library.registered else frozenset())
    if isinstance(library, str) or not isinstance(library, Iterable):
        raise TypeError(f"library must be a diffcomp.Library or program names, got {type(library).__name__}")
    return frozenset(library)


def _registered_names() -> frozenset[str]:
    from ..registry import names

    return frozenset(names("program"))


def _form(mnemonic: str, number: int, raw: str) -> Form:
    found = find_form(mnemonic)
    if found is not None:
        return found
    known = forms()
    raise AssemblyError(f"unknown instruction {mnemonic!r}{did_you_mean(mnemonic.upper(), known)}; instructions: "
                        f"{', '.join(known)}", number, raw)


def _instruction(number: int, raw: str, mnemonic: str, out: str | None, args: list[str], labels: dict[str, int],
                 name: str, names: frozenset[str] | None, encoding: NumberEncoding | None,
                 registers: int) -> Instruction:
    form = _form(mnemonic, number, raw)
    if form.writes and out is None:
        raise AssemblyError(f"{form.mnemonic} produces a value: write it as '{form.syntax()}'", number, raw)
    if not form.writes and out is not None:
        raise AssemblyError(f"{form.mnemonic} produces no value, so it takes no destination: write it as "
                            f"'{form.syntax()}'", number, raw)
    if len(args) != len(form.operands) or any(not a for a in args):
        count = len(form.operands)
        got = "an empty operand" if any(not a for a in args) and args else f"{len(args)}"
        raise AssemblyError(f"{form.mnemonic} takes {count} operand{'s' if count != 1 else ''} "
                            f"('{form.syntax()}'), got {got}", number, raw)

    def operand(text: str, role: str) -> Operand:
        if match := _REGISTER.fullmatch(text):
            index = int(match.group(1))
            if index >= registers:
                raise AssemblyError(f"register {text} is out of range: the machine has r0..r{registers - 1} "
                                    f"(and {LINK})", number, raw)
            return Operand("register", index)
        if text.lower() == LINK:
            return Operand("link", LINK)
        if _NUMBER.fullmatch(text):
            value = int(text, 10) if text.lstrip("+-").isdigit() else int(text, 0)
            if role == "t" and value != 0:  # 0 is the halting address wherever the program is linked
                raise AssemblyError(f"a {form.mnemonic} target must be a label, a program name, a register or 0 "
                                    f"(the halting address), got the number {text} (addresses depend on where "
                                    "the program is linked)", number, raw)
            top = f"0..{encoding.max_value}" if encoding is not None else "non-negative"
            if value < 0 or (encoding is not None and value >= encoding.modulus):
                where = f" for {encoding}" if encoding is not None else ""
                raise AssemblyError(f"immediate {value} is out of range{where}: immediates are {top} integers",
                                    number, raw)
            return Operand("immediate", value)
        if _IDENTIFIER.fullmatch(text):
            if text in labels:
                return Operand("label", text)
            if text == name:
                return Operand("program", text)
            known = names if names is not None else _registered_names()
            if text in known:
                return Operand("program", text)
            candidates = sorted(labels) + sorted(known)
            what = "label or program" if form.mnemonic == "CALL" else "label"
            raise AssemblyError(f"undefined {what} {text!r}{did_you_mean(text, candidates)}; labels: "
                                f"{', '.join(sorted(labels)) or '(none)'}; programs in the library: "
                                f"{', '.join(sorted(known)) or '(none)'}", number, raw)
        raise AssemblyError(f"bad operand {text!r}: expected a register (r0..r{registers - 1} or {LINK}), "
                            "a non-negative integer, a label or a program name", number, raw)

    dest = None
    if out is not None:
        dest = operand(out, "out")
        if not dest.is_register:
            raise AssemblyError(f"the destination of {form.mnemonic} must be a register (r0..r{registers - 1} or "
                                f"{LINK}), got {out!r}", number, raw)
    operands = tuple(operand(text, role) for text, role in zip(args, form.operands))
    return Instruction(form.mnemonic, dest, operands, number, raw)


# -- disassembly ---------------------------------------------------------------------------------

def disassemble(program: Any) -> str:
    """Assembly text for a :class:`Program`, a linked :class:`Image`, or a machine.

    For a machine (an :class:`~diffcomp.machine.Interpreter`) it prints the
    most likely program: the argmax of every instruction and operand
    distribution, so a trained program can be read back.
    """
    if isinstance(program, Program):
        return listing(program)
    if isinstance(program, Image):
        return _image_text(program)
    if hasattr(program, "most_likely_image"):
        return _image_text(program.most_likely_image())
    raise TypeError(f"disassemble() takes a Program, an Image or a Machine, got {type(program).__name__}")


def _image_text(image: Image) -> str:
    """One assembly text for a whole image; program names and labels become labels."""
    labels = dict(image.labels)
    lines = []
    for address, line in enumerate(image.lines):
        if address == 0:
            continue
        form = find_form(line.mnemonic) or alu_form(line.mnemonic.lower(), 2)

        def name(index: int, role: str) -> str:
            text = image.register_name(index)
            if role == "t" and index > image.registers:  # a constant jump target: its label
                # (the machine takes a jump target modulo the lines, so a trained one beyond them has a label too)
                target = image.constants[index - image.registers - 1] % len(image.lines)
                if target == 0:
                    return "0"
                if target < len(image.lines):
                    return labels.setdefault(target, f"L{target}")
            return text

        mnemonic = line.mnemonic
        if mnemonic == "RET" and line.a != image.link_register:  # a trained RET that returns elsewhere
            mnemonic = "JMP"
        roles = {"JEZ": ("a", "t"), "JMP": ("t",), "CALL": ("t",), "RET": ()}.get(mnemonic, form.operands)
        slots = (line.a, line.b)
        operands = ", ".join(name(slots[k], role) for k, role in enumerate(roles))
        text = f"{mnemonic} {operands}".rstrip()
        if form.writes:
            text = f"{image.register_name(line.out)} = {text}"
        lines.append((address, text))
    out = []
    for address, text in lines:
        names = [labels[address]] if address in labels else []
        out.extend(with_labels(names, text))
    return "\n".join(out) + "\n"


__all__ = ["assemble", "disassemble", "forms"]  # forms: from .isa, kept here for callers
