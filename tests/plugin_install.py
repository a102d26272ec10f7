"""Install a plug-in package for real (pip, no network), as a user would, into a folder a test puts on the path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip_install(package: Path, target: Path) -> Path:
    """``pip install --target target package`` (no dependencies, no build isolation); returns ``target``."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--target", str(target), str(package)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return target
