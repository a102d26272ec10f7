"""The built-in programs written in Python, compiled by :func:`diffcomp.compile` when registered.

Each is the same algorithm as the hand-written ``.asm`` program of the same
name, with the same calling convention on memory (the compiled ones return in
r0 where the ``.asm`` differs, e.g. fibonacci's r3). They are registered as
``<name>_py``; the ``.asm`` programs keep their names as the reference
(``benchmarks/compiler.py`` compares the two: instructions and steps).
``mem`` is the machine's memory: the compiler recognises the name.
"""

from __future__ import annotations

mem: list[int] = []  # the machine's memory; run_python gives the functions a real one


def access():
    """M[0] = k, an array from cell 1  ->  M[0] = A[k]."""
    mem[0] = mem[mem[0] + 1]


def increment():
    """Add 1 to every element of the zero-terminated array at cell 0."""
    i = 0
    while True:
        x = mem[i]
        if x == 0:
            return
        mem[i] = x + 1
        i += 1


def swap():
    """M[0] = p, M[1] = q  ->  M[p] and M[q] exchanged."""
    p = mem[0]
    q = mem[1]
    mem[p], mem[q] = mem[q], mem[p]


def list_k():
    """M[0] = head node, M[1] = k  ->  M[2] = the value of node k (a node n: next at M[n], value at M[n + 1])."""
    node = mem[0]
    k = mem[1]
    while k != 0:
        node = mem[node]
        k -= 1
    mem[2] = mem[node + 1]


def addition():
    """M[0] = radix, M[1] = n, two n-digit numbers from cell 2  ->  their n + 1 digit sum after them."""
    radix = mem[0]
    n = mem[1]
    a = 2
    b = a + n
    s = b + n
    carry = 0
    while n != 0:
        digit = mem[a] + mem[b] + carry
        carry = digit // radix
        mem[s] = digit % radix
        a += 1
        b += 1
        s += 1
        n -= 1
    mem[s] = carry


def bubble_sort():
    """Sort the zero-terminated sequence at cell 0 in place, ascending (passes until none swaps)."""
    while True:
        i = 0
        swapped = 0
        x = mem[0]
        if x == 0:
            return
        while True:
            j = i + 1
            y = mem[j]
            if y == 0:
                break
            if y < x:  # out of order: swap them
                mem[i] = y
                mem[j] = x
                swapped = 1
            x = max(x, y)  # mem[j] now holds the larger
            i = j
        if swapped == 0:
            return


def insertion_sort():
    """Sort the zero-terminated sequence at cell 0 in place, ascending."""
    i = 1
    if mem[0] == 0:
        return
    while True:
        key = mem[i]
        if key == 0:
            return
        j = i
        while j != 0:
            prev = mem[j - 1]
            if key >= prev:
                break
            mem[j] = prev
            j -= 1
        mem[j] = key
        i += 1


def fibonacci(a, b, d):
    """x_d of x_0 = a, x_1 = b, x_{k+1} = x_k + x_{k-1} (mod the base), in r0 (the .asm leaves it in r3)."""
    if d == 0:
        return a
    return fibonacci(b, a + b, d - 1)


def calculator(op, a, b):
    """One ALU op chosen by a code: 0 add, 1 sub, 2 mul, 3 div, 4 mod, 5 min, 6 max, 7 eq, 8 lt; else 0."""
    if op == 0:
        return a + b
    if op == 1:
        return a - b
    if op == 2:
        return a * b
    if op == 3:
        return a // b
    if op == 4:
        return a % b
    if op == 5:
        return min(a, b)
    if op == 6:
        return max(a, b)
    if op == 7:
        return a == b
    if op == 8:
        return a < b
    return 0


#: the programs written both ways, in registration order
FUNCTIONS = (access, increment, swap, list_k, addition, bubble_sort, insertion_sort, fibonacci, calculator)
SUFFIX = "_py"


def sample(name: str, rng) -> tuple[list[int], list[int]]:
    """Random valid inputs ``(memory, registers)`` for the program ``name`` (either version), at base 128.

    The inputs the two versions are compared on (tests, ``benchmarks/compiler.py``).
    """
    def sequence(most: int, top: int = 127) -> list[int]:
        return [rng.randrange(1, top) for _ in range(rng.randrange(most + 1))] + [0]

    if name == "access":
        return [rng.randrange(6)] + [rng.randrange(128) for _ in range(6)], []
    if name == "increment":
        return sequence(8, 126), []
    if name == "swap":
        return [rng.randrange(2, 8), rng.randrange(2, 8)] + [rng.randrange(128) for _ in range(6)], []
    if name == "list_k":
        count = rng.randrange(1, 5)
        addresses = rng.sample(range(3, 15, 2), count)  # node n: next at n, value at n + 1
        memory = [addresses[0], rng.randrange(count), 0] + [0] * 12
        for k, at in enumerate(addresses):
            memory[at] = addresses[k + 1] if k + 1 < count else 0
            memory[at + 1] = rng.randrange(128)
        return memory, []
    if name == "addition":
        n = rng.randrange(1, 5)
        digits = [rng.randrange(10) for _ in range(2 * n)]
        return [10, n] + digits + [0] * (n + 1), []
    if name in ("bubble_sort", "insertion_sort"):
        return sequence(8), []
    if name == "fibonacci":
        d = rng.randrange(11)
        return [0] * max(d, 1), [rng.randrange(128), rng.randrange(128), d]
    if name == "calculator":
        return [], [rng.randrange(10), rng.randrange(128), rng.randrange(128)]
    raise KeyError(name)
