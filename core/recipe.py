"""Recipes: TOML files that say what to build and which stages to run.

```toml
name = "quickstart"
seed = 0

[task]                 # a registered task and its options
name = "arithmetic"
base = 128

[model]                # the network around the computer
backbone = "minimal"

[computer]             # the ALU (and, optionally, a program library)
alu = "lookup"
base = 128

[[stages]]             # run in order: train, swap, evaluate
kind = "train"
epochs = 3

[[stages]]
kind = "swap"
alu = "circuit"
bits = 32
```

:func:`load_recipe` validates every key before any work starts: an unknown
key, a wrong type, a missing key, an unknown plug-in name, stages out of order
or a swap to an ALU lacking a trained op is a :class:`RecipeError` naming the
file, the key and what would be valid. Recipes name registered plug-ins only;
they never import code. ``[[variants]]`` run the same stages with a few keys
changed (for comparisons such as tables against circuits).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from .errors import RecipeError, UnknownNameError, did_you_mean
from .registry import get_registry
from .schema import Field, check_table, describe, signature_fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STAGE_KINDS = ("train", "swap", "evaluate", "verify")
#: what every parser factory is given by the model, not by the recipe's parser_options
PARSER_ARGUMENTS = ("hidden_size", "targets", "encoding")
#: keys of a train stage besides the TrainConfig fields
STAGE_KEYS = ("kind", "name", "task", "parser_options", "computer", "loss", "adapt")


def _seed(value: Any) -> str | None:
    from .train.config import MAX_SEED  # noqa: PLC0415

    return None if 0 <= value <= MAX_SEED else f"a seed is an integer from 0 to {MAX_SEED} (2**32 - 1)"


def _accuracy_floor(value: Any) -> str | None:
    if value == -1 or 0 <= value <= 1:
        return None
    return "an accuracy is a fraction from 0 to 1 (e.g. 0.99 for 99%); -1 (the default) claims nothing"


def _positive_int(value: Any) -> str | None:
    return None if value >= 1 else f"a batch holds at least one question; got {value}"


def _run_name(value: str) -> str | None:
    """A recipe's name names its default run folder: one path component."""
    if not value or "/" in value or "\\" in value or value.startswith("."):
        return "a recipe's name names its run folder: a non-empty name without '/' or '\\', not starting with '.'"
    return None


def _folder_name(value: str) -> str | None:
    """A stage's or variant's name names a file or a folder of the run: letters, digits, '_', '-', '.'."""
    from .train.trainer import _STAGE_NAME  # noqa: PLC0415 (the trainer's rule for checkpoint names)

    if value == "" or _STAGE_NAME.match(value):
        return None
    return "it names a file or folder of the run: use letters, digits, '_', '-' or '.', starting with a letter or digit"


TOP_FIELDS = {
    "name": Field((str,), "", "a short name for the run", check=_run_name),
    "description": Field((str,), "", "one line saying what the recipe reproduces"),
    "seed": Field((int,), 0, "seed of data generation, initialisation and data order", check=_seed),
    "task": Field((dict,), doc="the task table: name and options"),
    "model": Field((dict,), doc="the model table"),
    "computer": Field((dict,), doc="the computer table: alu and its options"),
    "stages": Field((list,), doc="an array of [[stages]] tables"),
    "variants": Field((list,), [], "an array of [[variants]] tables: name and dotted-key overrides"),
}

SWAP_FIELDS = {
    "kind": Field((str,), choices=STAGE_KINDS),
    "name": Field((str,), "", "a label for the stage in metrics and plots", check=_folder_name),
    "alu": Field((str,), doc="the registered ALU to swap in"),
    "encoding": Field((str,), "model", "which encoding the model speaks after the swap: 'model' keeps the "
                      "trained one (an adapter converts), 'alu' adopts the new ALU's own",
                      choices=("model", "alu")),
}

EVALUATE_FIELDS = {
    "kind": Field((str,), choices=STAGE_KINDS),
    "name": Field((str,), "", "a label for the stage in metrics and plots", check=_folder_name),
    "split": Field((str,), "test", "which split to evaluate ('both': train and test; 'all': the three)",
                   choices=("train", "validation", "test", "both", "all")),
    "task": Field((dict,), {}, "task options to change for this evaluation (e.g. bigger numbers)"),
    "min_accuracy": Field((int, float), -1.0, "fail the run if accuracy ends below this (0 to 1; -1: no claim)",
                          check=_accuracy_floor),
    "batch_size": Field((int,), 32, "questions per evaluation batch (larger: faster; decided accuracy does "
                        "not depend on it)", check=_positive_int),
}

VERIFY_FIELDS = {
    "kind": Field((str,), choices=STAGE_KINDS),
    "name": Field((str,), "", "a label for the stage"),
    "split": Field((str,), "test", "the held-out inputs the adapted program runs on", choices=("validation", "test")),
    "min_success": Field((int, float), -1.0, "fail the run if the adapted program's success rate ends below this"),
}

VARIANT_FIELDS = {
    "name": Field((str,), doc="the variant's name (its sub-folder)", check=_folder_name),
    "set": Field((dict,), {}, "dotted keys to change, e.g. {'computer.alu' = 'circuit'}"),
}


@attrs.frozen
class Recipe:
    """A validated recipe: plain data, every default filled in."""

    source: str  # the file (or "<string>") it came from, for messages
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def stages(self) -> list[dict[str, Any]]:
        return self.data["stages"]

    @property
    def variants(self) -> list[dict[str, Any]]:
        return self.data["variants"]

    def variant(self, name: str) -> "Recipe":
        """The recipe with one variant's overrides applied (and no variants)."""
        for v in self.variants:
            if v["name"] == name:
                raw = copy.deepcopy(self.data)
                raw["variants"] = []
                for key, value in flatten(v["set"]).items():
                    set_path(raw, key, value, where=f"{self.source}: variant {name!r}")
                return validate(raw, source=f"{self.source} (variant {name!r})")
        raise RecipeError(f"{self.source}: no variant {name!r}; variants: {', '.join(x['name'] for x in self.variants)}")

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=True)


# -- loading ------------------------------------------------------------------------


def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped with diffcomp: name -> file."""
    folder = resources.files("diffcomp.recipes")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".toml")}


def find_recipe(name_or_path: str) -> Path:
    """A recipe file from a path, or the shipped recipe of that name."""
    if not name_or_path.strip():
        shipped = ", ".join(sorted(shipped_recipes()))
        raise RecipeError(f"no recipe given: name a recipe file or a shipped recipe ({shipped})")
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if path.is_dir():
            raise RecipeError(f"{name_or_path} is a folder, not a recipe file; give a .toml file inside it "
                              "or a shipped recipe's name")
        if not path.is_file():
            raise RecipeError(f"recipe file {name_or_path} does not exist")
        return path
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise RecipeError(f"no recipe file or shipped recipe named {name_or_path!r}{did_you_mean(name_or_path, shipped)}; "
                      f"shipped recipes: {', '.join(sorted(shipped))}")


def load_recipe(name_or_path: str, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override (``key=value`` strings) and validate a recipe."""
    path = find_recipe(name_or_path)
    return parse_recipe(read_text(path, "recipe"), source=str(path), overrides=overrides, default_name=path.stem)


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file's contents; a :class:`RecipeError` naming the file if it cannot be read as one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RecipeError(f"{path}: the {what} file is UTF-16 text; save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: the {what} file is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); "
                          "is it the right file? diffcomp reads UTF-8 text") from None


def parse_recipe(text: str, *, source: str = "<string>", overrides: Sequence[str] = (),
                 default_name: str = "recipe") -> Recipe:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source}: malformed TOML: {exc}") from None
    for item in overrides:
        apply_override(raw, item, source)
    raw.setdefault("name", default_name)
    return validate(raw, source=source)


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML value (``3``, ``1e-3``, ``true``, ``["add"]``), else a bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    """Apply one ``a.b.c=value`` override to raw recipe data; the key must exist."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stages.0.epochs=2")
    key, text = item.split("=", 1)
    key, text = key.strip(), text.strip()
    where = f"{source}: --set {key}"
    try:
        validate(copy.deepcopy(raw), source=source)
        before_ok = True
    except RecipeError:
        before_ok = False
    set_path(raw, key, parse_value(text), where=where, create=True)
    if before_ok:  # a recipe that was valid and is not now: blame the override, by name (and the file once)
        validate(copy.deepcopy(raw), source=f"{source} with --set {key}={text}")


def set_path(raw: Any, key: str, value: Any, *, where: str, create: bool = False) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{where}: {'.'.join(parts[:i]) or 'the recipe'} has {len(node)} entries; "
                                  f"{part!r} is not an index of it (0..{len(node) - 1})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node:
                    if not create:
                        raise RecipeError(f"{where}: no key {'.'.join(parts[: i + 1])!r}")
                    node[part] = {}
                node = node[part]
        else:
            raise RecipeError(f"{where}: {'.'.join(parts[:i])} is a value, not a table")


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        out[f"{prefix}{key}"] = value
    return out


# -- validation ---------------------------------------------------------------------


def validate(raw: dict[str, Any], *, source: str = "<string>") -> Recipe:
    """Check every key of a raw recipe; a :class:`RecipeError` names the first problem."""
    data = check_table(raw, TOP_FIELDS, where=source, top=True)
    registry = get_registry()
    where = f"{source}: "
    raw_task = data["task"]
    data["task"] = check_plugin_table(raw_task, "task", f"{where}[task]", registry)
    from .model.build import computer_fields, model_fields  # noqa: PLC0415 (heavy imports stay lazy)

    _check_builds(data["task"], data["seed"], f"{where}[task]")
    data["model"] = check_table(data["model"], model_fields(), where=f"{where}[model]")
    parser = registry.get("parser", data["model"]["parser"])  # the name was checked: its options now
    data["model"]["parser_options"] = check_table(data["model"]["parser_options"],
                                                  signature_fields(parser, skip=PARSER_ARGUMENTS),
                                                  where=f"{where}[model].parser_options")
    computer = data["computer"]
    alu_name = _plugin_name(computer, "alu", "alu", f"{where}[computer]", registry)
    data["computer"] = check_table(computer, {**computer_fields(), **alu_option_fields(alu_name, registry)},
                                   where=f"{where}[computer]")
    if data["model"]["backbone"] == "program":
        _check_program_model(data, f"{where}[computer]")
    _check_library(data["task"], data["computer"], data["seed"], f"{where}[computer]")
    if not data["stages"]:
        raise RecipeError(f"{where}stages: a recipe needs at least one [[stages]] table (kinds: {', '.join(STAGE_KINDS)})")
    stages, trained, current_alu = [], False, alu_name
    for i, stage in enumerate(data["stages"]):
        at = f"{where}stages[{i}]"
        if not isinstance(stage, dict):
            raise RecipeError(f"{at} must be a table with a 'kind' ({', '.join(STAGE_KINDS)})")
        kind = stage.get("kind")
        if kind not in STAGE_KINDS:
            raise RecipeError(f"{at}.kind = {kind!r} is not one of {', '.join(STAGE_KINDS)}"
                              f"{did_you_mean(kind, STAGE_KINDS) if isinstance(kind, str) else ''}")
        if kind == "train":
            checked = check_train_stage(stage, data["seed"], at)
            _check_stage_task(checked, raw_task, data["seed"], at, registry)
            _check_stage_parser(checked["parser_options"], data["model"], parser, at)
            _check_stage_computer(checked["computer"], at)
            _check_stage_adaptation(checked, data, at)
            trained = True
        elif kind == "swap":
            if not trained:
                raise RecipeError(f"{at}: a swap stage must come after a train stage (the swap hands trained "
                                  "weights to another ALU); put a [[stages]] kind = \"train\" before it")
            target = _plugin_name(stage, "alu", "alu", at, registry)
            checked = check_table(stage, {**SWAP_FIELDS, **alu_option_fields(target, registry)}, at)
            check_swap_ops(data, current_alu, target, at, registry)
            current_alu = target
        elif kind == "verify":
            checked = check_table(stage, VERIFY_FIELDS, at)
            if data["model"]["backbone"] != "program":
                raise RecipeError(f"{at}: a verify stage runs the adapted program hard; it needs [model] backbone = "
                                  f"'program' (got {data['model']['backbone']!r})")
        else:
            checked = check_table(stage, EVALUATE_FIELDS, at)
            _check_stage_task(checked, raw_task, data["seed"], at, registry)
        checked["name"] = checked["name"] or f"{i}-{kind}"
        stages.append(checked)
    names = [s["name"] for s in stages]
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}stages: stage names must be unique, got {names}")
    data["stages"] = stages
    variants = []
    for i, variant in enumerate(data["variants"]):
        variants.append(check_table(variant, VARIANT_FIELDS, f"{where}variants[{i}]"))
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}variants: variant names must be unique (each names a folder), got {names}")
    data["variants"] = variants
    recipe = Recipe(source, data)
    for v in variants:  # each variant must itself be a valid recipe
        recipe.variant(v["name"])
    return recipe


def _check_stage_task(stage: dict[str, Any], raw_task: dict[str, Any], seed: int, at: str, registry) -> None:
    """A stage's ``task`` table changes options of the recipe's task: the result must build."""
    if not stage["task"]:
        return
    merged = check_plugin_table({**raw_task, **stage["task"]}, "task", f"{at}.task", registry)
    _check_builds(merged, seed, f"{at}.task")


def _check_stage_parser(changes: dict[str, Any], model: dict[str, Any], parser, at: str) -> None:
    """A train stage's ``parser_options``: options the recipe's parser lets a stage change, to valid values."""
    if not changes:
        return
    if model["backbone"] == "minimal":
        raise RecipeError(f"{at}.parser_options: the minimal network has no parser; leave parser_options out")
    check = getattr(parser, "check_stage_options", None)
    if check is None:
        raise RecipeError(f"{at}.parser_options: parser {model['parser']!r} lets no stage change its options")
    try:
        check(changes, {**model["parser_options"], **changes})
    except ValueError as exc:
        raise RecipeError(f"{at}.parser_options: {exc}") from None


def _check_stage_computer(changes: dict[str, Any], at: str) -> None:
    """A train stage's ``computer`` table: options of how the computer trains, each valid on its own (whether the
    recipe's computer can train with them is checked where it is built, :func:`diffcomp.run.check_recipe`)."""
    from .model.build import computer_fields  # noqa: PLC0415
    from .model.computer import MachineComputer  # noqa: PLC0415

    allowed = MachineComputer.stage_options
    unknown = [name for name in changes if name not in allowed]
    if unknown:
        raise RecipeError(f"{at}.computer: a stage cannot change the computer option {unknown[0]!r}; the options a "
                          f"stage may change: {', '.join(allowed)}{did_you_mean(unknown[0], allowed)}")
    fields = computer_fields()
    check_table(changes, {name: fields[name] for name in allowed}, where=f"{at}.computer")


def _check_program_model(data: dict[str, Any], where: str) -> None:
    """``backbone = 'program'`` runs the task's one program: the computer's library must hold it."""
    from .model.build import build_task  # noqa: PLC0415

    task = build_task(data["task"]["name"], {k: v for k, v in data["task"].items() if k != "name"}, seed=data["seed"])
    if not task.uses_machine or len(task.programs) != 1:
        raise RecipeError(f"{where}: [model] backbone = 'program' runs one library program on a memory; task "
                          f"{task.name!r} runs {len(task.programs)} (use an anc-* task)")
    library = data["computer"]["library"]
    if library is not None and task.programs[0] not in library:
        raise RecipeError(f"{where}.library: task {task.name!r} runs the program {task.programs[0]!r}, which the "
                          f"library ({', '.join(library)}) lacks")


def _check_stage_adaptation(stage: dict[str, Any], data: dict[str, Any], at: str) -> None:
    """A train stage's ``adapt`` (programs whose tables train) and ``loss`` (ANC's weights) must fit the model."""
    from .model.adaptive import ANCObjective  # noqa: PLC0415
    from .model.build import build_task  # noqa: PLC0415

    program_model = data["model"]["backbone"] == "program"
    if stage["loss"]:
        if not program_model:
            raise RecipeError(f"{at}.loss: ANC's loss weighs a program's run on a memory; it needs [model] "
                              f"backbone = 'program' (got {data['model']['backbone']!r}); leave loss out")
        try:
            ANCObjective.from_dict(stage["loss"])
        except ValueError as exc:
            raise RecipeError(f"{at}.loss: {exc}") from None
    adapt = stage["adapt"]
    if adapt is False or adapt == []:
        return
    task = build_task(data["task"]["name"], {k: v for k, v in data["task"].items() if k != "name"}, seed=data["seed"])
    library = tuple(data["computer"]["library"] or task.programs)
    if not library:
        raise RecipeError(f"{at}.adapt: the stage asks to train program tables, but the computer has no programs "
                          f"(task {task.name!r} runs an ALU alone); give [computer] a library, or leave adapt out")
    if adapt is not True:
        missing = [name for name in adapt if name not in library]
        if missing:
            raise RecipeError(f"{at}.adapt: program {missing[0]!r} is not in the model's library "
                              f"({', '.join(library)}){did_you_mean(missing[0], library)}")


def train_config(stage: dict[str, Any], seed: int, **fixed: Any):
    """The :class:`~diffcomp.train.TrainConfig` of a train stage (the recipe's seed unless it sets one)."""
    from .train import TrainConfig  # noqa: PLC0415

    values = {k: v for k, v in stage.items() if k not in STAGE_KEYS}
    values.setdefault("seed", seed)
    return TrainConfig.from_dict({**values, **fixed})


def check_train_stage(stage: dict[str, Any], seed: int, at: str) -> dict[str, Any]:
    checked = {"kind": "train", "name": stage.get("name", ""), "task": stage.get("task", {}),
               "parser_options": stage.get("parser_options", {}), "computer": stage.get("computer", {}),
               "loss": stage.get("loss", {}),
               "adapt": stage.get("adapt", False)}
    if not isinstance(checked["name"], str):
        raise RecipeError(f"{at}.name must be a string, got {describe(checked['name'])}")
    if problem := _folder_name(checked["name"]):
        raise RecipeError(f"{at}.name = {checked['name']!r}: {problem}")
    if not isinstance(checked["task"], dict):
        raise RecipeError(f"{at}.task must be a table of task options to change for this stage (e.g. "
                          f"{{lengths = [2, 3]}}), got {describe(checked['task'])}")
    if not isinstance(checked["parser_options"], dict):
        raise RecipeError(f"{at}.parser_options must be a table of parser options to change for this stage "
                          f"(e.g. {{pointers = \"sample\"}}), got {describe(checked['parser_options'])}")
    if not isinstance(checked["computer"], dict):
        raise RecipeError(f"{at}.computer must be a table of computer options to change for this stage (e.g. "
                          f"{{chain_discount = 1.0}}), got {describe(checked['computer'])}")
    if not isinstance(checked["loss"], dict):
        raise RecipeError(f"{at}.loss must be a table of ANC loss weights (e.g. {{final = 1, halting = 1, "
                          f"running = 0.02, timeout = 1}}), got {describe(checked['loss'])}")
    adapt = checked["adapt"]
    if not (isinstance(adapt, bool) or isinstance(adapt, list) and all(isinstance(a, str) for a in adapt)):
        raise RecipeError(f"{at}.adapt must be true (every program of the computer) or a list of program names "
                          f"whose tables train in this stage, got {describe(adapt)}")
    try:
        train_config(stage, seed)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{at}: {exc}") from None
    return {**stage, **checked}


def _plugin_name(table: Any, key: str, kind: str, where: str, registry) -> str:
    """The registered ``kind`` that ``table[key]`` names; a clear error if it names none."""
    label = "ALU" if kind == "alu" else kind
    if not isinstance(table, dict) or key not in table:
        raise RecipeError(f"{where}: missing required key {key!r} (a registered {label}: "
                          f"{', '.join(registry.names(kind))})")
    name = table[key]
    if not isinstance(name, str) or name not in registry.names(kind):
        raise RecipeError(f"{where}.{key}: {UnknownNameError(label, str(name), registry.names(kind))}")
    return name


def check_plugin_table(table: Any, kind: str, where: str, registry) -> dict[str, Any]:
    """A table naming a registered factory (``name = ...``) plus that factory's options."""
    factory = registry.get(kind, _plugin_name(table, "name", kind, where, registry))
    skip = ("seed",) if kind == "task" else ()  # a task is seeded by the recipe's seed, not by a default of its own
    return check_table(table, {"name": Field((str,)), **signature_fields(factory, skip=skip)}, where)


def _check_builds(task: dict[str, Any], seed: int, where: str) -> None:
    """Options that are each valid may still not fit together (``base`` and ``bits``): build the task to see."""
    from .model.build import build_task  # noqa: PLC0415

    try:
        build_task(task["name"], {k: v for k, v in task.items() if k != "name"}, seed=seed)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


def _check_library(task: dict[str, Any], computer: dict[str, Any], seed: int, where: str) -> None:
    """The library, chain length and readout fit the task (``diffcomp.model.build.check_library``)."""
    from .model.build import build_task, check_library  # noqa: PLC0415

    if computer.get("kind") == "none":
        return
    built = build_task(task["name"], {k: v for k, v in task.items() if k != "name"}, seed=seed)
    if not (built.uses_machine or computer.get("library")):
        return
    try:
        check_library(computer, built)
    except (ValueError, LookupError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


def alu_option_fields(name: str, registry) -> dict[str, Field]:
    fields = signature_fields(registry.get("alu", name), skip=("ops",))
    return {"alu": Field((str,), doc="a registered ALU"), **fields}


def check_swap_ops(data: dict[str, Any], old: str, new: str, where: str, registry) -> None:
    """A swap must keep every op the task trained with."""
    from .model.build import task_ops  # noqa: PLC0415

    needed = task_ops(data["task"])
    factory = registry.get("alu", new)
    supported = getattr(factory, "supported_ops", None)
    if needed and callable(supported):
        missing = [op for op in needed if op not in supported()]
        if missing:
            raise RecipeError(f"{where}: cannot swap {old!r} for {new!r}: {new!r} lacks the trained op(s) "
                              f"{', '.join(missing)}; it implements {', '.join(supported())}")


def describe_recipes() -> list[tuple[str, str]]:
    """(name, description) of each shipped recipe, read without validating."""
    out = []
    for name, path in sorted(shipped_recipes().items()):
        try:
            description = tomllib.loads(path.read_text(encoding="utf-8")).get("description", "")
        except tomllib.TOMLDecodeError as exc:
            description = f"(malformed: {exc})"
        out.append((name, description))
    return out

