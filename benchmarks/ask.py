"""How long ``diffcomp ask`` takes on a saved model, and where the time goes.

Each figure is measured in a fresh interpreter (the import and load costs are
what a user pays on every command), several times, median. The reference is
``python -c "import torch"`` measured in the same run: the figures are also
given as ratios to it, since machines (and their load) differ.

    python benchmarks/ask.py MODEL_OR_RUN [--repeat 5] [--threads 2] [--question '...']

Phases, each in its own fresh process: ``diffcomp --help``; ``import diffcomp``;
import + ``diffcomp.load``; the whole ``diffcomp ask`` command, as it runs by
default (the NumPy engine, for a saved model it reads) and with ``--engine
torch``; and inside one process, for each engine, the imports, the load and the
first answer (and whether torch was imported).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

QUESTION = 'Sort the string "qwertyuiopasdfgh"'  # 16 characters

PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from transformers import LlamaModel
t2 = time.perf_counter()
import diffcomp
model = diffcomp.load(sys.argv[1])
t3 = time.perf_counter()
answer = model.ask(sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "transformers": t2 - t1, "load": t3 - t2, "answer": t4 - t3, "said": answer}))
"""

NUMPY_PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy
from diffcomp.inference import load
t1 = time.perf_counter()
model, engine, why = load(sys.argv[1], engine="numpy")
t2 = time.perf_counter()
answer = model.ask(sys.argv[2])
t3 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load": t2 - t1, "answer": t3 - t2, "said": answer,
                  "torch imported": "torch" in sys.modules}))
"""


def wall(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, input=stdin)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {result.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder or a run folder")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for every process (default 2)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    py = sys.executable
    cli = [py, "-m", "diffcomp"]
    cases = {
        "python -c 'import torch' (reference)": [py, "-c", "import torch"],
        "diffcomp --help": [*cli, "--help"],
        "import diffcomp": [py, "-c", "import diffcomp"],
        "import + diffcomp.load": [py, "-c", f"import diffcomp; diffcomp.load({args.model!r})"],
        "diffcomp ask (16-character sort)": [*cli, "ask", args.model, args.question],
        "diffcomp ask --engine torch": [*cli, "ask", args.model, args.question, "--engine", "torch"],
    }
    times = {name: statistics.median(wall(cmd, env) for _ in range(args.repeat)) for name, cmd in cases.items()}
    reference = times["python -c 'import torch' (reference)"]
    print(f"{'what':<40} {'median s':>9} {'/ import torch':>15}")
    for name, t in times.items():
        print(f"{name:<40} {t:>9.3f} {t / reference:>15.2f}")
    runs = [json.loads(subprocess.run([py, "-c", PHASES, args.model, args.question], env=env, capture_output=True,
                                      text=True, check=True).stdout) for _ in range(args.repeat)]
    print("\ninside one process, torch (median s): " + ", ".join(
        f"{k} {statistics.median(r[k] for r in runs):.3f}" for k in ("torch", "transformers", "load", "answer")))
    print(f"answer: {runs[0]['said']!r}")
    fast = [json.loads(subprocess.run([py, "-c", NUMPY_PHASES, args.model, args.question], env=env,
                                      capture_output=True, text=True, check=True).stdout) for _ in range(args.repeat)]
    print("inside one process, NumPy (median s): " + ", ".join(
        f"{k} {statistics.median(r[k] for r in fast):.3f}" for k in ("imports", "load", "answer")) +
        f"; torch imported: {fast[0]['torch imported']}")
    print(f"answer: {fast[0]['said']!r}")
    print(f"threads: {args.threads}; load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
