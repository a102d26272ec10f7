"""The swap (paper §4.1): a table-trained model runs a circuit through converters, answers unchanged."""

from __future__ import annotations

import warnings

import pytest
import torch

import diffcomp
from diffcomp import registry
from diffcomp.alu import ALU
from diffcomp.alu import alu as build_alu  # diffcomp.alu and diffcomp.swap: see the last test
from diffcomp.swap import ConvertingALU, swap

OPS = ("zero", "inc", "dec", "add", "sub", "mul", "div", "mod", "min", "max", "eq", "lt")


class TableALU(ALU):
    """Reference: eq. 7 over unit numbers, ``o_l = Σ_i f_i Σ_jk [op_i(j, k) = l] u_j v_k``, from ``Op.table``."""

    name = "table"

    def __init__(self, base: int, ops=None) -> None:
        super().__init__(diffcomp.encoding("unit", base=base), ops)
        self.tables = [op.table(base).flatten() for op in self.op_defs]  # (n * n,) each

    def compute(self, op, a, b):
        out = torch.zeros_like(a)  # (batch, n)
        for start in range(0, len(a), 64):  # a few rows at a time: u ⊗ v is (rows, n * n)
            rows = slice(start, start + 64)
            outer = torch.einsum("bj,bk->bjk", a[rows], b[rows]).flatten(1)
            for i, table in enumerate(self.tables):
                if op[rows, i].any():  # a zero-weight op adds nothing (tests take no gradient here)
                    scattered = torch.zeros_like(a[rows]).scatter_add_(1, table.expand(len(outer), -1), outer)
                    out[rows] += op[rows, i : i + 1] * scattered
        return out


def table_alu(base: int, ops=None, kind: str = "lookup") -> ALU:
    """The lookup ALU, or the reference above (also while the lookup ALU is not registered)."""
    if kind == "lookup" and "lookup" in registry.names("alu"):
        return build_alu("lookup", base=base, ops=ops)
    return TableALU(base, ops)


def unit(base):
    return diffcomp.encoding("unit", base=base)


def binary(bits):
    return diffcomp.encoding("binary", bits=bits)


def sample_pairs(n: int, count: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random operands plus 0, 1, max against each other (division by zero included)."""
    edges = torch.tensor([0, 1, n - 1])
    x = torch.cat([edges.repeat_interleave(3), torch.randint(0, n, (count,), generator=generator)])
    y = torch.cat([edges.repeat(3), torch.randint(0, n, (count,), generator=generator)])
    return x, y


# -- answers are unchanged ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lookup", "reference"])
def test_swapping_the_table_for_a_circuit_changes_no_answer(kind, generator):
    table = table_alu(256, kind=kind)
    assert table.ops == OPS
    swapped = swap(table, "circuit", bits=8)
    assert isinstance(swapped, ConvertingALU) and swapped.encoding == unit(256) and swapped.ops == OPS
    assert swapped.inner.encoding == binary(8)
    x, y = sample_pairs(256, 64, generator)
    a, b = unit(256).encode(x), unit(256).encode(y)
    for name, op in zip(OPS, table.op_defs):
        f = table.op_distribution([name] * len(x))
        expected = unit(256).encode(op.apply(x, y, 256))
        assert torch.allclose(table(f, a, b), expected, atol=1e-6), name
        assert torch.equal(swapped(f, a, b), expected), name


def test_a_wider_circuit_gives_the_same_answers_mod_the_table_range(generator):
    table = table_alu(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2**32 is a multiple of 64: nothing to warn about
        swapped = swap(table, "circuit", bits=32)
    x, y = sample_pairs(64, 55, generator)
    a, b = unit(64).encode(x), unit(64).encode(y)
    for name, op in zip(OPS, table.op_defs):
        out = swapped(table.op_distribution([name] * len(x)), a, b)
        assert torch.equal(out, unit(64).encode(op.apply(x, y, 64))), name


def test_swapping_a_circuit_for_a_table(generator):
    alu = build_alu("circuit", bits=6, ops=("mul", "sub", "lt"))
    if "lookup" in registry.names("alu"):
        swapped = swap(alu, "lookup", base=64)
    else:  # what the swap builds, around the reference table
        swapped = ConvertingALU(TableALU(64, alu.ops), binary(6))
    assert swapped.ops == ("mul", "sub", "lt") and swapped.encoding == binary(6)
    x, y = sample_pairs(64, 30, generator)
    a, b = binary(6).encode(x), binary(6).encode(y)
    for name, op in zip(alu.ops, alu.op_defs):
        f = alu.op_distribution([name] * len(x))
        assert binary(6).to_ints(swapped(f, a, b)) == binary(6).to_ints(alu(f, a, b)) \
            == op.apply(x, y, 64).tolist(), name


def test_swap_keeps_the_op_order():
    table = table_alu(16, ops=("mul", "add", "lt"))
    swapped = swap(table, "circuit", bits=4)
    assert swapped.ops == ("mul", "add", "lt") and swapped.inner.ops == ("mul", "add", "lt")
    f = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    out = swapped(f, unit(16).encode([3, 3, 3]), unit(16).encode([7, 7, 7]))
    assert unit(16).decode(out).tolist() == [21 % 16, 10, 1]


def test_no_adapter_when_the_encodings_match():
    alu = build_alu("circuit", bits=8, ops=("add", "div"))
    same = swap(alu, "circuit", bits=8)
    assert type(same) is type(alu) and same is not alu and same.ops == alu.ops
    wide = swap(table_alu(256, ops=("add", "div")), "circuit", bits=32, encoding=binary(32))
    assert type(wide) is type(alu) and wide.encoding == binary(32) and wide.ops == ("add", "div")
    a = binary(32).encode([3_000_000_000, 3_000_000_000])
    b = binary(32).encode([1_500_000_000, 7])
    assert binary(32).to_ints(wide(wide.op_distribution(["add", "div"]), a, b)) == \
        [4_500_000_000 % 2**32, 3_000_000_000 // 7]


def test_a_range_that_cannot_match_is_a_warning():
    with pytest.warns(UserWarning, match=r"holds 16 values.*not a multiple of the 256 of unit\(base=256\)"):
        swap(TableALU(256, ops=("add",)), "circuit", bits=4)
    with pytest.warns(UserWarning, match="not a multiple of the 100"):
        swap(TableALU(100, ops=("sub",)), "circuit", bits=8)


# -- the adapter: gradients and probabilities ----------------------------------------------------------

def test_gradcheck_the_adapter(generator):
    adapter = ConvertingALU(build_alu("circuit", bits=3, ops=("sub", "mul", "mod", "max")), unit(8))
    op = torch.rand(2, 4, generator=generator, dtype=torch.float64).softmax(-1).requires_grad_()
    a = torch.rand(2, 8, generator=generator, dtype=torch.float64).softmax(-1).requires_grad_()
    b = torch.rand(2, 8, generator=generator, dtype=torch.float64).softmax(-1).requires_grad_()
    assert torch.autograd.gradcheck(adapter, (op, a, b))


def test_adapter_output_is_a_distribution_on_soft_inputs(generator):
    adapter = ConvertingALU(build_alu("circuit", bits=5), unit(32))
    a = torch.rand(20, 32, generator=generator, dtype=torch.float64).softmax(-1)
    b = torch.rand(20, 32, generator=generator, dtype=torch.float64).softmax(-1)
    for name in OPS:
        out = adapter(adapter.op_distribution([name] * 20, dtype=torch.float64), a, b)
        assert out.min() >= 0 and torch.allclose(out.sum(-1), torch.ones(20, dtype=torch.float64)), name


def test_adapter_of_a_binary_alu_speaks_unit_of_a_smaller_base(generator):
    adapter = ConvertingALU(build_alu("circuit", bits=8, ops=("add", "max")), unit(10))
    out = adapter(adapter.op_distribution(["add", "max"]), unit(10).encode([7, 7]), unit(10).encode([5, 5]))
    assert unit(10).decode(out).tolist() == [12 % 10, 7]


# -- bad input --------------------------------------------------------------------------------------

def test_swap_to_an_alu_lacking_an_op_names_what_is_missing(fresh_registry):
    CircuitALU = type(build_alu("circuit", bits=4))

    class AddOnly(CircuitALU):
        name = "add_only"
        circuits = {"add": CircuitALU.circuits["add"], "sub": CircuitALU.circuits["sub"]}

    class Plugin:
        @diffcomp.hookimpl
        def register_alus(self, register):
            register("add_only", AddOnly)
            register("add_only_factory", lambda bits, ops=None: AddOnly(bits, ops))

    diffcomp.register_plugin(Plugin(), name="add-only-test")
    table = table_alu(16, ops=("add", "mul", "div"))
    with pytest.raises(ValueError, match=r"lacks the op\(s\) mul, div .*the add_only ALU has: add, sub"):
        swap(table, "add_only", bits=4)
    with pytest.raises(ValueError, match="does not implement op 'mul'; it implements: add, sub"):
        swap(table, "add_only_factory", bits=4)  # a factory without supported_ops: the ALU says it
    assert swap(table_alu(16, ops=("sub",)), "add_only", bits=4).ops == ("sub",)


def test_swap_bad_arguments():
    table = table_alu(16, ops=("add",))
    with pytest.raises(ValueError, match="keeps the ops of the ALU it replaces"):
        swap(table, "circuit", bits=4, ops=("add",))
    with pytest.raises(ValueError, match="expected a diffcomp.ALU"):
        swap(torch.nn.Linear(2, 2), "circuit", bits=4)
    with pytest.raises(ValueError, match="encoding must be a diffcomp.NumberEncoding"):
        swap(table, "circuit", bits=4, encoding="binary")
    with pytest.raises(LookupError, match="unknown alu 'circut'.*did you mean 'circuit'"):
        swap(table, "circut", bits=4)
    with pytest.raises(ValueError, match="bits must be a positive integer"):
        swap(table, "circuit", bits=0)
    with pytest.raises(ValueError, match="ConvertingALU: inner must be a diffcomp.ALU"):
        ConvertingALU(table.encoding, unit(16))


def test_adapter_checks_operands_in_its_outer_encoding():
    adapter = ConvertingALU(build_alu("circuit", bits=4, ops=("add", "sub")), unit(16))
    inner_operand = binary(4).encode([1, 2])  # the inner encoding is not what the adapter speaks
    with pytest.raises(ValueError, match=r"operand a has shape \(2, 4\), but unit\(base=16\) expects"):
        adapter(adapter.op_distribution(["add", "add"]), inner_operand, unit(16).encode([1, 2]))
    with pytest.raises(ValueError, match=r"op has shape \(2, 3\), expected \(2, 2\)"):
        adapter(torch.ones(2, 3) / 3, unit(16).encode([1, 2]), unit(16).encode([1, 2]))


@pytest.mark.slow  # a fresh interpreter
def test_public_names_resolve_to_the_functions():
    script = ("import diffcomp.alu, diffcomp.swap, torch\n"
              "import diffcomp\n"
              "diffcomp.ConvertingALU\n"
              "print(callable(diffcomp.swap), callable(diffcomp.alu))\n")
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
