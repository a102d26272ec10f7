"""The circuit ALU (paper eqs. 8-9): gates, exactness against integer arithmetic, gradients, the table."""

from __future__ import annotations

import random

import pytest
import torch

import diffcomp
from diffcomp import registry
from diffcomp.alu import alu as build_alu  # diffcomp.alu itself: see test_swap.py's last test
from diffcomp.plugins import gates

OPS = ("zero", "inc", "dec", "add", "sub", "mul", "div", "mod", "min", "max", "eq", "lt")
WIDTHS = (1, 3, 8, 16, 32, 64)


def circuit(bits, ops=None):
    return build_alu("circuit", bits=bits, ops=ops)


def operand_pairs(bits: int, seed: int, count: int = 48) -> list[tuple[int, int]]:
    """Edge cases (0, 1, max, each against each: division by zero included) and seeded random pairs."""
    top = (1 << bits) - 1
    edges = sorted({0, 1, top, top >> 1, (top >> 1) + 1})
    rng = random.Random(seed)
    values = [rng.getrandbits(bits) for _ in range(2 * count)]
    small = [rng.getrandbits(max(1, bits // 2)) for _ in range(count)]  # divisors that leave a quotient
    return ([(x, y) for x in edges for y in edges] + list(zip(values[::2], values[1::2]))
            + list(zip(values[:count], small)) + [(v, v) for v in values[:8]] + [(v, 0) for v in values[:8]])


def soft_bits(batch, bits, generator, dtype=torch.float64):
    return torch.rand(batch, bits, generator=generator, dtype=dtype)


# -- gates ----------------------------------------------------------------------------------------

def test_gates_are_boolean_on_sharp_inputs():
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    b = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert gates.and_(a, b).tolist() == [0, 0, 0, 1]
    assert gates.or_(a, b).tolist() == [0, 1, 1, 1]
    assert gates.xor(a, b).tolist() == [0, 1, 1, 0]
    assert gates.not_(a).tolist() == [1, 1, 0, 0]
    x, y = torch.tensor([[0.0, 1.0]]).expand(4, 2), torch.tensor([[1.0, 0.0]]).expand(4, 2)
    assert gates.mux(a, x, y).tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    s, c = gates.full_adder(a, b, torch.ones(4))
    assert (s + 2 * c).tolist() == [1, 2, 2, 3]


def test_gates_are_the_papers_probabilistic_forms(generator):
    a, b = torch.rand(2, 100, generator=generator, dtype=torch.float64)
    assert torch.allclose(gates.or_(a, b), a * b + (1 - a) * b + a * (1 - b))  # eq. 8
    assert torch.allclose(gates.xor(a, b), (1 - a) * b + a * (1 - b))  # eq. 9
    # independent bits: P(a or b) = 1 − P(neither), P(a xor b) = P(exactly one)
    assert torch.allclose(gates.or_(a, b), 1 - (1 - a) * (1 - b))


# -- exact on sharp inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("bits", WIDTHS)
def test_every_op_exact_on_one_hot_inputs(bits):
    alu = circuit(bits)
    assert alu.ops == OPS and alu.encoding == diffcomp.encoding("binary", bits=bits)
    pairs = operand_pairs(bits, seed=bits)
    a = alu.encoding.encode([x for x, _ in pairs])
    b = alu.encoding.encode([y for _, y in pairs])
    for name, op in zip(alu.ops, alu.op_defs):
        out = alu(alu.op_distribution([name] * len(pairs)), a, b)
        expected = [op(x, y, 2**bits) for x, y in pairs]
        assert alu.encoding.to_ints(out) == expected, name
        assert torch.equal(out, alu.encoding.encode(expected)), f"{name}: output bits not exactly 0/1"


def test_each_row_runs_its_own_op():
    alu = circuit(16)
    pairs = operand_pairs(16, seed=7, count=6)[-len(OPS):]
    names = [OPS[i % len(OPS)] for i in range(len(pairs))]
    out = alu(alu.op_distribution(names), alu.encoding.encode([x for x, _ in pairs]),
              alu.encoding.encode([y for _, y in pairs]))
    ops = dict(zip(alu.ops, alu.op_defs))
    assert alu.encoding.to_ints(out) == [ops[n](x, y, 2**16) for n, (x, y) in zip(names, pairs)]


def test_ops_keep_the_order_asked_and_extra_batch_dims(generator):
    alu = circuit(8, ops=("mul", "add"))
    assert alu.ops == ("mul", "add")
    a = alu.encoding.encode([[3, 200], [17, 5]])  # (2, 2, 8)
    b = alu.encoding.encode([[5, 100], [3, 0]])
    op = alu.op_distribution(["mul", "add", "add", "mul"]).reshape(2, 2, 2)
    assert alu.encoding.to_ints(alu(op, a, b)) == [[15, 44], [20, 0]]


# -- the mixture ------------------------------------------------------------------------------------

def test_soft_op_gives_the_mixture_of_circuit_outputs(generator):
    alu = circuit(5)
    a, b = soft_bits(6, 5, generator), soft_bits(6, 5, generator)
    f = torch.rand(6, len(OPS), generator=generator, dtype=torch.float64).softmax(-1)
    each = [alu(alu.op_distribution([n] * 6, dtype=torch.float64), a, b) for n in OPS]
    expected = sum(f[:, i : i + 1] * out for i, out in enumerate(each))
    assert torch.allclose(alu(f, a, b), expected)


def test_zero_weight_circuits_are_skipped_unless_op_needs_a_gradient():
    calls = []

    class Counting(type(circuit(4))):
        circuits = {name: (lambda name, fn: lambda a, b: calls.append(name) or fn(a, b))(name, fn)
                    for name, fn in type(circuit(4)).circuits.items()}

    alu = Counting(bits=4, ops=("add", "div", "mul"))
    a = alu.encoding.encode([3, 9])
    op = alu.op_distribution(["add", "mul"])
    assert alu.encoding.to_ints(alu(op, a, a)) == [6, 81 % 16]
    assert calls == ["add", "mul"]
    calls.clear()
    alu(op.requires_grad_(), a, a).sum().backward()
    assert calls == ["add", "div", "mul"]
    assert op.grad[:, 1].abs().sum() > 0  # d out / d f_div is the quotient, 1 here


@pytest.mark.parametrize("bits", (1, 4, 16, 64))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_bits_stay_probabilities_on_soft_inputs(bits, dtype, generator):
    alu = circuit(bits)
    a, b = soft_bits(64, bits, generator, dtype), soft_bits(64, bits, generator, dtype)
    a[:16] = a[:16].round()  # some sharp operands among the soft ones
    slack = 4 * torch.finfo(dtype).eps  # rounding of a + b − ab near 1
    for name in OPS:
        out = alu(alu.op_distribution([name] * 64, dtype=dtype), a, b)
        assert out.min() >= -slack and out.max() <= 1 + slack, name
    out = alu(torch.rand(64, len(OPS), generator=generator, dtype=dtype).softmax(-1), a, b)
    assert out.min() >= -slack and out.max() <= 1 + slack


# -- against the reference, and gradients -------------------------------------------------------------

@pytest.mark.parametrize("bits", (1, 5, 8, 13, 64))
def test_scanned_carries_equal_the_bit_by_bit_ripple(bits, generator):
    a = soft_bits(10, bits, generator).requires_grad_()
    b = soft_bits(10, bits, generator).requires_grad_()
    carry_in = torch.rand(10, generator=generator, dtype=torch.float64)
    s, c = gates.RippleCarryAdder()(a, b, carry_in)
    s_ref, c_ref = gates.ripple_carry_add_reference(a, b, carry_in)
    assert torch.allclose(s, s_ref) and torch.allclose(c, c_ref)
    weights = torch.rand(bits + 1, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((torch.cat([s, c[:, None]], -1) * weights).sum(), (a, b))
    grads_ref = torch.autograd.grad((torch.cat([s_ref, c_ref[:, None]], -1) * weights).sum(), (a, b))
    assert all(torch.allclose(g, r) for g, r in zip(grads, grads_ref))


@pytest.mark.parametrize("name", OPS)
def test_gradcheck_each_circuit(name, generator):
    alu = circuit(3)
    op = alu.op_distribution([name] * 4, dtype=torch.float64)
    a = (0.05 + 0.9 * soft_bits(4, 3, generator)).requires_grad_()
    b = (0.05 + 0.9 * soft_bits(4, 3, generator)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: alu(op, a, b), (a, b))


def test_gradcheck_through_op_weights_and_operands(generator):
    alu = circuit(3)
    op = torch.rand(2, len(OPS), generator=generator, dtype=torch.float64).softmax(-1).requires_grad_()
    a, b = soft_bits(2, 3, generator).requires_grad_(), soft_bits(2, 3, generator).requires_grad_()
    assert torch.autograd.gradcheck(alu, (op, a, b))


def test_gradcheck_circuit_modules(generator):
    a, b = soft_bits(3, 4, generator).requires_grad_(), soft_bits(3, 4, generator).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: gates.RippleCarryAdder()(a, b, 1.0), (a, b))
    assert torch.autograd.gradcheck(lambda a, b: gates.RestoringDivider()(a, b), (a, b))
    assert torch.autograd.gradcheck(lambda a, b: gates.Comparator()(a, b), (a, b))


# -- the table --------------------------------------------------------------------------------------

def test_agrees_with_every_table_entry_at_8_bits():
    """All 256 × 256 operand pairs, every op, against the op's index table."""
    alu = circuit(8)
    values = torch.arange(256)
    a = alu.encoding.encode(values.repeat_interleave(256))  # (65536, 8): row j * 256 + k is (j, k)
    b = alu.encoding.encode(values.repeat(256))
    for name, op in zip(alu.ops, alu.op_defs):
        out = alu(alu.op_distribution(name).expand(len(a), -1), a, b)
        assert torch.equal(alu.encoding.decode(out), op.table(256).flatten()), name


def test_agrees_with_the_lookup_alu_at_8_bits(generator):
    alu = circuit(8)
    if "lookup" not in registry.names("alu"):
        pytest.skip("the lookup ALU is not registered")
    table = build_alu("lookup", base=256)
    assert table.ops == alu.ops
    x = torch.randint(0, 256, (256,), generator=generator)
    y = torch.cat([torch.randint(0, 256, (248,), generator=generator), torch.zeros(8, dtype=torch.int64)])
    unit = table.encoding
    for name in OPS:
        out = alu(alu.op_distribution([name] * 256), alu.encoding.encode(x), alu.encoding.encode(y))
        expected = table(table.op_distribution([name] * 256), unit.encode(x), unit.encode(y))
        assert torch.equal(alu.encoding.decode(out), unit.decode(expected)), name


# -- extending it, and bad input ------------------------------------------------------------------------

def test_a_plugin_adds_a_circuit_for_a_new_op(fresh_registry):
    CircuitALU = type(circuit(4))

    class XorCircuitALU(CircuitALU):
        name = "xor_circuit"
        circuits = {**CircuitALU.circuits, "xor": gates.xor}

    class Plugin:
        @diffcomp.hookimpl
        def register_ops(self, register):
            register("xor", lambda a, b: a ^ b)

        @diffcomp.hookimpl
        def register_alus(self, register):
            register("xor_circuit", XorCircuitALU)

    diffcomp.register_plugin(Plugin(), name="xor-test")
    alu = build_alu("xor_circuit", bits=6)
    assert alu.ops == (*OPS, "xor")
    out = alu(alu.op_distribution(["xor", "add"]), alu.encoding.encode([45, 45]), alu.encoding.encode([27, 27]))
    assert alu.encoding.to_ints(out) == [45 ^ 27, (45 + 27) % 64]
    with pytest.raises(ValueError, match="does not implement op 'xor'.*add"):
        circuit(6, ops=("add", "xor"))


@pytest.mark.parametrize("bits", (0, -3, 65, 2.0, True, "8", None))
def test_bits_must_be_a_positive_int(bits):
    with pytest.raises(ValueError, match=r"circuit ALU: bits must be a positive integer from 1 to 64.*got"):
        circuit(bits)


def test_ops_must_be_ones_it_has():
    with pytest.raises(ValueError, match="unknown op 'madd'.*did you mean 'add'"):
        circuit(8, ops=("add", "madd"))
    with pytest.raises(ValueError, match="implements: add, sub"):
        type("Narrow", (type(circuit(4)),), {"circuits": {"add": gates.xor, "sub": gates.xor}})(8, ops=("mul",))
    with pytest.raises(ValueError, match="name an op twice"):
        circuit(8, ops=("add", "add"))


def test_malformed_calls_say_what_was_expected():
    alu = circuit(8, ops=("add", "mul"))
    a = alu.encoding.encode([1, 2])
    with pytest.raises(ValueError, match=r"op has shape \(2, 3\), expected \(2, 2\)"):
        alu(torch.ones(2, 3) / 3, a, a)
    with pytest.raises(ValueError, match=r"operand b has shape \(2, 4\), but binary\(bits=8\) expects"):
        alu(alu.op_distribution(["add", "add"]), a, circuit(4).encoding.encode([1, 2]))
    with pytest.raises(ValueError, match=r"operand a has shape \(2, 256\), but binary\(bits=8\)"):
        unit = diffcomp.encoding("unit", base=256)  # a unit-encoded number is not a binary one
        alu(alu.op_distribution(["add", "add"]), unit.encode([1, 2]), a)
    with pytest.raises(ValueError, match="floating-point"):
        alu(alu.op_distribution(["add", "add"]), torch.ones(2, 8, dtype=torch.int64), a)
    with pytest.raises(ValueError, match="has no op 'sub'"):
        alu.op_distribution(["sub"])
