"""The example third-party plug-in in examples/, installed for real with pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_install import pip_install

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "diffcomp-bitwise"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package built and installed by pip into an isolated folder."""
    target = pip_install(EXAMPLE, tmp_path_factory.mktemp("site"))
    assert list(target.glob("diffcomp_bitwise-0.1.0.dist-info"))
    return target


def run(args: list[str], site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("DIFFCOMP_STRICT_PLUGINS", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_discovered_by_diffcomp_plugins(site):
    result = run(["-m", "diffcomp", "plugins", "--json"], site)
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["bitwise"]["distribution"] == "diffcomp-bitwise"
    assert listed["bitwise"]["version"] == "0.1.0"
    assert listed["bitwise"]["registered"] == {"op": ["xor", "band", "bor"], "alu": ["bitwise"],
                                               "program": ["digit_sum"]}
    table = run(["-m", "diffcomp", "plugins"], site)
    assert "bitwise  [diffcomp-bitwise 0.1.0]" in table.stdout


def test_usable_by_name(site):
    script = (
        "import diffcomp, torch\n"
        "alu = diffcomp.alu('bitwise', bits=4, ops=('xor', 'band'))\n"
        "enc = alu.encoding\n"
        "out = alu(alu.op_distribution(['xor', 'band']), enc.encode([12, 12]), enc.encode([10, 10]))\n"
        "print(enc.decode(out).tolist())\n"
        "print(diffcomp.registry.lookup('op', 'bor')(12, 10, 16))\n"
    )
    result = run(["-c", script], site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[6,", "8]", "14"]


def test_a_program_written_in_python(site):
    """The plug-in registers a Python function; diffcomp compiles it and runs it like any library program."""
    result = run(["-m", "diffcomp", "exec", "digit_sum", "--registers", "97", "--json"], site)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["registers"][0] == 16
    script = (
        "import diffcomp\n"
        "program = diffcomp.program('digit_sum')\n"
        "print(type(program).__name__, 'DIV' in str(program), 'MOD' in str(program))\n"
        "caller = diffcomp.compile('def twice(n):\\n    return digit_sum(n) + digit_sum(n)\\n')\n"
        "print(diffcomp.execute(caller, registers=[59], cells=128).registers[0])\n"
    )
    result = run(["-c", script], site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Program", "True", "True", "28"]
