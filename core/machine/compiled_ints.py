"""A compiled kernel for :func:`diffcomp.machine.exact.run_ints`, used when Numba is installed.

The integer machine's rows are independent: each runs its own instructions
until it halts. :func:`~diffcomp.machine.exact.run_ints` steps the whole
batch at once with NumPy (a few gathers per step, every row in lockstep);
this kernel runs one row at a time to its end in compiled code instead, the
same operations in the same order, so the two return the same integers
(a test runs both). It serves the runs with no trace and no strict check,
whose ALU has op tables (a modulus of at most
:data:`~diffcomp.machine.exact.MAX_TABLE_MODULUS`), which is every run the
computer makes when it tries chains and argument values in training.

Numba is a dependency, imported (and the kernel compiled, about a second)
the first time a run is large enough to be worth it: :data:`MIN_ROWS` rows
or more. Smaller runs, such as answering a few questions, keep to NumPy and
start without importing Numba. Without Numba, or with
``DIFFCOMP_NO_NUMBA=1`` in the environment, :func:`available` is false and
every run keeps to NumPy.
"""

from __future__ import annotations

import functools
import os

import numpy as np

#: the fewest rows a run must have to take the kernel (below, compiling it would cost more than it saves)
MIN_ROWS = 1024


def _rows(R, M, pc, steps, beyond, track_beyond, after_of, jez_of, a_of, b_of, out_of, source_of, memory_of,
          stores_of, jumps_of, tables, op_offset, modulus, lines, cells, max_steps, zero):  # pragma: no cover
    """Run every row of ``R`` ``(batch, width)`` and ``M`` ``(batch, cells + 1)`` from its counter ``pc`` until it
    halts or has run ``max_steps``; ``pc`` and ``steps`` are updated in place, as are ``R`` and ``M``."""
    for r in range(R.shape[0]):
        p = pc[r]
        if p == 0:
            continue
        ran = 0
        while ran < max_steps:
            after = after_of[p]
            is_jez = jez_of[p]
            u = R[r, a_of[p]]
            v = R[r, b_of[p]]
            if track_beyond and memory_of[p] and u >= cells:
                beyond[r] = True
            if zero:
                if u >= cells:
                    cell = cells  # the scratch cell: a write there is lost, a read gives 0
                    loaded = 0
                else:
                    cell = u
                    loaded = M[r, u]
            else:
                cell = u % cells
                loaded = M[r, cell]
            source = source_of[p]
            if source == 0:
                value = tables[op_offset[p] + u * modulus + v]
            elif source == 1:
                value = u
            elif source == 2:
                value = loaded
            else:
                value = after
            R[r, out_of[p]] = value
            if stores_of[p]:
                M[r, cell] = v
            taken = jumps_of[p] or (is_jez and u == 0)
            to = v if is_jez else u
            p = to % lines if taken else after
            ran += 1
            if p == 0:
                break
        pc[r] = p
        steps[r] = ran


@functools.cache
def _kernel():
    """The compiled :func:`_rows` (Numba compiles it at its first call), or ``None`` without Numba."""
    if os.environ.get("DIFFCOMP_NO_NUMBA"):
        return None
    try:
        import numba
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return numba.njit(cache=False, nogil=True)(_rows)


def available() -> bool:
    """Whether the compiled kernel can run (Numba imports, and ``DIFFCOMP_NO_NUMBA`` is not set)."""
    return _kernel() is not None


def run_rows(program, R: np.ndarray, M: np.ndarray, pc: np.ndarray, steps: np.ndarray, beyond: np.ndarray | None,
             *, cells: int, max_steps: int, zero: bool) -> None:
    """Run ``program`` (a :class:`~diffcomp.machine.exact.Program` with op tables) on the prepared arrays of
    :func:`~diffcomp.machine.exact.run_ints`, in place."""
    P = program
    track = beyond is not None
    flags = beyond if track else np.zeros(0, dtype=np.bool_)
    _kernel()(R, M, pc, steps, flags, track, P.next, P.jez, P.a, P.b, P.out, P.source, P.memory, P.stores, P.jumps,
          P.tables, P.op_offset, np.int64(P.modulus), np.int64(P.lines), np.int64(cells), np.int64(max_steps), zero)


__all__ = ["MIN_ROWS", "available", "run_rows"]
