"""A GPU check of the computer: every part on CUDA, against the CPU, and what the GPU buys.

    python benchmarks/cuda_check.py [--quick]

Checks (exit status 1 if any fails): the lookup ALU's fast path equals the
dense einsum reference on CUDA, in values and gradients; the circuit ALU on
CUDA equals the classical ops at 32 bits; the machine's insertion sort on
CUDA equals the CPU run, sharp and soft (values and gradients); the machine's
step at batch 1024 on CUDA equals the CPU's. Then it times forward+backward on
CUDA against the same work on the CPU (ratios measured in one run) and prints
one JSON line per figure, and the machine's step at batch 1024 (forward and
backward, and forward alone) on the CPU, on CUDA eagerly, in CUDA graphs and
under ``torch.compile``: each variant is tried on its own, and one that fails
is reported as failed (it does not stop the others). The last line is a JSON
summary. Without a CUDA device it says so and exits 0.

    python benchmarks/cuda_check.py --only step    # just the batch-1024 step (the GPU target: >= 10x the CPU)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import diffcomp

FAILURES: list[str] = []
DEVICE = "cuda"  # --device cpu dry-runs the script where there is no GPU


def check(name: str, ok: bool, detail: str = "") -> None:
    print(json.dumps({"check": name, "ok": bool(ok), "detail": detail}), flush=True)
    if not ok:
        FAILURES.append(name)


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def lookup_checks(quick: bool) -> None:
    g = torch.Generator().manual_seed(0)
    for base in (16, 64):
        fast = diffcomp.alu("lookup", base=base).to(DEVICE)
        dense = diffcomp.alu("lookup", base=base, mode="einsum").to(DEVICE)
        op = torch.rand(8, len(fast.ops), generator=g, dtype=torch.float64).softmax(-1).to(DEVICE).requires_grad_()
        a = torch.rand(8, base, generator=g, dtype=torch.float64).softmax(-1).to(DEVICE).requires_grad_()
        b = torch.rand(8, base, generator=g, dtype=torch.float64).softmax(-1).to(DEVICE).requires_grad_()
        out_fast, out_dense = fast(op, a, b), dense(op, a, b)
        weights = torch.rand_like(out_fast)
        grads_fast = torch.autograd.grad((out_fast * weights).sum(), (op, a, b))
        grads_dense = torch.autograd.grad((out_dense * weights).sum(), (op, a, b))
        same = torch.allclose(out_fast, out_dense, atol=1e-10) and all(
            torch.allclose(x, y, atol=1e-9) for x, y in zip(grads_fast, grads_dense))
        check(f"lookup base {base}: fast == einsum on cuda (values and gradients)", same)
    for base in ((128, 256) if quick else (128, 256, 1024)):
        ops = ("add", "sub", "mul", "div", "min", "max", "eq", "lt")
        results = {}
        for device in ("cpu", DEVICE):
            alu = diffcomp.alu("lookup", base=base, ops=ops).to(device)
            op = torch.full((32, len(ops)), 1 / len(ops), device=device)
            a = torch.rand(32, base, device=device).softmax(-1).requires_grad_()
            b = torch.rand(32, base, device=device).softmax(-1).requires_grad_()
            results[device] = timed(lambda: alu(op, a, b).sum().backward(), 3 if device == "cpu" else 20, device)
        print(json.dumps({"figure": "lookup forward+backward, batch 32, 8 ops", "base": base,
                          "cuda_ms": round(1e3 * results[DEVICE], 3), "cpu_ms": round(1e3 * results["cpu"], 3),
                          "cpu/cuda": round(results["cpu"] / results[DEVICE], 1)}), flush=True)


def circuit_checks() -> None:
    g = torch.Generator().manual_seed(1)
    alu = diffcomp.alu("circuit", bits=32).to(DEVICE)
    enc = alu.encoding
    a_int = torch.randint(0, 2**32, (64,), generator=g)
    b_int = torch.randint(0, 2**32, (64,), generator=g)
    b_int[:4] = 0
    for name in alu.ops:
        op = alu.op_distribution([name] * 64, device=DEVICE)
        out = enc.to_ints(alu(op, enc.encode(a_int, device=DEVICE), enc.encode(b_int, device=DEVICE)).cpu())
        reference = diffcomp.registry.lookup("op", name)
        expected = [reference(x, y, 2**32) for x, y in zip(a_int.tolist(), b_int.tolist())]
        check(f"circuit 32 bits on cuda: {name} exact", out == expected)


def machine_checks(quick: bool) -> None:
    length = 8 if quick else 12
    g = torch.Generator().manual_seed(2)
    alu = diffcomp.alu("lookup", base=128, ops=("inc", "dec", "lt"))
    machine = diffcomp.Machine(diffcomp.program("insertion_sort"), alu, cells=length + 1, max_steps=1000)
    enc = alu.encoding
    strings = torch.randint(97, 123, (32, length), generator=g)
    cells = torch.cat([strings, torch.zeros(32, 1, dtype=torch.int64)], 1)
    results = {}
    for device in ("cpu", DEVICE):
        m = machine.to(device)
        memory = enc.encode(cells, device=device).requires_grad_()
        registers = enc.encode(torch.zeros(32, 1, dtype=torch.int64), device=device)
        state = m.run(registers, memory)
        target = enc.encode([sorted(row[:length]) + [0] for row in cells.tolist()], device=device)
        loss = -(state.memory.clamp_min(1e-30).log() * target).sum()  # cross-entropy on the sorted cells
        (grad,) = torch.autograd.grad(loss, memory)
        results[device] = (enc.to_ints(state.memory.detach().cpu()), grad.cpu(), int(state.steps.max()))
    expected = [sorted(row[:length]) + [0] for row in cells.tolist()]
    check("machine insertion sort on cuda equals the CPU run and sorted()",
          results[DEVICE][0] == results["cpu"][0] == expected)
    check("machine gradients on cuda equal the CPU's", torch.allclose(results[DEVICE][1], results["cpu"][1],
                                                                        rtol=1e-4, atol=1e-5))
    times = {}
    for device in ("cpu", DEVICE):
        m = machine.to(device)

        def step():
            memory = enc.encode(cells, device=device).requires_grad_()
            state = m.run(enc.encode(torch.zeros(32, 1, dtype=torch.int64), device=device), memory)
            state.memory.sum().backward()
        times[device] = timed(step, 1 if device == "cpu" else 3, device)
    print(json.dumps({"figure": f"insertion sort of {length} characters, base 128, batch 32, forward+backward",
                      "steps": results["cpu"][2], "cuda_s": round(times[DEVICE], 3), "cpu_s": round(times["cpu"], 3),
                      "cpu/cuda": round(times["cpu"] / times[DEVICE], 1)}), flush=True)


STEP_SUMMARY: dict[str, object] = {}
BEGAN = time.perf_counter()
#: after this many seconds the remaining variants are skipped (reported as such): the whole script stays under 4 minutes
BUDGET_S = 170


def step_checks(quick: bool, batch: int = 1024, length: int = 12, steps: int = 24) -> None:
    """The machine's step at ``batch``: CUDA against the CPU in values, then each way of running it, timed."""
    alu = diffcomp.alu("lookup", base=128, ops=("inc", "dec", "lt"))
    machine = diffcomp.Machine(diffcomp.program("insertion_sort"), alu, cells=length + 1, max_steps=1000)
    machine.skipping = False  # no host sync in a step: what graphs and compile need (and what a GPU wants)
    enc, n = alu.encoding, machine.n_registers
    g = torch.Generator().manual_seed(3)
    strings = torch.randint(97, 123, (batch, length), generator=g)
    cells = torch.cat([strings, torch.zeros(batch, 1, dtype=torch.int64)], 1)
    # a soft start: the string a little uncertain, so that every step does real (not one-hot) work
    memory0 = (0.98 * enc.encode(cells) + 0.02 / 128)
    entry = machine.image.entries["insertion_sort"]

    def start(device: str, grad: bool):
        memory = memory0.to(device).requires_grad_(grad)
        registers = enc.encode(torch.zeros(batch, 1, dtype=torch.int64), device=device)
        m = machine.to(device)
        state = m.initial_state(registers, memory, torch.full((batch,), entry, device=device))
        return m, memory, state, m.compiled(torch.float32, torch.device(device))

    def tensors_step(m, program):
        steps0 = torch.zeros(batch, dtype=torch.long, device=program.E.device)

        def step(c, R, M, h):
            from diffcomp.machine.interpreter import State

            s = m(State(M, R, c, h, steps0, n), program)
            return s.counter, s.register_file, s.memory, s.halted
        return step

    built: dict[tuple, object] = {}  # each way of stepping is built (compiled, captured) once, then reused

    def run(fn, device: str, grad: bool):
        m, memory, state, program = start(device, grad)
        key = (fn, device, grad)
        if key not in built:
            built[key] = fn(m, program)
        step = built[key]
        c, R, M, h = state.counter, state.register_file, state.memory, state.halted
        if grad:  # every input a leaf that needs a gradient, so that each call sees the same kind of input
            c, R, h = (x.detach().requires_grad_() for x in (c, R, h))
        with torch.set_grad_enabled(grad):
            for _ in range(steps):
                c, R, M, h = step(c, R, M, h)
            if grad:
                (M.clamp_min(1e-30).log() * memory0.to(device)).sum().neg().backward()
        return M.detach(), (memory.grad if grad else None)

    # values: CUDA (eager) against the CPU
    try:
        cpu_M, cpu_g = run(tensors_step, "cpu", True)
        dev_M, dev_g = run(tensors_step, DEVICE, True)
        check(f"machine step at batch {batch} on {DEVICE} equals the CPU ({steps} soft steps, values and gradients)",
              torch.allclose(dev_M.cpu(), cpu_M, atol=1e-5) and torch.allclose(dev_g.cpu(), cpu_g, rtol=1e-3,
                                                                                 atol=1e-5))
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        check(f"machine step at batch {batch} on {DEVICE} equals the CPU", False, f"{type(exc).__name__}: {exc}")

    def graphed(m, program):
        step = tensors_step(m, program)
        _, _, state, _ = start(DEVICE, True)
        sample = tuple(x.detach().clone().requires_grad_(x.dtype.is_floating_point)
                       for x in (state.counter, state.register_file, state.memory, state.halted))
        return torch.cuda.make_graphed_callables(step, sample)

    def compiled(m, program):
        return torch.compile(tensors_step(m, program), dynamic=False)

    variants = {"cpu": (tensors_step, "cpu"), "cuda eager": (tensors_step, DEVICE)}
    if DEVICE == "cuda":
        variants.update({"cuda graphs": (graphed, DEVICE), "cuda compile": (compiled, DEVICE)})
    figures: dict[str, dict[str, float | str]] = {}
    for name, (fn, device) in variants.items():
        for grad in (True, False):
            key = f"{name}, {'forward+backward' if grad else 'forward'}"
            if time.perf_counter() - BEGAN > BUDGET_S and name != "cpu":
                figures[key] = {"failed": f"skipped: the script has run {BUDGET_S} s (compiling and capturing are slow)"}
                print(json.dumps({"figure": f"machine step, batch {batch}", "variant": key, **figures[key]}))
                continue
            if name == "cuda graphs" and not grad:  # a graph of the forward alone: capture it under no_grad
                fn_used = _graphed_forward(tensors_step, start)
            else:
                fn_used = fn
            try:
                started = time.perf_counter()
                out, _ = run(fn_used, device, grad)  # warm-up: compiles, captures
                warm = time.perf_counter() - started
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = timed(lambda: run(fn_used, device, grad), 1 if quick or device == "cpu" else 3, device)
                figures[key] = {"ms_per_step": round(1e3 * seconds / steps, 3), "warm_up_s": round(warm, 1)}
            except Exception as exc:  # noqa: BLE001 - each variant reports its own failure
                figures[key] = {"failed": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(json.dumps({"figure": f"machine step, batch {batch}", "variant": key, **figures[key]}), flush=True)
    for grad in ("forward+backward", "forward"):
        cpu = figures.get(f"cpu, {grad}", {}).get("ms_per_step")
        best = min((v["ms_per_step"], k) for k, v in figures.items()
                   if k.endswith(grad) and "ms_per_step" in v and not k.startswith("cpu"))if cpu else None
        if cpu and best:
            STEP_SUMMARY[grad] = {"cpu_ms_per_step": cpu, "best": best[1], "best_ms_per_step": best[0],
                                  "cpu/best": round(cpu / best[0], 1)}
    STEP_SUMMARY["variants"] = figures


def _graphed_forward(tensors_step, start):
    """A forward-only step captured in a CUDA graph (static inputs copied in, outputs cloned out)."""
    def make(m, program):
        step = tensors_step(m, program)
        _, _, state, _ = start(DEVICE, False)
        static = [x.detach().clone() for x in (state.counter, state.register_file, state.memory, state.halted)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):
                step(*static)  # warm-up on a side stream, as graph capture requires
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            outputs = step(*static)

        def replay(*inputs):
            for s, x in zip(static, inputs):
                s.copy_(x)
            graph.replay()
            return tuple(o.clone() for o in outputs)
        return replay
    return make


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    parser.add_argument("--only", choices=("step",), help="run only the batch-1024 step section")
    parser.add_argument("--batch", type=int, default=1024, help="batch of the step section")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"device": None, "cuda": False, "summary": "no CUDA device: nothing to check"}), flush=True)
        return 0
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)"
    print(json.dumps({"device": name, "torch": torch.__version__}), flush=True)
    sections = [("step", lambda: step_checks(args.quick, args.batch))]
    if args.only is None:
        sections = [("lookup", lambda: lookup_checks(args.quick)), ("circuit", circuit_checks),
                    ("machine", lambda: machine_checks(args.quick))] + sections
    for section, fn in sections:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one section's failure must not hide the others'
            check(f"section {section} ran", False, f"{type(exc).__name__}: {str(exc)[:300]}")
    print(json.dumps({"summary": {"device": name, "failures": FAILURES, "step": STEP_SUMMARY}}), flush=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
