"""``metrics.jsonl``: one JSON object per evaluation, appended as training goes.

Each record holds at least ``stage, epoch, step, split, loss, accuracy``,
plus ``examples``, ``lr``, ``elapsed_s`` (seconds of training in the stage,
carried across resumes) and ``time`` (Unix time of the write). An
evaluation's record (split ``train``, ``validation``, ``test`` or a name of
the caller's) also holds ``soft_loss`` and ``soft_accuracy``: ``accuracy`` is
decided (the model acting on its most likely choices), ``soft_accuracy`` the
computer run on the distributions (see :meth:`~diffcomp.train.Trainer.evaluate`).
Records of split ``batches`` (``log_every_steps``) hold the training batches'
means and no soft fields. Several stages (one
:class:`~diffcomp.train.Trainer` each) append to one file.

Progress: on a terminal a tqdm bar (:func:`progress_bar`); elsewhere (output
piped to a file or a pager, a CI log) one line per record
(:func:`progress_line`), which a bar redrawn in place would garble.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

#: record fields that depend on the clock, not on the computation
TIME_FIELDS = ("elapsed_s", "time")


#: what joins a stage's name and its try's number (no stage name holds an '@')
TRY_MARK = "@try"


def try_stage(stage: str, attempt: int) -> str:
    """The name a try of ``stage`` logs its records under (``TrainConfig.restarts``): ``<stage>@try<i>``."""
    return f"{stage}{TRY_MARK}{attempt}"


class MetricsLog:
    """Appends records to a JSON-lines file; does nothing when ``enabled`` is false (ranks > 0)."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True, echo: TextIO | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.echo = echo  # where to print each record as a progress line, if anywhere

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.echo is not None:
            print(progress_line(record), file=self.echo, flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(_finite(record), sort_keys=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def size(self) -> int:
        """Bytes written so far (a checkpoint remembers this to undo later appends on resume)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        """Drop whatever was appended after the file was ``size`` bytes long."""
        if self.enabled and self.size() > size:
            with open(self.path, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())

    def drop_stage(self, stage: str) -> None:
        """Remove the records of ``stage`` (a stage restarting from scratch), and of its tries
        (``<stage>@try<i>``, see ``TrainConfig.restarts``), keeping the others."""
        def keep(record: dict[str, Any]) -> dict[str, Any] | None:
            name = str(record.get("stage"))
            return None if name == stage or name.startswith(f"{stage}{TRY_MARK}") else record

        self._rewrite(keep)

    def rename_stage(self, old: str, new: str) -> None:
        """Log the records of stage ``old`` as ``new``'s (the try a stage with restarts went on from)."""
        self._rewrite(lambda record: {**record, "stage": new} if record.get("stage") == old else record)

    def _rewrite(self, change) -> None:
        """Replace the file, atomically, by its records passed through ``change`` (None drops a record)."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        out, changed = [], False
        for line in lines:
            if not line.strip():
                out.append(line)
                continue
            record = json.loads(line)
            new = change(record)
            if new is None or new != record:
                changed = True
            if new is not None:
                out.append(line if new == record else json.dumps(new, sort_keys=False) + "\n")
        if changed:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(out), encoding="utf-8")
            os.replace(tmp, self.path)


def read_metrics(path: str | os.PathLike, *, stage: str | None = None,
                 split: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (or of a run folder holding one), optionally filtered."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if (stage is None or r.get("stage") == stage)
            and (split is None or r.get("split") == split)]


def without_time(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with the clock fields removed: what two identical runs agree on exactly."""
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: write them as strings ("nan", "inf", "-inf")."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def progress_lines(enabled: bool = True) -> TextIO | None:
    """Where progress goes as lines: stderr when ``enabled`` and not a terminal (where no bar shows), else nowhere."""
    return sys.stderr if enabled and not sys.stderr.isatty() else None


def progress_line(record: dict[str, Any]) -> str:
    """One metrics record as a line: ``train-table  epoch 1  step 94  test  loss 0.0123  accuracy 0.9950``."""
    parts = [str(record.get("stage", "")), f"epoch {record.get('epoch')}", f"step {record.get('step')}",
             str(record.get("split", ""))]
    for key in ("loss", "accuracy"):
        value = record.get(key)
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}" if key == "loss" else f"{key} {value:.4f}")
    if isinstance(record.get("elapsed_s"), (int, float)):
        parts.append(f"{record['elapsed_s']:.1f}s")
    return "  ".join(parts)


def progress_bar(total: int, *, initial: int = 0, desc: str = "", enabled: bool = True):
    """A tqdm bar on stderr, shown only when ``enabled`` and stderr is a terminal."""
    from tqdm import tqdm

    show = enabled and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=not show, leave=False,
                dynamic_ncols=True, unit="step")
