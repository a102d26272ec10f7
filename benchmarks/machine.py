"""Machine cost: the machine's step against the reference step, soft against exact runs, ALU paths.

Four sections (``--sections``, default ``step train exact``):

* ``step``: each path a run that records a gradient can take (``plain``,
  ``fused``, ``compiled`` one step a call and ``compiled xK``
  ``--steps-per-call`` steps a call: ``Machine.stepping``,
  ``Machine.steps_per_call``) against the reference step
  (``diffcomp.machine.reference``, eqs. 2-6 as written): insertion sort of 12
  characters, base 128, batch 32, forward and backward (whole runs, round
  after round), the bytes autograd saves for backward on each path, and the
  tensor operations a step runs forward and backward on each path (counted
  over the first steps: what a step costs here is mostly their number, and
  the count does not depend on the machine's load). The ratio is given in
  wall time and in CPU time (with one thread, CPU time leaves out the time the
  process waited for a core on a shared machine); the compile time of the
  compiled paths is reported apart (``--no-compile`` leaves them out);
* ``train``: a whole training step of the llama-sort recipe's first stage on
  each path;
* ``exact``: a decided evaluation, 600 strings of 16 characters sorted at
  base 128 with no gradient: the soft machine (``exact=False``) against the
  exact run on integers (what ``Machine.run`` picks), the same final state;
* ``alu``: the comparison below (the default ALU path against dense tables).

Insertion sort (the library's ``insertion_sort``) of 8 and 12 characters at
base 128, batch 32, forward and backward (a cross-entropy on the sorted
memory, gradients to the initial memory): the same :class:`diffcomp.Machine`
run with the default ``lookup`` ALU (``mode="fast"``) and with a dense-table
reference in its place, in turn, round after round (``benchmarks._timing``):

* ``matmul``: the flattened ``(n², |ops|·n)`` table as one matrix product, the
  best dense form — whole runs;
* ``einsum``: the paper's eq. 7 as one einsum over the ``|ops| × n × n × n``
  table — so slow that only the first ``--einsum-steps`` steps of each run are
  timed (every step costs about the same: under autograd every op the program
  uses is evaluated each step).

Reported: the time ratio (dense / default; target >= 20), interpreter steps per
second (batch of 32, forward+backward) and memory: the bytes autograd saves for
backward, and the peak growth of the resident set in a fresh process.

    python benchmarks/machine.py                    # step, train and exact: benchmarks/results/machine.md
    python benchmarks/machine.py --sections alu     # the ALU paths
    python benchmarks/machine.py --quick            # a smoke test: small strings, base 32
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable

import diffcomp  # noqa: E402
from benchmarks._timing import (MB, SavedTensors, current_rss, median_ms, peak_rss, ratio,  # noqa: E402
                                reset_peak_rss, round_robin, run_child)
from diffcomp.alu import alu as make_alu  # noqa: E402  (diffcomp.alu, the function)
from diffcomp.machine import Machine  # noqa: E402

BATCH = 32
#: steps over which the tensor operations of a step are counted (every row still running)
OP_STEPS = 40


class OpCounter(TorchDispatchMode):
    """Counts the tensor operations (ATen calls, views included) run inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def machine(mode: str, length: int, base: int) -> Machine:
    program = diffcomp.program("insertion_sort")
    alu = make_alu("lookup", base=base, ops=program.ops, mode=mode)
    return Machine(program, alu, cells=length + 1, max_steps=10 * length * length + 50)


def problem(length: int, base: int, seed: int = 0):
    """One-hot memory of ``batch`` strings of lowercase characters (or 1..base-1), each followed by a 0."""
    rng = random.Random(seed)
    low, high = (97, 123) if base > 122 else (1, base)
    strings = [[rng.randrange(low, high) for _ in range(length)] for _ in range(BATCH)]
    targets = torch.tensor([sorted(s) + [0] for s in strings])  # (batch, cells)
    return [s + [0] for s in strings], targets


def step(m: Machine, strings, targets, max_steps: int | None = None):
    """One forward (the whole run, or its first ``max_steps``) and backward; returns the steps run."""
    enc = m.encoding
    memory = enc.encode(strings).requires_grad_()  # (batch, cells, base)
    registers = enc.encode([[0]] * len(strings))
    state = m.run(registers, memory, max_steps=max_steps)
    loss = torch.nn.functional.nll_loss(state.memory.clamp_min(1e-30).log().flatten(0, 1), targets.flatten())
    loss.backward()
    return int(state.steps.max()), state


#: the machine's step paths a run can take when it records a gradient (``Machine.stepping``), and the reference
PATHS = ("reference", "plain", "fused", "compiled", "compiled xK")


def set_path(m: Machine, path: str, k: int) -> None:
    """Step ``m`` as ``path``: ``compiled`` one compiled step a call, ``compiled xK`` ``k`` steps a call."""
    m.stepping = "fused" if path == "reference" else path.split()[0]
    m.steps_per_call = k if path == "compiled xK" else 1


def step_section(args: argparse.Namespace, length: int = 12) -> None:
    """The machine's step paths against the reference step: whole runs, forward+backward, and saved memory.

    ``plain``: the step differentiated by autograd operation by operation;
    ``fused``: one autograd node a step, the backward written out
    (``diffcomp.machine.fused``); ``compiled``: the same, compiled by
    ``torch.compile`` (its compile time reported apart; if it cannot compile
    here it says so and the row measures the fused step), one step a call;
    ``compiled xK``: ``--steps-per-call`` steps a call, compiled as one
    (``diffcomp.machine.multistep``).
    """
    from diffcomp.machine import fused

    m = machine("fast", length, args.base)
    strings, targets = problem(length, args.base)
    enc = m.encoding

    k = args.steps_per_call

    def run(path: str, max_steps: int | None = None):
        set_path(m, path, k)
        memory = enc.encode(strings).requires_grad_()
        state = m.run(enc.encode([[0]] * len(strings)), memory, reference=path == "reference", max_steps=max_steps)
        loss = torch.nn.functional.nll_loss(state.memory.clamp_min(1e-30).log().flatten(0, 1), targets.flatten())
        loss.backward()
        return state, memory.grad

    paths = [p for p in PATHS if not (p.startswith("compiled") and args.no_compile)]
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = {path: run(path) for path in paths}  # warm up (and compile), and check the answers
    first_compiled = time.perf_counter() - start
    compiled_ok = "compiled" in paths and not any("did not compile" in str(w.message) for w in caught)
    for path, (state, grad) in results.items():
        assert torch.equal(enc.decode(state.memory), targets), f"{path}: the machine did not sort"
    same = {path: torch.allclose(results[path][1].nan_to_num(), results["reference"][1].nan_to_num(), atol=1e-5)
            for path in paths}
    steps = int(results["reference"][0].steps.max())
    saved = {}
    for path in paths:
        with SavedTensors() as counter:
            set_path(m, path, k)
            memory = enc.encode(strings).requires_grad_()
            out = m.run(enc.encode([[0]] * len(strings)), memory, reference=path == "reference")
            loss = out.memory.sum()
        loss.backward()
        saved[path] = counter.nbytes / MB
    ops = {}  # tensor operations per step, forward and backward: what a step costs, free of the machine's load
    for path in paths:
        if path.startswith("compiled"):
            continue  # (its kernels are not tensor operations)
        set_path(m, path, k)
        memory = enc.encode(strings).requires_grad_()
        with OpCounter() as forward:
            out = m.run(enc.encode([[0]] * len(strings)), memory, reference=path == "reference", max_steps=OP_STEPS)
            loss = out.memory.sum()
        with OpCounter() as backward:
            loss.backward()
        ran = int(out.steps.max())
        ops[path] = (forward.count / ran, backward.count / ran)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    times, cpu = {p: [] for p in paths}, {p: [] for p in paths}  # wall and CPU seconds, in turn
    for _ in range(args.rounds):
        for path in paths:
            wall, used = time.perf_counter(), time.process_time()
            run(path)
            times[path].append(time.perf_counter() - wall)
            cpu[path].append(time.process_time() - used)
    print(f"## The machine's step against the reference step: insertion sort of {length} characters, base "
          f"{args.base}, batch {BATCH}, forward+backward, {torch.get_num_threads()} thread(s), load average "
          f"{load:.1f} at the start, {args.rounds} round(s)\n")
    if "compiled" in paths:
        seconds = ", ".join(f"{what} {t:.1f} s" for what, t in fused.COMPILE_SECONDS.items())
        print(f"compiled: {'compile times:' if compiled_ok else 'DID NOT COMPILE here (the rows are uncompiled);'} "
              f"{seconds} (the first runs of every path, compiling included, took {first_compiled:.1f} s); "
              f"compiled xK: {k} steps a call\n")
    print("| path | steps | ms/step | **reference / path** | reference / path, CPU time | saved for backward (MB) "
          "| ops/step (fwd+bwd) | gradient = reference's |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        op = f"{sum(ops[path]):.0f} ({ops[path][0]:.0f}+{ops[path][1]:.0f})" if path in ops else "-"
        print(f"| {path.replace('xK', f'x{k}')} | {steps} | {median_ms(times[path]) / steps:.2f} | **{ratio(times, 'reference', path):.2f}x** "
              f"| {ratio(cpu, 'reference', path):.2f}x | {saved[path]:.1f} | {op} | {'yes' if same[path] else 'NO'} |")
    print(flush=True)


def train_section(args: argparse.Namespace) -> None:
    """The llama-sort recipe's first training stage: a whole training step (forward, backward, AdamW) per path.

    The recipe's model (the minimal LLaMA, the span parser, the insertion-sort
    machine at base 128) on its first stage's strings (1-3 characters, answers
    4 wide), batch 32; the machine's ``stepping`` set to each path in turn, on
    the same batches, round after round.
    """
    import itertools

    from torch.utils.data import DataLoader

    from benchmarks._timing import round_robin
    from diffcomp.machine.interpreter import Interpreter
    from diffcomp.model import build_model, build_task
    from diffcomp.recipe import load_recipe

    recipe = load_recipe("llama-sort")
    stage = recipe.stages[0]
    options = {k: v for k, v in {**recipe.data["task"], **stage["task"]}.items() if k != "name"}
    task = build_task(recipe.data["task"]["name"], options, seed=0)
    model_options = {**recipe.data["model"], "parser_options": {**recipe.data["model"].get("parser_options", {}),
                                                                 **stage.get("parser_options", {})}}
    model = build_model(model_options, recipe.data["computer"], task)
    model.train()
    machines = [m for m in model.modules() if isinstance(m, Interpreter)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = itertools.cycle(DataLoader(task.dataset("train"), batch_size=BATCH, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0)))
    current: dict = {}

    def train_step(path: str) -> None:
        for m in machines:
            m.stepping = path
        torch.manual_seed(len(current))  # (the parser draws pointers: the same draws on every path)
        out = model(current["batch"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()

    paths = ["plain", "fused"] + ([] if args.no_compile else ["compiled"])
    current["batch"] = next(batches)
    start = time.perf_counter()
    for path in paths:
        train_step(path)  # warm up (and compile)
    warm = time.perf_counter() - start
    steps = {"batch": lambda: current.__setitem__("batch", next(batches))}
    steps.update({path: (lambda path=path: train_step(path)) for path in paths})
    times = round_robin(steps, repeats=args.rounds * 5, warmup=1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"## A training step of llama-sort (first stage: 1-3 characters, batch {BATCH}), "
          f"{torch.get_num_threads()} thread(s), load average {load:.1f}, {args.rounds * 5} rounds; "
          f"warm-up (compiling included) {warm:.1f} s\n")
    print("| path | ms/training step | **plain / path** |")
    print("|---|---|---|")
    for path in paths:
        print(f"| {path} | {median_ms(times[path]):.1f} | **{ratio(times, 'plain', path):.2f}x** |")
    print(flush=True)


def exact_section(args: argparse.Namespace, length: int = 16, strings_count: int = 600) -> None:
    """A decided evaluation: the soft machine against the exact run on integers, no gradient."""
    program = diffcomp.program("insertion_sort")
    alu = make_alu("lookup", base=args.base, ops=program.ops)
    m = Machine(program, alu, cells=length + 1, max_steps=10 * length * length + 50)
    rng = random.Random(1)
    low, high = (97, 123) if args.base > 122 else (1, args.base)
    strings = [[rng.randrange(low, high) for _ in range(length)] + [0] for _ in range(strings_count)]
    enc = m.encoding
    registers, memory = enc.encode([[0]] * strings_count), enc.encode(strings)
    with torch.no_grad():
        m.run(registers[:2], memory[:2])  # build the integer program and the op tables once
        exact_times, soft_times = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            exact = m.run(registers, memory)
            exact_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        soft = m.run(registers, memory, exact=False)
        soft_times.append(time.perf_counter() - start)
    same = all(torch.equal(getattr(exact, k), getattr(soft, k)) for k in ("steps",)) and all(
        torch.allclose(getattr(exact, k), getattr(soft, k), atol=1e-6)
        for k in ("memory", "register_file", "counter", "halted"))
    assert torch.equal(enc.decode(exact.memory), torch.tensor([sorted(s[:-1]) + [0] for s in strings]))
    soft_s, exact_s = min(soft_times), median_ms(exact_times) / 1e3
    print(f"## A decided evaluation: {strings_count} strings of {length} characters, base {args.base}, no gradient, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| steps | soft machine s | exact run s | **soft / exact** | same final state |")
    print("|---|---|---|---|---|")
    print(f"| {int(exact.steps.max())} | {soft_s:.2f} | {exact_s:.3f} | **{soft_s / exact_s:.0f}x** "
          f"| {'yes' if same else 'NO'} |\n", flush=True)


def child(args: argparse.Namespace) -> None:
    """In a fresh process: one run of one path; print its saved-for-backward bytes and peak RSS growth."""
    torch.set_num_threads(args.threads)
    m = machine(args.child, args.length, args.base)
    strings, targets = problem(args.length, args.base)
    step(m, strings[:2], targets[:2], max_steps=3)  # build tables and caches first
    before = current_rss()
    reset_peak_rss()
    with SavedTensors() as saved:
        steps, _ = step(m, strings, targets, args.steps)
    print(json.dumps({"saved_mb": saved.nbytes / MB, "rss_mb": (peak_rss() - before) / MB, "steps": steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 12])
    parser.add_argument("--base", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--einsum-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurements")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled steps (torch.compile)")
    parser.add_argument("--steps-per-call", type=int, default=8,
                        help="steps a compiled call advances on the 'compiled xK' path (default 8)")
    parser.add_argument("--sections", nargs="+", choices=("step", "train", "exact", "alu"),
                        default=["step", "train", "exact"])
    parser.add_argument("--quick", action="store_true", help="4 characters, base 32, one round")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.lengths, args.base, args.rounds, args.einsum_steps = [4], 32, 1, 4
    torch.set_num_threads(args.threads)
    if "step" in args.sections:
        step_section(args, 4 if args.quick else 12)
    if "train" in args.sections:
        train_section(args)
    if "exact" in args.sections:
        exact_section(args, *((6, 40) if args.quick else (16, 600)))
    if "alu" not in args.sections:
        return
    print(f"# insertion sort, base {args.base}, batch {BATCH}, forward+backward, {args.threads} thread(s)\n")
    rows, memory_rows = [], []
    for length in args.lengths:
        strings, targets = problem(length, args.base)
        machines = {mode: machine(mode, length, args.base) for mode in ("fast", "matmul", "einsum")}
        steps, state = step(machines["fast"], strings, targets)  # warm up, and check the answer
        enc = machines["fast"].encoding
        assert torch.equal(enc.decode(state.memory), targets), "the machine did not sort"
        whole = round_robin({mode: lambda mode=mode: step(machines[mode], strings, targets)
                             for mode in ("fast", "matmul")}, repeats=args.rounds, warmup=0)
        short = round_robin({mode: lambda mode=mode: step(machines[mode], strings, targets, args.einsum_steps)
                             for mode in ("fast", "einsum")}, repeats=args.rounds, warmup=1)
        fast_ms = median_ms(whole["fast"])
        rows.append((length, steps, fast_ms, 1e3 * steps / fast_ms, median_ms(whole["matmul"]),
                     ratio(whole, "matmul", "fast"), median_ms(short["fast"]) / args.einsum_steps,
                     median_ms(short["einsum"]) / args.einsum_steps, ratio(short, "einsum", "fast")))
        if not args.no_memory:
            for mode in ("fast", "matmul"):
                out = run_child([__file__, "--child", mode, "--length", str(length), "--base", str(args.base),
                                 "--threads", str(args.threads)])
                memory_rows.append((length, mode, out["steps"], out["saved_mb"], out["rss_mb"]))
        print(f"length {length}: done ({time.strftime('%H:%M:%S')})", file=sys.stderr)

    print("| characters | steps | default ms/run | default steps/s | matmul ms/run | **matmul / default** "
          f"| default ms/step | einsum ms/step | **einsum / default** |")
    print("|---|---|---|---|---|---|---|---|---|")
    for length, steps, fast_ms, sps, matmul_ms, r_matmul, fast_step, einsum_step, r_einsum in rows:
        print(f"| {length} | {steps} | {fast_ms:.0f} | {sps:.0f} | {matmul_ms:.0f} | **{r_matmul:.1f}x** "
              f"| {fast_step:.1f} | {einsum_step:.0f} | **{r_einsum:.0f}x** |")
    if memory_rows:
        print("\n| characters | ALU path | steps | saved for backward (MB) | peak RSS growth (MB) |")
        print("|---|---|---|---|---|")
        for length, mode, steps, saved, rss in memory_rows:
            print(f"| {length} | {'default (fast)' if mode == 'fast' else mode} | {steps} | {saved:.1f} | {rss:.1f} |")


if __name__ == "__main__":
    main()
