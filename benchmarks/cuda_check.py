"""A GPU check of the computer: every part on CUDA, against the CPU, and what the GPU buys.

    python benchmarks/cuda_check.py [--quick]

Checks (exit status 1 if any fails): the lookup ALU's fast path equals the
dense einsum reference on CUDA, in values and gradients; the circuit ALU on
CUDA equals the classical ops at 32 bits; the machine's insertion sort on
CUDA equals the CPU run, sharp and soft (values and gradients). Then it times
forward+backward on CUDA against the same work on the CPU (ratios measured in
one run) and prints one JSON line per figure.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)"
    print(json.dumps({"device": name, "torch": torch.__version__}), flush=True)
    lookup_checks(args.quick)
    circuit_checks()
    machine_checks(args.quick)
    print(json.dumps({"failures": FAILURES}), flush=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
