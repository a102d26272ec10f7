"""The hooks a diffcomp plug-in can implement.

A plug-in is a module (or any object) whose functions are marked with
:data:`diffcomp.hookimpl` and named after one of the specs below. It is found
through the entry-point group ``diffcomp``::

    [project.entry-points.diffcomp]
    my_alus = "my_package.alus"

Each hook receives a ``register`` callback and may call it any number of times
(the llm / tox style), so one plug-in can register many things while the host
owns validation and duplicate detection. Hooks may gain keyword arguments in
later versions, never lose or rename one: an implementation only declares the
arguments it uses.
"""

from __future__ import annotations

import pluggy

PROJECT = "diffcomp"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_encodings(register):
    """Register number encodings: ``register(name, factory)``.

    ``factory(**options)`` returns a :class:`diffcomp.NumberEncoding`; e.g. the
    built-in ``unit`` takes ``base`` and ``binary`` takes ``bits`` (paper,
    appendix B).
    """


@hookspec
def register_converters(register):
    """Register converters between encodings: ``register(source, target, fn)``.

    ``source`` and ``target`` are encoding names (``"unit"``, ``"binary"``);
    ``fn(x, source_encoding, target_encoding) -> Tensor`` maps a batch of
    encoded numbers to the target encoding, keeping probabilities (paper,
    appendix B). :func:`diffcomp.convert` finds them.
    """


@hookspec
def register_ops(register):
    """Register ALU operations as data: ``register(op)`` with a :class:`diffcomp.Op`.

    An op is a name and an integer function; the lookup ALU builds a table for
    any registered op, so a new op needs no new ALU.
    """


@hookspec
def register_alus(register):
    """Register arithmetic units: ``register(name, factory)``.

    ``factory(**options)`` returns a :class:`diffcomp.ALU` (a ``torch.nn.Module``
    with ``ops``, ``encoding`` and ``forward(op, a, b)``).
    """


@hookspec
def register_programs(register):
    """Register library programs: ``register(name, program)``.

    ``program`` is a :class:`diffcomp.Program`, assembly text, or a Python
    function in the subset :func:`diffcomp.compile` accepts (compiled when
    first used); every registered program can be reached by ``CALL name``
    from any other.
    """


@hookspec
def register_tasks(register):
    """Register tasks (data generators): ``register(name, factory)``."""


@hookspec
def register_parsers(register):
    """Register parser heads (hidden states -> machine state): ``register(name, factory)``."""
