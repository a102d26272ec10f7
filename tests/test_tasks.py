"""Tasks: deterministic from a seed, disjoint 70/15/15 train/validation/test splits, answers equal to the classical ops."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import DataLoader

import diffcomp
from diffcomp.model import Task, build_task, decode_texts
from diffcomp.registry import lookup, names


def triples(tensors):
    """(op, a, b) of each item, from the task's slot layout."""
    return {(int(o), int(n[0]), int(n[1])) for o, n in zip(tensors["op"], tensors["numbers"])}


def test_registered():
    assert {"arithmetic", "arithmetic-onehot", "fibonacci", "fibonacci-onehot", "sort", "sort-onehot"} <= set(names("task"))


def test_deterministic_for_a_seed():
    a = build_task("arithmetic", {"base": 32, "examples": 500}, seed=3)
    b = build_task("arithmetic", {"base": 32, "examples": 500}, seed=3)
    c = build_task("arithmetic", {"base": 32, "examples": 500}, seed=4)
    for split in ("train", "validation", "test"):
        for key, value in a.dataset(split).tensors.items():
            assert torch.equal(value, b.dataset(split).tensors[key]), key
    assert not torch.equal(a.dataset("train").tensors["numbers"], c.dataset("train").tensors["numbers"])


SPLITS = ("train", "validation", "test")


def test_splits_are_70_15_15_and_disjoint():
    task = build_task("arithmetic", {"base": 32, "examples": 1000}, seed=0)
    sets = {split: triples(task.dataset(split).tensors) for split in SPLITS}
    assert [len(task.dataset(split)) for split in SPLITS] == [700, 150, 150]
    assert [len(sets[split]) for split in SPLITS] == [700, 150, 150]  # no question asked twice in a split
    assert len(sets["train"] | sets["validation"] | sets["test"]) == 1000  # nor in two


@pytest.mark.parametrize("name, options", [
    ("arithmetic", {"base": 16, "examples": 300}),
    ("fibonacci-onehot", {"depth": 2, "base": 32, "examples": 300}),
    ("sort", {"lengths": [2, 3], "examples": 300}),
    ("sort-onehot", {"lengths": [2], "test_lengths": [2, 3], "examples": 300}),
])
def test_every_task_takes_its_split_fractions(name, options):
    task = build_task(name, {**options, "validation_fraction": 0.2, "test_fraction": 0.1}, seed=0)
    sizes = [len(task.dataset(split)) for split in SPLITS]
    assert sizes == [210, 60, 30], sizes
    rows = [tuple(r) for split in SPLITS for r in torch.cat(
        [task.dataset(split).tensors["numbers"], task.dataset(split).tensors.get("op", torch.zeros(
            len(task.dataset(split)), dtype=torch.int64)).unsqueeze(1)], 1).tolist()]
    assert len(set(rows)) == len(rows)  # distinct across all three splits


@pytest.mark.parametrize("options, message", [
    ({"validation_fraction": 0}, "validation_fraction must be a number strictly between 0 and 1"),
    ({"test_fraction": 1.0}, "test_fraction must be a number strictly between 0 and 1"),
    ({"validation_fraction": "0.1"}, "validation_fraction must be a number"),
    ({"validation_fraction": 0.5, "test_fraction": 0.5}, "must be below 1 so that some examples remain"),
])
def test_bad_split_fractions_are_clear_errors(options, message):
    for name in ("arithmetic", "fibonacci", "sort"):
        with pytest.raises(ValueError, match=re.escape(message)):
            build_task(name, options, seed=0)


def test_a_task_must_yield_three_splits():
    class TwoSplits(Task):
        name = "two-splits"

        def generate(self):
            x = {"numbers": torch.zeros(4, 1, dtype=torch.int64), "answer": torch.zeros(4, 1, dtype=torch.int64)}
            return {"train": x, "test": x}

    with pytest.raises(ValueError, match="returned the splits \\['test', 'train'\\]; a task yields train, validation, test"):
        TwoSplits(0).dataset("train")
    with pytest.raises(ValueError, match="split must be one of 'train', 'validation', 'test'"):
        TwoSplits(0).dataset("valid")


def test_the_task_base_splits_by_its_fractions():
    from diffcomp.model.tasks import split_counts

    class Counting(Task):
        name = "counting"

        def generate(self):
            n = torch.arange(20).unsqueeze(1)
            return self.split({"numbers": n, "answer": n})

    task = Counting(0, validation_fraction=0.25, test_fraction=0.25)
    assert [task.dataset(s).tensors["numbers"].flatten().tolist() for s in SPLITS] == [
        list(range(10)), list(range(10, 15)), list(range(15, 20))]
    assert split_counts(3) == (1, 1, 1) and split_counts(100) == (70, 15, 15)
    assert split_counts(4, 0.9 - 1e-9, 0.05) == (1, 2, 1)  # every split keeps an example
    with pytest.raises(ValueError, match="at least 3 examples"):
        split_counts(2)


def test_answers_match_the_classical_ops():
    task = build_task("arithmetic", {"base": 16, "ops": ["add", "sub", "mul", "div", "mod", "lt"]}, seed=1)
    items = task.dataset("train").tensors
    a_slot, b_slot = task.layout[0], task.layout[1]
    for op, numbers, answer in zip(items["op"], items["numbers"], items["answer"]):
        a, b = int(numbers[a_slot]), int(numbers[b_slot])
        assert int(answer[0]) == lookup("op", task.ops[int(op)])(a, b, 16)


def test_small_spaces_are_enumerated_in_full():
    task = build_task("arithmetic", {"base": 8, "ops": ["add", "mul"]}, seed=0)
    total = sum(len(task.dataset(split)) for split in SPLITS)
    assert total == 2 * 8 * 8


def test_text_states_the_question():
    task = build_task("arithmetic", {"base": 128, "examples": 200}, seed=0)
    items = task.dataset("test").tensors
    texts = decode_texts(items["text"])
    for text, op, numbers in zip(texts, items["op"], items["numbers"]):
        a, b = int(numbers[task.layout[0]]), int(numbers[task.layout[1]])
        assert [int(x) for x in re.findall(r"\d+", text)] in ([a, b], [b, a]), text
        words = {"add": ("Add", "plus", "sum", "+"), "sub": ("Subtract", "minus", "away", "-"),
                 "mul": ("Multiply", "times", "product", "*"), "div": ("Divide", "divided", "go into", "/")}
        assert any(w in text for w in words[task.ops[int(op)]]), text


def test_onehot_version_has_the_same_numbers_and_no_text():
    text = build_task("arithmetic", {"base": 16, "examples": 300}, seed=2)
    onehot = build_task("arithmetic-onehot", {"base": 16, "examples": 300}, seed=2)
    assert not onehot.text and "text" not in onehot.dataset("train").tensors
    assert onehot.name == "arithmetic-onehot"
    for key in ("numbers", "op", "answer"):
        assert torch.equal(text.dataset("train").tensors[key], onehot.dataset("train").tensors[key])


def test_items_collate_to_fixed_shapes():
    task = build_task("arithmetic", {"base": 128, "examples": 100, "distractors": 2}, seed=0)
    batch = next(iter(DataLoader(task.dataset("train"), batch_size=8)))
    assert batch["numbers"].shape == (8, 4) and batch["op"].shape == (8,) and batch["answer"].shape == (8, 1)
    assert batch["text"].dtype == torch.uint8 and batch["text"].shape[0] == 8


def test_distractor_layout_is_a_seeded_permutation():
    task = build_task("arithmetic-onehot", {"base": 16, "distractors": 3}, seed=5)
    assert sorted(task.layout.tolist()) == [0, 1, 2, 3, 4]
    items = task.dataset("train").tensors
    a, b = items["numbers"][:, task.layout[0]], items["numbers"][:, task.layout[1]]
    add = items["op"] == task.ops.index("add")
    assert torch.equal(items["answer"][add, 0], (a[add] + b[add]) % 16)


def test_wide_operands_are_sampled_distinct():
    task = build_task("arithmetic-onehot", {"bits": 32, "operand_bits": 16, "examples": 2000}, seed=0)
    assert task.modulus == 1 << 32
    items = {k: torch.cat([task.dataset(s).tensors[k] for s in SPLITS]) for k in ("numbers", "op")}
    assert len(triples(items)) == 2000
    assert int(items["numbers"].max()) < 1 << 16
    mul = task.dataset("test").tensors
    chosen = mul["op"] == task.ops.index("mul")
    a, b = mul["numbers"][chosen, task.layout[0]], mul["numbers"][chosen, task.layout[1]]
    assert torch.equal(mul["answer"][chosen, 0], a * b)  # 16-bit products do not wrap at 32 bits


@pytest.mark.parametrize("options, message", [
    ({"ops": ["add", "pow"]}, "unknown op 'pow'"),
    ({"ops": "add"}, "non-empty list"),
    ({"base": 16, "bits": 8}, "not both"),
    ({"base": 16, "operand_bits": 5}, "beyond the numbers mod 16"),
    ({"examples": 2}, "examples must be an integer of at least 3"),
    ({"templates": {"add": ["Add {a}"]}}, "must be a string containing {a} and {b}"),
    ({"test_fraction": 1.5}, "test_fraction"),
    ({"colour": "red"}, "has no option 'colour'"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_task("arithmetic", options, seed=0)


def test_a_plugin_op_without_templates_needs_them():
    from diffcomp.ops import Op
    from diffcomp.registry import register_plugin

    class Plugin:
        @staticmethod
        def register_ops(register):
            register(Op("avg_tasks_test", lambda a, b: (a + b) // 2))

    import diffcomp

    Plugin.register_ops = diffcomp.hookimpl(Plugin.register_ops)
    register_plugin(Plugin, name="test-tasks-avg")
    with pytest.raises(ValueError, match="no question templates for op 'avg_tasks_test'"):
        build_task("arithmetic", {"ops": ["avg_tasks_test"]}, seed=0)
    task = build_task("arithmetic", {"base": 16, "ops": ["avg_tasks_test"],
                                     "templates": {"avg_tasks_test": ["Mean of {a} and {b}"]}}, seed=0)
    assert decode_texts(task.dataset("train").tensors["text"][:1])[0].startswith("Mean of")


def test_unknown_split():
    task = build_task("arithmetic", {"base": 8}, seed=0)
    assert isinstance(task, Task)
    with pytest.raises(ValueError, match="split must be one of"):
        task.dataset("valid")


def test_fibonacci_answers_match_the_program():
    task = build_task("fibonacci", {"depth": 3, "base": 32, "examples": 40}, seed=0)
    items = task.dataset("train").tensors
    assert task.programs == ("fibonacci",) and set(task.ops) <= {"add", "inc", "dec"}
    for numbers, answer in zip(items["numbers"][:10], items["answer"][:10]):
        a, b, d = (int(numbers[task.layout[k]]) for k in range(3))
        result = diffcomp.execute("fibonacci", registers=[a, b, d], cells=task.cells, base=32,
                                  max_steps=task.max_steps)
        assert d == 3 and result.halted and result.registers[3] == int(answer[0])
    assert "term 3" in decode_texts(items["text"][:1])[0].lower()


def test_fibonacci_splits_are_disjoint_pairs():
    task = build_task("fibonacci-onehot", {"depth": 2, "base": 16, "examples": 200}, seed=1)
    pairs = {split: {tuple(n.tolist()) for n in task.dataset(split).tensors["numbers"]} for split in SPLITS}
    assert [len(pairs[split]) for split in SPLITS] == [140, 30, 30]
    assert len(pairs["train"] | pairs["validation"] | pairs["test"]) == 200


def test_sort_answers_are_sorted_strings():
    task = build_task("sort", {"lengths": [4, 6], "examples": 100}, seed=0)
    items = task.dataset("test").tensors
    for text, numbers, answer in zip(decode_texts(items["text"]), items["numbers"], items["answer"]):
        string = re.search(r'"([a-z]+)"', text).group(1)
        assert len(string) in (4, 6) and [chr(c) for c in numbers.tolist() if c] == list(string)
        assert [c for c in answer.tolist()] == sorted(map(ord, string)) + [0] * (6 - len(string))
        result = diffcomp.execute("insertion_sort", memory=numbers.tolist() + [0], base=128)
        assert result.memory[:6] == answer.tolist()


def test_sort_with_fewer_strings_than_examples_keeps_a_validation_split():
    task = build_task("sort-onehot", {"lengths": [2], "test_lengths": [3], "examples": 300, "alphabet": "abcdefgh"},
                      seed=0)
    assert [len(task.dataset(split)) for split in SPLITS] == [53, 11, 45]  # 64 strings of 2 letters; 15% of 300 to test


def test_sort_test_split_can_use_lengths_never_trained():
    task = build_task("sort-onehot", {"lengths": [3], "test_lengths": [5], "examples": 50, "alphabet": "abc"},
                      seed=0)
    train, test = task.dataset("train").tensors["numbers"], task.dataset("test").tensors["numbers"]
    validation = task.dataset("validation").tensors["numbers"]  # decisions read the lengths trained
    assert ((train != 0).sum(1) == 3).all() and ((test != 0).sum(1) == 5).all()
    assert ((validation != 0).sum(1) == 3).all() and len(validation) > 0
    assert not {tuple(r) for r in train.tolist()} & {tuple(r) for r in validation.tolist()}
    assert task.answer_length == 5 and task.cells == 6 and train.shape[1] == 5


@pytest.mark.parametrize("name, options, message", [
    ("fibonacci", {"depth": 0}, "depth must be an integer of at least 1"),
    ("fibonacci", {"depth": 20, "base": 16}, "does not fit"),
    ("sort", {"lengths": []}, "lengths must be a positive integer"),
    ("sort", {"alphabet": "aa"}, "distinct"),
    ("sort", {"base": 64}, "beyond the numbers mod 64"),
])
def test_machine_task_bad_options(name, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_task(name, options, seed=0)


def test_arithmetic_on_32_bit_numbers_samples_distinct_questions():
    from diffcomp.model.build import build_task

    task = build_task("arithmetic-onehot", {"bits": 32, "examples": 3000, "ops": ["add", "sub", "mul", "div"]}, seed=5)
    items = [task.dataset(split)[i] for split in SPLITS for i in range(len(task.dataset(split)))]
    assert len(items) == 3000
    triples = {(int(x["op"]), *map(int, x["numbers"])) for x in items}
    assert len(triples) == 3000  # distinct, so no test question is asked in training
    python = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
              "div": lambda a, b: a // b if b else 0}
    for x in items[:500]:
        a, b = int(x["numbers"][task.layout[0]]), int(x["numbers"][task.layout[1]])
        assert int(x["answer"][0]) == python[task.ops[int(x["op"])]](a, b) % 2**32
    assert max(max(map(int, x["numbers"])) for x in items) > 2**31  # the whole 32-bit range is drawn


def test_sort_width_pads_strings_and_answers_with_zeros():
    task = build_task("sort", {"lengths": [2, 3], "width": 6, "examples": 40, "alphabet": "abcd"}, seed=0)
    assert task.slots == task.answer_length == 6 and task.cells == 7
    data = task.generate()["train"]
    assert data["numbers"].shape[1] == data["answer"].shape[1] == 6
    lengths = (data["numbers"] != 0).sum(1)
    assert set(lengths.tolist()) == {2, 3}
    for row, answer, n in zip(data["numbers"].tolist(), data["answer"].tolist(), lengths.tolist()):
        assert answer == sorted(row[:n]) + [0] * (6 - n)
    with pytest.raises(ValueError, match="width must be an integer of at least 3"):
        build_task("sort", {"lengths": [2, 3], "width": 2}, seed=0)


def test_sort_strings_too_many_to_number_in_64_bits():
    task = build_task("sort", {"lengths": [16], "examples": 50}, seed=0)  # 26**16 strings
    data = task.generate()
    strings = torch.cat([data[split]["numbers"] for split in SPLITS])
    assert strings.shape == (50, 16) and len(torch.unique(strings, dim=0)) == 50
    assert ((strings >= ord("a")) & (strings <= ord("z"))).all()
    assert torch.equal(data["train"]["answer"], data["train"]["numbers"].sort(1).values)
