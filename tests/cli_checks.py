"""Helpers the command-line tests share: write a recipe file, and check a refusal (exit 2, one message)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from diffcomp.cli import main


def write(tmp_path: Path, text: str, name: str = "recipe.toml") -> Path:
    """``text`` (dedented) as the file ``name`` in ``tmp_path``."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def fails(capsys, args: list[str], *fragments: str) -> str:
    """Run the CLI; it must exit 2 with one message holding every fragment, and no traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err
