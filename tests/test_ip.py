"""``wire ip``: this node's or a peer's mesh addresses, as tailscale ip prints them."""

from __future__ import annotations

import io
import os

from twisted.internet import reactor
from twisted.trial import unittest

from tests.helpers import body_for
from tests.test_ops import DaemonView
from wire import cli, ops
from wire.node.config import NodeConfig, save_config

V6 = "fd7a:115c:a1e0::1"
LOCAL = {
    "node": {"node_name": "web1", "vpn_ip": "10.99.0.1", "vpn_ip6": V6, "state": "registered"},
    "peers": [
        {"node_name": "db1", "vpn_ip": "10.99.0.2", "vpn_ip6": "fd7a:115c:a1e0::2", "dns_name": "db1.wire.internal"},
        {"node_name": "old", "vpn_ip": "10.99.0.3", "vpn_ip6": ""},
    ],
    "dns": {"enabled": True, "domain": "wire.internal"},
}


class IpTests(unittest.TestCase):
    def setUp(self):
        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)
        # A server nobody answers on: a lookup the daemon cannot answer fails clearly.
        save_config(self.config_dir, NodeConfig(
            server_url="http://127.0.0.1:1", node_name="web1", node_id=body_for("web1")["node_id"],
            vpn_ip="10.99.0.1", vpn_subnet="10.99.0.0/16", vpn_ip6=V6, vpn_subnet6="fd7a:115c:a1e0::/48",
        ))
        self.ctx = DaemonView(reactor, self.config_dir)
        self.ctx.local = LOCAL

    async def ip(self, peer=None, family=None) -> dict:
        return await ops.ip(self.ctx, peer, family=family)

    async def test_this_node_both_families_ipv4_first(self):
        result = await self.ip()
        self.assertEqual((result["addresses"], result["this_node"], result["source"]), (["10.99.0.1", V6], True, "daemon"))
        self.assertEqual((await self.ip(family=4))["addresses"], ["10.99.0.1"])
        self.assertEqual((await self.ip(family=6))["addresses"], [V6])

    async def test_this_node_from_config_json_while_the_daemon_is_stopped(self):
        self.ctx.local = None
        result = await self.ip()
        self.assertEqual((result["addresses"], result["source"]), (["10.99.0.1", V6], "config"))

    async def test_a_peer_by_name_dns_name_or_either_address(self):
        for target in ("db1", "DB1", "db1.wire.internal", "10.99.0.2", "fd7a:115c:a1e0::2", "fd7a:115c:a1e0:0::2"):
            result = await self.ip(target)
            self.assertEqual((result["node_name"], result["addresses"]), ("db1", ["10.99.0.2", "fd7a:115c:a1e0::2"]), target)
            self.assertFalse(result["this_node"])
        self.assertEqual((await self.ip("db1", family=6))["addresses"], ["fd7a:115c:a1e0::2"])
        self.assertEqual((await self.ip("web1"))["addresses"], ["10.99.0.1", V6], "this node, named")

    async def test_a_family_the_node_lacks_is_a_clear_error(self):
        with self.assertRaises(ops.OpError) as caught:
            await self.ip("old", family=6)
        self.assertIn("old has no IPv6 mesh address", str(caught.exception))
        self.assertEqual((await self.ip("old"))["addresses"], ["10.99.0.3"])
        with self.assertRaises(ops.OpError) as caught:
            await self.ip(family=5)
        self.assertIn("family must be 4 or 6", str(caught.exception))

    async def test_an_unknown_peer_with_the_server_away_says_why(self):
        with self.assertRaises(ops.OpError) as caught:
            await self.ip("nosuch")
        self.assertIn("cannot look up nosuch: the daemon does not know it (it is not in the daemon's netmap)", str(caught.exception))
        with self.assertRaises(ops.OpError):
            await self.ip("no such!")

    async def test_the_cli_prints_one_address_a_line(self):
        async def wire(*argv: str) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = await cli.run(reactor, list(argv), out, err, make_context=lambda r, d: self.ctx)
            return code, out.getvalue(), err.getvalue()

        self.assertEqual(await wire("ip"), (0, f"10.99.0.1\n{V6}\n", ""))
        self.assertEqual(await wire("ip", "-4"), (0, "10.99.0.1\n", ""))
        self.assertEqual(await wire("ip", "-6", "db1"), (0, "fd7a:115c:a1e0::2\n", ""))
        code, out, err = await wire("ip", "-6", "old")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("wire ip: old has no IPv6 mesh address", err)
        code, out, _ = await wire("ip", "db1", "--json")
        self.assertEqual(code, 0)
        self.assertIn('"addresses": [\n    "10.99.0.2",\n    "fd7a:115c:a1e0::2"\n  ]', out)
        code, _, err = await wire("ip", "-4", "-6")
        self.assertEqual(code, 2)
        self.assertIn("not allowed with argument", err)
