"""The relay over TCP for real: a node behind a router that drops every UDP
datagram reaches a public node, an easy-NATed one and a hard-NATed one
through the relay stream on the server's HTTPS port, shows ``relay-tcp``,
and leaves the stream for UDP, without the ping stream breaking, once the
block is lifted; a node whose only way out is an HTTP CONNECT proxy (with
credentials) joins through it and reaches every node the same way.
"""

from __future__ import annotations

import json
import os
import re
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial import unittest

from tests.test_e2e import eventually, lab_unavailable
from wire.demo import MeshLab

PROXY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "connect_proxy.py")
PROXY_PORT = 3128
from wire.runner import ProcessRunner

BLOCK_COMMENT = "wire-test-udp-block"


class RelayTcpLabTests(unittest.TestCase):
    timeout = 400
    skip = lab_unavailable()

    async def block_udp(self, mesh: MeshLab, router: str) -> None:
        rule = ["nft", "insert", "rule", "ip", "wire_lab", "forward", "meta", "l4proto", "udp", "drop",
                "comment", f'"{BLOCK_COMMENT}"']
        (await mesh.lab.run(router, rule, timeout=10)).check()

    async def unblock_udp(self, mesh: MeshLab, router: str) -> None:
        listed = await mesh.lab.run(router, ["nft", "-a", "list", "chain", "ip", "wire_lab", "forward"], timeout=10)
        handles = re.findall(rf'comment "{BLOCK_COMMENT}" # handle (\d+)', listed.stdout.decode())
        self.assertTrue(handles, listed.stdout)
        for handle in handles:
            delete = ["nft", "delete", "rule", "ip", "wire_lab", "forward", "handle", handle]
            (await mesh.lab.run(router, delete, timeout=10)).check()

    async def reaches_all(self, mesh: MeshLab, source: str) -> bool:
        """``source`` pings alpha (public), beta (easy NAT) and gamma (hard NAT)."""
        results = await gatherResults([
            Deferred.fromCoroutine(mesh.ping(source, peer, count=1, wait=1)) for peer in ("alpha", "beta", "gamma")
        ])
        return all(results)

    async def paths(self, mesh: MeshLab, name: str) -> dict[str, str]:
        status = await mesh.status(name)
        return {n["node_name"]: n["path"] for n in status["nodes"] if not n["this_node"]}

    async def test_a_node_whose_network_blocks_udp_reaches_every_node_over_tcp(self):
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        lab = mesh.lab
        await lab.add_router("home", nat="easy")
        await lab.add_router("cgnat", nat="hard")
        await lab.add_router("office", nat="easy")
        await self.block_udp(mesh, "office")
        # A network whose only way out is an HTTP CONNECT proxy (with credentials).
        await lab.add_router("corp", nat="easy")
        await mesh.add_host("proxy")
        proxy_address = lab.hosts["proxy"].address
        lab.start("proxy", [sys.executable, PROXY, proxy_address, str(PROXY_PORT), "relay:s3cret"], log_prefix="proxy")
        corp_lan = lab.hosts["corp"].lan_interface
        for rule in (
            ["iifname", corp_lan, "drop"],
            ["iifname", corp_lan, "ip", "daddr", proxy_address, "tcp", "dport", str(PROXY_PORT), "accept"],
        ):
            (await lab.run("corp", ["nft", "insert", "rule", "ip", "wire_lab", "forward", *rule], timeout=10)).check()
        await mesh.add_host("epsilon", router="corp")
        await mesh.add_host("alpha")
        await mesh.add_host("beta", router="home")
        await mesh.add_host("gamma", router="cgnat")
        await mesh.add_host("delta", router="office")
        names = ("alpha", "beta", "gamma", "delta")
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in names])

        # Delta reaches every node (a direct attempt first, then the relay,
        # whose frames find UDP blocked and take the stream).
        await eventually(lambda: self.reaches_all(mesh, "delta"), timeout=90, step=1.0, what="delta pinging alpha, beta and gamma")
        seen = await self.paths(mesh, "delta")
        self.assertEqual(seen, {"alpha": "relay-tcp", "beta": "relay-tcp", "gamma": "relay-tcp"}, seen)
        status = await mesh.status("delta")
        (alpha,) = [n for n in status["nodes"] if n["node_name"] == "alpha"]
        self.assertIn("UDP to the server blocked", alpha["path_reason"])
        explained = json.loads((await mesh.cli("delta", "explain", "alpha", "--json")).stdout)
        self.assertEqual(explained["endpoint_kind"], "relay-tcp", explained)
        self.assertTrue(any("over TCP" in r for r in explained["reasons"]), explained["reasons"])
        # And the others reach delta (their side of each session is on UDP).
        for peer in ("alpha", "beta", "gamma"):
            self.assertTrue(await mesh.ping(peer, "delta", count=2), f"{peer} -> delta")

        # Epsilon joins through the proxy and reaches every node the same way.
        await mesh.up("epsilon", extra=("--proxy", f"http://relay:s3cret@{proxy_address}:{PROXY_PORT}"))

        await eventually(lambda: self.reaches_all(mesh, "epsilon"), timeout=90, step=1.0, what="epsilon (behind the proxy) pinging every node")
        seen = await self.paths(mesh, "epsilon")
        self.assertTrue(all(seen[p] == "relay-tcp" for p in ("alpha", "beta", "gamma")), seen)
        epsilon = await mesh.status("epsilon")
        self.assertNotIn("s3cret", json.dumps(epsilon), "the proxy's password is never shown")

        # The block lifts: delta's frames leave the stream for UDP within 30 s,
        # while a ping stream to alpha runs through it all.
        pinging = Deferred.fromCoroutine(
            lab.run("delta", ["ping", "-i", "0.2", "-c", "200", "-W", "1", "-n", "-q", mesh.nodes["alpha"].vpn_ip], timeout=80)
        )
        await self.unblock_udp(mesh, "office")

        async def on_udp() -> bool:
            return "relay-tcp" not in (await self.paths(mesh, "delta")).values()

        waited = await eventually(on_udp, timeout=30, step=0.5, what="delta's relay leaving TCP for UDP")
        result = await pinging
        summary = result.stdout.decode()
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", summary).groups())
        self.assertGreaterEqual(received, sent * 0.95, f"the ping stream broke ({waited:.1f}s to UDP): {summary}")
