from twisted.trial import unittest

import wire


class PackageTests(unittest.TestCase):
    def test_version(self):
        self.assertRegex(wire.__version__, r"^\d+\.\d+\.\d+$")
