"""The built-in tasks: arithmetic (§4.2), Fibonacci (§4.1), sorting (§4.3), and their one-hot versions.

Every task is generated deterministically from its ``seed`` and split 70/30
into disjoint train and test sets. A ``-onehot`` name is the same task with
``onehot=True``: no text, only the numbers, for the minimal network of §4.1.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence

import torch

import diffcomp
from diffcomp.model.tasks import Task, check_modulus, generator, positive, split_counts
from diffcomp.model.tokenizers import encode_texts
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
                 onehot: bool = False, test_fraction: float = 0.3, seed: int = 0) -> None:
        super().__init__(seed)
        self.modulus = check_modulus(self.name, base, bits)
        self.operand_range = self.modulus
        if operand_bits is not None:
            positive(self.name, "operand_bits", operand_bits)
            if 1 << operand_bits > self.modulus:
                raise ValueError(f"task {self.name!r}: operand_bits={operand_bits} gives operands up to "
                                 f"{(1 << operand_bits) - 1}, beyond the numbers mod {self.modulus}")
            self.operand_range = 1 << operand_bits
        self.ops = _check_ops(self.name, ops)
        self.templates = _check_templates(self.ops, templates)
        self.examples = positive(self.name, "examples", examples, minimum=2)
        self.distractors = positive(self.name, "distractors", distractors, minimum=0)
        self.text, self.test_fraction = not onehot, test_fraction
        split_counts(2, test_fraction)
        self.slots, self.answer_length = 2 + self.distractors, 1
        self.layout = torch.randperm(self.slots, generator=generator(seed, 1))  # slot of a, of b, distractors
        self._options = {"base": base, "bits": bits, "operand_bits": operand_bits, "ops": list(self.ops),
                         "examples": examples, "distractors": distractors, "onehot": onehot, "seed": seed}

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
        train, _ = split_counts(n, self.test_fraction)
        return {"train": {k: v[:train] for k, v in tensors.items()},
                "test": {k: v[train:] for k, v in tensors.items()}}

    def _draw(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Distinct ``(op, a, b)`` triples in random order: ``min(examples, all there are)`` of them."""
        r, k = self.operand_range, len(self.ops)
        space = k * r * r
        if space <= MAX_ENUMERATED:
            index = torch.randperm(space, generator=g)[: self.examples]
        else:  # sample with replacement, keep the first of each, top up
            index = torch.empty(0, dtype=torch.int64)
            while len(index) < self.examples:
                fresh = _randint64(space, 2 * self.examples, g)
                joined = torch.cat([index, fresh])
                unique, inverse = torch.unique(joined, return_inverse=True)
                first = torch.full((len(unique),), len(joined), dtype=torch.int64).scatter_reduce(
                    0, inverse, torch.arange(len(joined)), "amin")
                index = joined[first.sort().values][: self.examples]
        return index // (r * r), (index // r) % r, index % r


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
    for cls in (Arithmetic,):
        register(cls.name, cls)
        register(f"{cls.name}-onehot", onehot_version(cls))
