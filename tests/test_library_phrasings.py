"""How the library tasks ask: phrasings per kind, their surfaces, the held-out combinations and new words."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from cli_checks import fails, write
from diffcomp.model import build_task
from diffcomp.plugins.phrasings import PHRASINGS, Phrasings, vary, words
from diffcomp.plugins.tasks import CHAIN_TYPES, QUESTIONS, SINGLE_TYPES

#: every surface :func:`vary` can draw: quotes, ending, prefix and capital, doubled space (at each of 3 places)
SURFACES = list(itertools.product(range(2), range(3), range(8), (1, 0, 8, 16)))
FIELDS = {None: set(), "letter": {"c"}, "k": {"k", "o"}}


def _text(row: torch.Tensor) -> str:
    return bytes(row.tolist()).rstrip(b"\0").decode()


def _render(template: str, s: str, shown) -> str:
    from diffcomp.plugins.phrasings import ordinal

    return template.format(s=s, c=shown, k=shown, o=ordinal(shown) if isinstance(shown, int) else shown)


def _plain(text: str) -> str:
    """A question with its surface undone: lowercase, no prefix, no final mark, double quotes, single spaces."""
    text = re.sub(r" +", " ", text.lower())
    text = text.removeprefix("q: ").removeprefix("please ").rstrip("?.")
    return re.sub(r"'([a-z]+)'", r'"\1"', text)


def _all(p: Phrasings) -> tuple[str, ...]:
    return p.train + p.validation + p.test + p.new_words


def test_every_kind_has_many_trained_phrasings_and_three_disjoint_sets():
    assert set(PHRASINGS) == set(QUESTIONS) == set(SINGLE_TYPES + CHAIN_TYPES)
    for kind, p in PHRASINGS.items():
        assert 8 <= len(p.train) <= 20 and len(p.validation) >= 4 and len(p.test) >= 4 and p.new_words, kind
        sets = [set(p.train), set(p.validation), set(p.test), set(p.new_words)]
        assert sum(map(len, sets)) == len(set().union(*sets)), f"{kind}: a phrasing in two sets"
        assert len(p.train) == len(set(p.train)), kind


def test_no_phrasing_is_shared_between_two_kinds():
    owner: dict[str, str] = {}
    for kind, p in PHRASINGS.items():
        for phrasing in _all(p):
            assert owner.setdefault(_plain(phrasing), kind) == kind, (phrasing, kind, owner[_plain(phrasing)])


def test_every_word_of_a_held_out_combination_is_trained_for_its_kind():
    for kind, p in PHRASINGS.items():
        trained = set().union(*map(words, p.train))
        for phrasing in p.validation + p.test:
            assert words(phrasing) <= trained, f"{kind}: {phrasing!r} brings {words(phrasing) - trained}"


def test_every_new_words_phrasing_has_a_word_no_training_phrasing_has():
    trained = set().union(*(words(t) for p in PHRASINGS.values() for t in p.train))
    for kind, p in PHRASINGS.items():
        for phrasing in p.new_words:
            assert words(phrasing) - trained, f"{kind}: {phrasing!r} has no new word"


def test_a_position_is_trained_both_as_a_digit_and_as_an_ordinal():
    for kind, question in QUESTIONS.items():
        if question.argument == "k":
            train = question.phrasings.train
            assert any("{k}" in t for t in train) and any("{o}" in t for t in train), kind


@pytest.mark.parametrize("kind", list(PHRASINGS))
def test_every_phrasing_renders_on_every_surface_with_the_string_once_between_matching_quotes(kind):
    argument = QUESTIONS[kind].argument
    for template in _all(PHRASINGS[kind]):
        fields = set(re.findall(r"\{(\w)\}", template))
        assert "s" in fields and fields - {"s"} <= FIELDS[argument] and (argument is None or fields - {"s"}), \
            (kind, template)
        for s, shown in (("a", "a" if argument == "letter" else 1), ("qzzq", "z" if argument == "letter" else 4)):
            shown = shown if argument else None
            for surface in SURFACES:
                text = _render(vary(template, surface), s, shown)
                assert "{" not in text and "}" not in text
                quoted = re.findall(r"""(["'])([a-z]*)\1""", text)
                assert len(quoted) == 1 and quoted[0][1] == s, text
                assert _plain(text) == _plain(_render(template, s, shown))  # only the surface changed


def test_the_surfaces_vary():
    texts = {vary('what is the largest letter in "{s}"', surface) for surface in SURFACES}
    assert {'what is the largest letter in "{s}"?', "What is the largest letter in '{s}'",
            'Q: What is the largest letter in "{s}".', 'what is the  largest letter in "{s}"?'} <= texts
    assert 'Please sort "{s}"' in {vary('sort "{s}"', surface) for surface in SURFACES}
    assert not any(t.lower().startswith("please") for t in texts)  # a question is not a command
    assert {vary('max("{s}") =', surface) for surface in SURFACES} >= {'max("{s}") =', "Q: Max('{s}') ="}
    assert all(t.endswith("=") for t in (vary('max("{s}") =', surface) for surface in SURFACES))


def _asked(task, split: str):
    """Per question of ``split``: its group's suffix (which phrasings) and the set it was phrased from."""
    data = task.dataset(split).tensors
    for text, group, numbers, argument in zip(data["text"], data["group"].tolist(), data["numbers"],
                                              data["argument"].tolist()):
        kind = task.kinds[group // 3]
        s = "".join(chr(c) for c in numbers.tolist() if c)
        kind_argument = QUESTIONS[kind].argument
        shown = chr(argument) if kind_argument == "letter" else argument + 1 if kind_argument == "k" else None
        p = PHRASINGS[kind]
        found = [name for name in ("train", "validation", "test", "new_words")
                 if _plain(_text(text)) in {_plain(_render(t, s, shown)) for t in getattr(p, name)}]
        yield task.groups[group], found


def test_each_split_asks_its_own_phrasings_and_reports_the_held_out_ones_apart():
    task = build_task("composed", {"examples": 900}, seed=3)
    expected = {"train": {"": "train"},
                "validation": {"": "train", " (held-out phrasing)": "validation"},
                "test": {"": "train", " (held-out phrasing)": "test"}}
    for split, allowed in expected.items():
        seen = set()
        for group, found in _asked(task, split):
            suffix = group[group.index(" "):] if " (" in group else ""
            assert suffix in allowed and found == [allowed[suffix]], (split, group, found)
            seen.add(suffix)
        assert seen == set(allowed), split  # validation and test carry held-out groups


def test_new_words_mode_asks_the_held_out_half_of_test_in_new_words_and_leaves_the_rest_alone():
    options = {"examples": 600, "types": ["sort", "nth", "count"]}
    plain, new = build_task("mixed", options, seed=1), build_task("mixed", {**options, "held_out": "new-words"}, seed=1)
    assert [g for g, _ in _asked(new, "test") if "new words" in g]
    for group, found in _asked(new, "test"):
        assert found == (["new_words"] if group.endswith("(new words)") else ["train"]), (group, found)
    for split in ("train", "validation"):
        assert torch.equal(plain.dataset(split).tensors["text"], new.dataset(split).tensors["text"])
    a, b = plain.dataset("test").tensors, new.dataset("test").tensors
    assert torch.equal(a["numbers"], b["numbers"]) and torch.equal(a["group"] // 3, b["group"] // 3)


def test_generation_is_deterministic_per_seed():
    one, two, other = (build_task("composed", {"examples": 200}, seed=s) for s in (5, 5, 6))
    for split in ("train", "validation", "test"):
        a, b = one.dataset(split).tensors, two.dataset(split).tensors
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(one.dataset("train").tensors["numbers"], other.dataset("train").tensors["numbers"])


def test_questions_stay_short():
    for lengths, limit in (([1, 2, 3, 4, 5, 6], 80), ([16], 90)):
        task = build_task("composed", {"examples": 400, "lengths": lengths}, seed=0)
        for split in ("train", "validation", "test"):
            assert task.dataset(split).tensors["text"].shape[1] <= limit


@pytest.mark.parametrize("options, fragments", [
    ({"held_out": "new_words"}, ["held_out must be one of", "'combinations'", "'new-words'", "'new_words'"]),
    ({"types": ["sort", "sort"]}, ["name a type twice"]),
    ({"types": ["sortt"]}, ["unknown question type 'sortt'", "did you mean 'sort'"]),
])
def test_bad_options_name_what_is_valid(options, fragments):
    with pytest.raises(ValueError) as info:
        build_task("mixed", {"examples": 20, **options})
    for fragment in fragments:
        assert fragment in str(info.value)


def test_a_bad_held_out_in_a_recipe_exits_2_before_anything_is_written(tmp_path, capsys):
    from test_library_recipes import RECIPE

    path = write(tmp_path, RECIPE.replace('name = "composed"', 'name = "composed"\nheld_out = "new words"'))
    out = tmp_path / "run"
    fails(capsys, ["validate", str(path)], "[task]", "held_out must be one of", "'new-words'")
    fails(capsys, ["run", str(path), "--out", str(out)], "held_out must be one of")
    assert not out.exists()
