"""The README's tour runs as written."""

from __future__ import annotations

from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_python_tour_runs_and_says_what_it_claims():
    block = README.split("### 2. The computer from Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    unit, table, out = namespace["unit"], namespace["table"], namespace["out"]
    assert unit.decode(out).tolist() == [7, 72]
    circuit, a, b = namespace["circuit"], namespace["a"], namespace["b"]
    assert unit.decode(circuit(table.op_distribution(["add", "mul"]), a, b)).tolist() == [7, 72]
    assert namespace["diffcomp"].execute(namespace["double_sort"], memory=[30, 10, 20, 0]).memory == [20, 20, 30, 0]
    assert namespace["memory"].grad is not None and namespace["memory"].grad.abs().sum() > 0


def test_the_readme_opens_with_two_set_up_commands():
    setup = README.split("## Set up", 1)[1].split("## A tour", 1)[0]
    commands = [line for line in setup.splitlines() if line.startswith("pip install")]
    assert len(commands) == 2
    assert commands[0].endswith("diffcomp run quickstart") and commands[1].endswith("python -m pytest")


@pytest.mark.slow
def test_writing_programs_in_python_compiles_calls_and_trains_through(capsys):
    block = README.split("## Writing programs in Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    diffcomp, score = namespace["diffcomp"], namespace["score"]
    assert len(score) == 7 and "score:" in capsys.readouterr().out
    both, library = namespace["both"], namespace["library"]
    assert diffcomp.execute(both, registers=[5, 20], base=64, cells=64, library=library).registers[0] == 37
    # trained from answers alone: it starts wrong (uniform logits pick x = 0 for every question) and ends right
    answers = namespace["answers"].tolist()
    assert [diffcomp.execute(score, registers=[0], base=64).registers[0]] * 8 != answers
    assert namespace["correct"] is True and namespace["loss"].item() < 0.05
