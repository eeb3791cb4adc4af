"""The one interface-name check, the same for the node config and the driver."""

from __future__ import annotations

from dataclasses import asdict

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fakes import FakeProcessRunner
from wire.node.config import NodeConfig, validate
from wire.node.ifname import parse_interface_name
from wire.node.wireguard import InvalidWireGuardConfig, LinuxWireGuard, MacWireGuard
from wire.protocol import ProtocolError

NON_ASCII = ["wiré0", "wïre0", "wire٠", "ｗire0", "wire²"]


class InterfaceNameTests(unittest.SynchronousTestCase):
    def config(self, interface: str) -> dict:
        return asdict(NodeConfig(server_url="http://127.0.0.1:8787", node_name="web1", node_id="n" * 16, interface=interface))

    def test_good_names(self):
        for name in ["wire0", "wg-mesh", "a", "x" * 15, "wg_0.1", "wg=+"]:
            self.assertEqual(parse_interface_name(name), name)
            self.assertEqual(validate(self.config(name)).interface, name)

    def test_non_ascii_names_are_refused_everywhere(self):
        """Linux interface names are ASCII: the config and the driver agree."""
        for name in NON_ASCII:
            self.assertRaises(ProtocolError, parse_interface_name, name)
            self.assertRaises(ProtocolError, validate, self.config(name))
            for driver in (LinuxWireGuard, MacWireGuard):
                self.assertRaises(InvalidWireGuardConfig, driver, FakeProcessRunner(), name, clock=Clock())

    def test_the_problem_names_the_value(self):
        with self.assertRaises(ProtocolError) as caught:
            parse_interface_name("wiré0")
        self.assertEqual(caught.exception.field, "interface")
        self.assertIn("'wiré0' is not an interface name", caught.exception.problem)

    @given(st.text(max_size=20))
    def test_config_and_driver_agree(self, name):
        try:
            parse_interface_name(name)
        except ProtocolError:
            accepted = False
        else:
            accepted = True
        self.assertEqual(accepted, name.isascii() and name not in (".", "..") and 1 <= len(name) <= 15 and all(c.isalnum() or c in "_=+.-" for c in name))
        try:
            validate(self.config(name))
        except ProtocolError:
            self.assertFalse(accepted, name)
        else:
            self.assertTrue(accepted, name)
        try:
            LinuxWireGuard(FakeProcessRunner(), name, clock=Clock())
        except InvalidWireGuardConfig:
            self.assertFalse(accepted, name)
        else:
            self.assertTrue(accepted, name)
