"""Watching the machine compute: record a run step by step, and draw it.

:class:`Recorder` is a ``trace`` callback for :meth:`diffcomp.Machine.run`
(and :func:`diffcomp.execute`'s ``recorder``): before every step it keeps,
for the first row of the batch, the counter's distribution over program
lines, each memory cell's most likely value and that value's probability,
and the halting mass. :func:`plot_run` draws a :class:`RunRecord`:

1. the program counter: a heatmap of its distribution over the program's
   lines (labelled with their instruction text) against steps;
2. memory: each cell's most likely value over time (its character, for text),
   written where it changes;
3. doubt: one minus the probability of each cell's most likely value. A
   decided run on one-hot inputs stays white; a soft run, on the parser's
   distributions, shows its doubt spreading as the program forks a little
   mass at every comparison;
4. the halting mass ``h``, and the largest doubt of any cell.

matplotlib is imported only when drawing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import torch


@attrs.frozen
class RunRecord:
    """A recorded run of one batch row: ``T`` states, the last one after the final step.

    ``counter`` ``(T, lines)``; ``values`` and ``certainty`` ``(T, cells)``;
    ``halted`` ``(T,)``; ``lines``: each program line's text (line 0 is the
    halting address); ``value_format``: ``"text"`` draws values as characters.
    """

    counter: torch.Tensor
    values: torch.Tensor
    certainty: torch.Tensor
    halted: torch.Tensor
    lines: tuple[str, ...]
    value_format: str = "numbers"

    @property
    def steps(self) -> int:
        return self.counter.shape[0] - 1


def line_labels(machine: Any) -> tuple[str, ...]:
    """``"insertion_sort 3: r1 = READ r0"`` for each address of the machine's linked program."""
    labels = []
    for line in machine.image.lines:
        if line.instruction is None:
            labels.append("(halted)")
        else:
            where = line.instruction.line if line.instruction.line is not None else ""
            labels.append(f"{line.program} {where}: {line.instruction}".replace(" :", ":"))
    return tuple(labels)


class Recorder:
    """``trace(step, state)`` for a machine run; :meth:`finish` with the final state, then :meth:`record`.

    ``keep=False`` counts nothing but what :meth:`finish` needs (for callers
    that only want the final state).
    """

    def __init__(self, machine: Any = None, *, value_format: str = "numbers", keep: bool = True) -> None:
        self.keep, self.value_format = keep, value_format
        self._rows: list[tuple[torch.Tensor, ...]] = []
        self.machine = None
        if machine is not None:
            self.start(machine)

    def start(self, machine: Any) -> None:
        self.machine = machine
        self._rows.clear()

    def __call__(self, step: int, state: Any) -> None:
        if self.keep:
            self._rows.append(self._row(state))

    def finish(self, state: Any) -> None:
        if self.keep:
            self._rows.append(self._row(state))

    def _row(self, state: Any) -> tuple[torch.Tensor, ...]:
        encoding = self.machine.encoding
        memory = state.memory[0].detach().float()  # (cells, *shape)
        if encoding.kind == "binary":
            values = encoding.decode(memory)
            certainty = torch.maximum(memory, 1 - memory).clamp(0, 1).prod(-1)
        else:
            certainty, values = memory.max(-1)
        return (state.counter[0].detach().float().cpu(), values.cpu(), certainty.cpu(),
                state.halted[0].detach().float().cpu())

    def record(self) -> RunRecord:
        if not self._rows:
            raise ValueError("nothing was recorded: pass the recorder as the run's trace, then call finish(state)")
        cells = max(r[1].shape[0] for r in self._rows)  # memory may have grown between runs; pad with zeros

        def pad(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(x, (0, cells - x.shape[0]))

        return RunRecord(counter=torch.stack([r[0] for r in self._rows]),
                         values=torch.stack([pad(r[1]) for r in self._rows]),
                         certainty=torch.stack([pad(r[2]) for r in self._rows]),
                         halted=torch.stack([r[3] for r in self._rows]),
                         lines=line_labels(self.machine), value_format=self.value_format)


def _value_text(value: int, fmt: str) -> str:
    if fmt == "text":
        return "·" if value == 0 else (chr(value) if 32 < value < 127 else str(value))
    return str(value)


def plot_run(record: RunRecord, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw ``record`` into the PNG ``path`` (see the module's description); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, PowerNorm

    counter = record.counter.numpy()  # (T, lines)
    values, certainty = record.values.numpy(), record.certainty.numpy()  # (T, cells)
    doubt = 1.0 - certainty
    halted = record.halted.numpy()
    steps, lines = counter.shape
    busy = [c for c in range(values.shape[1]) if values[:, c].any()]
    cells = min(values.shape[1], (max(busy) + 2) if busy else 1)  # of the cells most likely 0 throughout, one
    values_all_cells = values.shape[1]
    values, doubt = values[:, :cells], doubt[:, :cells]
    used = [k for k in range(lines) if counter[:, k].max() > 1e-4] or list(range(lines))  # lines the run visits
    shown = [k for k in range(lines) if k in used or k == 0]
    label_size = 7 if len(shown) <= 40 else 5

    heights = [max(3.0, 0.17 * len(shown)), max(2.0, 0.2 * cells), max(1.6, 0.12 * cells), 1.4]
    fig, axes = plt.subplots(4, 1, figsize=(11, sum(heights) + 1.2), sharex=True,
                             gridspec_kw={"height_ratios": heights})
    extent = (-0.5, steps - 0.5)

    ax = axes[0]
    smooth = "antialiased" if steps > 400 else "nearest"  # more steps than pixels: average them, drop none
    ax.imshow(counter[:, shown].T, aspect="auto", interpolation=smooth, cmap="Blues", norm=PowerNorm(0.5, 0, 1),
              extent=(*extent, len(shown) - 0.5, -0.5))  # square root: a little stray mass still shows
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([record.lines[k] for k in shown], fontsize=label_size, family="monospace")
    ax.set_title("program counter: probability of each line, square-root colour scale (lines never reached left out)",
                 fontsize=9, loc="left")

    ax = axes[1]
    palette = ListedColormap(plt.get_cmap("tab20")(range(20)))
    ax.imshow(values.T % 20, aspect="auto", interpolation="nearest", cmap=palette, vmin=0, vmax=19, alpha=0.45,
              extent=(*extent, cells - 0.5, -0.5))
    gap = max(1, steps // 60)  # at most ~60 labels per cell row
    for c in range(cells):
        last_at, last = -gap, None
        for t in range(steps):
            v = int(values[t, c])
            if v != last and t - last_at >= gap:
                ax.text(t, c, _value_text(v, record.value_format), ha="left", va="center", fontsize=7,
                        family="monospace")
                last_at, last = t, v
            elif v != last:
                last = None  # changed again too soon to write: write it at the next chance
    ax.set_yticks(range(cells))
    ax.set_yticklabels([f"m{c}" for c in range(cells)], fontsize=6)
    hidden = values_all_cells - cells
    ax.set_title("memory: each cell's most likely value (written where it changes)"
                 + (f"; {hidden} more cells, most likely 0 throughout, not shown" if hidden else ""),
                 fontsize=9, loc="left")

    ax = axes[2]
    ax.imshow(doubt.T, aspect="auto", interpolation=smooth, cmap="Reds", vmin=0, vmax=1,
                      extent=(*extent, cells - 0.5, -0.5))
    ax.set_yticks(range(cells))
    ax.set_yticklabels([f"m{c}" for c in range(cells)], fontsize=6)
    ax.set_title(f"doubt: 1 - P(most likely value) per cell, white 0 to red 1 (largest at the end: "
                 f"{doubt[-1].max():.3g})", fontsize=9, loc="left")

    ax = axes[3]
    ax.plot(range(steps), halted, color="black", label="halting mass h")
    ax.plot(range(steps), doubt.max(1), color="tab:red", label="largest doubt of a cell")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("step")
    ax.legend(fontsize=7, loc="center left")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.98 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["Recorder", "RunRecord", "line_labels", "plot_run"]
