"""The assembler and disassembler: the syntax of docs/architecture.md, linking, and every error with its line number."""

from __future__ import annotations

from pathlib import Path

import pytest

import diffcomp
from diffcomp import AssemblyError
from diffcomp.machine import Library, Operand
from diffcomp.machine.program import CONTROL
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)

#: the assembly example of docs/architecture.md, read from there so that the document stays true
ARCHITECTURE_EXAMPLE = ((Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
                        .split("Assembly text (**stable**):", 1)[1].split("```\n", 2)[1])


def test_the_architecture_example_assembles():
    program = diffcomp.assemble(ARCHITECTURE_EXAMPLE, name="example")
    assert [i.mnemonic for i in program] == ["READ", "ADD", "WRITE", "JEZ", "JMP", "STOP"]
    assert program.labels == {"start": 0, "done": 5}
    assert program.instructions[1].out == Operand("register", 2)
    assert program.instructions[1].operands == (Operand("register", 1), Operand("immediate", 1))
    assert program.instructions[3].operands == (Operand("register", 2), Operand("label", "done"))
    assert [i.line for i in program] == [2, 3, 4, 5, 6, 7]
    assert program.doc == "comments start with ';'"
    assert program.registers == 3 and program.ops == ("add",)


def test_immediates_and_labels_become_constant_registers():
    image = Library([diffcomp.assemble(ARCHITECTURE_EXAMPLE)], registered=False).link(modulus=16)
    assert image.registers == 3 and image.link_register == 3
    assert image.constants == (1, 6)  # the immediate 1 (also start's address) and done's address
    add, jez, jmp = image.lines[2], image.lines[4], image.lines[5]
    assert (add.out, add.a, add.b) == (2, 1, image.constant_register(1))
    assert (jez.a, jez.b) == (2, image.constant_register(6))
    assert jmp.a == image.constant_register(1)
    assert image.lines[0].instruction is None and image.entries == {"main": 1}


def test_case_numbers_and_mov_sugar():
    program = diffcomp.assemble("R1 = mov 0x1f\n r2 = Inc R1\n lr = MOV r2\n ret")
    assert [str(i) for i in program] == ["r1 = MOV 31", "r2 = INC r1", "lr = MOV r2", "RET"]


def test_a_program_that_can_run_off_its_end_gets_a_stop():
    program = diffcomp.assemble("r0 = INC r0")
    assert [i.mnemonic for i in program] == ["INC", "STOP"] and program.instructions[-1].line is None
    assert [i.mnemonic for i in diffcomp.assemble("JMP end\nend:")] == ["JMP", "STOP"]
    assert len(diffcomp.assemble("r0 = INC r0\nRET")) == 2


def test_disassembly_round_trips():
    for text in (ARCHITECTURE_EXAMPLE, diffcomp.program("fibonacci").source, diffcomp.program("calculator").source):
        program = diffcomp.assemble(text, name="p")
        again = diffcomp.assemble(diffcomp.disassemble(program), name="p")
        assert again.instructions == program.instructions and again.labels == program.labels
        assert again.doc == program.doc


def test_a_linked_library_disassembles_into_one_program_that_runs_the_same():
    caller = diffcomp.assemble("r0 = MOV 1\nr1 = MOV 0\nWRITE r1, 4\nWRITE 1, 2\nCALL insertion_sort\nSTOP",
                               name="caller")
    image = Library([caller]).link(modulus=64)
    assert set(image.entries) == {"caller", "insertion_sort"}
    text = diffcomp.disassemble(image)
    assert "CALL insertion_sort" in text and "insertion_sort:" in text
    flat = diffcomp.assemble(text, name="flat", library=())
    for program in (caller, flat):
        assert diffcomp.execute(program, memory=[0, 0, 0], base=64).memory == [2, 4, 0]


# -- errors: each with its line number and what was expected --------------------------------------

@pytest.mark.parametrize("text, line, message", [
    ("r1 = ADDD r0, r1", 1, "unknown instruction 'ADDD' (did you mean 'ADD'?)"),
    ("STOP\nr1 = FOO r0", 2, "unknown instruction 'FOO'"),
    ("r1 = ADD r0", 1, "ADD takes 2 operands ('rX = ADD a, b'), got 1"),
    ("\n\nJEZ r0", 3, "JEZ takes 2 operands ('JEZ a, t'), got 1"),
    ("r1 = INC r0, r2", 1, "INC takes 1 operand ('rX = INC a'), got 2"),
    ("r1 = ADD r0,", 1, "got an empty operand"),
    ("STOP r1", 1, "STOP takes 0 operands"),
    ("ADD r0, r1", 1, "ADD produces a value: write it as 'rX = ADD a, b'"),
    ("r1 = WRITE r0, r1", 1, "WRITE produces no value, so it takes no destination"),
    ("5 = INC r0", 1, "the destination of INC must be a register"),
    ("= INC r0", 1, "expected a destination register before '='"),
    ("JMP loop\nlop: STOP", 1, "undefined label 'loop' (did you mean 'lop'?)"),
    ("CALL insertion_sorr", 1, "undefined label or program 'insertion_sorr' (did you mean 'insertion_sort'?)"),
    ("a: STOP\nb: STOP\na: STOP", 3, "duplicate label 'a' (first defined on line 1)"),
    ("r3: STOP", 1, "'r3' is a register name and cannot be a label"),
    ("r16 = INC r0", 1, "register r16 is out of range: the machine has r0..r15 (and lr)"),
    ("r0 = ADD r0, -1", 1, "immediate -1 is out of range"),
    ("JMP 3", 1, "a JMP target must be a label, a program name, a register or 0 (the halting address), got the number 3"),
    ("r1 = ADD r0, 3x", 1, "bad operand '3x': expected a register (r0..r15 or lr)"),
])
def test_assembly_errors_carry_the_line_and_what_was_expected(text, line, message):
    with pytest.raises(AssemblyError) as caught:
        diffcomp.assemble(text)
    assert caught.value.line == line
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"line {line}: ")


def test_immediates_beyond_the_encoding_are_errors_with_the_line():
    with pytest.raises(AssemblyError, match=r"line 2: immediate 16 is out of range for unit\(base=16\): "
                                            r"immediates are 0..15"):
        diffcomp.assemble("r0 = ADD r0, 15\nr0 = ADD r0, 16", encoding=diffcomp.encoding("unit", base=16))
    program = diffcomp.assemble("STOP\nr0 = ADD r0, 300")  # no encoding yet: checked when linked
    with pytest.raises(AssemblyError, match="line 2: immediate 300 is out of range: the machine's numbers are 0..127"):
        diffcomp.execute(program, base=128)


def test_a_program_longer_than_the_counter_can_address_is_an_error():
    text = "\n".join(["r0 = INC r0"] * 16) + "\nSTOP"
    with pytest.raises(AssemblyError, match=r"line 16: program too long for the counter: 17 instructions"):
        diffcomp.assemble(text, encoding=diffcomp.encoding("unit", base=16))
    with pytest.raises(AssemblyError, match=r"line 16: program too long for the counter: the linked image needs "
                                            r"18 addresses .* 'main' would be at address 16"):
        diffcomp.execute(text, base=16)
    # a library too large for the encoding: the callee's line that does not fit
    caller = diffcomp.assemble("CALL insertion_sort\nSTOP", name="caller")
    with pytest.raises(AssemblyError, match=r"line \d+: program too long .*insertion_sort \(18\).*'insertion_sort'"):
        Library([caller]).link(modulus=16)


def test_a_call_to_a_program_not_in_the_library_is_an_error_with_the_line():
    with pytest.raises(AssemblyError, match=r"line 2: undefined label or program 'helper'; .*"
                                            r"programs in the library: other"):
        diffcomp.assemble("STOP\nCALL helper", library=["other"])
    program = diffcomp.assemble("STOP\nCALL helper", library=["helper"])  # found at link time, or not
    with pytest.raises(AssemblyError, match=r"line 2: CALL names program 'helper', which is not in the library"):
        Library([program], registered=False).link()


def test_every_instruction_is_listed_in_the_unknown_instruction_message():
    with pytest.raises(AssemblyError) as caught:
        diffcomp.assemble("r0 = XYZZY r1")
    for mnemonic in [*CONTROL, "ZERO", "INC", "DEC", "ADD", "SUB", "MUL", "DIV", "MOD", "MIN", "MAX", "EQ", "LT"]:
        assert mnemonic in str(caught.value)


def test_empty_text_and_bad_arguments():
    with pytest.raises(AssemblyError, match="the program has no instructions"):
        diffcomp.assemble("; only a comment\n\n")
    with pytest.raises(TypeError, match="assembly text"):
        diffcomp.assemble(b"STOP")
    with pytest.raises(ValueError, match="registers must be a positive integer"):
        diffcomp.assemble("STOP", registers=0)
    assert diffcomp.assemble("r7 = INC r0", registers=8).registers == 8
    with pytest.raises(AssemblyError, match="register r8 is out of range: the machine has r0..r7"):
        diffcomp.assemble("r8 = INC r0", registers=8)


def test_library_composition():
    inc = diffcomp.assemble("r0 = INC r0\nRET", name="inc")
    twice = diffcomp.assemble("CALL inc\nCALL inc\nRET", name="twice", library=["inc"])
    library = Library([inc]).add(twice)  # (this twice loses its return address: see below)
    assert library.names == ("inc", "twice") and library["twice"] is twice and "inc" in library
    with pytest.raises(ValueError, match="already has a program named 'inc'"):
        library.add(diffcomp.assemble("RET", name="inc"))
    with pytest.raises(LookupError, match=r"unknown program 'thrice'.*registered programs: .*inc, .*twice"):
        library["thrice"]
    # a program that calls others saves its own return address (here in memory cell 0) first
    twice = diffcomp.assemble("WRITE 0, lr\nCALL inc\nCALL inc\nlr = READ 0\nRET", name="twice", library=["inc"])
    library = Library([inc, twice])
    main = diffcomp.assemble("CALL twice\nr1 = MOV r0\nCALL inc\nSTOP", library=library)
    result = diffcomp.execute(main, registers=[5, 0], memory=[0], base=16, library=library)
    assert result.registers == [8, 7] and result.halted
    assert diffcomp.execute("twice", registers=[5], memory=[0], base=16, library=library).registers == [7]


def test_a_jump_to_0_halts_and_round_trips():
    """0 is the halting address wherever a program is linked: disassembly writes it, assembly reads it back."""
    program = diffcomp.assemble("r0 = READ 0\nJEZ r0, 0\nWRITE 1, r0\nJMP 0\n", name="halts")
    assert diffcomp.execute(program, memory=[0, 7]).memory == [0, 7]
    assert diffcomp.execute(program, memory=[5, 7]).memory == [5, 5]
    text = diffcomp.disassemble(program)
    assert "JEZ r0, 0" in text and "JMP 0" in text
    assert diffcomp.execute(diffcomp.assemble(text, name="again"), memory=[5, 7]).steps == \
        diffcomp.execute(program, memory=[5, 7]).steps
