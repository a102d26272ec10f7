"""``diffcomp compile FILE.py`` and ``diffcomp exec FILE.py``: output, the function chosen, and bad input (exit 2)."""

from __future__ import annotations

import json

import diffcomp
from diffcomp.cli import main
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)

SOURCE = '''\
def double(x):
    return x + x

def fib(d):
    """The d-th Fibonacci number."""
    a, b = 0, 1
    while d != 0:
        a, b = b, a + b
        d -= 1
    return double(a) // 2
'''


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_prints_the_assembly_and_its_counts(capsys, tmp_path):
    source = tmp_path / "fib.py"
    source.write_text(SOURCE)
    code, out, err = cli(capsys, "compile", str(source))
    assert code == 0 and err == ""
    program = diffcomp.compile(source.read_text(), filename=str(source))
    assert out.startswith(str(program))
    assert f"; fib: {len(program)} instructions, {program.registers} registers" in out.splitlines()[-1]
    code, asm, _ = cli(capsys, "compile", str(source), "--asm")
    assert code == 0 and asm == str(program)
    assert diffcomp.execute(diffcomp.assemble(asm, name="fib"), registers=[10], cells=128).registers[0] == 55


def test_exec_runs_a_python_file(capsys, tmp_path):
    source = tmp_path / "double.py"
    source.write_text("def double(x):\n    mem[1] = x + x\n    return x * 3\n")
    code, out, _ = cli(capsys, "exec", str(source), "--registers", "21", "--cells", "2", "--json")
    assert code == 0
    assert json.loads(out)["memory"] == [0, 42] and json.loads(out)["registers"][0] == 63


def test_function_picks_one_of_several(capsys, tmp_path):
    source = tmp_path / "two.py"
    source.write_text("def f(x):\n    return x + 1\n\ndef g(x):\n    return x + 2\n")
    code, _, err = cli(capsys, "compile", str(source))
    assert code == 2 and "name one of: f, g" in err
    code, out, _ = cli(capsys, "exec", str(source), "--function", "g", "--registers", "1", "--json")
    assert code == 0 and json.loads(out)["registers"][0] == 3
    code, _, err = cli(capsys, "compile", str(source), "--function", "h")
    assert code == 2 and "no function named 'h'" in err


def test_bad_source_exits_2_with_file_line_and_column(capsys, tmp_path):
    source = tmp_path / "bad.py"
    source.write_text("def f(x):\n    y = 1.5\n    return x\n")
    for command in ("compile", "exec"):
        code, out, err = cli(capsys, command, str(source))
        assert code == 2 and out == ""
        assert err.startswith(f"diffcomp {command}: error: {source}:2:9: in f(): floats are not in the subset")
    source.write_text("def f(x)\n    return x\n")
    code, _, err = cli(capsys, "compile", str(source))
    assert code == 2 and f"{source}:1:" in err and "not valid Python" in err


def test_a_missing_file_exits_2(capsys, tmp_path):
    code, _, err = cli(capsys, "compile", str(tmp_path / "nope.py"))
    assert code == 2 and "no such Python file" in err
    code, _, err = cli(capsys, "exec", str(tmp_path / "nope.py"))
    assert code == 2 and "no such Python file" in err
