"""docs/architecture.md, the project's contract, stays true: its stable names exist, its examples run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import diffcomp

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
STABLE_BLOCK = ARCHITECTURE.split("## Stable API", 1)[1].split("```python", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("name", sorted(set(re.findall(r"diffcomp\.(\w+)", STABLE_BLOCK))))
def test_every_stable_name_exists(name):
    assert hasattr(diffcomp, name), f"docs/architecture.md promises diffcomp.{name}"


@pytest.mark.parametrize("hook", ["register_encodings", "register_converters", "register_ops", "register_alus",
                                  "register_programs", "register_tasks", "register_parsers"])
def test_every_hook_is_documented_and_specified(hook):
    from diffcomp import hookspecs

    assert f"`{hook}`" in ARCHITECTURE and callable(getattr(hookspecs, hook))


def test_the_op_table_matches_the_registered_ops():
    table = ARCHITECTURE.split("### Op meanings", 1)[1].split("### Built-in ALUs", 1)[0]
    documented = set(re.findall(r"\| `(\w+)` \|", table))
    assert documented == set(diffcomp.registry.names("op"))


def test_the_layer_table_names_modules_that_exist():
    table = ARCHITECTURE.split("## Layers", 1)[1].split("## Stable API", 1)[0]
    paths = re.findall(r"`((?:core|plugins)/[\w/*.]+)`", table)
    assert len(paths) > 20
    for path in paths:
        assert list(ROOT.glob(path)), f"docs/architecture.md names {path}, which does not exist"


def test_nothing_points_at_a_design_file_outside_the_project():
    outside = "DESIGN" + ".md"  # (spelled apart, so that this file does not name it either)
    for path in [*ROOT.glob("core/**/*.py"), *ROOT.glob("plugins/**/*.py"), *ROOT.glob("tests/*.py"),
                 ROOT / "README.md", ROOT / "CONTRIBUTING.md"]:
        assert outside not in path.read_text(), path
