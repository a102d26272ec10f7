"""``diffcomp ask``: ask a trained model (a run folder or a saved model folder) questions in words."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask a trained model (a run folder or a saved model) questions",
                       description="Load the model in RUN_OR_MODEL (a run folder, or a folder save_pretrained "
                                   "wrote) and print its answer to each QUESTION, a line each; with no QUESTION, "
                                   "the questions are read from standard input, one a line.")
    p.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder or a saved model folder")
    p.add_argument("questions", metavar="QUESTION", nargs="*", help='e.g. "Sort the string \\"dcba\\""')
    p.add_argument("--stage", default=None, metavar="NAME",
                   help="a run folder's training stage whose weights to use (default: the last finished; "
                        "NAME-best: that stage's best evaluation)")
    p.add_argument("--json", action="store_true", help="print one JSON object a line")
    p.add_argument("--explain", action="store_true",
                   help="also show the parse, the selected program, the machine's steps and the answer's probability")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="draw the machine's run on the first question (counter, memory, doubt, halting mass)")
    p.add_argument("--soft", action="store_true",
                   help="with --explain or --plot: run the computer on the parser's distributions rather than "
                        "its decisions, to watch doubt spread")
    p.add_argument("--engine", choices=("auto", "numpy", "torch"), default="auto",
                   help="what answers: 'numpy' (a saved model's decided answers without torch: fast to start), "
                        "'torch' (the model itself), or 'auto' (the default): NumPy where it can answer, else "
                        "torch; --plot, --soft, --stage and --device need torch")
    p.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="CPU threads, torch's or NumPy's (default 1: a question's machine steps and a small "
                        "model's layers are small operations, which more threads slow down on a busy machine)")
    p.set_defaults(handler=run, more_positionals="questions")


def _questions(args: argparse.Namespace):
    if args.questions:
        yield from args.questions
        return
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.strip():
            yield line


def run(args: argparse.Namespace) -> int:
    from ..inference import load

    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ValueError(f"--plot {args.plot}: the plot is written as PNG; name a .png file")
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    detailed = args.explain or args.soft
    needs = [flag for flag, on in (("--soft", args.soft), ("--plot", args.plot is not None)) if on]
    if needs and args.engine == "numpy":
        raise ValueError(f"--engine numpy answers decided questions only; {', '.join(needs)} need(s) the torch "
                         "model: leave --engine out, or use --engine torch")
    engine = "torch" if needs else args.engine
    if "numpy" not in sys.modules:  # NumPy's BLAS reads its thread count when it loads
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    model, engine, _ = load(args.model, engine=engine, stage=args.stage, device=args.device, explain=args.explain)
    if engine == "torch":
        import torch

        torch.set_num_threads(args.threads)
    plotted = False
    pending: list[str] = []

    def flush() -> None:
        for question, answer in zip(pending, model.ask(pending)):
            print(json.dumps({"question": question, "answer": answer, "engine": engine}) if args.json else answer,
                  flush=True)
        pending.clear()

    for question in _questions(args):
        if detailed or (args.plot is not None and not plotted):
            flush()
            explanation = model.explain(question, decide=not args.soft, record=args.plot is not None and not plotted)
            if explanation.record is not None:
                from ..machine.plot import plot_run

                kind = "soft run" if args.soft else "decided run"
                plot_run(explanation.record, args.plot, title=f"{question}  ->  {explanation.answer!r}  ({kind})")
                print(f"diffcomp ask: the machine's run is drawn in {args.plot}", file=sys.stderr)
                plotted = True
            elif args.plot is not None and not plotted:
                what = ("chains programs (a plot follows one program's run)"
                        if getattr(model.computer, "steps", 1) > 1 else "is a single ALU call, not a machine run")
                print(f"diffcomp ask: this model's computer {what}; nothing to plot", file=sys.stderr)
                plotted = True
            if args.json:
                print(json.dumps({**explanation.as_dict(), "engine": engine} if detailed else
                                 {"question": question, "answer": explanation.answer, "engine": engine}), flush=True)
            elif detailed:
                print(f"{explanation}\nengine:   {engine}\n", flush=True)
            else:
                print(explanation.answer, flush=True)
            continue
        pending.append(question)
        if len(pending) >= 64 or args.questions == []:  # from standard input: answer each line as it comes
            flush()
    flush()
    return 0
