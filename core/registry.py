"""The plug-in manager: discovers plug-ins, collects what they register, looks names up.

Plug-ins are found through the entry-point group ``diffcomp`` (built-ins
included, so they go through exactly the path a third party does). Each
hook implementation is called with a ``register`` callback bound to its
plug-in, so the registry knows who registered what, can name both plug-ins
when a name is registered twice, and can show ``diffcomp plugins``.

Plug-ins load when a name is looked up, not before: a look-up of an
``alu`` first loads the plug-in whose entry point has the name looked up
(``lookup`` for ``diffcomp.alu("lookup")``), then the others that say they
register ALUs, then those that say nothing, until the name is found; a name
nobody registered loads them all before it is called unknown. A plug-in says
what it registers by repeating its entry point in the groups of those kinds
(``diffcomp.alus``, ``diffcomp.ops``, ... : :data:`HOOKS` without
``register_``); one that does not may register anything. So a command loads
only what it uses (``diffcomp ask`` on a saved model, the ops of its
programs), and a broken plug-in nobody asks for costs nothing.
``diffcomp.plugins()`` and :meth:`Registry.names` load every plug-in that may
register what they list; a name registered twice is an error as soon as
both plug-ins have loaded (:func:`register_plugin` first loads every
installed plug-in, so a clash with one is reported at once).

A plug-in that fails to import (or raises inside a hook) is reported with a
:class:`PluginWarning` naming the entry point and its distribution, and
skipped; every other plug-in still loads. A look-up that finds nothing says
which plug-ins failed to load. ``DIFFCOMP_STRICT_PLUGINS=1`` turns that
warning into a :class:`~diffcomp.errors.PluginError`.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from importlib import metadata
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import DuplicateNameError, PluginError, UnknownNameError

ENTRY_POINT_GROUP = hookspecs.PROJECT

#: kind of thing -> the hook that registers it
HOOKS: dict[str, str] = {
    "encoding": "register_encodings",
    "converter": "register_converters",
    "op": "register_ops",
    "alu": "register_alus",
    "program": "register_programs",
    "task": "register_tasks",
    "parser": "register_parsers",
}


class PluginWarning(UserWarning):
    """A plug-in failed to load and was skipped."""


@attrs.frozen
class PluginInfo:
    """What ``diffcomp.plugins()`` reports about one plug-in."""

    name: str
    distribution: str | None
    version: str | None
    registered: dict[str, tuple[str, ...]]  # kind -> names, in registration order
    error: str | None = None  # why it was skipped, if it was

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "registered": {k: list(v) for k, v in self.registered.items()}, "error": self.error}


@attrs.frozen
class _Entry:
    value: Any
    plugin: PluginInfo


def strict_plugins() -> bool:
    return os.environ.get("DIFFCOMP_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def kind_group(kind: str) -> str:
    """The entry-point group in which a plug-in says it registers things of ``kind`` (``diffcomp.alus``)."""
    return f"{ENTRY_POINT_GROUP}.{HOOKS[kind].removeprefix('register_')}"


class Registry:
    """Everything the installed plug-ins registered, by kind and name; plug-ins load as names are looked up."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._entries: dict[str, dict[str, _Entry]] = {kind: {} for kind in HOOKS}
        self._plugins: dict[str, PluginInfo] = {}
        self._pending: dict[str, metadata.EntryPoint] = {}  # plug-in name -> its entry point, not loaded yet
        self._kinds: dict[str, set[str]] = {}  # plug-in name -> the kinds it says it registers (absent: any)
        self._lock = threading.RLock()
        self._strict: bool | None = None

    # -- loading -----------------------------------------------------------------

    def discover(self, *, strict: bool | None = None) -> None:
        """Find the plug-ins of the ``diffcomp`` entry-point group (built-ins first), without importing any."""
        self._strict = strict
        found = metadata.entry_points()
        seen: set[tuple[str, str]] = set()
        for ep in sorted(found.select(group=ENTRY_POINT_GROUP), key=_builtin_first):
            if (ep.name, ep.value) in seen:  # one distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            if ep.name not in self._plugins:
                self._pending.setdefault(ep.name, ep)
        for kind in HOOKS:
            for ep in found.select(group=kind_group(kind)):
                self._kinds.setdefault(ep.name, set()).add(kind)

    def load_entry_points(self, *, strict: bool | None = None) -> None:
        """Import and register every plug-in of the ``diffcomp`` entry-point group."""
        with self._lock:
            self.discover(strict=strict)
            self.load_all()

    def load_all(self) -> None:
        """Load every plug-in found and not yet loaded."""
        with self._lock:
            while self._pending:
                self._load(next(iter(self._pending)))

    def _load(self, name: str) -> None:
        """Import and register the pending plug-in ``name`` (a failure is reported and skipped, see the module)."""
        ep = self._pending.pop(name)
        strict = strict_plugins() if self._strict is None else self._strict
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else None
        try:
            module = ep.load()
            info = self.add_plugin(module, name=ep.name, distribution=dist_name, version=version)
        except DuplicateNameError:
            raise
        except Exception as exc:  # a broken plug-in must not take the others down
            message = (f"diffcomp plug-in {ep.name!r} (entry point {ep.value!r} of distribution "
                       f"{dist_name or 'unknown'}) failed to load: {type(exc).__name__}: {exc}")
            if strict:
                raise PluginError(message + " [DIFFCOMP_STRICT_PLUGINS is set]") from exc
            warnings.warn(message + "; skipped (set DIFFCOMP_STRICT_PLUGINS=1 to make this fatal)",
                          PluginWarning, stacklevel=4)
            self._plugins[ep.name] = PluginInfo(ep.name, dist_name, version, {}, error=f"{type(exc).__name__}: {exc}")
            return
        undeclared = sorted(set(info.registered) - self._kinds.get(ep.name, set(info.registered)))
        if undeclared:  # found only by chance: a look-up of those kinds does not load it
            warnings.warn(f"diffcomp plug-in {ep.name!r} (distribution {dist_name or 'unknown'}) registers "
                          f"{', '.join(undeclared)} but lists itself only in the entry-point groups "
                          f"{', '.join(sorted(kind_group(k) for k in self._kinds[ep.name]))}; add it to "
                          f"{', '.join(kind_group(k) for k in undeclared)}", PluginWarning, stacklevel=4)

    def _providers(self, kind: str, name: str | None = None) -> list[str]:
        """The pending plug-ins that may register a ``kind``, in the order to try them for ``name``: the one
        whose entry point is called ``name``, those that say they register ``kind``, those that say nothing."""
        def rank(plugin: str) -> int | None:
            kinds = self._kinds.get(plugin)
            if kinds is not None and kind not in kinds:
                return None  # it says it registers other kinds only
            return 0 if plugin == name else 1 if kinds is not None else 2

        ranked = sorted((rank(p), i, p) for i, p in enumerate(self._pending) if rank(p) is not None)
        return [p for _, _, p in ranked]

    def add_plugin(self, plugin: object, *, name: str | None = None,
                   distribution: str | None = None, version: str | None = None) -> PluginInfo:
        """Register one plug-in object and collect what its hooks register.

        All or nothing: if a hook raises or a name is taken, nothing the plug-in
        registered is kept.
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if name in self._plugins and self._plugins[name].error is None:
            raise PluginError(f"a plug-in named {name!r} is already registered")
        self._pm.register(plugin, name=name)
        staged: dict[str, dict[str, Any]] = {kind: {} for kind in HOOKS}
        try:
            for kind, hook_name in HOOKS.items():
                for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        arguments = {"register": _make_register(kind, staged[kind], name)}
                        impl.function(**{arg: arguments[arg] for arg in impl.argnames})
        except BaseException:
            self._pm.unregister(plugin)
            raise
        info = PluginInfo(name, distribution, version,
                          {kind: tuple(names) for kind, names in staged.items() if names})
        for kind, names in staged.items():
            for item, value in names.items():
                if item in self._entries[kind]:
                    self._pm.unregister(plugin)
                    other = self._entries[kind][item].plugin
                    raise DuplicateNameError(
                        f"{kind} {item!r} is registered twice: by plug-in {other.name!r} "
                        f"({_describe(other)}) and by plug-in {name!r} ({_describe(info)})")
        for kind, names in staged.items():
            for item, value in names.items():
                self._entries[kind][item] = _Entry(value, info)
        self._plugins[name] = info
        return info

    # -- look-ups ----------------------------------------------------------------

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name`` of ``kind``, loading the plug-ins that may register it until one
        has; a clear error if none does (naming the plug-ins that failed to load)."""
        entries = self._entries[kind]
        if isinstance(name, str) and name not in entries:
            with self._lock:
                for plugin in self._providers(kind, name):
                    if name in entries:
                        break
                    if plugin in self._pending:  # (a plug-in loading another may have loaded it)
                        self._load(plugin)
        if not isinstance(name, str) or name not in entries:
            self.load_kind(kind)
            failed = [p for p in self._plugins.values() if p.error is not None]
            note = "".join(f"; plug-in {p.name!r} ({_describe(p)}) failed to load, so nothing it registers is "
                           f"known: {p.error}" for p in failed)
            raise UnknownNameError(kind, str(name), entries, note)
        return entries[name].value

    def load_kind(self, kind: str) -> None:
        """Load every pending plug-in that may register a ``kind``."""
        with self._lock:
            for plugin in self._providers(kind):
                if plugin in self._pending:
                    self._load(plugin)

    def names(self, kind: str) -> tuple[str, ...]:
        self.load_kind(kind)
        return tuple(self._entries[kind])

    def owner(self, kind: str, name: str) -> PluginInfo:
        self.get(kind, name)
        return self._entries[kind][name].plugin

    def plugins(self) -> list[PluginInfo]:
        self.load_all()
        return list(self._plugins.values())

    def loaded(self) -> tuple[str, ...]:
        """The plug-ins loaded so far (or failed to), in the order they loaded."""
        return tuple(self._plugins)


def _make_register(kind: str, staged: dict[str, Any], plugin_name: str) -> Callable[..., None]:
    def add(name: str, value: Any) -> None:
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plug-in {plugin_name!r} registered a {kind} with an invalid name {name!r}")
        if name in staged:
            raise DuplicateNameError(f"{kind} {name!r} is registered twice by plug-in {plugin_name!r}")
        staged[name] = value

    if kind == "converter":
        def register(source: str, target: str, fn: Callable) -> None:
            """Register ``fn(x, source_encoding, target_encoding)`` from ``source`` to ``target``."""
            add(f"{source}->{target}", fn)
    elif kind == "op":
        def register(op: Any, fn: Callable | None = None, **options: Any) -> None:
            """Register an :class:`~diffcomp.ops.Op`, or ``register(name, fn, arity=2, doc="")``."""
            from .ops import Op

            if fn is not None:
                op = Op(op, fn, **options)
            if not isinstance(op, Op):
                raise PluginError(f"plug-in {plugin_name!r} registered {op!r} as an op; "
                                  "expected a diffcomp.Op or register(name, fn)")
            add(op.name, op)
    elif kind == "program":
        def register(name: str, program: Any) -> None:
            """Register a :class:`~diffcomp.Program`, assembly text, or a Python function (compiled when used)."""
            import types

            from .machine.program import Program

            if not isinstance(program, (Program, str, types.FunctionType)):
                raise PluginError(f"plug-in {plugin_name!r} registered {type(program).__name__} as program "
                                  f"{name!r}; expected a diffcomp.Program, assembly text or a Python function")
            add(name, program)
    else:
        def register(name: str, value: Any) -> None:
            add(name, value)
    return register


def _describe(info: PluginInfo) -> str:
    if info.distribution:
        return f"distribution {info.distribution} {info.version or ''}".rstrip()
    return "registered from Python"


def _builtin_first(ep: metadata.EntryPoint) -> tuple[int, str]:
    return (0 if ep.value.startswith("diffcomp.") else 1, ep.name)


_lock = threading.RLock()
_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry: the installed plug-ins found on first use, each loaded when first needed."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                registry = Registry()
                registry.discover()
                _default = registry
    return _default


def reset_registry() -> None:
    """Forget the loaded plug-ins; the next look-up discovers them again."""
    global _default
    with _lock:
        _default = None


def register_plugin(plugin: object, name: str | None = None) -> PluginInfo:
    """Register a plug-in object from Python (no entry point needed); every installed plug-in loads first, so
    a name it shares with one is reported now."""
    registry = get_registry()
    registry.load_all()
    return registry.add_plugin(plugin, name=name)


def plugins() -> list[PluginInfo]:
    """Each loaded plug-in: name, distribution, version and what it registered."""
    return get_registry().plugins()


def names(kind: str) -> tuple[str, ...]:
    return get_registry().names(kind)


def lookup(kind: str, name: str) -> Any:
    return get_registry().get(kind, name)


def build(kind: str, name: str, options: dict[str, Any]) -> Any:
    """Call the factory registered as ``name`` with ``options``, naming any option it lacks."""
    import inspect

    from .errors import did_you_mean

    factory = lookup(kind, name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return factory(**options)
    parameters = signature.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        valid = [p for p, v in parameters.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)]
        for option in options:
            if option not in valid:
                raise ValueError(f"{kind} {name!r} has no option {option!r}{did_you_mean(option, valid)}; "
                                 f"its options: {', '.join(valid) or '(none)'}")
        missing = [p for p in valid if parameters[p].default is inspect.Parameter.empty and p not in options]
        if missing:
            raise ValueError(f"{kind} {name!r} needs the option(s) {', '.join(missing)}")
    return factory(**options)
