"""Lookup ALU cost, as ratios against the dense references measured in the same run.

Forward+backward at batch 32 through eight ops that all have non-zero weight
(soft operands and op distribution, all needing gradients):

* time: the default ``fast`` lookup against the paper's eq. 7 as one einsum
  over the dense ``|ops| × n × n × n`` table, and against the best dense form
  (the flattened table as one matrix product), at bases 32, 64, 128, 256; the
  plain scatter of the outer product for reference; each op alone at base 128.
* memory of the fast lookup at bases 256, 1024, 4096, each in a fresh process:
  the tables it keeps, the bytes autograd saves for backward, and the growth of
  the resident set from just before the step to its peak (building the tables
  included), next to the size of the dense table.

Then, if ``benchmarks/circuit.py`` is there, the circuit benchmark.

    python benchmarks/alu.py            # full run
    python benchmarks/alu.py --quick    # a few repeats, smaller bases: a smoke test
    python benchmarks/alu.py --threads 1
    python benchmarks/alu.py --contended   # with a competing CPU-bound process (it starts its own)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable

import diffcomp  # noqa: E402
from benchmarks._timing import (MB, SavedTensors, current_rss, median_ms, peak_rss, ratio,  # noqa: E402
                                reset_peak_rss, round_robin, run_child)

BATCH = 32
OPS = ("add", "sub", "mul", "div", "mod", "min", "max", "lt")
SPEED_BASES = (32, 64, 128, 256)
MEMORY_BASES = (256, 1024, 4096)
MODES = ("fast", "matmul", "einsum", "scatter")


def lookup(base: int, ops: tuple[str, ...], mode: str = "fast"):
    return diffcomp.alu("lookup", base=base, ops=ops, mode=mode)


def inputs(base: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Op distribution ``(batch, 8)``, operands ``(batch, base)``, output gradient: all soft, all non-zero."""
    generator = torch.Generator().manual_seed(seed)
    op = torch.randn(BATCH, len(OPS), generator=generator).softmax(-1)
    a, b = (3 * torch.randn(2, BATCH, base, generator=generator)).softmax(-1)
    return op, a, b, torch.randn(BATCH, base, generator=generator)


def step(alu, op: torch.Tensor, a: torch.Tensor, b: torch.Tensor, grad: torch.Tensor):
    """One forward and backward through ``alu`` on fresh leaves."""

    def run() -> None:
        leaves = [t.detach().requires_grad_() for t in (op, a, b)]
        alu(*leaves).backward(grad)

    return run


def speed(quick: bool) -> None:
    bases = SPEED_BASES[:3] if quick else SPEED_BASES
    print(f"## Time: forward+backward, batch {BATCH}, ops {', '.join(OPS)} (all non-zero), "
          f"{torch.get_num_threads()} threads\n")
    print("| base | fast ms | matmul ms | einsum ms | scatter ms | matmul / fast | einsum / fast |")
    print("|-----:|--------:|----------:|----------:|-----------:|--------------:|--------------:|")
    for base in bases:
        op, a, b, grad = inputs(base)
        steps = {mode: step(lookup(base, OPS, mode), op, a, b, grad) for mode in MODES}
        repeats = 2 if base >= 256 else 3 if quick else 9
        times = round_robin(steps, repeats)
        ms = {mode: median_ms(t) for mode, t in times.items()}
        print(f"| {base:4d} | {ms['fast']:7.2f} | {ms['matmul']:9.2f} | {ms['einsum']:9.1f} | {ms['scatter']:10.2f} "
              f"| {ratio(times, 'matmul', 'fast'):12.1f}× | {ratio(times, 'einsum', 'fast'):12.1f}× |", flush=True)
        del steps, times  # free the dense tables before the next base
    print("\nratios are medians of per-round ratios over interleaved rounds")


def per_op(quick: bool, base: int = 128) -> None:
    print(f"\n## Each op alone (fast path), base {base}, forward+backward, batch {BATCH}\n")
    op, a, b, grad = inputs(base)
    steps = {name: step(lookup(base, (name,)), torch.ones(BATCH, 1), a, b, grad) for name in OPS}
    steps["all eight"] = step(lookup(base, OPS), op, a, b, grad)
    times = round_robin(steps, 3 if quick else 9)
    print("| op | ms | share of the eight |")
    print("|----|---:|-------------------:|")
    for name, t in times.items():
        print(f"| {name} | {median_ms(t):.2f} | {ratio(times, name, 'all eight'):.2f} |")


def memory_child(base: int) -> None:
    """In a fresh process: one forward+backward at ``base``; prints JSON byte counts."""
    torch.set_num_threads(2)
    warm = lookup(16, OPS)  # load every kernel's code paths once, at a tiny base
    step(warm, *inputs(16))()
    alu = lookup(base, OPS)
    op, a, b, grad = inputs(base)
    reset = reset_peak_rss()
    before, peak_before = current_rss(), peak_rss()
    leaves = [t.detach().requires_grad_() for t in (op, a, b)]
    with SavedTensors() as saved:
        out = alu(*leaves)
    out.backward(grad)
    peak = peak_rss()
    print(json.dumps({"base": base, "rss_before": before, "peak_before": peak_before, "peak": peak,
                      "saved": saved.nbytes, "tables": alu.table_bytes(), "reset": reset}))


def memory(quick: bool) -> None:
    print(f"\n## Memory of the fast lookup: forward+backward, batch {BATCH}, the same eight ops, "
          "each base in a fresh process\n")
    print("| base | tables MB | saved for backward MB | peak RSS growth MB | dense table (float32) |")
    print("|-----:|----------:|----------------------:|-------------------:|----------------------:|")
    for base in MEMORY_BASES:
        r = run_child([__file__, "--memory-child", str(base)])
        growth = (r["peak"] - r["rss_before"]) / MB
        exceeded = r["reset"] or r["peak"] > r["peak_before"]  # else it stayed under an earlier high-water mark
        dense = len(OPS) * base**3 * 4
        dense_text = f"{dense / MB:,.0f} MB" if dense < 1 << 30 else f"{dense / (1 << 30):,.0f} GB"
        print(f"| {base:4d} | {r['tables'] / MB:9.2f} | {r['saved'] / MB:21.2f} "
              f"| {'' if exceeded else '≤ '}{growth:17.1f} | {dense_text:>21s} |", flush=True)
    print("\nRSS growth: resident set from just before the step to the process's peak after it "
          "(tables built during the step included); saved: storages autograd keeps for backward.")


def circuit(quick: bool, threads: int) -> None:
    if not Path(__file__).with_name("circuit.py").exists():
        return
    module = importlib.import_module("benchmarks.circuit")
    if hasattr(module, "main"):
        print("\n## Circuit ALU (benchmarks/circuit.py)\n")
        takes_threads = "threads" in inspect.signature(module.main).parameters
        module.main(quick, **({"threads": threads} if takes_threads else {}))


def _spin() -> None:
    """A competing CPU-bound process: spins until it is killed."""
    while True:
        pass


def contended(quick: bool, threads: int, base: int = 128) -> None:
    """The fast lookup against the dense matrix product while another CPU-bound process runs.

    The fast path's small operations run on one thread (``diffcomp.threads``),
    forward and backward; ``fast, spread`` is the same path with that turned
    off (every small operation spread over ``threads`` threads), for comparison.
    """
    import multiprocessing

    from diffcomp import threads as policy

    torch.set_num_threads(threads)
    print(f"\n## Contended: base {base}, forward+backward, batch {BATCH}, ops {', '.join(OPS)}, "
          f"{threads} torch threads, one competing CPU-bound process\n")
    op, a, b, grad = inputs(base)
    fast, matmul = step(lookup(base, OPS, "fast"), op, a, b, grad), step(lookup(base, OPS, "matmul"), op, a, b, grad)

    def spread() -> None:
        small, policy.SMALL = policy.SMALL, 0  # nothing counts as small: threads as torch sets them
        try:
            fast()
        finally:
            policy.SMALL = small

    competitor = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    competitor.start()
    try:
        times = round_robin({"fast": fast, "fast, spread": spread, "matmul": matmul}, 5 if quick else 15)
    finally:
        competitor.kill()
        competitor.join()
    print("| path | ms | matmul / path |")
    print("|------|---:|--------------:|")
    for name in times:
        print(f"| {name} | {median_ms(times[name]):.2f} | **{ratio(times, 'matmul', name):.1f}x** |")


def main(quick: bool = False, threads: int = 2) -> None:
    torch.set_num_threads(threads)
    speed(quick)
    per_op(quick)
    memory(quick)
    circuit(quick, threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few repeats, bases up to 128")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--contended", action="store_true",
                        help="only the fast lookup against the dense matrix product, with a competing process")
    parser.add_argument("--memory-child", type=int, metavar="BASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
    elif args.contended:
        contended(args.quick, args.threads)
    else:
        main(quick=args.quick, threads=args.threads)
