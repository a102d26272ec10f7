"""Circuit ALU forward+backward cost, as ratios against reference paths measured in the same run.

For add, mul and div at 8, 16, 32 and 64 bits (batch 32, soft operands that
need gradients): the circuit's time relative to its own 8-bit time; for add,
the prefix-scan adder against the bit-by-bit ripple of the same circuit; and
at 8 bits, the circuit against the ``lookup`` table of the same range
(base 256), directly and through the swap's adapter.

    python benchmarks/circuit.py            # full run
    python benchmarks/circuit.py --quick    # a few repeats, for a smoke test
    python benchmarks/circuit.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable

from benchmarks._timing import median_ms, ratio, round_robin  # noqa: E402
from diffcomp import registry  # noqa: E402
from diffcomp.alu import alu as build_alu  # noqa: E402
from diffcomp.plugins import gates  # noqa: E402
from diffcomp.swap import swap  # noqa: E402

BATCH = 32
OPS = ("add", "mul", "div")
WIDTHS = (8, 16, 32, 64)


def forward_backward(alu, name: str, a: torch.Tensor, b: torch.Tensor) -> Callable[[], None]:
    """One forward and backward through ``alu`` running op ``name`` on fresh leaves."""
    op = alu.op_distribution([name] * BATCH)

    def step() -> None:
        x, y = a.detach().requires_grad_(), b.detach().requires_grad_()
        alu(op, x, y).sum().backward()

    return step


def adder_step(add: Callable, a: torch.Tensor, b: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x, y = a.detach().requires_grad_(), b.detach().requires_grad_()
        total, carry = add(x, y)
        (total.sum() + carry.sum()).backward()

    return step


def main(quick: bool = False, threads: int = 2) -> dict[str, list[float]]:
    torch.set_num_threads(threads)
    repeats = 3 if quick else 15
    generator = torch.Generator().manual_seed(0)
    steps = {}
    for bits in WIDTHS:
        circuit = build_alu("circuit", bits=bits, ops=OPS)
        a, b = torch.rand(2, BATCH, bits, generator=generator)  # soft bits, (batch, bits)
        for name in OPS:
            steps[f"{name}/{bits}"] = forward_backward(circuit, name, a, b)
        steps[f"ripple/{bits}"] = adder_step(gates.ripple_carry_add_reference, a, b)
    with_table = "lookup" in registry.names("alu")
    if with_table:
        table = build_alu("lookup", base=256, ops=OPS)
        swapped = swap(table, "circuit", bits=8)
        u, v = torch.rand(2, BATCH, 256, generator=generator).softmax(-1)  # soft unit numbers, (batch, 256)
        for name in OPS:
            steps[f"{name}/table"] = forward_backward(table, name, u, v)
            steps[f"{name}/swap"] = forward_backward(swapped, name, u, v)
    times = round_robin(steps, repeats, warmup=2)
    report(times, with_table, repeats)
    return times


def report(times: dict[str, list[float]], with_table: bool, repeats: int) -> None:
    ms = {key: f"{median_ms(t):8.2f}" for key, t in times.items()}
    print(f"circuit ALU, forward+backward, batch {BATCH}, {repeats} interleaved rounds, "
          f"{torch.get_num_threads()} threads; ratios are medians of per-round ratios")
    print()
    print("| op  | bits | circuit ms | vs 8 bits |")
    print("|-----|-----:|-----------:|----------:|")
    for name in OPS:
        for bits in WIDTHS:
            print(f"| {name:3s} | {bits:4d} | {ms[f'{name}/{bits}']}   "
                  f"| {ratio(times, f'{name}/{bits}', f'{name}/8'):8.1f}× |")
    print()
    print("| bits | add (scan) ms | bit-by-bit ripple ms | ripple / scan |")
    print("|-----:|--------------:|---------------------:|--------------:|")
    for bits in WIDTHS:
        print(f"| {bits:4d} | {ms[f'add/{bits}']}      | {ms[f'ripple/{bits}']}             "
              f"| {ratio(times, f'ripple/{bits}', f'add/{bits}'):12.1f}× |")
    if not with_table:
        print("\n(the lookup ALU is not registered: no circuit/table ratio)")
        return
    print()
    print("| op  | 8-bit circuit ms | lookup base 256 ms | circuit / table | swap (unit 256 -> circuit 8) / table |")
    print("|-----|-----------------:|-------------------:|----------------:|-------------------------------------:|")
    for name in OPS:
        print(f"| {name:3s} | {ms[f'{name}/8']}         | {ms[f'{name}/table']}           "
              f"| {ratio(times, f'{name}/8', f'{name}/table'):14.2f}× "
              f"| {ratio(times, f'{name}/swap', f'{name}/table'):36.2f}× |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few repeats only")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    main(quick=args.quick, threads=args.threads)
