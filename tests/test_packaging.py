"""The wheel carries every package of the checkout: pyproject.toml lists them
by hand, and a package left out installs a wire that fails on import."""

from __future__ import annotations

import os
import tomllib

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackagingTests(unittest.TestCase):
    def test_every_package_under_wire_is_in_the_wheel(self):
        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
            listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
        found = set()
        for directory, subdirs, files in os.walk(os.path.join(ROOT, "wire")):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            if "__init__.py" in files:
                found.add(os.path.relpath(directory, ROOT).replace(os.sep, "."))
        self.assertEqual(found - listed, set(), "packages missing from [tool.setuptools] packages in pyproject.toml")
        self.assertIn("twisted.plugins", listed)
