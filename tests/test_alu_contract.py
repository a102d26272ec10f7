"""The ALU contract: a subclass of ``diffcomp.ALU`` implements ``forward(op, a, b)`` or ``compute(op, a, b)``.

The plug-in below is a real distribution, installed by pip into a folder of
its own and found through the ``diffcomp`` entry-point group; it registers one
ALU of each kind, and both run through the machine and through a recipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from plugin_install import pip_install
import torch

import diffcomp

PLUGIN = '''
"""Two dense one-hot tables (eq. 7): one implements forward, the other compute."""
import torch
import diffcomp


def dense(alu, op, a, b):
    """o_l = sum_ijk T_ijkl f_i u_j v_k, the table built from the ops' integer functions."""
    n = alu.encoding.modulus
    table = torch.zeros(len(alu.ops), n, n, n, dtype=a.dtype)  # (ops, n, n, n)
    for i, o in enumerate(alu.op_defs):
        table[i].scatter_(-1, o.table(n).unsqueeze(-1), 1)
    return torch.einsum("ijkl,bi,bj,bk->bl", table, op.to(a.dtype), a, b)


class ForwardALU(diffcomp.ALU):
    """The documented contract: a module with ops, encoding and forward(op, a, b)."""
    name = "dense-forward"

    def __init__(self, base: int = 16, ops=None):
        super().__init__(diffcomp.encoding("unit", base=base), ops)
        self.calls = 0

    def forward(self, op, a, b):
        self.calls += 1
        return dense(self, op, a, b)


class ComputeALU(diffcomp.ALU):
    """The framework's hook: the base class checks the inputs, then calls compute."""
    name = "dense-compute"

    def __init__(self, base: int = 16, ops=None):
        super().__init__(diffcomp.encoding("unit", base=base), ops)

    def compute(self, op, a, b):
        return dense(self, op, a, b)


@diffcomp.hookimpl
def register_alus(register):
    register("dense-forward", ForwardALU)
    register("dense-compute", ComputeALU)
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "diffcomp-dense"
version = "0.2.0"
dependencies = ["diffcomp"]

[project.entry-points.diffcomp]
dense = "diffcomp_dense"

[tool.setuptools]
py-modules = ["diffcomp_dense"]
'''

RECIPE = '''
name = "dense-{alu}"
seed = 0

[task]
name = "arithmetic-onehot"
bits = 4
ops = ["add", "sub"]
examples = 256

[model]
backbone = "minimal"

[computer]
alu = "{alu}"
base = 16

[[stages]]
kind = "train"
epochs = 2
batch_size = 32
lr = 0.05

[[stages]]
kind = "swap"              # from the plug-in's ALU to the built-in table, and back to the plug-in's
alu = "lookup"
base = 16

[[stages]]
kind = "swap"
alu = "{alu}"
base = 16

[[stages]]
kind = "evaluate"
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("diffcomp-dense")
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "diffcomp_dense.py").write_text(PLUGIN)
    target = pip_install(source, tmp_path_factory.mktemp("site"))
    assert list(target.glob("diffcomp_dense-0.2.0.dist-info"))
    return target


def python(code: str, site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "DIFFCOMP_STRICT_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], capture_output=True, text=True,
                          env=env, timeout=300)


MACHINE = textwrap.dedent('''
    import json, torch, diffcomp
    out = {}
    for name in ("dense-forward", "dense-compute"):
        ops = tuple(dict.fromkeys(("add", "mul", *diffcomp.program("insertion_sort").ops)))
        alu = diffcomp.alu(name, base=32, ops=ops)
        enc = alu.encoding
        direct = enc.decode(alu(alu.op_distribution(["add", "mul"]), enc.encode([3, 5]), enc.encode([4, 6]))).tolist()
        sharp = diffcomp.execute("insertion_sort", memory=[9, 3, 7, 1, 0], base=32, alu=alu)
        library = diffcomp.Library([diffcomp.program("insertion_sort")])
        machine = diffcomp.Machine(library, alu, cells=5, max_steps=300)
        memory = enc.encode([[9, 3, 7, 1, 0]]).double().mul(30).softmax(-1).requires_grad_()  # (1, cells, base)
        state = machine.run(enc.encode([[0] * machine.n_registers]).double(), memory)
        state.memory[0, 0, 1].backward()
        out[name] = {"direct": direct, "sorted": sharp.memory, "halted": sharp.halted,
                     "soft": enc.decode(state.memory[0]).tolist(), "grad": float(memory.grad.abs().sum()),
                     "calls": getattr(alu, "calls", None)}
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_both_kinds_of_plugin_alu_run_the_machine(site):
    result = python(MACHINE, site)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for name in ("dense-forward", "dense-compute"):
        assert out[name]["direct"] == [7, 30], name
        assert out[name]["sorted"] == [1, 3, 7, 9, 0] and out[name]["halted"], name
        assert out[name]["soft"] == [1, 3, 7, 9, 0], name
        assert out[name]["grad"] > 0, name  # gradients reach the initial memory through the plug-in's ALU
    assert out["dense-forward"]["calls"] > 0  # its own forward ran, not a base-class path


@pytest.mark.slow
@pytest.mark.parametrize("alu", ["dense-forward", "dense-compute"])
def test_both_kinds_of_plugin_alu_train_in_a_recipe(site, tmp_path, alu):
    recipe = tmp_path / "dense.toml"
    recipe.write_text(RECIPE.format(alu=alu))
    checked = python("", site, "-m", "diffcomp", "validate", str(recipe), "--quiet")
    assert checked.returncode == 0, checked.stderr
    result = python("", site, "-m", "diffcomp", "run", str(recipe), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    resolved = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert resolved["computer"]["alu"] == alu
    stages = summary["stages"]
    assert stages["0-train"]["steps"] > 0
    assert 0.0 <= stages["3-evaluate"]["test"]["accuracy"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"0-train", "3-evaluate"}


# -- in-process: the base class's checks ---------------------------------------------------


class Neither(diffcomp.ALU):
    def __init__(self):
        super().__init__(diffcomp.encoding("unit", base=4))


class OwnForward(diffcomp.ALU):
    name = "own-forward"

    def __init__(self):
        super().__init__(diffcomp.encoding("unit", base=4), ("add",))

    def forward(self, op, a, b):
        self.check_inputs(op, a, b)  # offered to subclasses that override forward
        return torch.roll(a, 1, -1) * b[..., :1] + a * 0


def test_an_alu_implementing_neither_is_a_clear_error_when_made():
    with pytest.raises(TypeError, match=r"Neither subclasses diffcomp\.ALU but implements neither forward"):
        Neither()


def test_an_alu_overriding_forward_is_an_alu():
    alu = OwnForward()
    enc = alu.encoding
    assert isinstance(alu, diffcomp.ALU) and alu.ops == ("add",)
    out = alu(alu.op_distribution(["add"]), enc.encode([1]), enc.encode([0]))
    assert enc.decode(out).tolist() == [2]  # (1 + 1) mod 4: roll by one is +1, b = 0 weighs one
    with pytest.raises(ValueError, match="operands have shapes"):
        alu(alu.op_distribution(["add"]), enc.encode([1]), enc.encode([[0, 1]]))
    with pytest.raises(NotImplementedError, match="implements forward"):
        alu.compute(alu.op_distribution(["add"]), enc.encode([1]), enc.encode([0]))


def test_an_alu_needs_an_encoding():
    class NoEncoding(OwnForward):
        def __init__(self):
            diffcomp.ALU.__init__(self, 4, ("add",))

    with pytest.raises(TypeError, match="encoding must be a diffcomp.NumberEncoding"):
        NoEncoding()
