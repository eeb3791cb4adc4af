"""A node's settings (wire.node.settings): checked once for every way in,
given to ``wire up`` or changed by ``wire set`` on a running daemon (which
applies and keeps them) or on a stopped node (saved for its next start)."""

from __future__ import annotations

import io
import os

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fakes import FakeWireGuard, started_daemon
from tests.helpers import body_for
from tests.test_daemon import ScriptedServer
from wire import cli, ops
from wire.node.config import NodeConfig, load_config, save_config
from wire.node.daemon import SettingsRefused
from wire.node.settings import advertised_routes, parse_settings, settings_of, with_settings
from wire.protocol import ProtocolError


class ParseTests(unittest.TestCase):
    def test_values_are_checked(self):
        self.assertEqual(
            parse_settings({"accept_routes": True, "advertise_routes": ["192.168.1.0/24", "10.0.0.0/8"], "exit_node": "Exit1",
                            "accept_dns": None}),
            {"accept_routes": True, "advertise_routes": ("10.0.0.0/8", "192.168.1.0/24"), "exit_node": "exit1"},
        )
        self.assertEqual(parse_settings({"exit_node": ""}), {"exit_node": ""})

    def test_refusals_name_the_setting(self):
        for values, message in [
            ({"accept_routes": "maybe"}, "accept_routes"),
            ({"advertise_routes": ["192.168.1.1/24"]}, "has host bits set"),
            ({"advertise_routes": ["0.0.0.0/0"]}, "offer an exit with --advertise-exit-node, not as a route"),
            ({"exit_node": "not a name"}, "exit_node"),
            ({"colour": "blue"}, "colour: is not a setting"),
        ]:
            with self.assertRaises(ProtocolError, msg=values) as caught:
                parse_settings(values)
            self.assertIn(message, str(caught.exception))

    def test_config_keeps_them_and_the_registration_offers_them(self):
        config = NodeConfig(server_url="https://wire.test", node_name="r1", node_id=body_for("r1")["node_id"])
        self.assertEqual(advertised_routes(config), ())
        config = with_settings(config, parse_settings({"advertise_routes": ["192.168.1.0/24"], "advertise_exit_node": True}))
        self.assertEqual(advertised_routes(config), ("192.168.1.0/24", "0.0.0.0/0", "::/0"))
        directory = self.mktemp()
        os.makedirs(directory)
        save_config(directory, config)
        self.assertEqual(load_config(directory), config)
        self.assertEqual(settings_of(config)["advertise_routes"], ["192.168.1.0/24"])

    def test_the_command_line_gives_them(self):
        args = cli.parse_args(["set", "--accept-routes", "--advertise-routes", "192.168.1.0/24,10.1.0.0/16", "--exit-node="],
                              io.StringIO(), io.StringIO())
        from wire.cli.parser import settings_given

        self.assertEqual(settings_given(args), {"accept_routes": True, "advertise_routes": ["192.168.1.0/24", "10.1.0.0/16"], "exit_node": ""})
        args = cli.parse_args(["up", "--accept-dns=false"], io.StringIO(), io.StringIO())
        self.assertEqual(settings_given(args), {"accept_dns": False})


class RunningDaemonTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = ScriptedServer(self.clock)
        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)
        config = NodeConfig(server_url="https://wire.test", node_name="r1", node_id=body_for("r1")["node_id"])
        save_config(self.config_dir, config)
        self.daemon = started_daemon(self, clock=self.clock, config_dir=self.config_dir, config=config,
                                     wireguard=FakeWireGuard(clock=self.clock), client=self.server)
        self.clock.advance(0)
        self.clock.advance(1)

    def test_new_routes_are_registered_at_once_and_kept(self):
        registrations = len(self.server.registered_bodies)
        changes = parse_settings({"advertise_routes": ["192.168.1.0/24"], "accept_routes": True})
        settings = self.successResultOf(defer.ensureDeferred(self.daemon.change_settings(changes)))
        self.assertEqual((settings["advertise_routes"], settings["accept_routes"]), (["192.168.1.0/24"], True))
        self.assertEqual(len(self.server.registered_bodies), registrations + 1)
        self.assertEqual(self.server.registered_bodies[-1]["advertise_routes"], ["192.168.1.0/24"])
        self.assertEqual(load_config(self.config_dir).advertise_routes, ("192.168.1.0/24",))
        # A setting that offers nothing new is not registered again.
        self.successResultOf(defer.ensureDeferred(self.daemon.change_settings({"accept_routes": False})))
        self.assertEqual(len(self.server.registered_bodies), registrations + 1)
        self.assertIn("settings changed: accept_routes=False", [e["message"] for e in self.daemon.events.since(0)])

    def test_the_exit_is_pinned_to_the_peers_node_id(self):
        self.server.push([{**body_for("x1"), "vpn_ip": "10.99.1.9", "public_ip": "203.0.113.9", "exit_node": True}])
        self.clock.advance(0)
        self.clock.advance(1)
        self.successResultOf(defer.ensureDeferred(self.daemon.change_settings({"exit_node": "x1"})))
        self.assertEqual(load_config(self.config_dir).exit_node_id, body_for("x1")["node_id"])
        self.failureResultOf(defer.ensureDeferred(self.daemon.change_settings({"exit_node": "nobody"})), SettingsRefused)
        self.successResultOf(defer.ensureDeferred(self.daemon.change_settings({"exit_node": ""})))
        self.assertEqual(load_config(self.config_dir).exit_node_id, "")

    def test_a_node_not_joined_yet_refuses(self):
        self.daemon._join_pending = True
        self.failureResultOf(defer.ensureDeferred(self.daemon.change_settings({"accept_routes": True})), SettingsRefused)


class SetCommandTests(unittest.TestCase):
    """``wire set`` on a node whose daemon is not running: saved for its next start."""

    async def test_saved_when_the_daemon_is_not_running(self):
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        save_config(config_dir, NodeConfig(server_url="https://wire.test", node_name="r1", node_id=body_for("r1")["node_id"]))
        ctx = ops.Context(reactor, config_dir, is_root=lambda: True)
        result = await ops.set_settings(ctx, {"exit_node": "exit1", "exit_node_allow_lan_access": True})
        self.assertEqual((result["applied"], result["changed"]), (False, ["exit_node", "exit_node_allow_lan_access"]))
        self.assertEqual(load_config(config_dir).exit_node, "exit1")
        from wire.cli.formatting import Style, format_set

        self.assertEqual(format_set(result, Style(False)),
                         "settings changed: exit-node=exit1, exit-node-allow-lan-access=true "
                         "(saved; the daemon applies them when it starts (sudo wire up))")
        with self.assertRaises(ops.OpError) as caught:
            await ops.set_settings(ctx, {})
        self.assertIn("nothing to change", str(caught.exception))
        with self.assertRaises(ops.OpError) as caught:
            await ops.set_settings(ctx, {"advertise_routes": ["10.0.0.1/8"]})
        self.assertIn("--advertise-routes:", str(caught.exception))
