"""Training speed of the augmented model against the bare backbone, and the §4.2 headline run.

    python benchmarks/train.py                 # the ratio (a minute or two)
    python benchmarks/train.py --headline      # natural-language mod-128 arithmetic, to 100% test

The ratio: training steps per second (forward, backward, AdamW step) of the
paper's minimal LLaMA with the computer (arithmetic, ``lookup`` base 128, the
parser, batch 32) divided by those of the same backbone with a plain linear
head on the same batches. Target >= 0.6: the computer costs at most 1.7x the
backbone. The two run in turn, round after round, so a busy machine slows
both alike; the median of the per-round ratios is reported.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._timing import median_ms, ratio, round_robin  # noqa: E402
from diffcomp.model import build_model, build_task  # noqa: E402


class BareBackbone(nn.Module):
    """The reference path: the same backbone, the last real token, a linear head over the base."""

    def __init__(self, model: nn.Module, classes: int) -> None:
        super().__init__()
        self.backbone, self.tokenizer = model.backbone, model.tokenizer
        self.head = nn.Linear(model.backbone.hidden_size, classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = self.tokenizer.from_bytes(batch["text"])
        hidden = self.backbone(ids, mask)  # (batch, seq, hidden)
        last = hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
        return nn.functional.cross_entropy(self.head(last), batch["answer"][:, 0])


def training_step(model: nn.Module, loss_of) -> callable:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch: dict[str, torch.Tensor]) -> None:
        loss = loss_of(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def speed_ratio(parser: str, rounds: int, seed: int = 0) -> dict[str, float]:
    task = build_task("arithmetic", {"base": 128, "examples": 4096}, seed=seed)
    augmented = build_model({"backbone": "llama", "parser": parser}, {"alu": "lookup", "base": 128}, task)
    bare = build_model({"backbone": "llama"}, {"alu": "lookup", "base": 128}, task)
    bare = BareBackbone(bare, 128)
    batches = itertools.cycle(DataLoader(task.dataset("train"), batch_size=32, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed)))
    step_augmented = training_step(augmented, lambda m, b: m(b).loss)
    step_bare = training_step(bare, lambda m, b: m(b))
    current: dict[str, dict] = {}

    def next_batch() -> None:
        current["batch"] = next(batches)

    times = round_robin({"batch": next_batch,
                         "augmented": lambda: step_augmented(current["batch"]),
                         "bare": lambda: step_bare(current["batch"])}, repeats=rounds, warmup=2)
    return {"augmented_ms": median_ms(times["augmented"]), "bare_ms": median_ms(times["bare"]),
            "ratio": ratio(times, "bare", "augmented")}  # steps/s(augmented) / steps/s(bare)


def headline(args: argparse.Namespace) -> None:
    """Natural-language mod-128 arithmetic with the minimal LLaMA (§4.2): test accuracy per epoch."""
    torch.manual_seed(args.seed)
    task = build_task("arithmetic", {"base": 128, "examples": args.examples}, seed=args.seed)
    options = {"values": args.values} if args.parser == "attention" else {}
    model = build_model({"backbone": "llama", "parser": args.parser, "tokenizer": args.tokenizer,
                         "parser_layer": args.parser_layer, "parser_options": options},
                        {"alu": "lookup", "base": 128}, task)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loader = DataLoader(task.dataset("train"), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    total = args.epochs * len(loader)
    warmup = min(args.warmup, total)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 5%
        opt, lambda s: (s + 1) / warmup if s < warmup else
        0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (s - warmup) / max(1, total - warmup))).item()))
    test = task.dataset("test").tensors
    start = time.perf_counter()
    print(f"{len(task.dataset('train'))} train / {len(task.dataset('test'))} test examples, {len(loader)} steps "
          f"per epoch, parser {args.parser} ({options}) on layer {args.parser_layer}, tokenizer {args.tokenizer}, "
          f"lr {args.lr}", flush=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in loader:
            out = model(batch)
            opt.zero_grad()
            out.loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            correct = torch.cat([model({k: v[i:i + 512] for k, v in test.items()}).correct
                                 for i in range(0, len(test["answer"]), 512)])
        minutes = (time.perf_counter() - start) / 60
        print(f"epoch {epoch}: last train loss {out.loss.item():.4f}, test accuracy "
              f"{correct.float().mean().item():.4f}, {minutes:.1f} min", flush=True)
        if correct.all():
            break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--headline", action="store_true", help="run the §4.2 experiment instead of the ratio")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds of the ratio")
    parser.add_argument("--parser", default="attention")
    parser.add_argument("--tokenizer", default="words", help="headline: 'words' (one token per number) or 'byte'")
    parser.add_argument("--values", default="embeddings", help="headline: the attention parser's values")
    parser.add_argument("--parser-layer", type=int, default=1, help="headline: the decoder layer the parser reads")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--examples", type=int, default=45151)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.headline:
        headline(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 32, {args.rounds} rounds")
    for name in ("pooled", "attention"):
        r = speed_ratio(name, args.rounds)
        print(f"parser {name:9s}: augmented {r['augmented_ms']:7.1f} ms/step, bare backbone {r['bare_ms']:7.1f} "
              f"ms/step, steps/s ratio {r['ratio']:.2f} (target >= 0.6)")


if __name__ == "__main__":
    main()
