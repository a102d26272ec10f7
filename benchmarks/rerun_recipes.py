"""Rerun shipped recipes in parallel processes and tabulate what they reached.

    python benchmarks/rerun_recipes.py --out runs/rerun --jobs 8          # the default list (below)
    python benchmarks/rerun_recipes.py --out runs/tiny --jobs 2 \\
        --job "quickstart task.examples=1500" --job "quickstart seed=1 task.examples=1500"

Each job is a recipe and ``--set`` overrides, run as ``diffcomp run RECIPE
--out OUT/NAME --set KEY=VALUE ...`` in a process of its own with one torch
thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``), at most
``--jobs`` at a time. A job whose folder already holds a ``summary.json`` is
not run again (rerun the command after an interruption; a killed job resumes
from its checkpoints). When every job has ended, ``OUT/results.md`` holds one
row per stage of each run: the final validation and test accuracies, decided
(``accuracy``: the model acting on its most likely choices) and soft
(``soft_accuracy``: the computer run on the distributions), read from the
run's ``summary.json``, and the job's wall time.

The default list: the runs too long for a shared two-core machine (llama-sort
at seeds 0-4, llama-arithmetic at seed 1, fibonacci-depth at seeds 1 and 2,
and the two paper-setting variants at their full budget).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: (recipe, overrides) of the default list
DEFAULT_JOBS: list[tuple[str, tuple[str, ...]]] = [
    *[("llama-sort", (f"seed={seed}",)) for seed in range(5)],
    ("llama-arithmetic", ("seed=1",)),
    *[("fibonacci-depth", (f"seed={seed}",)) for seed in (1, 2)],
    ("llama-sort-paper", ()),
    ("llama-arithmetic-paper", ()),
]

#: the child: one torch thread, then the command line
CHILD = "import sys, torch; torch.set_num_threads(1); from diffcomp.cli import main; sys.exit(main(sys.argv[1:]))"


def parse_job(text: str) -> tuple[str, tuple[str, ...]]:
    """``"RECIPE KEY=VALUE ..."`` -> ``(recipe, overrides)``."""
    words = shlex.split(text)
    if not words or "=" in words[0]:
        raise SystemExit(f"--job {text!r}: give a recipe name first, then KEY=VALUE overrides, e.g. "
                         "'llama-sort seed=1 stages.0.epochs=2'")
    for word in words[1:]:
        if "=" not in word:
            raise SystemExit(f"--job {text!r}: {word!r} is not a KEY=VALUE override")
    return words[0], tuple(words[1:])


def job_names(jobs: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    """A folder name per job: the recipe and its overrides, e.g. ``llama-sort-seed=1``; distinct."""
    names: list[str] = []
    for recipe, overrides in jobs:
        base = "-".join([Path(recipe).stem, *overrides])
        base = re.sub(r"[^A-Za-z0-9_.=-]+", "_", base)[:120]
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def run_job(recipe: str, overrides: tuple[str, ...], folder: Path) -> dict[str, Any]:
    """Run one job (unless its summary exists); ``{"status", "wall_s"}``."""
    if (folder / "summary.json").exists():
        return {"status": "done before", "wall_s": None}
    command = [sys.executable, "-c", CHILD, "run", recipe, "--out", str(folder), "--no-progress"]
    if (folder / "recipe.json").exists():
        command.append("--resume")
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(folder.parent / f"{folder.name}.log", "w", encoding="utf-8") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return {"status": "ok" if code == 0 else f"exit {code}", "wall_s": round(time.perf_counter() - start, 1)}


def _percent(result: dict[str, Any] | None, key: str) -> str:
    value = (result or {}).get(key)
    return "" if value is None else f"{100 * value:.1f}%"


def stage_rows(summary: dict[str, Any]) -> list[tuple[str, str, dict | None, dict | None]]:
    """``(variant, stage, validation, test)`` for each stage of a run's summary (variants flattened)."""
    if "variants" in summary:
        return [(f"{variant}", stage, validation, test)
                for variant, sub in summary["variants"].items()
                for _, stage, validation, test in stage_rows(sub)]
    return [("", name, result.get("validation"), result.get("test"))
            for name, result in summary.get("stages", {}).items()]


def table(out: Path, jobs: list[tuple[str, tuple[str, ...]]], names: list[str],
          outcomes: list[dict[str, Any]]) -> str:
    """The markdown table of every run's stages."""
    lines = ["| run | overrides | stage | validation | validation (soft) | test | test (soft) | status | wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (recipe, overrides), name, outcome in zip(jobs, names, outcomes):
        wall = "" if outcome["wall_s"] is None else f"{outcome['wall_s']:.0f} s"
        path = out / name / "summary.json"
        rows = stage_rows(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else []
        if not rows:
            lines.append(f"| {recipe} | {' '.join(overrides)} | | | | | | {outcome['status']} | {wall} |")
        for variant, stage, validation, test in rows:
            where = f"{variant}: {stage}" if variant else stage
            lines.append(f"| {recipe} | {' '.join(overrides)} | {where} | {_percent(validation, 'accuracy')} | "
                         f"{_percent(validation, 'soft_accuracy')} | {_percent(test, 'accuracy')} | "
                         f"{_percent(test, 'soft_accuracy')} | {outcome['status']} | {wall} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the runs (one sub-folder each)")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="processes at a time (each uses one thread)")
    parser.add_argument("--job", action="append", default=None, metavar="'RECIPE KEY=VALUE ...'",
                        help="a job to run instead of the default list (repeatable)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder")
    jobs = [parse_job(text) for text in args.job] if args.job else DEFAULT_JOBS
    names = job_names(jobs)
    print(f"{len(jobs)} jobs, {args.jobs} at a time, into {args.out}", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_job, recipe, overrides, args.out / name)
                   for (recipe, overrides), name in zip(jobs, names)]
        outcomes = []
        for name, future in zip(names, futures):
            outcomes.append(future.result())
            print(f"{name}: {outcomes[-1]['status']}, {outcomes[-1]['wall_s']} s", flush=True)
    text = table(args.out, jobs, names, outcomes)
    (args.out / "results.md").write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(o["status"] in ("ok", "done before") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
