"""``diffcomp exec``: JSON output, traces, exit codes, and one run through a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from diffcomp.cli import main
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["exec", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_is_exactly_the_documented_object(capsys):
    code, out, err = run(capsys, "insertion_sort", "--memory", "3,1,2,0", "--base", "32", "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert list(result) == ["memory", "registers", "halted", "steps"]
    assert result["memory"] == [1, 2, 3, 0] and result["halted"] is True and result["steps"] == 40


def test_an_assembly_file_with_registers_and_cells(capsys, tmp_path):
    source = tmp_path / "double.asm"
    source.write_text("; doubles r0 into cell 1\nr0 = ADD r0, r0\nWRITE 1, r0\nSTOP\n")
    code, out, _ = run(capsys, str(source), "--registers", "21", "--cells", "3", "--json")
    assert code == 0 and json.loads(out) == {"memory": [0, 42, 0], "registers": [42], "halted": True, "steps": 3}
    code, out, _ = run(capsys, str(source), "--registers", "21", "--cells", "3")
    assert code == 0 and "halted after 3 steps" in out and "r0=42" in out and "[0, 42, 0]" in out


def test_trace_shows_counter_instruction_and_registers_each_step(capsys):
    code, out, _ = run(capsys, "calculator", "--registers", "2,6,7", "--trace")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["step", "counter", "instruction", "registers"]
    steps = [line for line in lines[1:] if line.strip()[:1].isdigit()]
    assert len(steps) == 7 and "calculator:1" in steps[0] and "r3 = LT r0, 9" in steps[0]
    assert "r0=2 r1=6 r2=7" in steps[0] and "JMP r3" in steps[4] and "r0 = MUL r1, r2" in steps[5]
    assert "r0=42" in out.splitlines()[-2]  # the final registers


def test_a_run_that_does_not_halt_exits_1_with_a_message(capsys, tmp_path):
    source = tmp_path / "loop.asm"
    source.write_text("top: r0 = INC r0\n     JMP top\n")
    code, out, err = run(capsys, str(source), "--max-steps", "9", "--json")
    assert code == 1 and json.loads(out)["halted"] is False and json.loads(out)["steps"] == 9
    assert "did not halt within max_steps=9" in err


@pytest.mark.parametrize("argv, message", [
    (["insertion_sor"], "unknown program 'insertion_sor' (did you mean 'insertion_sort'?)"),
    (["insertion_sort", "--memory", "300,0"], "memory[0] = 300 is out of range"),
    (["missing.asm"], "no such assembly file: missing.asm"),
    (["fibonacci", "--registers", "0,1,4", "--cells", "2", "--base", "32"], "memory address 3 is out of range: the memory has 2 cells"),
    (["insertion_sort", "--base", "16", "--memory", "1,0"], "program too long for the counter"),
    (["insertion_sort", "--alu", "lookp"], "unknown alu 'lookp' (did you mean 'lookup'?)"),
    (["insertion_sort", "--alu", "circuit", "--base", "100"], "base must be a power of two"),
])
def test_bad_input_exits_2_with_one_clear_message(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and message in err and "Traceback" not in err


def test_an_assembly_error_names_the_file_and_the_line(capsys, tmp_path):
    source = tmp_path / "bad.asm"
    source.write_text("STOP\nr1 = ADD r0\n")
    code, _, err = run(capsys, str(source))
    assert code == 2 and f"{source}: line 2: ADD takes 2 operands" in err


def test_bad_argument_syntax_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["exec", "insertion_sort", "--memory", "3,x"])
    assert caught.value.code == 2 and "expected comma-separated integers" in capsys.readouterr().err


def test_the_circuit_alu_gives_the_same_answer(capsys):
    code, out, _ = run(capsys, "bubble_sort", "--memory", "9,4,200,1,0", "--alu", "circuit", "--base", "256", "--json")
    assert code == 0 and json.loads(out)["memory"] == [1, 4, 9, 200, 0]


def test_through_a_real_subprocess():
    completed = subprocess.run([sys.executable, "-m", "diffcomp", "exec", "insertion_sort", "--memory",
                                "3,1,2,0", "--json"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {"memory": [1, 2, 3, 0], "registers": [3, 0, 1, 0, 1, 0],
                                            "halted": True, "steps": 40}
