"""The ``lookup`` ALU: the one-hot table of paper eq. 7/10, exact and without the dense table.

The paper's lookup is ``o_l = T_ijkl f_i u_j v_k`` with ``T`` the
``|ops| × n × n × n`` one-hot table (``T_ijkl = 1`` iff ``op_i(j, k) = l``), 32 GB
at ``n = 1024``. Each slice ``T_i`` is really an index table ``op_i(j, k)``, so
the same contraction is a scatter of the outer product ``u ⊗ v`` through that
table (O(n²) per number, nothing dense), and many built-in ops have an exact
cheaper form still:

=========  ================================================================
op         exact form of ``Σ_jk [op(j, k) = l] u_j v_k``
=========  ================================================================
zero       ``δ_l0 · Σu · Σv``
inc, dec   a circular shift of ``u``, times ``Σv``
add, sub   a circular convolution (correlation), by FFT
min, max   cumulative and survival sums: ``P(max = l) = u_l V_≤l + U_<l v_l``
eq, lt     dot products with ``v``: ``P(a < b) = Σ_k v_k U_<k``
div        prefix sums over the blocks ``{j : j // k = l}`` (n log n of them)
others     the scatter of ``u ⊗ v`` through the op's index table (any plug-in op)
=========  ================================================================

Every form is the same bilinear function of ``(u, v)`` as the table, so values
and gradients agree with it for any input, normalised or not; sums over many
terms run in float64, and outputs are never negative. ``mode`` picks the path:
``"fast"`` (the above; an op whose weight is zero in every row is skipped, one
used by some rows runs on those rows only, unless the op distribution needs a
gradient: ``∂o/∂f_i`` is op i's answer), ``"scatter"`` (the plain scatter for
every op), ``"matmul"`` (the flattened dense table as one matrix product) and
``"einsum"`` (eq. 7 itself, one einsum over the dense table). The last two
build the dense table on first use and exist as references for tests and
benchmarks.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import diffcomp
from diffcomp.alu import ALU
from diffcomp.errors import did_you_mean
from diffcomp.ops import Op
from diffcomp.threads import run_on_one_thread

from .ops import BUILTIN_OPS

MODES = ("fast", "einsum", "matmul", "scatter")

#: a kernel: :class:`Operands` ``u``, ``v`` to ``Σ_jk [op(j, k) = l] u_j v_k``, ``(batch, n)`` float64
Kernel = Callable[["Operands"], Tensor]

#: elements of ``u ⊗ v`` the scatter path holds at once (float32: 2 MB)
CHUNK = 1 << 19
#: index-table entries computed at once while building a table
TABLE_BLOCK = 1 << 16


# -- index tables -------------------------------------------------------------------


def index_table(op: Op, base: int, device: torch.device | str | None = None) -> Tensor:
    """``T[j, k] = op(j, k) mod base``: the op's ``(base, base)`` index table, cached.

    The same values as :meth:`diffcomp.Op.table`, stored compactly (int16 up to
    base 2**15, else int32) and built a block of rows at a time, so base 4096
    never holds an int64 ``n × n`` intermediate. Cached per (op, base, device).
    """
    return _index_table(op, op.fn, base, str(torch.device(device or "cpu")))


@functools.lru_cache(maxsize=32)
def _index_table(op: Op, fn: Callable, base: int, device: str) -> Tensor:
    dtype = torch.int16 if base <= 1 << 15 else torch.int32
    table = torch.empty(base, base, dtype=dtype, device=device)  # (n, n)
    values = torch.arange(base, device=device)
    step = max(1, TABLE_BLOCK // base)
    for start in range(0, base, step):
        rows = values[start : start + step, None].expand(-1, base)
        try:
            table[start : start + step] = op.apply(rows, values.expand_as(rows), base)
        except Exception as exc:
            raise ValueError(f"op {op.name!r}: its function failed on int64 tensors of shape "
                             f"{tuple(rows.shape)}: {type(exc).__name__}: {exc}") from exc
    return table


def dense_table(ops: Sequence[Op], base: int, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> Tensor:
    """The paper's table: ``T[i, j, k, l] = 1`` iff ``ops[i](j, k) = l``, ``(|ops|, n, n, n)``."""
    table = torch.zeros(len(ops), base, base, base, dtype=dtype, device=device)  # (ops, n, n, n)
    for i, op in enumerate(ops):
        table[i].scatter_(-1, index_table(op, base, device).long().unsqueeze(-1), 1)
    return table


# -- the generic path: scatter of the outer product ---------------------------------


def _blocks(batch: int, n: int) -> list[tuple[slice, slice]]:
    """Blocks of (batch rows, operand-a values) with about :data:`CHUNK` elements of ``u ⊗ v`` each."""
    rows = min(batch, max(1, CHUNK // n))
    cols = min(n, max(1, CHUNK // (rows * n)))
    return [(slice(b, b + rows), slice(j, j + cols)) for b in range(0, batch, rows) for j in range(0, n, cols)]


class ScatterOuter(torch.autograd.Function):
    """``out[b, l] = Σ_{j,k : T[j,k] = l} u[b, j] v[b, k]`` (eq. 10 for one op), block by block.

    The outer product is never held whole: forward scatters it a block at a
    time, backward recomputes what it needs (``∂out_l / ∂(u_j v_k) = [T_jk = l]``,
    a gather of the incoming gradient), so memory is the index table plus one
    block, at any batch size.
    """

    @staticmethod
    def forward(u: Tensor, v: Tensor, table: Tensor) -> Tensor:
        batch, n = u.shape
        out = u.new_zeros(batch, n, dtype=torch.float64)  # (batch, n); blocks are summed in float64
        for rows, cols in _blocks(batch, n):
            outer = u[rows, cols, None] * v[rows, None, :]  # (rows, cols, n)
            out[rows] += u.new_zeros(outer.shape[0], n).index_add_(1, table[cols].reshape(-1).long(), outer.flatten(1))
        return out.to(u.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        u, v, table = inputs
        ctx.save_for_backward(u, v)
        ctx.table = table

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, v = ctx.saved_tensors
        batch, n = u.shape
        grad_u = torch.zeros_like(u) if ctx.needs_input_grad[0] else None
        grad_v = torch.zeros_like(v, dtype=torch.float64) if ctx.needs_input_grad[1] else None
        for rows, cols in _blocks(batch, n):
            g = grad[rows].index_select(1, ctx.table[cols].reshape(-1).long())  # ∂L/∂(u_j v_k)
            g = g.unflatten(1, (-1, n))  # (rows, cols, n)
            if grad_u is not None:  # Σ_k g_jk v_k, as a batched (1, n) @ (n, cols)
                grad_u[rows, cols] = torch.bmm(v[rows, None, :], g.transpose(1, 2)).squeeze(1)
            if grad_v is not None:  # Σ_j u_j g_jk
                grad_v[rows] += torch.bmm(u[rows, None, cols], g).squeeze(1)
        return grad_u, None if grad_v is None else grad_v.to(v.dtype), None


def scatter_kernel(op: Op, base: int) -> Kernel:
    """The generic path for any op: its index table, built on first use on each device."""

    def kernel(x: Operands) -> Tensor:
        u, v = x.native
        return ScatterOuter.apply(u, v, index_table(op, base, u.device)).double()

    return kernel


def plain_scatter(u: Tensor, v: Tensor, table: Tensor) -> Tensor:
    """The same scatter in one piece, differentiated by autograd: the ``scatter`` reference."""
    outer = torch.einsum("bj,bk->bjk", u, v)  # (batch, n, n)
    return u.new_zeros(u.shape).index_add(1, table.reshape(-1).long(), outer.flatten(1))


# -- exact cheaper forms of the built-in ops ------------------------------------------


def _once(method: Callable) -> property:
    """A property computed on first use and kept (``functools.cached_property`` without its lock, which
    ``torch.compile`` cannot trace)."""
    name = "_" + method.__name__

    def get(self):
        if name not in self.__dict__:
            self.__dict__[name] = method(self)
        return self.__dict__[name]

    return property(get, doc=method.__doc__)


class Operands:
    """Two batches of unit numbers ``u``, ``v`` and the sums the exact forms share.

    Each sum is computed once per call, in float64 (the forms sum over up to n
    terms), and only if some op asks for it: ``max``, ``lt`` and ``div`` all
    read the cumulative distribution of ``a``, ``add`` and ``sub`` the spectra.
    """

    def __init__(self, u: Tensor, v: Tensor, dtype: torch.dtype = torch.float64) -> None:
        self.native = (u, v)  # (batch, n) each, in the inputs' dtype: what the scatter reads
        self.u, self.v = u.to(dtype), v.to(dtype)  # (batch, n)
        self.n = u.shape[-1]

    def rows(self, index: Tensor) -> "Operands":
        return Operands(self.native[0][index], self.native[1][index])

    @_once
    def total(self) -> tuple[Tensor, Tensor]:
        """``Σu``, ``Σv``: ``(batch, 1)``."""
        return self.u.sum(-1, keepdim=True), self.v.sum(-1, keepdim=True)

    @_once
    def cdf(self) -> tuple[Tensor, Tensor]:
        """``P(a ≤ l)``, ``P(b ≤ l)``."""
        return self.u.cumsum(-1), self.v.cumsum(-1)

    @_once
    def survival(self) -> tuple[Tensor, Tensor]:
        """``P(a ≥ l)``, ``P(b ≥ l)``."""
        return self.u.flip(-1).cumsum(-1).flip(-1), self.v.flip(-1).cumsum(-1).flip(-1)

    @_once
    def below(self) -> Tensor:
        """``P(a < l)``."""
        return F.pad(self.cdf[0][:, :-1], (1, 0))

    @_once
    def above(self) -> Tensor:
        """``P(a > l)``."""
        return F.pad(self.survival[0][:, 1:], (0, 1))

    @_once
    def spectra(self) -> tuple[Tensor, Tensor]:
        """The discrete Fourier transforms of ``u`` and ``v`` (real input: ``n // 2 + 1`` terms)."""
        return torch.fft.rfft(torch.stack([self.u, self.v]).double(), dim=-1).unbind()  # one transform for both


def _nonnegative(x: Tensor) -> Tensor:
    """``x`` with rounding noise below zero clipped, the gradient passed through unchanged."""
    with torch.no_grad():
        noise = x.clamp_min(0) - x
    return x + noise


def _at(values: Tensor, index: int, n: int) -> Tensor:
    """``(batch, 1)`` masses placed at ``index`` of a ``(batch, n)`` distribution."""
    return F.pad(values, (index, n - index - 1))


def zero(x: Operands) -> Tensor:
    return _at(x.total[0] * x.total[1], 0, x.n)


def inc(x: Operands) -> Tensor:
    return x.u.roll(1, -1) * x.total[1]


def dec(x: Operands) -> Tensor:
    return x.u.roll(-1, -1) * x.total[1]


def add(x: Operands) -> Tensor:
    """``P(a + b = l) = Σ_j u_j v_{l-j}``: a circular convolution, by FFT."""
    su, sv = x.spectra
    return _nonnegative(torch.fft.irfft(su * sv, n=x.n, dim=-1))


def sub(x: Operands) -> Tensor:
    """``P(a - b = l) = Σ_j u_{j+l} v_j``: a circular correlation, by FFT."""
    su, sv = x.spectra
    return _nonnegative(torch.fft.irfft(su * sv.conj(), n=x.n, dim=-1))


def minimum(x: Operands) -> Tensor:
    """``P(min = l) = u_l P(b ≥ l) + P(a > l) v_l``."""
    return x.u * x.survival[1] + x.above * x.v


def maximum(x: Operands) -> Tensor:
    """``P(max = l) = u_l P(b ≤ l) + P(a < l) v_l``."""
    return x.u * x.cdf[1] + x.below * x.v


def equal(x: Operands) -> Tensor:
    """``P(a = b) = Σ_k u_k v_k`` at 1, ``P(a ≠ b) = Σ_k (Σu − u_k) v_k`` at 0."""
    same = (x.u * x.v).sum(-1, keepdim=True)
    other = ((x.total[0] - x.u) * x.v).sum(-1, keepdim=True)
    return _at(other, 0, x.n) + _at(same, 1, x.n)


def less_than(x: Operands) -> Tensor:
    """``P(a < b) = Σ_k P(a < k) v_k`` at 1, ``P(a ≥ b) = Σ_k P(a ≥ k) v_k = Σu Σv - P(a < b)`` at 0."""
    below = (x.below * x.v).sum(-1, keepdim=True)
    above = _nonnegative(x.total[0] * x.total[1] - below)  # (no second cumulative sum)
    return torch.cat([above, below, below.new_zeros(below.shape[0], x.n - 2)], -1)  # (base >= 2)


@functools.lru_cache(maxsize=32)
def _quotient_blocks(base: int, device: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Divisor ``k``, quotient ``l`` and the dividends ``lo <= j < hi`` with ``j // k = l``.

    One block per (k, l) with ``lk < n``, about ``n ln n`` in all; ``k = 0`` is
    one block (every ``j``, quotient 0: ``a // 0 = 0``).
    """
    divisors = torch.arange(1, base)
    counts = (base - 1) // divisors + 1  # quotients 0 .. (n - 1) // k
    divisor = torch.cat([torch.zeros(1, dtype=torch.int64), divisors.repeat_interleave(counts)])
    first = (counts.cumsum(0) - counts).repeat_interleave(counts)
    quotient = torch.cat([torch.zeros(1, dtype=torch.int64), torch.arange(int(counts.sum())) - first])
    lo = torch.cat([torch.zeros(1, dtype=torch.int64), quotient[1:] * divisor[1:]])
    hi = torch.cat([torch.full((1,), base), torch.clamp(lo[1:] + divisor[1:], max=base)])
    return tuple(t.to(device) for t in (divisor, quotient, lo, hi))


def divide(x: Operands) -> Tensor:
    """``P(a // b = l) = Σ_k v_k Σ_{j // k = l} u_j``: prefix-sum differences over blocks."""
    divisor, quotient, lo, hi = _quotient_blocks(x.n, str(x.u.device))
    prefix = F.pad(x.cdf[0], (1, 0))  # (batch, n + 1): Σ_{j<m} u_j
    mass = _nonnegative(prefix[:, hi] - prefix[:, lo])  # (batch, blocks)
    return x.u.new_zeros(x.u.shape).index_add(1, quotient, mass * x.v[:, divisor])


# -- the same forms with hand-written adjoints (for the machine's fused step) ----------------
# Each takes :class:`Operands` and returns the op's result and its pullback ``g -> (∂/∂u, ∂/∂v)``: every form
# is bilinear in (u, v), so the adjoints are the same sums run the other way (a shift back, a cumulative sum
# from the other end, a correlation for a convolution). The clip of rounding noise below zero passes the
# gradient through, as :func:`_nonnegative` does.

Adjoint = Callable[["Operands"], tuple[Tensor, Callable[[Tensor], tuple[Tensor, Tensor]]]]


def _spread(x: Tensor, n: int) -> Tensor:
    return x.expand(-1, n)  # (batch, 1) -> (batch, n)


def zero_vjp(x: Operands):
    (su, sv), n = x.total, x.n
    return zero(x), lambda g: (_spread(g[:, :1] * sv, n), _spread(g[:, :1] * su, n))


def _shift_vjp(x: Operands, shift: int):
    moved, sv = x.u.roll(shift, -1), x.total[1]
    return moved * sv, lambda g: (g.roll(-shift, -1) * sv, _spread((g * moved).sum(-1, keepdim=True), x.n))


def inc_vjp(x: Operands):
    return _shift_vjp(x, 1)


def dec_vjp(x: Operands):
    return _shift_vjp(x, -1)


def equal_vjp(x: Operands):
    (su, sv), u, v = x.total, x.u, x.v

    def pullback(g: Tensor) -> tuple[Tensor, Tensor]:  # ∂/∂u_j = g0 (Σv - v_j) + g1 v_j
        g0, diff = g[:, :1], g[:, 1:2] - g[:, :1]
        return g0 * sv + diff * v, g0 * su + diff * u

    return equal(x), pullback


def less_than_vjp(x: Operands):
    (su, sv), v = x.total, x.v

    def pullback(g: Tensor) -> tuple[Tensor, Tensor]:  # ∂P(a<b)/∂u_j = P(b > j), ∂P(a<b)/∂v_k = P(a < k)
        g0, diff = g[:, :1], g[:, 1:2] - g[:, :1]
        return g0 * sv + diff * (sv - x.cdf[1]), g0 * su + diff * x.below

    return less_than(x), pullback


def minimum_vjp(x: Operands):
    u, v = x.u, x.v

    def pullback(g: Tensor) -> tuple[Tensor, Tensor]:
        gv, gu = g * v, g * u
        return g * x.survival[1] + gv.cumsum(-1) - gv, gu.cumsum(-1) + g * x.above

    return minimum(x), pullback


def maximum_vjp(x: Operands):
    u, v = x.u, x.v

    def pullback(g: Tensor) -> tuple[Tensor, Tensor]:
        gv, gu = g * v, g * u
        return (g * x.cdf[1] + gv.sum(-1, keepdim=True) - gv.cumsum(-1),
                gu.sum(-1, keepdim=True) - gu.cumsum(-1) + gu + g * x.below)

    return maximum(x), pullback


def _spectral_vjp(x: Operands, difference: bool):
    su, sv = x.spectra
    out = _nonnegative(torch.fft.irfft(su * (sv.conj() if difference else sv), n=x.n, dim=-1))

    def pullback(g: Tensor) -> tuple[Tensor, Tensor]:
        sg = torch.fft.rfft(g.double(), dim=-1)
        if difference:  # P(a - b = l): ∂/∂u = g convolved with v, ∂/∂v = u correlated with g
            gu, gv = sg * sv, su * sg.conj()
        else:  # P(a + b = l): ∂/∂u = g correlated with v, and the same with u
            gu, gv = sg * sv.conj(), sg * su.conj()
        return tuple(torch.fft.irfft(s, n=x.n, dim=-1).to(g.dtype) for s in (gu, gv))

    return out.to(x.u.dtype), pullback


def add_vjp(x: Operands):
    return _spectral_vjp(x, False)


def sub_vjp(x: Operands):
    return _spectral_vjp(x, True)


#: built-in op -> its exact form with adjoints (``div`` has none: it goes through autograd)
ADJOINTS: dict[str, Adjoint] = {
    "zero": zero_vjp, "inc": inc_vjp, "dec": dec_vjp, "add": add_vjp, "sub": sub_vjp,
    "min": minimum_vjp, "max": maximum_vjp, "eq": equal_vjp, "lt": less_than_vjp,
}


#: built-in op -> its exact cheaper form; used only for the built-in op object itself (:func:`has_fast_form`)
FAST_KERNELS: dict[str, Kernel] = {
    "zero": zero, "inc": inc, "dec": dec, "add": add, "sub": sub, "div": divide,
    "min": minimum, "max": maximum, "eq": equal, "lt": less_than,
}
_BUILTIN = {op.name: op for op in BUILTIN_OPS}


def has_fast_form(op: Op, base: int) -> bool:
    """Whether ``op`` at ``base`` has an exact form cheaper than the scatter."""
    return base == 1 or (_BUILTIN.get(op.name) is op and op.name in FAST_KERNELS)


def kernel_for(op: Op, base: int) -> Kernel:
    """The cheapest exact kernel for ``op`` at ``base``: a built-in form, else the scatter."""
    if base == 1:  # every result is 0 mod 1
        return zero
    return FAST_KERNELS[op.name] if has_fast_form(op, base) else scatter_kernel(op, base)


# -- the ALU ------------------------------------------------------------------------


class LookupALU(ALU):
    """The one-hot lookup table (paper eq. 7/10) over ``unit`` numbers of ``base`` values.

    ``forward(op, a, b)``: ``op`` ``(batch, len(ops))``, ``a`` and ``b``
    ``(batch, base)``; returns ``o_l = Σ_ijk T_ijkl f_i u_j v_k``, ``(batch, base)``.
    Every ``mode`` gives the table's values and gradients; ``"fast"`` (default)
    never builds the dense table. Any registered op gets a table, built from
    its integer function.
    """

    name = "lookup"

    def __init__(self, base: int, ops: Sequence[str] | None = None, mode: str = "fast") -> None:
        if isinstance(base, bool) or not isinstance(base, numbers.Integral) or base < 1:
            raise ValueError(f"lookup ALU: base must be a positive integer (the number of values, "
                             f"e.g. 128), got {base!r}")
        if mode not in MODES:
            raise ValueError(f"lookup ALU: unknown mode {mode!r}{did_you_mean(str(mode), MODES)}; "
                             f"modes: {', '.join(MODES)}")
        super().__init__(diffcomp.encoding("unit", base=int(base)), ops)
        self.base, self.mode = int(base), mode
        self.kernels: tuple[Kernel, ...] = tuple(kernel_for(op, self.base) for op in self.op_defs)
        self._dense: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    def compute(self, op: Tensor, a: Tensor, b: Tensor) -> Tensor:
        n = self.base
        u, v = a.reshape(-1, n), b.to(a.dtype).reshape(-1, n)  # (batch, n)
        f = op.to(a.dtype).reshape(-1, len(self.ops))  # (batch, ops)
        if u.shape[0] == 0:  # an empty batch (FFT libraries refuse empty transforms)
            return (u * f.sum(-1, keepdim=True)).reshape(a.shape)
        if self.mode == "fast":  # many small operations: one thread, forward and backward (diffcomp.threads)
            return run_on_one_thread(self._fast, f, u, v).reshape(a.shape)
        return getattr(self, f"_{self.mode}")(f, u, v).reshape(a.shape)

    def dense_table(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """The dense ``(len(ops), n, n, n)`` table of eq. 7, built once per dtype and device."""
        return self._reference("table", dtype, device)

    def _reference(self, form: str, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
        """A dense reference table, cached: ``"table"`` ``(ops, n, n, n)`` or ``"flat"`` ``(n², ops·n)``."""
        key = (form, dtype, torch.device(device or "cpu"))
        if key not in self._dense:
            table = dense_table(self.op_defs, self.base, dtype, key[2])
            if form == "flat":  # T_ijkl as the matrix (jk, il)
                table = table.permute(1, 2, 0, 3).reshape(self.base**2, -1)
            self._dense[key] = table
        return self._dense[key]

    def table_bytes(self, device: torch.device | str | None = None) -> int:
        """Bytes of the tables the fast path keeps for these ops (built if need be).

        The index tables of the ops it scatters, and the blocks of ``div``;
        the dense table of eq. 7 would be ``len(ops) · base³`` numbers.
        """
        device = str(torch.device(device or "cpu"))
        total = 0
        for op in self.op_defs:
            if not has_fast_form(op, self.base):
                total += index_table(op, self.base, device).nbytes
            elif op.name == "div" and self.base > 1:
                total += sum(t.nbytes for t in _quotient_blocks(self.base, device))
        return total

    def _fast(self, f: Tensor, u: Tensor, v: Tensor) -> Tensor:
        batch, x, f = u.shape[0], Operands(u, v), f.double()
        # ∂out/∂f_i is op i's result, so a weight that needs a gradient keeps its op even at 0
        keep_all = torch.is_grad_enabled() and f.requires_grad
        counts = [batch] * len(self.ops) if keep_all else (f != 0).sum(0).tolist()
        every = [i for i, count in enumerate(counts) if count == batch]  # ops every row uses
        if every:  # Σ_i f_i · op_i(u, v), as a broadcast product: too small to be worth a BLAS call
            weights = f if len(every) == len(counts) else f[:, every]
            out = (weights.unsqueeze(-1) * torch.stack([self.kernels[i](x) for i in every], 1)).sum(1)
        else:
            out = x.u.new_zeros(x.u.shape)  # (batch, n), float64
        for i, count in enumerate(counts):
            if 0 < count < batch:  # only the rows that use op i
                rows = f[:, i].nonzero().squeeze(1)
                out = out.index_add(0, rows, f[rows, i, None] * self.kernels[i](x.rows(rows)))
        return out.to(u.dtype)

    def vjp(self, op: Tensor, a: Tensor, b: Tensor):
        """:meth:`ALU.vjp` by the ops' hand-written adjoints (:data:`ADJOINTS`), in the inputs' dtype.

        Used when the mode is ``"fast"`` and every op has an adjoint (else
        autograd differentiates :meth:`forward`). Every op runs on every row:
        ``∂out/∂f_i`` is op i's result.
        """
        if self.mode != "fast" or any(not has_fast_form(o, self.base) or o.name not in ADJOINTS
                                      for o in self.op_defs) or self.base == 1:
            return super().vjp(op, a, b)
        n = self.base
        u, v, f = a.reshape(-1, n), b.to(a.dtype).reshape(-1, n), op.to(a.dtype).reshape(-1, len(self.ops))

        def forms() -> tuple[Tensor, tuple]:
            x = Operands(u, v, dtype=u.dtype)  # the sums the forms share, computed once
            outs, pullbacks = zip(*(ADJOINTS[o.name](x) for o in self.op_defs))
            return torch.stack(outs, 1), pullbacks  # (batch, ops, n): each op's result

        out = torch.bmm(f.unsqueeze(1), forms()[0]).squeeze(1)  # Σ_i f_i op_i(u, v)

        def pullback(grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            # the forms again: between forward and backward nothing is held but the inputs (a caller saves them)
            results, pullbacks = forms()
            g = grad.reshape(-1, n)  # (batch, n)
            grad_f = (results * g.unsqueeze(1)).sum(-1)  # (batch, ops): op i's result · g
            grad_u, grad_v = map(sum, zip(*(pb(f[:, i, None] * g) for i, pb in enumerate(pullbacks))))
            return grad_f.reshape(op.shape), grad_u.reshape(a.shape), grad_v.reshape(b.shape)

        return out.reshape(a.shape), pullback

    def _scatter(self, f: Tensor, u: Tensor, v: Tensor) -> Tensor:
        outs = [plain_scatter(u, v, index_table(op, self.base, u.device)) for op in self.op_defs]
        return torch.einsum("bi,bil->bl", f, torch.stack(outs, 1))

    def _matmul(self, f: Tensor, u: Tensor, v: Tensor) -> Tensor:
        n, ops = self.base, len(self.ops)
        flat = self._reference("flat", u.dtype, u.device)  # (n², ops·n)
        outer = torch.einsum("bj,bk->bjk", u, v).reshape(-1, n * n)  # (batch, n²)
        return torch.einsum("bi,bil->bl", f, (outer @ flat).unflatten(1, (ops, n)))

    def _einsum(self, f: Tensor, u: Tensor, v: Tensor) -> Tensor:
        return torch.einsum("bi,ijkl,bj,bk->bl", f, self.dense_table(u.dtype, u.device), u, v)  # eq. 7

    def extra_repr(self) -> str:
        return f"base={self.base}, ops={self.ops}, mode={self.mode!r}"


@diffcomp.hookimpl
def register_alus(register):
    register("lookup", LookupALU)
