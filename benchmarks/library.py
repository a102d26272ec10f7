"""The cost of a library: a training step with the whole sequence library against one with one program.

    python benchmarks/library.py               # the ratio (well under a minute)
    python benchmarks/library.py --samples 2   # two chains per question instead of the recipe's
    python benchmarks/library.py --soft-samples 2   # of the recipe's chains, two run soft

Both models are library-compose's (a LLaMA, the span parser and its
choice options, a base-128 lookup table, learned readout, ``selection =
"marginal"``, the recipe's ``[computer]`` settings) on the same batches of
``composed`` questions (strings of 1-6 letters, batch 32): the *full* model
chooses among the ten sequence programs at each of K = 2 chain steps (each
question runs ``soft_samples`` of its ``samples`` chains soft, the recipe's
unless ``--samples`` or ``--soft-samples`` says, and every chain on the
decided parse, exactly, on integers, once per value of the argument where a
chain reads it); the *reference* runs ``insertion_sort`` alone (one chain,
K = 1, no preference among chains), with the same parser, readout and
``max_steps``, on the same batch.
Target: the full library's step at most 3x the reference's. The two run in
turn, round after round, so a busy machine slows both alike; the median of
the per-round ratios is reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._timing import median_ms, ratio, round_robin  # noqa: E402
from diffcomp.model import build_model, build_task  # noqa: E402
from diffcomp.recipe import load_recipe  # noqa: E402

FULL = ["insertion_sort", "reverse", "count", "count_distinct", "max", "min", "length", "sum", "nth", "identity"]


def models(seed: int = 0, samples: int | None = None, soft_samples: int | None = None):
    recipe = load_recipe("library-compose").data
    if samples is not None:
        recipe["computer"]["samples"] = samples
    if soft_samples is not None:
        recipe["computer"]["soft_samples"] = soft_samples
    options = {"lengths": [1, 2, 3, 4, 5, 6], "width": 6, "examples": 2000}
    task = build_task("composed", options, seed=seed)
    full = build_model(recipe["model"], {**recipe["computer"], "library": FULL, "steps": 2}, task)
    sort_task = build_task("mixed", {**options, "types": ["sort"]}, seed=seed)
    one = build_model(recipe["model"], {**recipe["computer"], "library": ["insertion_sort"], "steps": 1,
                                        "chain_discount": 1.0}, sort_task)
    return task, full, one


def step_of(model: torch.nn.Module):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step(batch):
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=None,
                        help="chains per question in the full library (default: the recipe's)")
    parser.add_argument("--soft-samples", type=int, default=None,
                        help="of those, how many run soft in training (default: the recipe's, else all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task, full, one = models(samples=args.samples, soft_samples=args.soft_samples)
    data = {k: v for k, v in task.dataset("train").tensors.items() if k != "chain"}  # timing only
    batches = iter([{k: v[i:i + args.batch] for k, v in data.items()}
                    for i in range(0, len(data["answer"]) - args.batch, args.batch)])
    steps = {"full": step_of(full), "one": step_of(one)}
    current = {}

    def next_batch():
        current["batch"] = next(batches)

    def run(key):
        return lambda: steps[key](current["batch"])

    times = {"full": [], "one": []}
    for _ in range(args.rounds + 1):  # the same batch for both, a new one each round (the first is warm-up)
        next_batch()
        for key, seconds in round_robin({k: run(k) for k in steps}, repeats=1, warmup=0).items():
            times[key].extend(seconds)
    times = {k: v[1:] for k, v in times.items()}
    c = full.computer
    print(f"full library ({len(FULL)} programs, K = 2, marginal, samples = {c.samples}, soft_samples = "
          f"{c.soft_samples}): {median_ms(times['full']):.0f} ms/step; insertion_sort alone: "
          f"{median_ms(times['one']):.0f} ms/step")
    print(f"ratio full / one program: {ratio(times, 'full', 'one'):.2f} (target <= 3)")


if __name__ == "__main__":
    main()
