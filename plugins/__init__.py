"""diffcomp's built-in plug-ins.

Each module here is registered through the ``diffcomp`` entry-point group in
``pyproject.toml``, exactly as a third-party plug-in is; the core never imports
them by name.

This package is also the stable function ``diffcomp.plugins()``: importing a
submodule binds ``diffcomp.plugins`` to this package, so the package itself
is made callable and returns what is installed and what each plug-in registered.
"""

from __future__ import annotations

import sys
import types


class _PluginsModule(types.ModuleType):
    def __call__(self):
        """Each loaded plug-in (name, distribution, version, what it registered)."""
        from diffcomp.registry import plugins

        return plugins()


sys.modules[__name__].__class__ = _PluginsModule
