"""ANC's tasks (Bunel et al. 2016, §4): access, increment, swap, list_k, addition, sort.

Each task runs one library program on a memory it is given, and asks for
the memory the program leaves, on the cells that matter (``mask``). Each has
two input distributions, chosen by ``distribution``:

- ``"generic"``: what the program is written for (any index, any layout);
- ``"biased"``: a narrower distribution in ANC's spirit, on which a program
  can be faster than the generic one and still always right.

| task | program | generic | biased |
|---|---|---|---|
| ``anc-access`` | ``access`` | ``k`` uniform | ``k`` fixed (``index``, default 3, ANC's) |
| ``anc-increment`` | ``increment`` | random length, values | full length, one value (ANC's) |
| ``anc-swap`` | ``swap`` | ``p``, ``q`` uniform | ``p``, ``q`` the 1st and 3rd elements (ANC's) |
| ``anc-list_k`` | ``list_k`` | nodes anywhere in memory | nodes laid out in order (ANC's) |
| ``anc-addition`` | ``addition`` | 1 to ``digits`` digits | one digit |
| ``anc-sort`` | ``bubble_sort`` | random strings | the first two in any order, the rest sorted and no smaller (ANC's) |

Items: ``numbers`` ``(cells,)`` the initial memory, ``answer`` ``(cells,)``
the memory the program should leave, ``mask`` ``(cells,)`` bool, the cells
that count (elsewhere the answer repeats the input). Registers start at 0.
The splits are train, validation and test (70/15/15), disjoint draws of the
same distribution; the task's ``max_steps`` leaves the compiled program room
(twice its longest run on the task, plus 8).
"""

from __future__ import annotations

import torch

import diffcomp
from diffcomp.model.tasks import Task, check_modulus, generator, positive

DISTRIBUTIONS = ("generic", "biased")


class ANCTask(Task):
    """The shared part: options, splits, the mask; subclasses draw memories in :meth:`draw`."""

    program: str
    text = False
    answer_from = ("memory", 0)
    #: the compiled program's longest run on the task's inputs, for ``max_steps`` (set by subclasses)
    longest = 0

    def _setup(self, distribution: str, base: int, examples: int, seed: int, **options) -> None:
        super().__init__(seed)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"task {self.name!r}: distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}, "
                             f"got {distribution!r}")
        self.distribution = distribution
        self.modulus = check_modulus(self.name, base, None)
        self.examples = positive(self.name, "examples", examples, minimum=10)
        self.programs = (self.program,)
        from diffcomp.machine import program

        self.ops = tuple(program(self.program).ops)
        self.registers = max(1, program(self.program).registers)
        self._options = {"distribution": distribution, "base": base, "examples": examples, "seed": seed, **options}
        self.slots = self.answer_length = self.cells
        self.max_steps = 2 * self.longest + 8

    @property
    def biased(self) -> bool:
        return self.distribution == "biased"

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` examples: initial memories, answers, masks, each ``(n, cells)``."""
        raise NotImplementedError

    def generate(self) -> dict[str, dict[str, torch.Tensor]]:
        memory, answer, mask = self.draw(self.examples, generator(self.seed, 2))
        return self.split({"numbers": memory, "answer": answer, "mask": mask})

    def _values(self, shape: tuple[int, ...], g: torch.Generator, low: int = 0) -> torch.Tensor:
        return torch.randint(low, self.modulus, shape, generator=g)


class Access(ANCTask):
    """``access``: ``M[0] = k``, the array at cells 1 ..; the answer ``M[0] = A[k]``."""

    name = "anc-access"
    program = "access"
    longest = 5

    def __init__(self, *, length: int = 7, index: int = 3,
                 distribution: str = "biased", base: int = 16, examples: int = 1000, seed: int = 0) -> None:
        self.length = positive("anc-access", "length", length)
        if not 0 <= index < length:
            raise ValueError(f"task 'anc-access': index must lie in 0..{length - 1} (the array's cells), got {index!r}")
        self.index, self.cells = index, length + 1
        self._setup(distribution, base, examples, seed, length=length, index=index)
        if self.cells > self.modulus:
            raise ValueError(f"task 'anc-access': {self.cells} cells need addresses up to {self.cells - 1}, "
                             f"beyond the numbers mod {self.modulus}")

    def draw(self, n, g):
        memory = self._values((n, self.cells), g)
        k = torch.full((n,), self.index) if self.biased else torch.randint(0, self.length, (n,), generator=g)
        memory[:, 0] = k
        answer = memory.clone()
        answer[:, 0] = memory.gather(1, (k + 1)[:, None])[:, 0]
        mask = torch.zeros(n, self.cells, dtype=torch.bool)
        mask[:, 0] = True
        return memory, answer, mask


class Increment(ANCTask):
    """``increment``: a zero-terminated array at cell 0, each element one larger after."""

    name = "anc-increment"
    program = "increment"

    def __init__(self, *, length: int = 6,
                 distribution: str = "biased", base: int = 16, examples: int = 1000, seed: int = 0) -> None:
        self.length = positive("anc-increment", "length", length)
        self.cells, self.longest = length + 1, 6 * length + 4
        self._setup(distribution, base, examples, seed, length=length)

    def draw(self, n, g):
        if self.biased:  # ANC's: the whole array, every element the same
            lengths = torch.full((n,), self.length)
            memory = self._values((n, 1), g, low=1).clamp_max(self.modulus - 2).expand(n, self.cells).clone()
        else:
            lengths = torch.randint(1, self.length + 1, (n,), generator=g)
            memory = torch.randint(1, self.modulus - 1, (n, self.cells), generator=g)
        inside = torch.arange(self.cells)[None] < lengths[:, None]
        memory = torch.where(inside, memory, 0)
        answer = torch.where(inside, memory + 1, 0)
        mask = torch.arange(self.cells)[None] <= lengths[:, None]  # the elements and the terminator
        return memory, answer, mask


class Swap(ANCTask):
    """``swap``: ``M[0] = p``, ``M[1] = q`` (addresses), the array at cells 2 ..; ``M[p]``, ``M[q]`` exchanged."""

    name = "anc-swap"
    program = "swap"
    longest = 7

    def __init__(self, *, length: int = 6,
                 distribution: str = "biased", base: int = 16, examples: int = 1000, seed: int = 0) -> None:
        self.length = positive("anc-swap", "length", length, minimum=3)
        self.cells = length + 2
        self._setup(distribution, base, examples, seed, length=length)
        if self.cells > self.modulus:
            raise ValueError(f"task 'anc-swap': {self.cells} cells need addresses beyond the numbers "
                             f"mod {self.modulus}")

    def draw(self, n, g):
        memory = self._values((n, self.cells), g)
        if self.biased:  # ANC's: always the first and the third element
            p, q = torch.full((n,), 2), torch.full((n,), 4)
        else:
            p, q = (torch.randint(2, self.cells, (n,), generator=g) for _ in range(2))
        memory[:, 0], memory[:, 1] = p, q
        answer = memory.clone()
        rows = torch.arange(n)
        answer[rows, p], answer[rows, q] = memory[rows, q], memory[rows, p]
        answer[:, 0], answer[:, 1] = p, q  # (p or q may be 0 or 1 only if they point at themselves: never here)
        mask = torch.zeros(n, self.cells, dtype=torch.bool)
        mask[rows, p] = mask[rows, q] = True
        return memory, answer, mask


class ListK(ANCTask):
    """``list_k``: ``M[0]`` = the head node's address, ``M[1] = k``; node ``a`` holds next at ``M[a]``,
    its value at ``M[a + 1]``; the answer ``M[2]`` = node ``k``'s value."""

    name = "anc-list_k"
    program = "list_k"

    def __init__(self, *, nodes: int = 6,
                 distribution: str = "biased", base: int = 16, examples: int = 1000, seed: int = 0) -> None:
        self.nodes = positive("anc-list_k", "nodes", nodes, minimum=2)
        self.cells, self.longest = 3 + 2 * nodes, 4 * nodes + 8
        self._setup(distribution, base, examples, seed, nodes=nodes)
        if self.cells > self.modulus:
            raise ValueError(f"task 'anc-list_k': {self.cells} cells need addresses beyond the numbers mod "
                             f"{self.modulus}; use a larger base or fewer nodes")

    def draw(self, n, g):
        memory = self._values((n, self.cells), g)
        answer = torch.empty_like(memory)
        mask = torch.zeros(n, self.cells, dtype=torch.bool)
        mask[:, 2] = True
        lengths = torch.randint(2, self.nodes + 1, (n,), generator=g)
        for row in range(n):
            length = int(lengths[row])
            if self.biased:  # ANC's: the nodes laid out in order, from cell 3
                slots = torch.arange(length)
            else:
                slots = torch.randperm(self.nodes, generator=g)[:length]
            addresses = 3 + 2 * slots
            for i in range(length):
                memory[row, addresses[i]] = addresses[i + 1] if i + 1 < length else 0
            k = int(torch.randint(0, length, (1,), generator=g))
            memory[row, 0], memory[row, 1] = addresses[0], k
            answer[row] = memory[row]
            answer[row, 2] = memory[row, addresses[k] + 1]
        return memory, answer, mask


class Addition(ANCTask):
    """``addition``: ``M[0]`` = the radix, ``M[1] = n``, the digits of a and b from cell 2, least
    significant first; the n + 1 digits of a + b after them."""

    name = "anc-addition"
    program = "addition"

    def __init__(self, *, digits: int = 3, radix: int = 8,
                 distribution: str = "biased", base: int = 32, examples: int = 1000, seed: int = 0) -> None:
        self.digits = positive("anc-addition", "digits", digits)
        self.radix = positive("anc-addition", "radix", radix, minimum=2)
        self.cells, self.longest = 3 + 3 * digits, 13 * digits + 9
        self._setup(distribution, base, examples, seed, digits=digits, radix=radix)
        if 2 * radix > self.modulus or self.cells > self.modulus:
            raise ValueError(f"task 'anc-addition': radix {radix} and {self.cells} cells need numbers up to "
                             f"{max(2 * radix, self.cells)}, beyond the numbers mod {self.modulus}")

    def draw(self, n, g):
        memory = torch.zeros(n, self.cells, dtype=torch.int64)
        answer = torch.zeros_like(memory)
        mask = torch.zeros(n, self.cells, dtype=torch.bool)
        lengths = (torch.ones(n, dtype=torch.int64) if self.biased
                   else torch.randint(1, self.digits + 1, (n,), generator=g))
        for row in range(n):
            d = int(lengths[row])
            a, b = (torch.randint(0, self.radix, (d,), generator=g) for _ in range(2))
            memory[row, 0], memory[row, 1] = self.radix, d
            memory[row, 2:2 + d], memory[row, 2 + d:2 + 2 * d] = a, b
            answer[row] = memory[row]
            carry = 0
            for i in range(d):
                total = int(a[i]) + int(b[i]) + carry
                answer[row, 2 + 2 * d + i], carry = total % self.radix, total // self.radix
            answer[row, 2 + 3 * d] = carry
            mask[row, 2 + 2 * d:3 + 3 * d] = True
        return memory, answer, mask


class Sort(ANCTask):
    """``bubble_sort`` (ANC's sort): a zero-terminated string at cell 0, sorted ascending in place."""

    name = "anc-sort"
    program = "bubble_sort"

    def __init__(self, *, length: int = 5,
                 distribution: str = "biased", base: int = 32, examples: int = 1000, seed: int = 0) -> None:
        self.length = positive("anc-sort", "length", length, minimum=2)
        self.cells = length + 1
        self.longest = (length + 1) * (8 * length + 4) + 2
        self._setup(distribution, base, examples, seed, length=length)

    def draw(self, n, g):
        memory = torch.zeros(n, self.cells, dtype=torch.int64)
        if self.biased:  # ANC's: only the first two may be out of order; the rest is sorted, none below them
            half = self.modulus // 2
            first = torch.randint(1, half, (n, 2), generator=g)  # (n, 2), in either order
            rest = torch.randint(0, self.modulus, (n, self.length - 2), generator=g)
            low = first.max(1, keepdim=True).values  # (n, 1)
            rest = (low + rest % (self.modulus - low)).sort(1).values  # in low .. modulus - 1, ascending
            values = torch.cat([first, rest], 1)
            lengths = torch.full((n,), self.length)
        else:
            values = torch.randint(1, self.modulus, (n, self.length), generator=g)
            lengths = torch.randint(1, self.length + 1, (n,), generator=g)
        inside = torch.arange(self.length)[None] < lengths[:, None]
        memory[:, :self.length] = torch.where(inside, values, 0)
        ordered = torch.where(inside, values, self.modulus).sort(1).values
        answer = memory.clone()
        answer[:, :self.length] = torch.where(ordered == self.modulus, 0, ordered)
        mask = torch.arange(self.cells)[None] <= lengths[:, None]
        return memory, answer, mask


TASKS = (Access, Increment, Swap, ListK, Addition, Sort)


@diffcomp.hookimpl
def register_tasks(register):
    for cls in TASKS:
        register(cls.name, cls)
