"""How to run twistd from the Python environment wire is installed in."""

from __future__ import annotations

import os
import sys


def twistd_argv() -> list[str]:
    """The twistd of this interpreter's environment (never another one on PATH)."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(twistd):
        return [twistd]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def wire_environment() -> dict[str, str]:
    """Environment additions so a child process imports this same ``wire``
    (and finds its twistd plugins), even when it runs from a source checkout."""
    import wire

    root = os.path.dirname(os.path.dirname(os.path.abspath(wire.__file__)))
    existing = os.environ.get("PYTHONPATH", "")
    paths = [root] + [p for p in existing.split(os.pathsep) if p and p != root]
    return {"PYTHONPATH": os.pathsep.join(paths)}
