"""Op semantics (``diffcomp.Op`` and the built-in ops) against Python integer arithmetic.

docs/architecture.md fixes what each op means; every ALU and the machine's classical
reference read it from here, so these tests pin it down: random values at
several moduli, the edges 0, 1 and max, division by zero, wrap-around.
"""

from __future__ import annotations

import random

import pytest
import torch

from diffcomp.ops import Op
from diffcomp.plugins.ops import BUILTIN_OPS
from diffcomp.registry import lookup, names

#: the meaning of each built-in op on Python ints, written independently of plugins/ops.py
REFERENCE = {
    "zero": lambda a, b: 0,
    "inc": lambda a, b: a + 1,
    "dec": lambda a, b: a - 1,
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: 0 if b == 0 else a // b,
    "mod": lambda a, b: 0 if b == 0 else a % b,
    "min": min,
    "max": max,
    "eq": lambda a, b: int(a == b),
    "lt": lambda a, b: int(a < b),
}
OPS = {op.name: op for op in BUILTIN_OPS}
MODULI = (1, 2, 5, 16, 128, 1000, 2**32, 2**64)


def operands(modulus: int, seed: int) -> list[tuple[int, int]]:
    """Edge cases (0, 1, max, 2) in every combination, then random pairs."""
    rng = random.Random(seed)
    edges = sorted({0, 1, 2, modulus - 1} & set(range(modulus))) if modulus < 8 else [0, 1, 2, modulus - 1]
    pairs = [(a, b) for a in edges for b in edges]
    return pairs + [(rng.randrange(modulus), rng.randrange(modulus)) for _ in range(40)]


def test_builtin_ops_are_registered_in_design_order():
    assert names("op")[: len(REFERENCE)] == tuple(REFERENCE)
    assert all(lookup("op", op.name) is op for op in BUILTIN_OPS)
    assert {op.name: op.arity for op in BUILTIN_OPS} == {
        "zero": 0, "inc": 1, "dec": 1, **{name: 2 for name in list(REFERENCE)[3:]}}


@pytest.mark.parametrize("modulus", MODULI)
@pytest.mark.parametrize("name", list(REFERENCE))
def test_op_on_python_ints_matches_integer_arithmetic(name, modulus):
    op = OPS[name]
    for a, b in operands(modulus, seed=modulus):
        assert op(a, b, modulus) == REFERENCE[name](a, b) % modulus, (name, a, b, modulus)


@pytest.mark.parametrize("modulus", [1, 2, 5, 16, 128])
@pytest.mark.parametrize("name", list(REFERENCE))
def test_op_table_is_every_pair(name, modulus):
    table = OPS[name].table(modulus)
    assert table.shape == (modulus, modulus) and table.dtype == torch.int64
    expected = torch.tensor([[REFERENCE[name](a, b) % modulus for b in range(modulus)] for a in range(modulus)])
    assert torch.equal(table, expected)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_op_apply_on_int64_tensors_agrees_with_python_ints(name):
    modulus = 2**31  # large enough that a * b overflows 32 bits but not int64
    pairs = operands(modulus, seed=7)
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    out = OPS[name].apply(a, b, modulus)
    assert out.dtype == torch.int64 and out.shape == a.shape
    assert out.tolist() == [REFERENCE[name](x, y) % modulus for x, y in pairs]


def test_edges_named_in_design():
    n = 128
    assert OPS["div"](7, 0, n) == 0 and OPS["mod"](7, 0, n) == 0  # division by zero is 0
    assert OPS["div"](0, 0, n) == 0 and OPS["mod"](0, 0, n) == 0
    assert OPS["dec"](0, 0, n) == n - 1 and OPS["inc"](n - 1, 0, n) == 0  # wrap-around
    assert OPS["sub"](0, 1, n) == n - 1 and OPS["add"](n - 1, n - 1, n) == n - 2
    assert OPS["mul"](n - 1, n - 1, n) == 1  # (-1)² = 1 mod n
    assert OPS["div"](n - 1, 1, n) == n - 1 and OPS["mod"](n - 1, 1, n) == 0
    assert OPS["lt"](n - 1, n - 1, n) == 0 and OPS["eq"](n - 1, n - 1, n) == 1
    assert OPS["eq"](3, 3, 1) == 0 and OPS["lt"](0, 1, 2) == 1  # results are taken mod n too


def test_python_int_reference_is_exact_beyond_int64():
    n = 2**64
    big = 2**64 - 1
    assert OPS["mul"](big, big, n) == 1
    assert OPS["add"](big, 1, n) == 0
    assert OPS["div"](big, 3, n) == big // 3


def test_plugin_op_written_for_tensors_only_still_evaluates_on_ints():
    def xor(a, b):
        return torch.bitwise_xor(a, b)  # a TypeError on Python ints

    op = Op("xor_tensor_only", xor)
    assert op(6, 3, 16) == 5
    assert torch.equal(op.table(4), torch.tensor([[a ^ b for b in range(4)] for a in range(4)]))


def test_op_broadcasts_a_constant_result():
    op = Op("seven", lambda a, b: 7, arity=0)
    assert torch.equal(op.table(5), torch.full((5, 5), 2))
    assert op(0, 0, 5) == 2


@pytest.mark.parametrize("name", ["Add", "2x", "a b", "", None])
def test_op_name_must_be_a_lower_case_identifier(name):
    with pytest.raises(ValueError, match="lower-case identifier"):
        Op(name, lambda a, b: a)


def test_op_arity_is_checked():
    with pytest.raises(ValueError, match="arity must be 0, 1 or 2"):
        Op("triple", lambda a, b: a, arity=3)
