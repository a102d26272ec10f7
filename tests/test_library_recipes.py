"""Library recipes and tasks: the 'mixed' and 'composed' tasks, the baseline, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import textwrap

import pytest
import torch

import diffcomp
from cli_checks import fails, write
from diffcomp.model import build_model, build_task
from diffcomp.plugins.tasks import QUESTIONS, _answer
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)

LIBRARY = '["insertion_sort", "reverse", "count", "count_distinct", "max", "min", "length", "sum", "nth", "identity"]'

RECIPE = f"""\
name = "tiny-library"
seed = 0

[task]
name = "composed"
lengths = [1, 2]
width = 3
examples = 60

[model]
backbone = "llama"
hidden_size = 32
layers = 2
heads = 2
kv_heads = 1
parser = "span"
parser_options = {{ values = "embeddings", start = "before", choices = "states" }}

[computer]
alu = "lookup"
base = 128
library = {LIBRARY}
steps = 2
selection = "sample"
readout = "learned"

[[stages]]
kind = "train"
epochs = 1
batch_size = 16
"""






# -- tasks -------------------------------------------------------------------------------------------

def _text(row: torch.Tensor) -> str:
    return bytes(row.tolist()).rstrip(b"\0").decode()


def test_composed_questions_are_over_lowercase_strings_and_their_answers_are_the_chains_run_in_python():
    task = build_task("composed", {"examples": 300, "lengths": [1, 2, 3, 4], "width": 5}, seed=2)
    assert set(task.kinds) == set(QUESTIONS)
    for split in ("train", "test"):
        data = task.dataset(split).tensors
        for i in range(len(data["answer"])):
            text, kind = _text(data["text"][i]), task.kinds[int(data["group"][i]) // 3]
            s = [c for c in data["numbers"][i].tolist() if c]
            string = "".join(map(chr, s))
            assert string == string.lower() and string.isalpha()
            assert sum(text.count(q + string + q) for q in "\"'") == 1  # between double or single quotes
            expected = _answer(task.chain(kind), s, int(data["argument"][i]), 128)
            assert data["answer"][i].tolist() == expected + [0] * (5 - len(expected))
            chain = [task.programs[p] for p in data["chain"][i].tolist() if task.programs[p] != "identity"]
            assert tuple(chain) == task.chain(kind)
    # the answers agree with the machine: run each chain on its string
    data = task.dataset("test").tensors
    for i in range(12):
        memory = data["numbers"][i].tolist() + [0]
        registers = [0] * 6 + [int(data["argument"][i])]
        for name in task.chain(task.kinds[int(data["group"][i]) // 3]):
            result = diffcomp.execute(name, memory=memory, registers=registers)
            memory, registers = result.memory, result.registers[:7]
        kind = task.kinds[int(data["group"][i]) // 3]
        got = memory[:5] if QUESTIONS[kind][2] == "memory" else [registers[0]] + [0] * 4
        assert got == data["answer"][i].tolist()


def test_the_mixed_task_sizes_the_machine_from_its_lengths():
    task = build_task("mixed", {"lengths": [1, 2, 3], "width": 6, "examples": 20})
    assert task.answer_length == 6 and task.cells == 7 and task.chain_length == 1
    assert task.max_steps == 4 * 9 + 7 * 3 + 10  # insertion sort on 3 letters, the slowest
    assert build_task("composed", {"examples": 20}).chain_length == 2


def test_repeats_copies_earlier_letters_and_leaves_everything_else_as_drawn():
    options = {"lengths": [6], "examples": 2000}
    plain = build_task("composed", options, seed=3).dataset("train").tensors
    assert torch.equal(build_task("composed", {**options, "repeats": 0}, seed=3).dataset("train").tensors["text"],
                       plain["text"])
    task = build_task("composed", {**options, "repeats": 0.5}, seed=3)
    data = task.dataset("train").tensors
    assert torch.equal(data["group"], plain["group"])  # the kinds as drawn without it
    strings, drawn = data["numbers"].tolist(), plain["numbers"].tolist()
    repeated = 0
    for s, d in zip(strings, drawn):
        assert s[0] == d[0]  # the first letter is never a copy
        for j in range(1, 6):
            assert s[j] == d[j] or s[j] in s[:j]  # a letter is its own draw or a copy of an earlier one
            repeated += s[j] in s[:j]
    # a copy with probability 0.5, else a uniform draw that may hit one of at most 5 earlier letters
    assert 0.47 < repeated / (5 * len(strings)) < 0.5 + 0.5 * 5 / 26
    for i in range(len(strings)):  # the answers are the chains run on the strings as asked
        kind = task.kinds[int(data["group"][i]) // 3]
        expected = _answer(task.chain(kind), strings[i], int(data["argument"][i]), 128)
        assert data["answer"][i].tolist() == expected + [0] * (6 - len(expected))
        assert "".join(map(chr, strings[i])) in _text(data["text"][i])


@pytest.mark.parametrize("bad", [-0.1, 1, 1.5, True, "often"])
def test_repeats_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match=r"repeats must be a number in \[0, 1\).*got"):
        build_task("composed", {"examples": 20, "repeats": bad})


# -- models ----------------------------------------------------------------------------------------

def _tiny(recipe: str = RECIPE):
    from diffcomp.recipe import parse_recipe

    data = parse_recipe(textwrap.dedent(recipe)).data
    task = build_task(data["task"]["name"], {k: v for k, v in data["task"].items() if k != "name"}, seed=0)
    return build_model(data["model"], data["computer"], task), task


@pytest.mark.slow
def test_a_learned_readout_model_reads_memory_or_r0_and_writes_only_the_argument_register():
    model, task = _tiny()
    assert model.head.places == ("memory", "r0")
    assert model.computer.arguments == (6,) and model.computer.steps == 2
    batch = {k: v[:8] for k, v in task.dataset("train").tensors.items()}
    model.train()
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.selection_correct.shape == (8,)
    assert model.computer.log_q is not None
    assert model.parser.heads["program"].weight.grad.abs().sum() > 0  # the drawn choices learn
    model.eval()
    with torch.no_grad():
        assert model(batch).correct.shape == (8,)


@pytest.mark.slow
@pytest.mark.parametrize("soft", [2, 1])
def test_a_marginal_model_runs_its_chains_soft_and_every_chain_decided_and_trains_the_choice(soft):
    marginal = f'selection = "marginal"\nsamples = 2\nsoft_samples = {soft}'
    model, task = _tiny(RECIPE.replace('selection = "sample"', marginal)
                        .replace('choices = "states"', 'choices = "states", shared_values = true'))
    batch = {k: v[:8] for k, v in task.dataset("train").tensors.items()}
    model.train()
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.selection_correct.shape == (8,) and out.prediction.shape[0] == 8
    assert model.computer.drawn == soft and model.computer.log_q is None  # chains run soft, nothing drawn
    assert model.parser.heads["program"].weight.grad.abs().sum() > 0  # the decided runs train the choice
    assert model.parser.heads["memory"].weight.grad.abs().sum() > 0  # the soft runs train the parse
    assert "registers" not in [n.split(".")[1] for n, p in model.parser.named_parameters()
                               if n.startswith("heads.") and p.grad is not None]  # the argument reads the shared head
    model.eval()
    with torch.no_grad():
        outputs = model.evaluation_outputs(batch)
    assert outputs["decided"].correct.shape == outputs["soft"].correct.shape == (8,)


def test_the_baseline_has_no_computer_and_classifies_every_answer_number():
    model, task = _tiny(RECIPE.replace('alu = "lookup"', 'alu = "lookup"\nkind = "none"')
                        .replace('parser = "span"', 'parser = "attention"')
                        .replace('values = "embeddings", start = "before", choices = "states"', 'values = "states"'))
    assert type(model.computer).__name__ == "NoComputer"
    batch = {k: v[:4] for k, v in task.dataset("train").tensors.items()}
    out = model(batch)
    out.loss.backward()
    assert out.prediction.shape == (4, 3)
    with pytest.raises(ValueError, match="no computer"):
        model.swap_alu("circuit", bits=8)


# -- bad input: one message, exit 2, nothing written ---------------------------------------------------

@pytest.mark.parametrize("change, fragments", [
    (("library = " + LIBRARY, 'library = ["insertion_sort", "revers", "identity"]'),
     ["[computer]", "unknown program 'revers'", "did you mean 'reverse'"]),
    (("library = " + LIBRARY, 'library = ["insertion_sort", "reverse", "max", "identity"]'),
     ["[computer]", "lacks", "count", "add them to [computer] library"]),
    (("steps = 2", "steps = 1"), ["[computer]", "chain 2 programs", "steps = 1", "set steps >= 2"]),
    (("steps = 2", "steps = 9"), ["[computer]", "steps = 9", "at most 8"]),
    (("library = " + LIBRARY, "library = " + LIBRARY.replace('"sum"', '"clashing"')),
     ["[computer]", "'clashing' leaves its result in r6", "take their argument there"]),
    (('selection = "sample"', 'selection = "marginal"\nsamples = 2\nsoft_samples = 3'),
     ["[computer]", "soft_samples = 3 is more than samples = 2", "1 to 2"]),
    (('selection = "sample"', 'selection = "sample"\nsoft_samples = 1'),
     ["[computer]", "soft_samples applies to selection = 'marginal'"]),
    (('selection = "sample"', 'selection = "marginal"\nsoft_samples = 0'), ["[computer]", "soft_samples"]),
    (('selection = "sample"', 'selection = "sample"\nchoice = "chains"'),
     ["[computer]", "choice = 'chains'", "needs selection = 'marginal'"]),
    (('selection = "sample"', 'selection = "marginal"\nchoice = "chain"'), ["[computer].choice = 'chain'", "did you mean 'chains'"]),
])
def test_bad_libraries_exit_2_before_anything_is_written(tmp_path, capsys, clashing, change, fragments):
    text = RECIPE.replace(*change)
    if "clashing" in text:
        text = text.replace('name = "composed"', 'name = "composed"\ntypes = ["sort", "count", "max"]')
    path = write(tmp_path, text)
    out = tmp_path / "run"
    fails(capsys, ["validate", str(path)], *fragments)
    fails(capsys, ["run", str(path), "--out", str(out)], *fragments)
    assert not out.exists(), "a rejected recipe must write nothing"


class Clashing:
    """A plug-in program whose result lands in the argument register of the sequence library."""

    @staticmethod
    @diffcomp.hookimpl
    def register_programs(register):
        register("clashing", "; arguments: none\n; result: r6\n        r6 = READ 0\n        RET\n")


@pytest.fixture
def clashing():
    from diffcomp.registry import get_registry

    if "clashing" not in get_registry().names("program"):
        diffcomp.register_plugin(Clashing)
    yield


def test_the_library_recipes_validate():
    from diffcomp.recipe import load_recipe

    for name in ("library-mixed", "library-compose"):
        recipe = load_recipe(name)
        assert recipe.data["computer"]["readout"] == "learned"
        assert [v["name"] for v in recipe.variants] == ["computer", "baseline"]


def test_per_kind_records_are_plotted(tmp_path):
    import json

    from diffcomp.plots import plot_run

    rows = [{"stage": "train", "epoch": e, "step": 10 * e, "split": "test", "loss": 1.0 / e, "accuracy": 0.5,
             "examples": 4, "selection_accuracy": 0.5,
             "groups": {"sort": {"examples": 2, "accuracy": 0.5, "selection_accuracy": 1.0},
                        "sort (held-out phrasing)": {"examples": 2, "accuracy": 0.0, "selection_accuracy": 0.0}}}
            for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_run(tmp_path)
    assert tmp_path / "plots" / "train-by-kind.png" in written
    assert (tmp_path / "plots" / "train-by-kind.png").stat().st_size > 0


def test_the_per_kind_plot_draws_the_split_evaluated_most_often():
    from diffcomp.plots import plotted_split

    curve = [{"split": "validation", "step": 10}, {"split": "validation", "step": 20}, {"split": "test", "step": 20}]
    assert plotted_split(curve) == "validation"  # test only at the stage's end: one point, no curve
    assert plotted_split(curve + [{"split": "test", "step": 10}]) == "test"  # as often: test
    assert plotted_split([{"split": "validation", "step": 5}]) == "validation"


def test_no_test_question_is_asked_in_training():
    task = build_task("composed", {"examples": 600, "lengths": [1, 2]}, seed=1)

    def questions(split):
        data = task.dataset(split).tensors
        return {(int(g) // 3, tuple(n.tolist()), int(a)) for g, n, a in
                zip(data["group"], data["numbers"], data["argument"])}

    assert questions("test") and not questions("test") & questions("train")


# -- selection: the task's chain, or one that answers alike ---------------------------------------------

def _reference_alike(first, second, place, strings):
    """Whether two chains answer alike at ``place`` on every (string, argument) of ``strings``, in Python: in
    ``r0`` the number :func:`diffcomp.plugins.tasks._answer` gives (chains that end in a program with a result
    register), in memory the sequence the chain's sorts and reversals leave (the other programs keep it)."""
    def memory(chain, s):
        for name in chain:
            s = sorted(s) if name == "insertion_sort" else s[::-1] if name == "reverse" else s
        return s

    for s, arg in strings:
        if place == "r0":
            a, b = _answer(first, s, arg, 128)[:1], _answer(second, s, arg, 128)[:1]
        else:
            a, b = memory(first, s), memory(second, s)
        if a != b:
            return False
    return True


@pytest.mark.parametrize("first, second, place", [
    (("insertion_sort", "max"), ("max",), "r0"),
    (("insertion_sort", "max"), ("max",), "memory"),  # sorted memory is another memory
    (("sum", "nth"), ("nth",), "r0"),
    (("insertion_sort", "nth"), ("nth",), "r0"),
    (("insertion_sort", "min"), ("insertion_sort", "nth"), "r0"),  # right where k = 1 only
    (("count_distinct",), ("insertion_sort", "count_distinct"), "r0"),  # right where no letter repeats apart
    (("insertion_sort", "reverse"), ("reverse",), "memory"),
    (("insertion_sort", "insertion_sort"), ("insertion_sort",), "memory"),
    (("reverse", "count"), ("count",), "r0"),
    (("min",), ("max",), "r0"),
])
def test_chains_answer_alike_exactly_where_the_python_reference_says(first, second, place):
    model, _ = _tiny()
    g = torch.Generator().manual_seed(0)
    strings = []
    for i in range(300):
        n = 1 + i % 6
        letters = torch.randint(97, 97 + (3 if i % 2 else 26), (n,), generator=g).tolist()
        arg = letters[i % n] if i % 3 else i % n  # a letter of the string, or a position in it
        strings.append((letters, arg))
    expected = _reference_alike(first, second, place, strings)
    assert model.computer.answers_alike(first, second, place) is expected
    assert model.computer.answers_alike(second, first, place) is expected


def test_selection_counts_a_chain_that_answers_alike_where_the_question_reads_it():
    from diffcomp.model.augmented import _same_chain

    model, task = _tiny()
    programs, task_programs = model.computer.programs, task.programs
    ids = {name: programs.index(name) for name in programs}
    tid = {name: task_programs.index(name) for name in task_programs}
    chosen = torch.tensor([[ids["insertion_sort"], ids["max"]], [ids["max"], ids["identity"]],
                           [ids["count_distinct"], ids["identity"]], [ids["max"], ids["identity"]]])
    chain = torch.tensor([[tid["max"], tid["identity"]], [tid["insertion_sort"], tid["identity"]],
                          [tid["insertion_sort"], tid["count_distinct"]], [tid["max"], tid["identity"]]])
    exact = _same_chain(chosen, chain, programs, task_programs)
    assert exact.tolist() == [False, False, False, True]
    # (sort, max) sorts memory as sort does: alike there too
    assert model.computer.answers_alike(("insertion_sort", "max"), ("insertion_sort",), "memory")
    alike = _same_chain(chosen, chain, programs, task_programs, places=["r0", "memory", "r0", "r0"],
                        alike=model.computer.answers_alike)
    assert alike.tolist() == [True, False, False, True]  # (sort, max) answers max in r0; max leaves no sort
    places = dict(zip(task.groups, task.group_places))
    assert places["sort"] == places["reverse (held-out phrasing)"] == "memory" and places["distinct"] == "r0"
    with pytest.raises(ValueError, match="in memory or in one of r0"):
        model.computer.answers_alike(("max",), ("min",), "r9")


def test_answers_alike_runs_each_chain_over_the_probes_once(monkeypatch):
    model, _ = _tiny()
    computer = model.computer
    runs = []
    original = type(computer)._run_probes
    monkeypatch.setattr(type(computer), "_run_probes", lambda self, chain: runs.append(chain) or original(self, chain))
    answers = [computer.answers_alike(("max",), other, "r0") for other in (("insertion_sort", "max"), ("min",),
                                                                           ("length",))]
    assert answers == [True, False, False]
    assert sorted(runs) == sorted([("max",), ("insertion_sort", "max"), ("min",), ("length",)])  # max once
    assert computer.answers_alike(("min",), ("length",), "r0") is False and len(runs) == 4  # both cached


@pytest.mark.slow
def test_evaluating_more_often_leaves_the_training_as_it_was(tmp_path):
    """A recipe's curve points are reporting only: a marginal model whose training draws chains at random (and
    searches the argument) ends on the same weights and random states, bit for bit, evaluated after every step or
    only at the end."""
    from safetensors.torch import load_file

    from diffcomp.recipe import parse_recipe
    from diffcomp.run import run_recipe

    marginal = ('selection = "marginal"\nsamples = 4\nsoft_samples = 1\nargument_search = true\nexplore = 0.1\n'
                'max_steps = 40')
    text = (RECIPE.replace('selection = "sample"', marginal)
            .replace('choices = "states"', 'choices = "states", shared_values = true'))
    weights = []
    for name, extra in (("often", "eval_every_steps = 1\neval_splits = [\"validation\", \"test\"]\n"), ("once", "")):
        run_recipe(parse_recipe(textwrap.dedent(text) + extra, source=f"{name}.toml"), tmp_path / name,
                   progress=False)
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        evaluations = sum('"split": "validation"' in r for r in rows)
        assert evaluations > 1 if name == "often" else evaluations == 1
        weights.append(load_file(str(next((tmp_path / name / "checkpoints").glob("*.safetensors")))))
    kept = [k for k in weights[0] if k.startswith(("model/", "rng/"))]  # the weights, and where the RNGs stood
    assert any(k.startswith("model/") for k in kept) and any(k.startswith("rng/") for k in kept)
    same = [torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
            for a, b in ((weights[0][k], weights[1][k]) for k in kept)]  # (Python's state holds a NaN: no gauss)
    assert all(same)


@pytest.mark.slow
def test_the_evaluation_batch_leaves_the_decided_figures_as_they_are(tmp_path):
    """``eval_batch_size`` (and an evaluate stage's ``batch_size``) only groups the questions: the decided runs are
    exact per question, so accuracy, loss and every kind's figures are the same at any batch size."""
    from diffcomp.train import TrainConfig, Trainer

    model, _ = _tiny()
    task = build_task("composed", {"examples": 600, "lengths": [1, 2, 3], "width": 6}, seed=1)
    model.adapt_to_task(task)
    results = []
    for size in (5, 64):
        trainer = Trainer(model, task, TrainConfig(batch_size=8, eval_batch_size=size, progress=False),
                          out_dir=tmp_path, stage="eval")
        results.append(trainer.evaluate("validation"))
    small, large = results
    assert small["examples"] == large["examples"] > 64  # more than one batch of the larger size
    decided = {k: v for k, v in small.items() if "soft" not in k}
    assert decided == {k: large[k] for k in decided}
    assert small["soft_accuracy"] == pytest.approx(large["soft_accuracy"], abs=0.05)


def test_a_bad_evaluation_batch_is_refused_before_anything_runs():
    from diffcomp.recipe import RecipeError, parse_recipe

    for bad, message in (("batch_size = 0", "at least one question"), ("batch_size = 2.5", "must be an integer")):
        with pytest.raises(RecipeError, match=message):
            parse_recipe(textwrap.dedent(RECIPE) + f'\n[[stages]]\nkind = "evaluate"\nname = "e"\n{bad}\n')
