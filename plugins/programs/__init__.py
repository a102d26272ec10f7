"""The built-in library programs, one ``.asm`` file each (the paper's and ANC's).

Every program ends with ``RET`` (run on its own, that halts) and states its
calling convention — which registers and memory cells hold its inputs and
outputs — in the comment block at the top of its file, which becomes
``Program.doc``:

============== ==========================================================================
access         M[0] = k, an array from cell 1  ->  M[0] = A[k]                         (ANC)
increment      a zero-terminated array at cell 0  ->  every element + 1, in place      (ANC)
swap           M[0] = p, M[1] = q  ->  M[p] and M[q] exchanged                         (ANC)
list_k         M[0] = head node, M[1] = k  ->  M[2] = the value of node k              (ANC)
addition       M[0] = radix, M[1] = n, two n-digit numbers  ->  their n + 1 digit sum  (ANC)
bubble_sort    the zero-terminated sequence at cell 0, sorted in place, ascending      (ANC)
insertion_sort the zero-terminated sequence at cell 0, sorted in place, ascending      (§4.3)
fibonacci      r0 = a, r1 = b, r2 = depth d  ->  r3 = x_d; 8 steps per level           (§4.1)
calculator     r0 = op code, r1 = a, r2 = b  ->  r0 = a op b                           (§4.2)
reverse        the zero-terminated sequence at cell 0, reversed in place
count          the sequence at cell 0, r6 = v  ->  r0 = how many elements equal v
count_distinct a sorted sequence at cell 0  ->  r0 = how many distinct values
max            the sequence at cell 0  ->  r0 = its largest element (0 if empty)
min            the sequence at cell 0  ->  r0 = its smallest element (0 if empty)
length         the sequence at cell 0  ->  r0 = its length
sum            the sequence at cell 0  ->  r0 = the sum of its elements mod the base
nth            the sequence at cell 0, r6 = k  ->  r0 = M[k] (counting from 0)
identity       nothing: a chain step that stops early
============== ==========================================================================

The sequence programs (``insertion_sort`` and those after ``calculator``)
keep ``r6``, their argument register, so a chain can sort and then ask for
the k-th element; each names its argument and result registers on lines
``; arguments: ...`` and ``; result: ...`` of its doc
(:func:`diffcomp.machine.chain.convention`).

Each is also written in Python (:mod:`.python`) and registered compiled as
``<name>_py`` (``insertion_sort_py``, ...): the same algorithm on the same
memory, results in r0. The ``.asm`` programs keep their names as the
hand-written reference; ``benchmarks/compiler.py`` compares the two.
"""

from __future__ import annotations

from importlib import resources

import diffcomp
from diffcomp.machine import Program, assemble

#: the built-in programs, in the order they are registered
NAMES = ("access", "increment", "swap", "list_k", "addition", "bubble_sort", "insertion_sort", "fibonacci",
         "calculator", "reverse", "count", "count_distinct", "max", "min", "length", "sum", "nth", "identity")
#: the library over the zero-terminated sequence at cell 0 (what the library recipes choose among)
SEQUENCE = ("insertion_sort", "reverse", "count", "count_distinct", "max", "min", "length", "sum", "nth",
            "identity")


#: steps the sequence programs take on n elements at most: a * n + b (insertion_sort: 4 n^2 + 7 n + 10)
LINEAR_STEPS = {"reverse": (9, 9), "count": (6, 5), "count_distinct": (8, 6), "max": (5, 5), "min": (5, 5),
                "length": (4, 4), "sum": (5, 5), "nth": (0, 2), "identity": (0, 1)}


def step_bound(name: str, n: int) -> int:
    """The most machine steps the sequence program ``name`` takes on a sequence of ``n`` elements."""
    if name == "insertion_sort":
        return 4 * n * n + 7 * n + 10
    if name not in LINEAR_STEPS:
        raise ValueError(f"no step bound for {name!r}; the sequence programs: insertion_sort, "
                         f"{', '.join(LINEAR_STEPS)}")
    a, b = LINEAR_STEPS[name]
    return a * n + b


def source(name: str) -> str:
    """The assembly text of a built-in program."""
    return resources.files(__name__).joinpath(f"{name}.asm").read_text(encoding="utf-8")


def load(name: str) -> Program:
    """Assemble a built-in program; its calls may name any other built-in."""
    return assemble(source(name), name=name, library=NAMES)


def compiled(function) -> Program:
    """A program of :mod:`.python` compiled, named ``<name>_py``; its calls may name the ``.asm`` built-ins."""
    from . import python

    return diffcomp.compile(function, name=function.__name__ + python.SUFFIX,
                            library=[load(name) for name in NAMES if name in _called(function)])


def _called(function) -> set[str]:
    return set(function.__code__.co_names)


@diffcomp.hookimpl
def register_programs(register):
    from . import python

    for name in NAMES:
        register(name, load(name))
    for function in python.FUNCTIONS:  # the same programs written in Python, compiled
        register(function.__name__ + python.SUFFIX, compiled(function))
