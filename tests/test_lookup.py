"""The ``lookup`` ALU: exact on one-hot inputs, every mode equal to the dense table (eq. 7/10).

Three checks, as for every differentiable unit: exact answers on one-hot
inputs against ``Op(a, b, n)``; the fast path, the plain scatter and the
flattened matrix product against the paper's einsum over the dense table, in
values and gradients; ``gradcheck`` in float64.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import uuid

import pytest
import torch

import diffcomp
from diffcomp.alu import alu
from diffcomp.ops import Op
from diffcomp.plugins.lookup import (MODES, LookupALU, Operands, ScatterOuter, dense_table, divide, index_table,
                                     plain_scatter)
from diffcomp.registry import lookup, names

BUILTIN = ("zero", "inc", "dec", "add", "sub", "mul", "div", "mod", "min", "max", "eq", "lt")


def soft(batch: int, n: int, generator: torch.Generator, dtype=torch.float64, sharpness: float = 3.0) -> torch.Tensor:
    """Random distributions, some peaked and some flat: ``(batch, n)``."""
    return (sharpness * torch.randn(batch, n, generator=generator, dtype=dtype)).softmax(-1)


def pairs(n: int, generator: torch.Generator, count: int = 24) -> tuple[list[int], list[int]]:
    """Every pair of the edges 0, 1, max, then random pairs."""
    edges = sorted({0, 1, n - 1} & set(range(n)))
    a, b = map(list, zip(*itertools.product(edges, edges)))
    a += torch.randint(n, (count,), generator=generator).tolist()
    b += torch.randint(n, (count,), generator=generator).tolist()
    return a, b


def one_hot_case(calc: LookupALU, generator: torch.Generator, dtype=torch.float32):
    """Every op of ``calc`` on every pair: op rows, operands and the expected encoded answers."""
    n, enc = calc.base, calc.encoding
    a, b = pairs(n, generator)
    names_ = [o for o in calc.ops for _ in a]
    expected = [op(x, y, n) for op in calc.op_defs for x, y in zip(a, b)]
    return (calc.op_distribution(names_, dtype=dtype), enc.encode(a * len(calc.ops), dtype=dtype),
            enc.encode(b * len(calc.ops), dtype=dtype), expected)


# -- exact on one-hot inputs ------------------------------------------------------------


@pytest.mark.parametrize("base", [1, 2, 5, 16, 128])
@pytest.mark.parametrize("mode", MODES)
def test_every_op_exact_on_one_hot_inputs(base, mode, generator):
    if mode in ("einsum", "matmul") and base > 16:
        pytest.skip("the dense references are tested at small bases")
    calc = LookupALU(base, mode=mode)
    op, a, b, expected = one_hot_case(calc, generator)
    out = calc(op, a, b)
    assert out.shape == a.shape and out.dtype == torch.float32
    assert calc.encoding.decode(out).tolist() == expected
    torch.testing.assert_close(out, calc.encoding.encode(expected), atol=1e-6, rtol=0)


def test_one_hot_inputs_that_require_grad_give_the_same_answers(generator):
    calc = LookupALU(16)
    op, a, b, expected = one_hot_case(calc, generator)
    out = calc(op.requires_grad_(), a.requires_grad_(), b.requires_grad_())
    torch.testing.assert_close(out, calc.encoding.encode(expected), atol=1e-6, rtol=0)


# -- every mode equals the dense table ----------------------------------------------------


def values_and_grads(calc, op, a, b, weight):
    leaves = [t.detach().requires_grad_() for t in (op, a, b)]
    if not op.requires_grad:
        leaves[0] = op
    out = calc(*leaves)
    wanted = [t for t in leaves if t.requires_grad]
    return (out, *torch.autograd.grad((out * weight).sum(), wanted))


@pytest.mark.parametrize("base", [2, 5, 16, 33])
@pytest.mark.parametrize("mode", ["fast", "matmul", "scatter"])
def test_modes_equal_the_einsum_table_in_values_and_gradients(base, mode, generator):
    reference, calc = LookupALU(base, mode="einsum"), LookupALU(base, mode=mode)
    batch = 10
    op = soft(batch, len(calc.ops), generator)
    op[:, [1, 5, 9]] = 0  # ops with zero weight in every row ...
    op[:3] = torch.nn.functional.one_hot(torch.tensor([3, 6, 11]), len(calc.ops)).double()  # ... and sharp rows
    op = op / op.sum(-1, keepdim=True)
    a, b = soft(batch, base, generator), soft(batch, base, generator)
    weight = torch.randn(batch, base, generator=generator, dtype=torch.float64)
    for needs_op_grad in (True, False):
        op.requires_grad_(needs_op_grad)
        got = values_and_grads(calc, op, a, b, weight)
        want = values_and_grads(reference, op, a, b, weight)
        assert len(got) == len(want) == (4 if needs_op_grad else 3)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)
    assert got[0].min() >= 0


@pytest.mark.parametrize("name", BUILTIN)
def test_each_fast_form_equals_its_table_on_unnormalised_inputs(name, generator):
    # the forms use Σu and Σv where the table does, so they hold off the simplex too
    for base in (3, 8, 31):
        calc, reference = LookupALU(base, ops=(name,)), LookupALU(base, ops=(name,), mode="einsum")
        op = torch.rand(6, 1, generator=generator, dtype=torch.float64) + 0.5
        a = torch.rand(6, base, generator=generator, dtype=torch.float64) * 3
        b = torch.rand(6, base, generator=generator, dtype=torch.float64)
        weight = torch.randn(6, base, generator=generator, dtype=torch.float64)
        op.requires_grad_()
        for g, w in zip(values_and_grads(calc, op, a, b, weight), values_and_grads(reference, op, a, b, weight)):
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


def test_float32_fast_path_matches_the_float64_table(generator):
    base = 64
    calc, reference = LookupALU(base), LookupALU(base, mode="scatter")
    op = soft(16, len(calc.ops), generator)
    a, b = soft(16, base, generator), soft(16, base, generator)
    out32 = calc(op.float(), a.float(), b.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), reference(op, a, b), atol=2e-6, rtol=1e-4)


def test_dense_table_is_the_one_hot_of_each_index_table():
    calc = LookupALU(6, ops=("mul", "sub", "lt"))
    table = calc.dense_table(torch.float64)
    assert table.shape == (3, 6, 6, 6) and table.dtype == torch.float64
    assert torch.equal(table.sum(-1), torch.ones(3, 6, 6, dtype=torch.float64))
    for i, op in enumerate(calc.op_defs):
        assert torch.equal(table[i].argmax(-1), op.table(6))
        assert torch.equal(index_table(op, 6).long(), op.table(6))
    assert torch.equal(dense_table(calc.op_defs, 6, torch.float64), table)


# -- gradients --------------------------------------------------------------------------------


def test_gradcheck_every_op_float64(generator):
    calc = LookupALU(5, ops=BUILTIN)
    op = soft(2, len(calc.ops), generator).requires_grad_()
    a, b = soft(2, 5, generator).requires_grad_(), soft(2, 5, generator).requires_grad_()
    assert torch.autograd.gradcheck(calc, (op, a, b))


def test_second_derivatives_float64(generator):
    calc = LookupALU(4, ops=("add", "mul", "div", "max", "lt"))
    op = soft(2, 5, generator).requires_grad_()
    a, b = soft(2, 4, generator).requires_grad_(), soft(2, 4, generator).requires_grad_()
    assert torch.autograd.gradgradcheck(calc, (op, a, b))


@pytest.mark.parametrize("base", [4, 7])
def test_gradcheck_generic_scatter_and_division(base, generator):
    table = index_table(lookup("op", "mod"), base)
    u, v = soft(4, base, generator).requires_grad_(), soft(4, base, generator).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: ScatterOuter.apply(x, y, table), (u, v))
    assert torch.autograd.gradcheck(lambda x, y: divide(Operands(x, y)), (u, v))


def test_blocked_scatter_equals_the_one_piece_scatter(generator, monkeypatch):
    import diffcomp.plugins.lookup as module

    monkeypatch.setattr(module, "CHUNK", 40)  # many blocks over both the batch and the operand values
    base = 13
    table = index_table(lookup("op", "mul"), base)
    u, v = soft(7, base, generator).requires_grad_(), soft(7, base, generator).requires_grad_()
    weight = torch.randn(7, base, generator=generator, dtype=torch.float64)
    blocked = ScatterOuter.apply(u, v, table)
    whole = plain_scatter(u, v, table)
    torch.testing.assert_close(blocked, whole, atol=1e-14, rtol=0)
    for g, w in zip(torch.autograd.grad((blocked * weight).sum(), (u, v)),
                    torch.autograd.grad((whole * weight).sum(), (u, v))):
        torch.testing.assert_close(g, w, atol=1e-14, rtol=0)


# -- ops with zero weight ---------------------------------------------------------------------


def counting(calc: LookupALU) -> list[str]:
    """Wrap each kernel to record which ops run, on how many rows."""
    calls: list[str] = []

    def wrap(name, kernel):
        def run(x):
            calls.append((name, x.u.shape[0]))
            return kernel(x)
        return run

    calc.kernels = tuple(wrap(n, k) for n, k in zip(calc.ops, calc.kernels))
    return calls


def test_fast_mode_skips_ops_with_zero_weight_and_runs_ops_on_their_rows(generator):
    calc = LookupALU(16, ops=("add", "mul", "div", "max"))
    calls = counting(calc)
    op = calc.op_distribution(["add", "mul", "mul", "add", "add"]).double()
    a, b = soft(5, 16, generator), soft(5, 16, generator)
    out = calc(op, a, b)
    assert sorted(calls) == [("add", 3), ("mul", 2)]
    torch.testing.assert_close(out, LookupALU(16, ops=calc.ops, mode="scatter")(op, a, b), atol=1e-12, rtol=0)


def test_fast_mode_keeps_zero_weight_ops_when_the_op_distribution_needs_a_gradient(generator):
    calc = LookupALU(8, ops=("add", "mul", "lt"))
    calls = counting(calc)
    op = calc.op_distribution(["add", "add"]).double().requires_grad_()
    a, b = soft(2, 8, generator), soft(2, 8, generator)
    out = calc(op, a, b)
    assert sorted(calls) == [("add", 2), ("lt", 2), ("mul", 2)]
    (grad,) = torch.autograd.grad(out[:, 3].sum(), op)
    (want,) = torch.autograd.grad(LookupALU(8, ops=calc.ops, mode="einsum")(op, a, b)[:, 3].sum(), op)
    assert grad[:, 1].abs().sum() > 0  # ∂out/∂f_mul is mul's answer, though f_mul = 0
    torch.testing.assert_close(grad, want, atol=1e-12, rtol=0)
    calls.clear()
    with torch.no_grad():
        calc(op, a, b)
    assert calls == [("add", 2)]


def test_all_zero_op_distribution_gives_zeros(generator):
    calc = LookupALU(8)
    out = calc(torch.zeros(3, len(calc.ops)), soft(3, 8, generator).float(), soft(3, 8, generator).float())
    assert torch.equal(out, torch.zeros(3, 8))


# -- distributions stay distributions -----------------------------------------------------------


@pytest.mark.parametrize("base", [2, 7, 64, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_are_distributions_on_random_soft_inputs(base, dtype, generator):
    calc = LookupALU(base)
    op = soft(12, len(calc.ops), generator, dtype)
    a, b = soft(12, base, generator, dtype, sharpness=8.0), soft(12, base, generator, dtype, sharpness=8.0)
    out = calc(op, a, b)
    assert out.dtype == dtype and out.min() >= 0
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.sum(-1), torch.ones(12, dtype=dtype), atol=tolerance, rtol=0)


# -- ops from plug-ins -----------------------------------------------------------------------------


@pytest.fixture
def plugin_ops(fresh_registry) -> tuple[str, str]:
    """A binary and a unary op registered by a plug-in (in this test's own registry: nothing leaks)."""
    tag = uuid.uuid4().hex[:8]
    xor, square = f"xor_{tag}", f"square_{tag}"

    class BitOps:
        @diffcomp.hookimpl
        def register_ops(self, register):
            register(Op(xor, lambda a, b: a ^ b, doc="bitwise xor"))
            register(square, lambda a, b: a * a, arity=1)

    diffcomp.register_plugin(BitOps(), name=f"lookup-test-ops-{tag}")
    return xor, square


def test_plugin_op_gets_a_working_table(plugin_ops, generator):
    xor, square = plugin_ops
    calc = LookupALU(16, ops=(xor, "add", square))
    assert calc.ops == (xor, "add", square)
    op, a, b, expected = one_hot_case(calc, generator)
    assert expected[0] == (0 ^ 0) and calc.encoding.decode(calc(op, a, b)).tolist() == expected
    soft_op = soft(6, 3, generator).requires_grad_()
    u, v = soft(6, 16, generator), soft(6, 16, generator)
    weight = torch.randn(6, 16, generator=generator, dtype=torch.float64)
    reference = LookupALU(16, ops=calc.ops, mode="einsum")
    for g, w in zip(values_and_grads(calc, soft_op, u, v, weight), values_and_grads(reference, soft_op, u, v, weight)):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


def test_default_ops_are_every_registered_op_in_registry_order(plugin_ops):
    calc = LookupALU(4)
    assert calc.ops == names("op") and calc.ops[: len(BUILTIN)] == BUILTIN and plugin_ops[0] in calc.ops


def test_an_op_whose_function_fails_is_named(generator):
    broken = Op("broken", lambda a, b: a.no_such_method())
    with pytest.raises(ValueError, match="op 'broken': its function failed"):
        index_table(broken, 7)


# -- the stable API, shapes, dtypes, devices ----------------------------------------------------


def test_built_by_name_keeps_the_order_asked():
    calc = alu("lookup", base=8, ops=("mul", "add"))
    assert isinstance(calc, LookupALU) and isinstance(calc, torch.nn.Module)
    assert calc.ops == ("mul", "add") and calc.mode == "fast"
    assert calc.encoding == diffcomp.encoding("unit", base=8)
    assert alu("lookup", base=8, mode="matmul").mode == "matmul"
    assert "base=8" in repr(calc) and "mode='fast'" in repr(calc)


@pytest.mark.slow  # a fresh interpreter, so the plug-in module is imported before diffcomp.alu is touched
def test_stable_spelling_works_after_importing_the_plugin():
    script = ("from diffcomp.plugins.lookup import LookupALU\nimport diffcomp\n"
              "print(diffcomp.alu('lookup', base=4, ops=('add',)).ops)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('add',)"


def test_any_batch_shape(generator):
    calc = LookupALU(6, ops=("add", "max"))
    op = soft(6, 2, generator).reshape(2, 3, 2)
    a, b = soft(6, 6, generator).reshape(2, 3, 6), soft(6, 6, generator).reshape(2, 3, 6)
    out = calc(op, a, b)
    assert out.shape == (2, 3, 6)
    torch.testing.assert_close(out.reshape(6, 6), calc(op.reshape(6, 2), a.reshape(6, 6), b.reshape(6, 6)))
    single = calc(op[0, 0], a[0, 0], b[0, 0])
    assert single.shape == (6,)
    torch.testing.assert_close(single, out[0, 0])
    assert calc(op[:0, 0], a[:0, 0], b[:0, 0]).shape == (0, 6)


def test_operands_of_mixed_float_dtypes_follow_a(generator):
    calc = LookupALU(5, ops=("add", "mul"))
    out = calc(soft(2, 2, generator), soft(2, 5, generator).float(), soft(2, 5, generator))
    assert out.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_equals_cpu_scatter(generator):
    calc = LookupALU(32)
    op, a, b = soft(8, len(calc.ops), generator), soft(8, 32, generator), soft(8, 32, generator)
    out = calc(op.cuda(), a.cuda(), b.cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), LookupALU(32, mode="scatter")(op, a, b), atol=1e-12, rtol=0)


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [0, -3, 2.5, True, "8", None])
def test_base_must_be_a_positive_integer(base):
    with pytest.raises(ValueError, match=r"lookup ALU: base must be a positive integer .* got"):
        LookupALU(base)


def test_unknown_op_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown op 'addd' \(did you mean 'add'\?\)"):
        LookupALU(8, ops=("addd",))


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match=r"unknown mode 'dense'.*modes: fast, einsum, matmul, scatter"):
        LookupALU(8, mode="dense")


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"has no option 'bas' \(did you mean 'base'\?\)"):
        alu("lookup", bas=8)


def test_ops_as_a_string_is_refused():
    with pytest.raises(ValueError, match="must be a sequence of op names"):
        LookupALU(8, ops="add")


def test_an_op_the_alu_lacks_is_named():
    calc = LookupALU(8, ops=("add", "sub"))
    with pytest.raises(ValueError, match=r"lookup ALU has no op 'mul'; its ops: \('add', 'sub'\)"):
        calc.op_distribution("mul")


def test_op_distribution_of_the_wrong_length(generator):
    calc = LookupALU(8, ops=("add", "sub"))
    a = soft(4, 8, generator)
    with pytest.raises(ValueError, match=r"op has shape \(4, 3\), expected \(4, 2\)"):
        calc(torch.rand(4, 3, dtype=torch.float64), a, a)


@pytest.mark.parametrize("width", [7, 9])
def test_operands_of_the_wrong_shape(width, generator):
    calc = LookupALU(8, ops=("add",))
    good, bad = soft(4, 8, generator), soft(4, width, generator)
    with pytest.raises(ValueError, match=rf"operand b has shape \(4, {width}\), but unit\(base=8\) expects"):
        calc(torch.ones(4, 1), good, bad)


def test_operands_of_another_encoding_or_kind():
    calc = LookupALU(8, ops=("add",))
    binary = diffcomp.encoding("binary", bits=3).encode([1, 2])  # (2, 3): bits, not a base-8 distribution
    with pytest.raises(ValueError, match=r"operand a has shape \(2, 3\), but unit\(base=8\) expects"):
        calc(torch.ones(2, 1), binary, binary)
    with pytest.raises(ValueError, match="must be a floating-point tensor"):
        calc(torch.ones(2, 1), torch.zeros(2, 8, dtype=torch.int64), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="op must be a floating-point tensor"):
        calc(torch.ones(2, 1, dtype=torch.int64), torch.zeros(2, 8), torch.zeros(2, 8))


# -- large bases ---------------------------------------------------------------------------------------


def test_base_1024_eight_ops_exact_and_normalised(generator):
    ops = ("add", "sub", "mul", "div", "mod", "min", "max", "lt")
    calc = LookupALU(1024, ops=ops)
    op, a, b, expected = one_hot_case(calc, generator)
    assert calc.encoding.decode(calc(op, a, b)).tolist() == expected
    f = soft(4, len(ops), generator).float().requires_grad_()
    u = soft(4, 1024, generator, torch.float32, sharpness=4.0).requires_grad_()
    v = soft(4, 1024, generator, torch.float32, sharpness=4.0).requires_grad_()
    out = calc(f, u, v)
    assert out.min() >= 0
    torch.testing.assert_close(out.sum(-1), torch.ones(4), atol=1e-5, rtol=0)
    out.backward(torch.randn(4, 1024, generator=generator))
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (f, u, v))


def test_base_1024_structured_forms_equal_the_scatter(generator):
    ops = ("add", "sub", "div", "min", "max", "eq", "lt", "inc")
    calc = LookupALU(1024, ops=ops)
    reference = LookupALU(1024, ops=ops, mode="scatter")
    f = soft(2, len(ops), generator).requires_grad_()
    u, v = soft(2, 1024, generator, sharpness=4.0), soft(2, 1024, generator, sharpness=4.0)
    weight = torch.randn(2, 1024, generator=generator, dtype=torch.float64)
    for g, w in zip(values_and_grads(calc, f, u, v, weight), values_and_grads(reference, f, u, v, weight)):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-9)


@pytest.mark.slow
def test_base_4096_runs_every_op(generator):
    calc = LookupALU(4096, ops=BUILTIN)
    a, b = [0, 4095, 1234], [4095, 1, 0]
    names_ = [o for o in calc.ops for _ in a]
    expected = [op(x, y, 4096) for op in calc.op_defs for x, y in zip(a, b)]
    out = calc(calc.op_distribution(names_), calc.encoding.encode(a * len(calc.ops)),
               calc.encoding.encode(b * len(calc.ops)))
    assert calc.encoding.decode(out).tolist() == expected
    f = soft(1, len(calc.ops), generator).float().requires_grad_()
    u = soft(1, 4096, generator, torch.float32).requires_grad_()
    v = soft(1, 4096, generator, torch.float32).requires_grad_()
    out = calc(f, u, v)
    assert out.min() >= 0
    torch.testing.assert_close(out.sum(-1), torch.ones(1), atol=1e-5, rtol=0)
    out.backward(torch.ones_like(out))
    assert torch.isfinite(u.grad).all() and torch.isfinite(v.grad).all()
