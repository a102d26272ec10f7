"""The plug-in system: discovery through entry points, failures, duplicates, strict mode.

Plug-ins in these tests are real installed distributions (a ``.dist-info``
folder with ``entry_points.txt`` on ``sys.path``), run in a subprocess: no
entry points are monkeypatched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import diffcomp
from diffcomp.errors import DuplicateNameError, PluginError, UnknownNameError
from diffcomp.registry import Registry


def install_fake_distribution(site: Path, dist: str, module: str, source: str, entry_name: str | None = None) -> None:
    """Write a module and the metadata pip would write for it, into ``site``."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[diffcomp]\n{entry_name or module} = {module}\n")
    (info / "RECORD").write_text("")


def run_cli(args: list[str], site: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(site), **env}
    environment.pop("DIFFCOMP_STRICT_PLUGINS", None) if "DIFFCOMP_STRICT_PLUGINS" not in env else None
    return subprocess.run([sys.executable, "-m", "diffcomp", *args], capture_output=True, text=True,
                          env=environment, timeout=120)


BROKEN = """
raise ImportError("this plug-in is broken on purpose")
"""

DUPLICATE = """
import diffcomp

@diffcomp.hookimpl
def register_encodings(register):
    register("unit", object)
"""

GOOD = """
import diffcomp

@diffcomp.hookimpl
def register_tasks(register):
    register("echo", dict)
"""


def test_builtins_register_through_entry_points():
    infos = {info.name: info for info in diffcomp.plugins()}
    assert infos["encodings"].distribution == "diffcomp"
    assert infos["encodings"].registered["encoding"] == ("unit", "binary")
    assert "unit->binary" in infos["encodings"].registered["converter"]
    assert {"add", "div", "lt"} <= set(infos["ops"].registered["op"])


def test_broken_plugin_is_reported_and_skipped(tmp_path):
    install_fake_distribution(tmp_path, "broken-dist", "broken_plugin", BROKEN)
    install_fake_distribution(tmp_path, "good-dist", "good_plugin", GOOD)
    result = run_cli(["plugins", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'broken_plugin'" in result.stderr and "broken-dist" in result.stderr
    assert "this plug-in is broken on purpose" in result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["broken_plugin"]["error"].startswith("ImportError")
    assert listed["good_plugin"]["registered"] == {"task": ["echo"]}
    assert listed["good_plugin"]["distribution"] == "good-dist"
    assert listed["encodings"]["registered"]["encoding"] == ["unit", "binary"]


def test_strict_mode_makes_a_broken_plugin_fatal(tmp_path):
    install_fake_distribution(tmp_path, "broken-dist", "broken_plugin", BROKEN)
    result = run_cli(["plugins"], tmp_path, DIFFCOMP_STRICT_PLUGINS="1")
    assert result.returncode == 2
    assert "broken_plugin" in result.stderr and "DIFFCOMP_STRICT_PLUGINS" in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_name_across_plugins_names_both(tmp_path):
    install_fake_distribution(tmp_path, "dupe-dist", "dupe_plugin", DUPLICATE)
    result = run_cli(["plugins"], tmp_path)
    assert result.returncode == 2
    assert ("encoding 'unit' is registered twice: by plug-in 'encodings' (distribution diffcomp 0.1.0) "
            "and by plug-in 'dupe_plugin' (distribution dupe-dist 0.1)") in result.stderr


def make_plugin(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(module, hook, diffcomp.hookimpl(fn))
    return module


def test_duplicate_within_one_plugin():
    registry = Registry()

    def register_tasks(register):
        register("a", dict)
        register("a", list)

    with pytest.raises(DuplicateNameError, match="task 'a' is registered twice by plug-in 'p'"):
        registry.add_plugin(make_plugin("p", register_tasks=register_tasks))


def test_failed_plugin_leaves_nothing_behind():
    registry = Registry()

    def register_tasks(register):
        register("half", dict)
        raise RuntimeError("half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        registry.add_plugin(make_plugin("p", register_tasks=register_tasks))
    assert registry.names("task") == () and registry.plugins() == []
    registry.add_plugin(make_plugin("p", register_tasks=lambda register: register("half", dict)))
    assert registry.names("task") == ("half",)


def test_lookup_of_unknown_name_suggests_and_lists():
    registry = Registry()
    registry.add_plugin(make_plugin("p", register_tasks=lambda register: (register("sort", dict),
                                                                          register("fibonacci", dict))))
    with pytest.raises(UnknownNameError) as info:
        registry.get("task", "srot")
    assert str(info.value) == "unknown task 'srot' (did you mean 'sort'?); registered tasks: fibonacci, sort"


def test_invalid_registrations_are_plugin_errors():
    registry = Registry()
    with pytest.raises(PluginError, match="invalid name"):
        registry.add_plugin(make_plugin("p", register_tasks=lambda register: register("", dict)))
    with pytest.raises(PluginError, match="expected a diffcomp.Op"):
        registry.add_plugin(make_plugin("q", register_ops=lambda register: register("not an op")))


def test_op_registered_as_name_and_function():
    registry = Registry()
    registry.add_plugin(make_plugin("p", register_ops=lambda register: register("avg", lambda a, b: (a + b) // 2)))
    op = registry.get("op", "avg")
    assert op(5, 8, 16) == 6 and op.arity == 2


def test_register_plugin_from_python_and_hooks_may_take_no_arguments():
    registry = Registry()
    info = registry.add_plugin(make_plugin("quiet", register_tasks=lambda: None))
    assert info.registered == {} and info.distribution is None


def test_plugins_is_callable_and_a_package():
    import diffcomp.plugins.encodings  # noqa: F401  (binds diffcomp.plugins to the package)

    assert callable(diffcomp.plugins)
    assert any(info.name == "ops" for info in diffcomp.plugins())


# -- plug-ins load when a name is looked up -------------------------------------------------------------


BROKEN_ALU = """
raise ImportError("this ALU plug-in is broken on purpose")
"""


def install_with_kinds(site: Path, dist: str, module: str, source: str, kinds: tuple[str, ...]) -> None:
    """A distribution whose plug-in says which kinds it registers (the ``diffcomp.<kind>`` groups)."""
    install_fake_distribution(site, dist, module, source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    groups = "".join(f"[diffcomp.{kind}]\n{module} = {module}\n" for kind in kinds)
    (info / "entry_points.txt").write_text(f"[diffcomp]\n{module} = {module}\n{groups}")


def run_python(code: str, site: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(site)}
    environment.pop("DIFFCOMP_STRICT_PLUGINS", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, timeout=120)


def test_a_look_up_loads_only_the_plugins_that_may_have_the_name(tmp_path):
    install_fake_distribution(tmp_path, "good-dist", "good_plugin", GOOD)  # says nothing: may register anything
    result = run_python("""
        import sys, json
        from diffcomp.registry import get_registry
        registry = get_registry()
        registry.get("op", "add")
        first, torch_imported = registry.loaded(), "torch" in sys.modules
        registry.get("alu", "lookup")
        second = registry.loaded()
        registry.get("task", "echo")                 # found only in the plug-in that says nothing
        print(json.dumps([first, second, registry.loaded(), torch_imported]))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    first, second, third, torch_imported = json.loads(result.stdout)
    assert first == ["ops"] and not torch_imported
    assert second[0] == "ops" and "lookup" in second and "circuit" not in second and "tasks" not in second
    assert "good_plugin" in third


def test_the_ops_look_up_imports_no_torch(tmp_path):
    result = run_python("""
        import sys
        import diffcomp
        from diffcomp.registry import get_registry
        get_registry().get("op", "lt")
        diffcomp.assemble("r0 = LT r1, r2\\nSTOP")
        print("torch" in sys.modules)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_an_unused_broken_plugin_does_not_break_an_unrelated_look_up(tmp_path):
    install_with_kinds(tmp_path, "broken-dist", "broken_alu", BROKEN_ALU, ("alus",))
    install_fake_distribution(tmp_path, "broken2-dist", "broken_plugin", BROKEN)  # says nothing: may have ops
    result = run_python("""
        import diffcomp
        print(diffcomp.alu("lookup", base=8).ops[:2], diffcomp.execute("insertion_sort", memory=[3, 1, 2, 0],
                                                                       base=32).memory)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "('zero', 'inc') [1, 2, 3, 0]" in result.stdout
    assert "broken_alu" not in result.stderr  # never imported: it registers ALUs only, and 'lookup' was found
    assert "plug-in 'broken_plugin'" in result.stderr  # listing the ops loads it: reported, skipped


def test_a_broken_plugin_that_is_asked_for_gives_its_error(tmp_path):
    install_with_kinds(tmp_path, "broken-dist", "broken_alu", BROKEN_ALU, ("alus",))
    result = run_python("""
        import diffcomp
        try:
            diffcomp.alu("broken_alu", bits=8)
        except diffcomp.UnknownNameError as exc:
            print(exc)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "unknown alu 'broken_alu'" in result.stdout and "registered alus: circuit, lookup" in result.stdout
    assert ("plug-in 'broken_alu' (distribution broken-dist 0.1) failed to load, so nothing it registers is "
            "known: ImportError: this ALU plug-in is broken on purpose") in result.stdout
    assert "'broken_alu'" in result.stderr and "skipped" in result.stderr  # the warning, as it loaded
    cli = run_cli(["exec", "insertion_sort", "--memory", "2,1,0", "--alu", "broken_alu"], tmp_path)
    assert cli.returncode == 2 and "ImportError: this ALU plug-in is broken on purpose" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_the_builtins_say_what_they_register():
    """The ``diffcomp.<kind>`` groups of pyproject.toml against what each built-in registers."""
    from importlib import metadata

    from diffcomp.registry import HOOKS, kind_group

    declared: dict[str, set[str]] = {}
    for kind in HOOKS:
        for ep in metadata.entry_points(group=kind_group(kind)):
            declared.setdefault(ep.name, set()).add(kind)
    infos = {info.name: info for info in diffcomp.plugins() if info.distribution == "diffcomp"}
    assert set(infos) <= set(declared)
    for name, info in infos.items():
        assert set(info.registered) == declared[name], name


def test_a_plugin_that_registers_a_kind_it_does_not_list_is_told(tmp_path):
    install_with_kinds(tmp_path, "good-dist", "good_plugin", GOOD, ("alus",))  # registers a task, lists alus
    result = run_cli(["plugins"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("plug-in 'good_plugin' (distribution good-dist) registers task but lists itself only in the "
            "entry-point groups diffcomp.alus; add it to diffcomp.tasks") in result.stderr
