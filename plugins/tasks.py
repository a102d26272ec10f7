"""The built-in tasks: arithmetic (§4.2), Fibonacci (§4.1), sorting (§4.3), and their one-hot versions.

Every task is generated deterministically from its ``seed`` and split into
disjoint train, validation and test sets, 70/15/15 by default
(``validation_fraction``, ``test_fraction``). A ``-onehot`` name is the same task with
``onehot=True``: no text, only the numbers, for the minimal network of §4.1.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence

import torch

import diffcomp
from diffcomp.errors import is_fraction
from diffcomp.model.tasks import TEST_FRACTION, VALIDATION_FRACTION, Task, check_modulus, generator, positive
from diffcomp.model.tokenizers import encode_texts
from diffcomp.plugins.phrasings import NEW_WORDS, PHRASINGS, TEST, TRAIN, VALIDATION, Phrasings, ordinal, vary
from diffcomp.plugins.programs import step_bound
from diffcomp.registry import get_registry

#: natural-language templates per op; ``{a}`` and ``{b}`` are the operands
TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": ("Add {a} and {b}", "What is {a} plus {b}?", "What is the sum of {a} and {b}?", "{a} + {b} ="),
    "sub": ("Subtract {b} from {a}", "What is {a} minus {b}?", "Take {b} away from {a}", "{a} - {b} ="),
    "mul": ("Multiply {a} by {b}", "What is {a} times {b}?", "What is the product of {a} and {b}?", "{a} * {b} ="),
    "div": ("Divide {a} by {b}", "What is {a} divided by {b}?", "How many times does {b} go into {a}?",
            "{a} / {b} ="),
    "mod": ("What is {a} modulo {b}?", "What is the remainder of {a} divided by {b}?", "{a} mod {b} ="),
    "min": ("What is the smaller of {a} and {b}?", "Which is less, {a} or {b}?", "min({a}, {b}) ="),
    "max": ("What is the larger of {a} and {b}?", "Which is greater, {a} or {b}?", "max({a}, {b}) ="),
    "eq": ("Is {a} equal to {b}?", "Are {a} and {b} the same?", "{a} == {b}"),
    "lt": ("Is {a} less than {b}?", "Is {a} smaller than {b}?", "{a} < {b}"),
    "inc": ("Add one to {a}", "What comes after {a}?", "{a} + 1 ="),
    "dec": ("Subtract one from {a}", "What comes before {a}?", "{a} - 1 ="),
    "zero": ("What is zero?", "Say nothing but zero", "0 ="),
}

#: the largest operand space enumerated exactly; beyond it operands are sampled
MAX_ENUMERATED = 1 << 22


class Arithmetic(Task):
    """One-step modular arithmetic (§4.2): "Add 3 and 4" -> 7, mod ``base`` (or ``2**bits``).

    Each example is a distinct ``(op, a, b)`` with a template drawn at random,
    so no question of the test split is asked in training. ``operand_bits``
    limits the operands (``0 <= a, b < 2**operand_bits``) while answers stay
    modulo the full range, e.g. 16-bit operands on a 32-bit circuit.
    ``distractors`` adds that many random numbers to ``numbers``; the slot
    order is a fixed permutation drawn from the seed, which the minimal
    network must learn.
    """

    name = "arithmetic"

    def __init__(self, *, base: int | None = None, bits: int | None = None, operand_bits: int | None = None,
                 ops: Sequence[str] = ("add", "sub", "mul", "div"), examples: int = 45151,
                 templates: Mapping[str, Sequence[str]] | None = None, distractors: int = 0,
                 onehot: bool = False, validation_fraction: float = VALIDATION_FRACTION,
                 test_fraction: float = TEST_FRACTION, seed: int = 0) -> None:
        super().__init__(seed, validation_fraction=validation_fraction, test_fraction=test_fraction)
        self.modulus = check_modulus(self.name, base, bits)
        self.operand_range = self.modulus
        if operand_bits is not None:
            positive(self.name, "operand_bits", operand_bits)
            if 1 << operand_bits > self.modulus:
                raise ValueError(f"task {self.name!r}: operand_bits={operand_bits} gives operands up to "
                                 f"{(1 << operand_bits) - 1}, beyond the numbers mod {self.modulus}")
            self.operand_range = 1 << operand_bits
        if self.operand_range > 1 << 62:
            raise ValueError(f"task {self.name!r}: operands are drawn as int64, up to 2**62; "
                             f"got a range of {self.operand_range} (use operand_bits <= 62)")
        self.ops = _check_ops(self.name, ops)
        self.templates = _check_templates(self.ops, templates)
        self.examples = positive(self.name, "examples", examples, minimum=3)
        self.distractors = positive(self.name, "distractors", distractors, minimum=0)
        self.text = not onehot
        self.slots, self.answer_length = 2 + self.distractors, 1
        self.layout = torch.randperm(self.slots, generator=generator(seed, 1))  # slot of a, of b, distractors
        self._options = {"base": base, "bits": bits, "operand_bits": operand_bits, "ops": list(self.ops),
                         "examples": examples, "distractors": distractors, "onehot": onehot,
                         "validation_fraction": validation_fraction,
                         "test_fraction": test_fraction, "seed": seed}

    def generate(self) -> dict[str, dict[str, torch.Tensor]]:
        g = generator(self.seed, 2)
        op, a, b = self._draw(g)
        n = len(op)
        answer = torch.empty(n, dtype=torch.int64)
        registry = get_registry()
        for i, name in enumerate(self.ops):
            chosen = op == i
            answer[chosen] = registry.get("op", name).apply(a[chosen], b[chosen], self.modulus)
        numbers = torch.randint(0, self.operand_range, (n, self.slots), generator=g)
        numbers[:, self.layout[0]], numbers[:, self.layout[1]] = a, b
        tensors = {"numbers": numbers, "op": op, "answer": answer.unsqueeze(1)}
        if self.text:
            which = torch.randint(0, 1 << 30, (n,), generator=g)
            texts = []
            for o, x, y, w in zip(op.tolist(), a.tolist(), b.tolist(), which.tolist()):
                options = self.templates[self.ops[o]]
                texts.append(options[w % len(options)].format(a=x, b=y))
            tensors["text"] = encode_texts(texts, max(len(t) for t in texts))
        return self.split(tensors)

    def _draw(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Distinct ``(op, a, b)`` triples in random order: ``min(examples, all there are)`` of them."""
        r, k = self.operand_range, len(self.ops)
        space = k * r * r
        if space <= MAX_ENUMERATED:
            index = torch.randperm(space, generator=g)[: self.examples]
            return index // (r * r), (index // r) % r, index % r
        # sample (op, a, b) with replacement, keep the first of each, top up
        triples = torch.empty(0, 3, dtype=torch.int64)
        while len(triples) < self.examples:
            fresh = torch.stack([torch.randint(0, k, (2 * self.examples,), generator=g),
                                 _randint64(r, 2 * self.examples, g), _randint64(r, 2 * self.examples, g)], dim=1)
            joined = torch.cat([triples, fresh])
            unique, inverse = torch.unique(joined, dim=0, return_inverse=True)
            first = torch.full((len(unique),), len(joined), dtype=torch.int64).scatter_reduce(
                0, inverse, torch.arange(len(joined)), "amin")
            triples = joined[first.sort().values][: self.examples]
        return triples[:, 0], triples[:, 1], triples[:, 2]


def _randint64(high: int, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` integers uniform in ``[0, high)`` for ``high`` up to ``2**62``."""
    if high <= 1 << 31:
        return torch.randint(0, high, (n,), generator=g)
    hi = torch.randint(0, 1 << 31, (n,), generator=g)
    lo = torch.randint(0, 1 << 31, (n,), generator=g)
    return ((hi << 31) | lo) % high


def _check_ops(task: str, ops: Sequence[str]) -> tuple[str, ...]:
    if isinstance(ops, str) or not ops:
        raise ValueError(f"task {task!r}: ops must be a non-empty list of op names such as ['add', 'mul'], "
                         f"got {ops!r}")
    known = get_registry().names("op")
    for op in ops:
        if op not in known:
            from diffcomp.errors import did_you_mean

            raise ValueError(f"task {task!r}: unknown op {op!r}{did_you_mean(op, known)}; "
                             f"registered ops: {', '.join(known)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"task {task!r}: ops {list(ops)} name an op twice")
    return tuple(ops)


def _check_templates(ops: tuple[str, ...], templates: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    chosen = dict(TEMPLATES)
    if templates is not None:
        if not isinstance(templates, Mapping):
            raise ValueError(f"task 'arithmetic': templates must map op names to lists of strings such as "
                             f"{{'add': ['Add {{a}} and {{b}}']}}, got {templates!r}")
        chosen.update({op: tuple(t) for op, t in templates.items()})
    registry = get_registry()
    for op in ops:
        if op not in chosen or not chosen[op]:
            raise ValueError(f"task 'arithmetic': no question templates for op {op!r}; pass templates="
                             f"{{'{op}': ['What is {{a}} {op} {{b}}?']}}")
        arity = registry.get("op", op).arity
        for t in chosen[op]:
            needed = ("{a}", "{b}")[:arity]
            if not isinstance(t, str) or any(field not in t for field in needed):
                raise ValueError(f"task 'arithmetic': template {t!r} for op {op!r} must be a string containing "
                                 f"{' and '.join(needed)}")
    return {op: chosen[op] for op in ops}


FIBONACCI_TEMPLATES = (
    "Start with {a} and {b}; each next term is the sum of the previous two. What is term {d}?",
    "A sequence begins {a}, {b} and adds the last two terms. Give term {d}.",
    "Term {d} of the Fibonacci-like sequence starting {a}, {b}?",
)


def _programs_ops(programs: Sequence[str]) -> tuple[str, ...]:
    from diffcomp.machine import program

    ops: dict[str, None] = {}
    for name in programs:
        ops.update(dict.fromkeys(program(name).ops))
    return tuple(ops)


def _distinct_rows(high: int, width: int, count: int, g: torch.Generator) -> torch.Tensor:
    """``min(count, high**width)`` distinct rows of ``width`` integers in ``[0, high)``, in random order."""
    space = high**width
    if space > 1 << 62:  # too many to number in 64 bits: draw the digits, drop repeats
        rows = torch.unique(torch.randint(0, high, (2 * count, width), generator=g), dim=0)
        return rows[torch.randperm(len(rows), generator=g)][:count]
    if space <= MAX_ENUMERATED:
        index = torch.randperm(space, generator=g)[:count]
    else:
        index = torch.unique(_randint64(space, 2 * count, g))
        index = index[torch.randperm(len(index), generator=g)][:count]
    return torch.stack([(index // high**k) % high for k in range(width)], dim=1)  # (count, width)


class Fibonacci(Task):
    """A Fibonacci-like sequence through the recursive ``fibonacci`` program (§4.1, Table 1).

    From ``x_0 = a``, ``x_1 = b`` and ``x_{k+1} = x_k + x_{k-1}`` (mod ``base``),
    the answer is ``x_depth``. The question's numbers are ``a``, ``b`` and
    ``depth``, which the parser must place in ``r0``, ``r1`` and ``r2``; the
    answer is read from ``r3``. Recursion depth ``d`` takes ``8 d + 3`` machine
    steps, each one backpropagated through.
    """

    name = "fibonacci"
    programs = ("fibonacci",)
    answer_from = ("registers", 3)

    def __init__(self, *, depth: int = 2, base: int | None = None, bits: int | None = None, examples: int = 10000,
                 onehot: bool = False, validation_fraction: float = VALIDATION_FRACTION,
                 test_fraction: float = TEST_FRACTION, seed: int = 0) -> None:
        super().__init__(seed, validation_fraction=validation_fraction, test_fraction=test_fraction)
        self.modulus = check_modulus(self.name, base, bits)
        self.depth = positive(self.name, "depth", depth)
        if depth >= self.modulus:
            raise ValueError(f"task {self.name!r}: depth {depth} does not fit in numbers mod {self.modulus}")
        self.examples = positive(self.name, "examples", examples, minimum=3)
        self.text = not onehot
        self.ops = _programs_ops(self.programs)
        self.slots, self.answer_length = 3, 1
        self.registers, self.cells, self.max_steps = 4, depth, 8 * depth + 4
        self.layout = torch.randperm(3, generator=generator(seed, 1))  # slots of a, b and the depth
        self._options = {"depth": depth, "base": base, "bits": bits, "examples": examples, "onehot": onehot,
                         "validation_fraction": validation_fraction,
                         "test_fraction": test_fraction, "seed": seed}

    def generate(self) -> dict[str, dict[str, torch.Tensor]]:
        g = generator(self.seed, 2)
        pairs = _distinct_rows(self.modulus, 2, self.examples, g)  # (n, 2): a, b
        a, b = pairs[:, 0], pairs[:, 1]
        x, y = a.clone(), b.clone()
        for _ in range(self.depth - 1):
            x, y = y, (x + y) % self.modulus
        answer = y  # x_depth
        n = len(a)
        numbers = torch.empty(n, 3, dtype=torch.int64)
        numbers[:, self.layout[0]], numbers[:, self.layout[1]], numbers[:, self.layout[2]] = a, b, self.depth
        tensors = {"numbers": numbers, "answer": answer.unsqueeze(1)}
        if self.text:
            which = torch.randint(0, len(FIBONACCI_TEMPLATES), (n,), generator=g).tolist()
            texts = [FIBONACCI_TEMPLATES[w].format(a=p, b=q, d=self.depth)
                     for p, q, w in zip(a.tolist(), b.tolist(), which)]
            tensors["text"] = encode_texts(texts, max(len(t) for t in texts))
        return self.split(tensors)


SORT_TEMPLATES = ('Sort the string "{s}"', 'Sort the characters of "{s}" in alphabetical order', 'sort("{s}") =')


class Sort(Task):
    """Sort a string of characters with the ``insertion_sort`` program (§4.3, Table 2).

    Strings of ``lengths`` (one length, or several) are drawn from
    ``alphabet``; the parser writes one character code per memory cell and the
    zero terminator after them; the answer is the sorted codes read back from
    cells ``0 .. max_length - 1`` (zero after the string). ``test_lengths``
    (default: ``lengths``) may hold lengths never trained, e.g. 16.
    ``width`` (default: the longest length) pads every string and answer to
    that many numbers: training on short strings with a wide answer also
    asks for the zeros after each one.
    """

    name = "sort"
    programs = ("insertion_sort",)
    answer_from = ("memory", 0)
    answer_format = "text"  # the answer's codes are characters: written back as the sorted string

    def __init__(self, *, lengths: int | Sequence[int] = (8, 10, 12), test_lengths: int | Sequence[int] | None = None,
                 alphabet: str = "abcdefghijklmnopqrstuvwxyz", base: int = 128, examples: int = 20000,
                 width: int | None = None, onehot: bool = False, validation_fraction: float = VALIDATION_FRACTION,
                 test_fraction: float = TEST_FRACTION, seed: int = 0) -> None:
        super().__init__(seed, validation_fraction=validation_fraction, test_fraction=test_fraction)
        self.modulus = check_modulus(self.name, base, None)
        self.lengths = _lengths(self.name, "lengths", lengths)
        self.test_lengths = self.lengths if test_lengths is None else _lengths(self.name, "test_lengths", test_lengths)
        if not alphabet or len(set(alphabet)) != len(alphabet) or "\0" in alphabet:
            raise ValueError(f"task {self.name!r}: alphabet must be distinct non-NUL characters, got {alphabet!r}")
        codes = [ord(c) for c in alphabet]
        if max(codes) >= self.modulus:
            raise ValueError(f"task {self.name!r}: character {chr(max(codes))!r} has code {max(codes)}, beyond the "
                             f"numbers mod {self.modulus}; use a larger base or a smaller alphabet")
        self.codes = torch.tensor(sorted(codes))
        self.examples = positive(self.name, "examples", examples, minimum=3)
        self.text = not onehot
        self.ops = _programs_ops(self.programs)
        longest = max(*self.lengths, *self.test_lengths)
        if width is not None:
            positive(self.name, "width", width, minimum=longest)
            longest = width
        self.slots = self.answer_length = longest
        self.registers, self.cells = 6, longest + 1
        self.max_steps = 4 * longest * longest + 7 * longest + 10  # insertion sort's worst case, and a margin
        self._options = {"lengths": list(self.lengths), "test_lengths": list(self.test_lengths), "alphabet": alphabet,
                         "base": base, "examples": examples, "width": width, "onehot": onehot,
                         "validation_fraction": validation_fraction,
                         "test_fraction": test_fraction, "seed": seed}

    def generate(self) -> dict[str, dict[str, torch.Tensor]]:
        g = generator(self.seed, 2)
        train_n, validation_n, test_n = self.split_sizes(self.examples)
        if self.test_lengths == self.lengths:
            strings = self._strings(self.lengths, train_n + validation_n + test_n, g)
            return self.split(self._tensors(strings, g))
        # validation holds the trained lengths (it decides); test, the lengths asked for, none of them seen
        seen = self._strings(self.lengths, train_n + validation_n, g)
        if len(seen) < train_n + validation_n:  # fewer strings exist than asked for: share them alike
            validation_n = max(1, round(len(seen) * validation_n / (train_n + validation_n)))
            train_n = len(seen) - validation_n
        test = self._strings(self.test_lengths, test_n, g, exclude=seen)
        return {"train": self._tensors(seen[:train_n], g), "validation": self._tensors(seen[train_n:], g),
                "test": self._tensors(test, g)}

    def _strings(self, lengths: tuple[int, ...], count: int, g: torch.Generator,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
        """``count`` distinct strings as ``(count, slots)`` codes, zero after each string, none in ``exclude``."""
        out = []
        for i, length in enumerate(lengths):
            share = count // len(lengths) + (1 if i < count % len(lengths) else 0)
            taken = 0 if exclude is None else int(((exclude != 0).sum(1) == length).sum())
            letters = _distinct_rows(len(self.codes), length, share + taken, g)  # alphabet indices
            rows = torch.nn.functional.pad(self.codes[letters], (0, self.slots - length))
            if taken:
                known = {tuple(r) for r in exclude.tolist()}
                rows = rows[torch.tensor([tuple(r) not in known for r in rows.tolist()], dtype=torch.bool)]
            out.append(rows[:share])
        strings = torch.cat(out)
        return strings[torch.randperm(len(strings), generator=g)]

    def _tensors(self, strings: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        # ascending, with the zeros after the string: sort them as if they were the largest value
        nonzero = strings != 0
        answer = torch.where(nonzero, strings, self.modulus).sort(1).values
        answer = torch.where(answer == self.modulus, 0, answer)
        tensors = {"numbers": strings, "answer": answer}
        if self.text:
            which = torch.randint(0, len(SORT_TEMPLATES), (len(strings),), generator=g).tolist()
            texts = [SORT_TEMPLATES[w].format(s="".join(chr(c) for c in row if c)) for row, w in
                     zip(strings.tolist(), which)]
            tensors["text"] = encode_texts(texts, max(len(t) for t in texts))
        return tensors


def _lengths(task: str, what: str, value: int | Sequence[int]) -> tuple[int, ...]:
    values = (value,) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"task {task!r}: {what} must be a positive integer or a list of them, got {value!r}")
    return values


def onehot_version(cls: type[Task]):
    """A factory for ``cls`` with ``onehot=True`` fixed: the same options, less ``onehot``."""
    signature = inspect.signature(cls)
    hints = {k: v for k, v in typing.get_type_hints(cls.__init__).items() if k != "onehot"}

    def factory(**options) -> Task:
        task = cls(onehot=True, **options)
        task.name = f"{cls.name}-onehot"
        return task

    factory.__signature__ = signature.replace(parameters=[p for p in signature.parameters.values()
                                                          if p.name != "onehot"])
    factory.__annotations__ = hints
    factory.__name__ = factory.__qualname__ = f"{cls.__name__}OneHot"
    factory.__doc__ = f"The {cls.name!r} task with only numbers, no text (for the minimal network of §4.1)."
    return factory


@diffcomp.hookimpl
def register_tasks(register):
    for cls in (Arithmetic, Fibonacci, Sort):
        register(cls.name, cls)
        register(f"{cls.name}-onehot", onehot_version(cls))
    register(LibraryQuestions.name, LibraryQuestions)
    register(ComposedQuestions.name, ComposedQuestions)


# -- questions over a library of programs (composable libraries) -------------------------------------------

class Question(typing.NamedTuple):
    """One kind of question over a string: the ``chain`` of programs that answers it, what the question gives
    as an ``argument`` (``None``, ``"letter"``, ``"k"``), where the ``answer`` is (``"memory"``,
    ``"register"``), and its :class:`~diffcomp.plugins.phrasings.Phrasings`."""

    chain: tuple[str, ...]
    argument: str | None
    answer: str
    phrasings: Phrasings


#: question kinds over a string (their phrasings: :data:`diffcomp.plugins.phrasings.PHRASINGS`)
QUESTIONS: dict[str, Question] = {kind: Question(chain, argument, answer, PHRASINGS[kind])
                                  for kind, chain, argument, answer in (
    ("sort", ("insertion_sort",), None, "memory"),
    ("reverse", ("reverse",), None, "memory"),
    ("count", ("count",), "letter", "register"),
    ("max", ("max",), None, "register"),
    ("min", ("min",), None, "register"),
    ("length", ("length",), None, "register"),
    ("nth", ("nth",), "k", "register"),
    ("distinct", ("insertion_sort", "count_distinct"), None, "register"),
    ("kth_smallest", ("insertion_sort", "nth"), "k", "register"),
    ("sort_descending", ("insertion_sort", "reverse"), None, "memory"),
)}
SINGLE_TYPES = ("sort", "reverse", "count", "max", "min", "length", "nth")
CHAIN_TYPES = ("distinct", "kth_smallest", "sort_descending")
#: what a test split asks in its held-out half: new combinations of trained words, or phrasings with new words
HELD_OUT = {"combinations": TEST, "new-words": NEW_WORDS}
#: the groups of one kind, by ``group % 3``: its trained phrasings, held-out combinations, new words
VARIANTS = ("", " (held-out phrasing)", " (new words)")


class LibraryQuestions(Task):
    """Questions about a lowercase string, each answered by a chain of library programs (composable libraries).

    ``types`` (default: this task's) are keys of :data:`QUESTIONS`: e.g.
    ``sort`` (``insertion_sort``), ``count`` (``count``, the letter in
    ``r6``), ``nth`` (``nth``, ``k - 1`` in ``r6`` for "letter k"),
    ``distinct`` (``insertion_sort`` then ``count_distinct``). The string
    goes to memory from cell 0, zero-terminated; the argument (a letter, or
    a position ``k`` from 1 to ``min(length, max_k)``) to ``r6``; the answer
    is the sequence left in memory (``width`` numbers, zeros after it) or
    the number left in ``r0`` followed by zeros. A model is told none of
    this: it learns which programs to run, what to write where and where to
    read from answers alone.

    Each kind has many phrasings (:mod:`diffcomp.plugins.phrasings`), every
    question a surface drawn from the seed (capitals, quotes, final mark,
    prefix). Training asks the trained phrasings only; validation asks half
    its questions in phrasings held out for it, test half in others held out
    for it: new combinations of trained words. ``held_out = "new-words"``
    asks test's held-out half instead in phrasings with words never trained
    ("arrange ... alphabetically"), reported on their own. No test question
    (kind, string, argument) is one of another split's. ``group`` (an item
    key) indexes :attr:`groups`: per kind, its trained phrasings, its
    held-out combinations and its new words (``group // 3`` is the kind);
    ``chain`` the programs' indices in :attr:`programs` (padded with
    ``identity``), for the accuracy of a model's selection, never its input.

    Letters are drawn uniformly from ``alphabet``, so a short string seldom
    repeats one (six of 26 letters: all differ 54% of the time).
    ``repeats`` (default 0) is the chance that a letter after the first
    copies one drawn from those before it: a training stage can ask for
    strings whose letters repeat as often as in long ones, where a chain
    that is right only on distinct letters (sorting, then counting the
    distinct letters, for "how many letters") is wrong.
    """

    name = "mixed"
    default_types = SINGLE_TYPES
    answer_from = ("memory", 0)
    #: ``ask`` writes an answer read from memory as text, one read from a register as its number
    answer_format = "place"

    def __init__(self, *, types: Sequence[str] | None = None, lengths: int | Sequence[int] = (1, 2, 3, 4, 5, 6),
                 width: int | None = None, examples: int = 6000, max_k: int = 6,
                 alphabet: str = "abcdefghijklmnopqrstuvwxyz", base: int = 128, held_out: str = "combinations",
                 repeats: float = 0.0, validation_fraction: float = VALIDATION_FRACTION,
                 test_fraction: float = TEST_FRACTION, seed: int = 0) -> None:
        super().__init__(seed, validation_fraction=validation_fraction, test_fraction=test_fraction)
        self.modulus = check_modulus(self.name, base, None)
        types = tuple(self.default_types if types is None else types)
        unknown = [t for t in types if t not in QUESTIONS]
        if unknown or not types or isinstance(types, str):
            from diffcomp.errors import did_you_mean

            bad = unknown[0] if unknown else types
            raise ValueError(f"task {self.name!r}: unknown question type {bad!r}"
                             f"{did_you_mean(str(bad), QUESTIONS)}; types: {', '.join(QUESTIONS)}")
        if len(set(types)) != len(types):
            raise ValueError(f"task {self.name!r}: types {list(types)} name a type twice")
        if held_out not in HELD_OUT:
            raise ValueError(f"task {self.name!r}: held_out must be one of {', '.join(map(repr, HELD_OUT))} (what "
                             f"test asks in its held-out half: new combinations of trained words, or phrasings "
                             f"with words never trained), got {held_out!r}")
        self.kinds, self.held_out = types, held_out
        # per kind: trained phrasings, held-out combinations, new words; reported one by one
        self.groups = tuple(kind + variant for kind in types for variant in VARIANTS)
        self.group_places = tuple("memory" if QUESTIONS[kind].answer == "memory" else "r0"
                                  for kind in types for _ in VARIANTS)
        self.lengths = _lengths(self.name, "lengths", lengths)
        if not alphabet or len(set(alphabet)) != len(alphabet) or max(map(ord, alphabet)) >= self.modulus:
            raise ValueError(f"task {self.name!r}: alphabet must be distinct characters with codes below {base}")
        self.alphabet = alphabet
        self.max_k = positive(self.name, "max_k", max_k)
        if not is_fraction(repeats):
            raise ValueError(f"task {self.name!r}: repeats must be a number in [0, 1) (the chance that a letter "
                             f"after the first copies an earlier one of its string), got {repeats!r}")
        self.repeats = float(repeats)
        self.examples = positive(self.name, "examples", examples, minimum=2)
        longest = max(self.lengths)
        if width is not None:
            positive(self.name, "width", width, minimum=longest)
            longest = width
        self.text = True
        self.slots = self.answer_length = longest
        chains = [QUESTIONS[t].chain for t in types]
        self.chain_length = max(len(c) for c in chains)
        # a chain shorter than the longest stops early through identity
        stop = ["identity"] if any(len(c) < self.chain_length for c in chains) else []
        self.programs = tuple(dict.fromkeys([p for c in chains for p in c] + stop))
        self.ops = _programs_ops(self.programs)
        self.registers, self.cells = 7, longest + 1
        # per program (one chain step): the slowest program on the longest string
        self.max_steps = max(step_bound(p, max(self.lengths)) for p in self.programs)
        self._options = {"types": list(types), "lengths": list(self.lengths), "width": width, "examples": examples,
                         "max_k": max_k, "alphabet": alphabet, "base": base, "held_out": held_out,
                         "repeats": repeats, "validation_fraction": validation_fraction,
                         "test_fraction": test_fraction, "seed": seed}

    def chain(self, group: str) -> tuple[str, ...]:
        """The programs that answer a question of type ``group``, in order."""
        return QUESTIONS[group].chain

    def generate(self) -> dict[str, dict[str, torch.Tensor]]:
        g = generator(self.seed, 2)
        n, width = self.examples, self.slots
        group = torch.randint(0, len(self.kinds), (n,), generator=g)
        length = torch.tensor(self.lengths)[torch.randint(0, len(self.lengths), (n,), generator=g)]
        letters = torch.randint(0, len(self.alphabet), (n, width), generator=g)
        if self.repeats:  # a stream of its own: with repeats = 0 the questions are those drawn without it
            letters = _with_repeats(letters, self.repeats, generator(self.seed, 4))
        codes = torch.tensor([ord(c) for c in self.alphabet])[letters]
        strings = torch.where(torch.arange(width) < length[:, None], codes, 0)  # (n, width), zero after
        pick = torch.randint(0, 1 << 30, (n, 4), generator=g)
        surface = torch.randint(0, 1 << 30, (n, 4), generator=generator(self.seed, 3))  # quotes, end, prefix, space
        rows = []
        for i in range(n):
            kind = self.kinds[group[i]]
            s = [c for c in strings[i].tolist() if c]
            chain, argument = QUESTIONS[kind].chain, QUESTIONS[kind].argument
            if argument == "letter":  # a letter of the string, or (one time in four) any letter
                arg = s[pick[i, 0] % len(s)] if pick[i, 1] % 4 else ord(self.alphabet[pick[i, 0] % len(self.alphabet)])
                shown = chr(arg)
            elif argument == "k":
                shown = 1 + int(pick[i, 0]) % min(len(s), self.max_k)
                arg = shown - 1
            else:
                arg, shown = 0, None
            rows.append((kind, s, arg, shown, _answer(chain, s, arg, self.modulus)))
        answer = torch.zeros(n, width, dtype=torch.int64)
        for i, (_, _, _, _, a) in enumerate(rows):
            answer[i, : len(a)] = torch.tensor(a, dtype=torch.int64)
        pad = len(self.programs) - 1 if "identity" in self.programs else 0
        chain_ids = torch.tensor([[self.programs.index(p) for p in QUESTIONS[kind].chain] +
                                  [pad] * (self.chain_length - len(QUESTIONS[kind].chain)) for kind, *_ in rows])
        tensors = {"numbers": strings, "answer": answer, "group": 3 * group, "chain": chain_ids,
                   "argument": torch.tensor([r[2] for r in rows]), "index": torch.arange(n)}
        splits = self.split(tensors)
        # no question of another split is asked in test (short strings repeat by chance)
        key = [(kind, tuple(s), arg) for kind, s, arg, _, _ in rows]
        seen = {key[i] for split, part in splits.items() if split != "test" for i in part["index"].tolist()}
        keep = torch.tensor([key[i] not in seen for i in splits["test"]["index"].tolist()], dtype=torch.bool)
        splits["test"] = {k: v[keep] for k, v in splits["test"].items()}
        # what the held-out half of validation and of test asks, and its group (1 + index in VARIANTS)
        held = {"train": None, "validation": (VALIDATION, 1), "test": (HELD_OUT[self.held_out],
                                                                        1 if self.held_out == "combinations" else 2)}
        for split, part in splits.items():
            texts = []
            for j, i in enumerate(part.pop("index").tolist()):
                kind, s, _, shown, _ = rows[i]
                phrasings = QUESTIONS[kind].phrasings
                if held[split] is not None and pick[i, 2] % 2:  # half the questions of validation and test
                    which, variant = held[split]
                    part["group"][j] += variant
                else:
                    which = TRAIN
                options = phrasings.of(which)
                template = vary(options[int(pick[i, 3]) % len(options)], surface[i].tolist())
                texts.append(template.format(s="".join(map(chr, s)), c=shown, k=shown,
                                             o=ordinal(shown) if isinstance(shown, int) else shown))
            part["text"] = encode_texts(texts, max(len(t) for t in texts))
        return splits


def _with_repeats(letters: torch.Tensor, chance: float, g: torch.Generator) -> torch.Tensor:
    """``letters`` (rows of alphabet indices) where each letter after the first copies, with probability
    ``chance``, a letter drawn uniformly from those before it in its row (itself possibly a copy)."""
    out = letters.clone()
    n, width = letters.shape
    copy = torch.rand(n, width, generator=g) < chance
    source = (torch.rand(n, width, generator=g) * torch.arange(width)).long()  # uniform over 0 .. j-1
    for j in range(1, width):
        out[:, j] = torch.where(copy[:, j], out.gather(1, source[:, j:j + 1]).squeeze(1), out[:, j])
    return out


def _answer(chain: Sequence[str], s: list[int], arg: int, modulus: int) -> list[int]:
    """Plain Python for each chain: the answer's numbers (a sequence, or one number)."""
    seq, result = list(s), None
    for name in chain:
        if name == "insertion_sort":
            seq = sorted(seq)
        elif name == "reverse":
            seq = seq[::-1]
        elif name == "count":
            result = seq.count(arg) % modulus
        elif name == "count_distinct":
            result = sum(1 for i, x in enumerate(seq) if i == 0 or x != seq[i - 1])
        elif name == "max":
            result = max(seq, default=0)
        elif name == "min":
            result = min(seq, default=0)
        elif name == "length":
            result = len(seq)
        elif name == "nth":
            result = (seq + [0] * (arg + 1))[arg]
    return seq if result is None else [result]


class ComposedQuestions(LibraryQuestions):
    """:class:`LibraryQuestions` with chains of two programs beside the single ones (sort then count
    distinct, sort then take the k-th, sort then reverse)."""

    name = "composed"
    default_types = SINGLE_TYPES + CHAIN_TYPES

