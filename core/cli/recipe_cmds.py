"""``diffcomp run``, ``diffcomp validate`` and ``diffcomp recipes``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a recipe (a TOML file or a shipped recipe's name)",
                         description="Validate a recipe, then run its stages into a folder of its own.")
    run.add_argument("recipe", metavar="RECIPE", help="a recipe file, or the name of a shipped recipe")
    _add_set(run)
    run.add_argument("--out", type=Path, default=None,
                     help="the run folder (default: runs/<recipe name>-<time>)")
    run.add_argument("--resume", action="store_true", help="continue the run already in --out")
    run.add_argument("--no-progress", action="store_true", help="no progress (no bar on a terminal, no lines elsewhere)")
    run.add_argument("--threads", type=int, default=None, metavar="N",
                     help="torch's CPU threads for the run (default: torch's own, one per core). A run is "
                          "reproducible at a given thread count only: threads change the order floats are summed "
                          "in. The figures in docs/results.md were measured with --threads 1")
    run.set_defaults(handler=run_command)

    validate = sub.add_parser("validate", help="check a recipe without running it",
                              description="Check every key of a recipe; print the resolved recipe.")
    validate.add_argument("recipe", metavar="RECIPE")
    _add_set(validate)
    validate.add_argument("--quiet", action="store_true", help="print nothing when the recipe is valid")
    validate.set_defaults(handler=validate_command)

    recipes = sub.add_parser("recipes", help="list the shipped recipes",
                             description="List the recipes shipped with diffcomp, a line each.")
    recipes.add_argument("--json", action="store_true", help="print JSON")
    recipes.set_defaults(handler=recipes_command)


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set stages.0.epochs=2 --set task.base=16 (repeatable)")


def validate_command(args: argparse.Namespace) -> int:
    from ..recipe import load_recipe
    from ..run import check_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    check_recipe(recipe)  # builds what a run builds, walks the stages; trains nothing
    if not args.quiet:
        print(recipe.to_json())
        print(f"{recipe.source}: valid", file=sys.stderr)
    return 0


def recipes_command(args: argparse.Namespace) -> int:
    from ..recipe import describe_recipes

    listed = describe_recipes()
    if args.json:
        print(json.dumps([{"name": n, "description": d} for n, d in listed], indent=2))
    else:
        width = max((len(n) for n, _ in listed), default=0)
        for name, description in listed:
            print(f"{name:<{width}}  {description}")
    return 0


#: failures that come from the machine running the job, not from the job: a resume may get past them
TRANSIENT = (OSError, MemoryError, KeyboardInterrupt)


def run_command(args: argparse.Namespace) -> int:
    import torch

    from ..errors import RecipeError
    from ..recipe import load_recipe

    if args.resume and args.out is None:
        raise RecipeError("--resume continues the run in a folder: name it with --out DIR (the folder of the "
                          "run to continue)")
    if args.threads is not None and args.threads < 1:
        raise RecipeError(f"--threads must be at least 1 (torch's CPU threads for the run), got {args.threads}")
    recipe = load_recipe(args.recipe, args.overrides)  # every key checked before any work
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(recipe, args)
    finally:
        torch.set_num_threads(threads)


def _run(recipe, args: argparse.Namespace) -> int:
    """Run ``recipe`` as ``args`` say: exit 0, or 1 (130 if interrupted) for a failure during the run."""
    from ..errors import RecipeError
    from ..run import RunFolderError, run_recipe
    from ..train.trainer import TrainingDivergedError

    out = args.out or Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:  # run_recipe checks the recipe (check_recipe) and the folder before it writes anything
        summary = run_recipe(recipe, out, resume=args.resume, progress=not args.no_progress)
    except (RecipeError, RunFolderError):
        raise
    except BaseException as exc:  # a failure during the run: exit 1 (130 if interrupted), with the cause
        if not isinstance(exc, (Exception, KeyboardInterrupt)):
            raise
        interrupted = isinstance(exc, KeyboardInterrupt)
        cause = "interrupted" if interrupted else f"the run failed: {type(exc).__name__}: {exc}"
        print(f"diffcomp run: {cause}", file=sys.stderr)
        if isinstance(exc, TRANSIENT):
            print(f"diffcomp run: what was written is in {out}; continue with --resume --out {out}", file=sys.stderr)
        elif not isinstance(exc, TrainingDivergedError):  # (its message says what to change)
            print(f"diffcomp run: what was written is in {out} (--resume would fail the same way: change the "
                  "recipe or the input first)", file=sys.stderr)
        return 130 if interrupted else 1
    print(json.dumps(summary, indent=2))
    print(f"diffcomp run: done; results in {out}", file=sys.stderr)
    return 0
