"""The instruction set lives in one module: forms from the registered ops, no import cycle, old names kept."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import diffcomp
from diffcomp.errors import AssemblyError
from diffcomp.machine import isa

MACHINE = Path(diffcomp.__file__).parent / "machine"


def _imports(module: str) -> set[str]:
    """The sibling modules ``machine/<module>.py`` imports, anywhere in the file (``from .x import``)."""
    tree = ast.parse((MACHINE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module or "")
            if node.module is None:
                found.update(alias.name for alias in node.names)
    return found


def test_the_assembler_and_the_linker_do_not_import_each_other():
    assert "program" in _imports("assembler")
    assert "assembler" not in _imports("program")
    for module in ("assembler", "program", "interpreter"):
        assert "isa" in _imports(module), module


def test_alu_instructions_take_their_arity_from_the_registered_ops():
    from diffcomp.registry import get_registry

    registry = get_registry()
    arities = isa.arities()
    assert set(arities) == set(registry.names("op"))
    for op, arity in arities.items():
        assert arity == registry.get("op", op).arity
        assert isa.form(op.upper()).operands == ("a", "b")[:arity]
    assert isa.form("jez") is isa.CONTROL["JEZ"]
    assert isa.form("FROB") is None


def test_a_plugin_op_is_an_instruction_as_soon_as_it_is_registered(fresh_registry):
    class Plugin:
        @staticmethod
        @diffcomp.hookimpl
        def register_ops(register):
            register(diffcomp.Op("negate_i15", lambda a, b: -a, arity=1))

    with pytest.raises(AssemblyError, match="unknown instruction"):
        diffcomp.assemble("r1 = NEGATE_I15 r0\nSTOP")
    diffcomp.register_plugin(Plugin, name="isa-test-negate")
    program = diffcomp.assemble("r1 = NEGATE_I15 r0\nSTOP")
    assert program.instructions[0].mnemonic == "NEGATE_I15"
    with pytest.raises(AssemblyError, match="takes 1 operand"):
        diffcomp.assemble("r1 = NEGATE_I15 r0, r2\nSTOP")


def test_names_that_moved_are_still_importable_from_program():
    module = importlib.import_module("diffcomp.machine.program")  # (diffcomp.machine.program is also a function)
    from diffcomp.machine.library import Library
    from diffcomp.machine.program import BUILTIN_ALU_ARITY, CONTROL, LINK, MAX_REGISTERS, alu_form

    assert module.Library is Library and module.program("insertion_sort").name == "insertion_sort"
    assert CONTROL is isa.CONTROL and alu_form is isa.alu_form and (LINK, MAX_REGISTERS) == ("lr", 16)
    assert BUILTIN_ALU_ARITY["inc"] == 1 and BUILTIN_ALU_ARITY["add"] == 2 and BUILTIN_ALU_ARITY["zero"] == 0
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_a_program_prints_back_to_text_that_assembles_to_it():
    program = diffcomp.program("insertion_sort")
    again = diffcomp.assemble(str(program), name=program.name)
    assert again.instructions == program.instructions and again.labels == program.labels
