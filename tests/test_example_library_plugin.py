"""A third party's library programs, installed for real with pip, named in a recipe and chained like built-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from plugin_install import pip_install

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "diffcomp-strings"

RECIPE = """\
name = "with-a-plug-in"
seed = 0

[task]
name = "mixed"
types = ["max", "length"]
lengths = [1, 2]
width = 2
examples = 40

[model]
hidden_size = 32
layers = 2
heads = 2
kv_heads = 1
parser = "span"
parser_options = { spans = ["memory"], values = "embeddings", start = "before", choices = "states" }

[computer]
alu = "lookup"
base = 128
library = ["max", "length", "last", "first", "identity"]
steps = 2
selection = "sample"
samples = 2
readout = "learned"

[[stages]]
kind = "train"
epochs = 1
batch_size = 14
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return pip_install(EXAMPLE, tmp_path_factory.mktemp("site"))


def run(args: list[str], site: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    env.pop("DIFFCOMP_STRICT_PLUGINS", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


def test_its_programs_chain_with_the_built_ins(site):
    script = textwrap.dedent("""
        import diffcomp
        from diffcomp.machine.chain import one_hot_chain
        library = diffcomp.library("insertion_sort", "last", "first", "identity")
        machine = diffcomp.Machine(library, diffcomp.alu("lookup", base=128), cells=5, max_steps=200, registers=7)
        enc = machine.encoding
        selection = one_hot_chain([["insertion_sort", "last"], ["identity", "first"]], machine.entry_points)
        state = diffcomp.run_chain(machine, enc.encode([[0] * 7] * 2), enc.encode([[99, 100, 97, 0]] * 2), selection)
        print(enc.decode(state.registers)[:, 0].tolist(), diffcomp.convention(library["last"]).result)
    """)
    result = run(["-c", script], site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[100,", "99]", "0"]


@pytest.mark.slow
def test_a_recipe_names_them_in_its_library_and_trains(site, tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    assert run(["-m", "diffcomp", "validate", str(path)], site).returncode == 0
    result = run(["-m", "diffcomp", "run", str(path), "--out", str(tmp_path / "run")], site)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]
    # without the plug-in, the same recipe is one clear error
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    missing = subprocess.run([sys.executable, "-m", "diffcomp", "validate", str(path)], capture_output=True,
                             text=True, env=env, timeout=120)
    assert missing.returncode == 2 and "unknown program 'last'" in missing.stderr
