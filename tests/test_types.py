"""The type checker, as part of the suite: mypy with the zope plugin over the
library and the twistd dropin, as configured in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial import unittest

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mypy() -> list[str] | None:
    """mypy from this interpreter's environment (never another one on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), "mypy")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("mypy")
    return [found] if found else None


class TypeCheckTests(unittest.TestCase):
    def test_mypy_passes(self) -> None:
        mypy = _mypy()
        if mypy is None:
            raise unittest.SkipTest("mypy is not installed (pip install 'wire-mesh[test]')")
        # The cache goes to a temp dir: a read-only checkout must still check.
        cache = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [*mypy, "--cache-dir", cache],
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(result.returncode, 0, f"mypy found problems:\n{result.stdout}{result.stderr}")
