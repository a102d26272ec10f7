"""Recipes: every shipped one validates; every kind of bad input is one clear message, exit 2, nothing written."""

from __future__ import annotations

import json
import types

import pytest
import torch

import diffcomp
from diffcomp.cli import main
from cli_checks import fails, write
from diffcomp.errors import RecipeError
from diffcomp.recipe import describe_recipes, load_recipe, parse_recipe, shipped_recipes

TINY = """\
name = "tiny"
seed = 3

[task]
name = "arithmetic-onehot"
bits = 4
ops = ["add", "sub"]
examples = 400

[model]
backbone = "minimal"

[computer]
alu = "lookup"
base = 16

[[stages]]
kind = "train"
epochs = 2
lr = 0.05

[[stages]]
kind = "swap"
alu = "circuit"
bits = 8
encoding = "alu"

[[stages]]
kind = "evaluate"
task = { bits = 8, examples = 200 }
"""






@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_validates(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.data["description"], f"shipped recipe {name} needs a description"


def test_recipes_command_lists_them(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name, description in describe_recipes():
        assert name in out and description in out
    assert "quickstart" in out


def test_valid_recipe_fills_defaults(tmp_path):
    recipe = load_recipe(str(write(tmp_path, TINY)))
    train, swap, evaluate = recipe.stages
    assert train["name"] == "0-train" and swap["name"] == "1-swap" and evaluate["split"] == "test"
    assert recipe.data["model"]["parser"] == "pooled"
    assert recipe.data["task"]["name"] == "arithmetic-onehot"


def test_overrides_are_typed_and_checked(tmp_path):
    path = str(write(tmp_path, TINY))
    recipe = load_recipe(path, ["stages.0.epochs=5", "task.ops=[\"add\"]", "seed=9"])
    assert recipe.stages[0]["epochs"] == 5 and recipe.data["task"]["ops"] == ["add"] and recipe.data["seed"] == 9
    with pytest.raises(RecipeError, match=r"recipe.toml with --set stages.0.epochs=many: stages\[0\]: "
                                          r".*epochs must be an integer >= 1, got 'many'") as caught:
        load_recipe(path, ["stages.0.epochs=many"])
    assert str(caught.value).count(path) == 1  # the file named once


@pytest.mark.parametrize("text,fragments", [
    ("seed = 1\n[task\nname='x'\n", ["malformed TOML", "line 2", "column"]),
    (TINY.replace("seed = 3", "sed = 3"), ["unknown key 'sed'", "did you mean 'seed'"]),
    (TINY.replace("lr = 0.05", "lrr = 0.05"), ["stages[0]", "'lrr'", "did you mean 'lr'"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "minimal"\nhiden_size = 3'),
     ["[model]", "'hiden_size'", "did you mean 'hidden_size'"]),
    (TINY.replace("seed = 3", 'seed = "three"'), ["seed must be an integer, got the string 'three'"]),
    (TINY.replace("examples = 400", 'examples = "many"'), ["[task].examples must be an integer"]),
    (TINY.replace('[computer]\nalu = "lookup"\nbase = 16\n', ""), ["missing required key 'computer'"]),
    (TINY.replace("bits = 4\n", "bits = 4\nbase = 16\n", 1), ["[task]: ", "base", "bits"]),
    (TINY.replace('name = "arithmetic-onehot"', 'name = "arithmetc"'),
     ["unknown task 'arithmetc'", "did you mean 'arithmetic'", "registered tasks:"]),
    (TINY.replace('alu = "lookup"', 'alu = "lookp"'), ["unknown ALU 'lookp'", "did you mean 'lookup'", "circuit"]),
    (TINY.replace("base = 16\n", 'base = 16\nstepping = "compild"\n', 1),
     ["[computer].stepping", "'compild' is not one of 'plain', 'fused', 'compiled'", "did you mean 'compiled'"]),
    (TINY.replace('kind = "swap"', 'kind = "swp"'), ["'swp' is not one of train, swap, evaluate",
                                                    "did you mean 'swap'"]),
    (TINY.replace('kind = "train"\nepochs = 2\nlr = 0.05\n', 'kind = "evaluate"\n'),
     ["a swap stage must come after a train stage"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "minimal"\nparser_options = { pol = "last" }'),
     ["[model].parser_options", "unknown key 'pol'", "did you mean 'pool'"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "minimal"\nparser = "span"\nparser_options = { lookback = "one" }'),
     ["[model].parser_options.lookback must be an integer"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ntask = 3"), ["stages[0].task must be a table of task options"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ntask = { bitz = 5 }"),
     ["stages[0].task", "'bitz'", "did you mean 'bits'"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ntask = { bits = 4, base = 16 }"), ["stages[0].task: ", "base", "bits"]),
    (TINY.replace("lr = 0.05", 'lr = 0.05\nparser_options = { pointers = "sample" }'),
     ["stages[0].parser_options", "the minimal network has no parser"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"')
     .replace("lr = 0.05", "lr = 0.05\nparser_options = 3"), ["stages[0].parser_options must be a table"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"')
     .replace("lr = 0.05", 'lr = 0.05\nparser_options = { values = "tokens" }'),
     ["stages[0].parser_options", "cannot change the parser option 'values'", "may change", "pointers, mixed_share"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"')
     .replace("lr = 0.05", 'lr = 0.05\nparser_options = { mixed_share = 0.5 }'),
     ["stages[0].parser_options", "mixed_share applies to pointers = 'sample' only"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"')
     .replace("lr = 0.05", 'lr = 0.05\nparser_options = { blind_choices = true }'),
     ["stages[0].parser_options", "blind_choices", "applies with choices = 'ngrams' only"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"\nparser_options = { choices = "ngrams" }')
     .replace("lr = 0.05", 'lr = 0.05\nparser_options = { blind_choices = "no" }'),
     ["stages[0].parser_options", "blind_choices must be true or false"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"\nparser_options = { choices = "ngrams", '
                  'choice_bag = "often" }'),
     ["do not fit together", "choice_bag must be true, false or 'blind'", "got 'often'"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"\nparser_options = { choices = "ngrams" }')
     .replace("lr = 0.05", 'lr = 0.05\nparser_options = { choice_dropout = 1.0 }'),
     ["stages[0].parser_options", "choice_dropout must be a number in [0, 1)", "got 1.0"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"')
     .replace("lr = 0.05", 'lr = 0.05\nparser_options = { argument_spread = -0.5 }'),
     ["stages[0].parser_options", "argument_spread must be a number in [0, 1)", "got -0.5"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "pooled"')
     .replace("lr = 0.05", 'lr = 0.05\nparser_options = { pointers = "sample" }'),
     ["stages[0].parser_options", "cannot change the parser option 'pointers'", "may change for this parser: none"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"\nparser_options = { argument_scale = -2 }'),
     ["do not fit together", "argument_scale must be a positive number", "got -2"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"')
     .replace("lr = 0.05", 'lr = 0.05\nparser_options = { argument_scale = 4 }'),
     ["stages[0].parser_options", "cannot change the parser option 'argument_scale'"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"\nparser_options = { argument_cap = 0 }'),
     ["do not fit together", "argument_cap must be a positive number", "got 0"]),
    (TINY.replace('backbone = "minimal"', 'backbone = "llama"\nparser = "span"\nparser_options = { spans = ["operands"], '
                  'outside_first = true }'),
     ["do not fit together", "outside_first keeps the argument off the question's first token",
      "applies with outside_spans = true only"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\nrestarts = 0"), ["stages[0]", "restarts must be an integer from 1 to 64"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\nrestarts = 2\nrestart_steps = 0"),
     ["stages[0]", "restart_steps must be an integer >= 1"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ncomputer = 3"), ["stages[0].computer must be a table"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ncomputer = { chain_discont = 1.0 }"),
     ["stages[0].computer", "cannot change the computer option 'chain_discont'",
      "explore, chain_discount, argument_loss", "did you mean 'chain_discount'"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ncomputer = { samples = 2 }"),
     ["stages[0].computer", "cannot change the computer option 'samples'"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ncomputer = { chain_discount = 2 }"),
     ["stages[0].computer.chain_discount", "(0, 1]"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ncomputer = { credit_power = 0 }"),
     ["stages[0].computer.credit_power", "(0, 1]"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ncomputer = { decided_argument_loss = -1.0 }"),
     ["stages[0].computer.decided_argument_loss", "must be non-negative"]),
    (TINY.replace("lr = 0.05", 'lr = 0.05\ncomputer = { explore = "some" }'),
     ["stages[0].computer.explore must be a number"]),
    (TINY.replace("lr = 0.05", "lr = 0.05\ncomputer = { explore = 0.1 }"),  # the ALU computer chooses no chain
     ["stages[0]", "cannot change the computer option 'explore'", "for this computer: none"]),
])
def test_bad_recipes_exit_2_with_one_message(tmp_path, capsys, text, fragments):
    path = write(tmp_path, text)
    out = tmp_path / "run"
    fails(capsys, ["validate", str(path)], str(path), *fragments)
    fails(capsys, ["run", str(path), "--out", str(out)], *fragments)
    assert not out.exists(), "a rejected recipe must write nothing"


def test_override_of_a_key_that_does_not_exist(tmp_path, capsys):
    path = write(tmp_path, TINY)
    fails(capsys, ["validate", str(path), "--set", "task.bse=3"], "--set task.bse", "unknown key 'bse'")
    fails(capsys, ["validate", str(path), "--set", "stages.7.epochs=3"], "has 3 entries")
    fails(capsys, ["validate", str(path), "--set", "novalue"], "expected KEY=VALUE")


def test_unknown_recipe_name(capsys):
    fails(capsys, ["validate", "quickstrat"], "no recipe file or shipped recipe named 'quickstrat'",
          "did you mean 'quickstart'")


def test_swap_to_an_alu_lacking_a_trained_op(tmp_path, capsys, fresh_registry):
    class AddOnly(diffcomp.ALU):
        name = "addonly"

        def __init__(self, bits: int = 8, ops=None):
            super().__init__(diffcomp.encoding("binary", bits=bits), ops)

        @classmethod
        def supported_ops(cls):
            return ("add",)

        def compute(self, op, a, b):  # pragma: no cover - never run: the recipe is refused first
            raise AssertionError

    plugin = types.ModuleType("addonly_plugin")
    plugin.register_alus = diffcomp.hookimpl(lambda register: register("addonly-test-alu", AddOnly))
    fresh_registry.add_plugin(plugin, name="addonly_plugin")
    path = write(tmp_path, TINY.replace('alu = "circuit"', 'alu = "addonly-test-alu"'))
    fails(capsys, ["validate", str(path)], "cannot swap 'lookup' for 'addonly-test-alu'",
          "lacks the trained op(s) sub", "it implements add")


def test_output_folder_holding_a_different_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"name": "something else"}))
    path = write(tmp_path, TINY)
    fails(capsys, ["run", str(path), "--out", str(out)], "already holds a different run")
    fails(capsys, ["run", str(path), "--out", str(out), "--resume"], "already holds a different run")
    assert sorted(p.name for p in out.iterdir()) == ["recipe.json"]
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    fails(capsys, ["run", str(path), "--out", str(stray)], "is not empty and holds no diffcomp run")


def test_variants_are_validated_each(tmp_path):
    text = TINY + '\n[[variants]]\nname = "circuit"\nset = { "computer.alu" = "circuit", "computer.bits" = 4 }\n'
    with pytest.raises(RecipeError, match=r"variant 'circuit'.*\[computer\]: unknown key 'base'"):
        parse_recipe(text, source="v.toml")
    good = TINY + '\n[[variants]]\nname = "circuit"\nset = { "computer" = { alu = "circuit", bits = 4 } }\n'
    recipe = parse_recipe(good, source="v.toml")
    assert recipe.variant("circuit").data["computer"]["alu"] == "circuit"
    assert "base" not in recipe.variant("circuit").data["computer"]  # the circuit has bits, not a base


def test_every_shipped_recipe_decides_on_validation_and_draws_a_curve():
    """Each train stage evaluates validation (what its decisions read) and enough times to draw a curve."""
    from diffcomp.recipe import load_recipe, shipped_recipes

    for name in shipped_recipes():
        recipe = load_recipe(name)
        for variant in [recipe] + [recipe.variant(v["name"]) for v in recipe.variants]:
            for stage in (s for s in variant.stages if s["kind"] == "train"):
                splits = stage.get("eval_splits", ["train", "validation", "test"])
                assert "validation" in splits, (name, stage["name"])
                assert stage.get("eval_every_steps") or stage["epochs"] >= 3, (name, stage["name"])


def test_the_recipe_seed_seeds_the_task_and_the_model():
    """``seed`` (or ``--set seed=N``) draws the data and initialises the model; the task table has no seed of its own."""
    from diffcomp.model.build import build_model, build_task
    from diffcomp.recipe import parse_recipe

    built = {}
    for seed in (3, 4):
        data = parse_recipe(TINY, overrides=[f"seed={seed}"]).data
        assert "seed" not in data["task"]
        options = {k: v for k, v in data["task"].items() if k != "name"}
        task = build_task(data["task"]["name"], options, seed=data["seed"])
        built[seed] = (task, build_model(data["model"], data["computer"], task))
    (a, model_a), (b, model_b) = built[3], built[4]
    assert a.seed == 3 and b.seed == 4
    assert not torch.equal(a.dataset("train").tensors["numbers"], b.dataset("train").tensors["numbers"])
    assert not torch.equal(model_a.head.weights, model_b.head.weights)
    with pytest.raises(RecipeError, match="unknown key 'seed'"):
        parse_recipe(TINY.replace('examples = 400', 'examples = 400\nseed = 5'))
