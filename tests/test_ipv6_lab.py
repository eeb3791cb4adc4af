"""IPv6 inside the mesh for real: twistd nodes in namespaces with wireguard-go.

Every node has an IPv6 mesh address from the server's prefix; every node
pings every other over it (one of them behind a NAT); the mesh DNS answers
AAAA; ``wire ip -6`` on one node gives what its peer has; ``wire down``
leaves no IPv6 address behind.
"""

from __future__ import annotations

import ipaddress
import json
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial import unittest

from tests.test_dns_lab import ASK
from tests.test_e2e import eventually, lab_unavailable
from wire.demo import HEALTH_PROBE, SERVER_PORT, MeshLab
from wire.node import launcher
from wire.runner import ProcessRunner


class Ipv6LabTests(unittest.TestCase):
    timeout = 300
    skip = lab_unavailable()

    async def test_every_node_reaches_every_other_over_its_ipv6_mesh_address(self):
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        await mesh.lab.add_router("home", nat="easy")
        names = ("alpha", "beta", "gamma")
        await mesh.add_host("alpha")
        await mesh.add_host("beta")
        await mesh.add_host("gamma", router="home")
        answers = await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in names])
        v6 = {}
        for name in names:
            addresses = json.loads((await mesh.cli(name, "ip", "-6", "--json")).stdout)
            v6[name] = addresses["vpn_ip6"]
        prefix = ipaddress.ip_network(answers[0]["vpn_subnet6"]) if answers[0].get("vpn_subnet6") else None
        self.assertIsNotNone(prefix, answers[0])
        self.assertTrue(all(ipaddress.ip_address(a) in prefix for a in v6.values()), v6)
        self.assertEqual(len(set(v6.values())), 3, "unique")

        # Each pair, over IPv6 through the tunnel.
        async def all_pairs() -> bool:
            results = await gatherResults([
                Deferred.fromCoroutine(mesh.lab.run(src, ["ping", "-6", "-c1", "-W2", "-n", "-q", v6[dst]], timeout=15))
                for src in names for dst in names if src != dst
            ])
            return all(r.rc == 0 for r in results)

        await eventually(all_pairs, timeout=20, step=0.5, what="every pair pinging over IPv6")
        # One node's view of a peer's address is the peer's own.
        seen = json.loads((await mesh.cli("alpha", "ip", "-6", "gamma", "--json")).stdout)
        self.assertEqual(seen["addresses"], [v6["gamma"]])
        # The mesh DNS answers AAAA from the netmap.
        alpha_v4 = mesh.nodes["alpha"].vpn_ip
        result = await mesh.lab.run("alpha", [sys.executable, "-c", ASK, alpha_v4, "beta.wire.internal/AAAA"], timeout=20)
        (aaaa,) = json.loads(result.stdout)
        self.assertEqual((aaaa["rcode"], aaaa["answers"]), (0, [v6["beta"]]), result.stderr)

        # wire down: the interface and its IPv6 address go.
        interface = mesh.nodes["beta"].interface
        await mesh.down("beta")
        del mesh.nodes["beta"]
        left = await mesh.lab.run("beta", ["ip", "-6", "-o", "addr", "show"])
        self.assertNotIn(v6["beta"].encode(), left.stdout)
        self.assertNotIn(interface.encode(), left.stdout)


class Ipv6UnderlayLabTests(unittest.TestCase):
    """A dual-stack underlay: IPv4 behind hard NATs, IPv6 routed behind stateful firewalls."""

    timeout = 300
    skip = lab_unavailable()

    async def test_two_nodes_behind_hard_nats_connect_directly_over_ipv6(self):
        mesh = MeshLab(reactor, ProcessRunner(reactor), ipv6=True)
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        await mesh.lab.add_router("home", nat="hard")
        await mesh.lab.add_router("office", nat="hard")
        await mesh.add_host("alpha", router="home")
        await mesh.add_host("beta", router="office")
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in ("alpha", "beta")])
        own6 = {name: mesh.lab.addresses6[name] for name in ("alpha", "beta")}
        keys = {}

        async def direct_over_ipv6() -> bool:
            """Both daemons show a proven direct path, and both WireGuards send to the other's IPv6 address."""
            for me, peer in (("alpha", "beta"), ("beta", "alpha")):
                status = await mesh.status(me)
                (entry,) = [n for n in status["nodes"] if n["node_name"] == peer]
                keys[peer] = entry
                if (entry["path"], entry.get("path_phase"), entry.get("endpoint_kind")) != ("direct", "working", "ipv6"):
                    return False
                if entry.get("handshake_age") is None:
                    # Initiations that cross cost WireGuard one retry (5 s): each drops the other's answer.
                    return False
                shown = await mesh.lab.run(me, ["wg", "show", mesh.nodes[me].interface, "endpoints"], timeout=10)
                if f"[{own6[peer]}]:".encode() not in shown.stdout:
                    return False
            return True

        # With IPv4 alone these two would be relayed (hard NAT on both sides).
        await eventually(direct_over_ipv6, timeout=60, step=1.0, what=f"alpha and beta direct over IPv6 ({keys})")
        self.assertIn("both have IPv6", keys["alpha"]["path_reason"])
        # The tunnel carries traffic: over IPv4 and IPv6 mesh addresses.
        beta = mesh.nodes["beta"]
        result = await mesh.lab.run("alpha", ["ping", "-c3", "-W2", "-n", "-q", beta.vpn_ip], timeout=20)
        if result.rc != 0:
            shown = [await mesh.lab.run(n, ["wg", "show", mesh.nodes[n].interface]) for n in ("alpha", "beta")]
            statuses = [await mesh.status(n) for n in ("alpha", "beta")]
            logs = {n: launcher.log_tail(mesh.nodes[n].config_dir, lines=80) for n in ("alpha", "beta")}
            self.fail(f"{result.stdout!r}\n{[s.stdout for s in shown]}\n{statuses}\n{logs}")
        beta6 = json.loads((await mesh.cli("beta", "ip", "-6", "--json")).stdout)["vpn_ip6"]
        result = await mesh.lab.run("alpha", ["ping", "-6", "-c3", "-W2", "-n", "-q", beta6], timeout=20)
        self.assertEqual(result.rc, 0, result.stdout + result.stderr)
        # wire explain tells why.
        explained = json.loads((await mesh.cli("alpha", "explain", "beta", "--json")).stdout)
        self.assertEqual(explained["endpoint_kind"], "ipv6", explained)
        self.assertTrue(any("both have IPv6" in r for r in explained["reasons"]), explained["reasons"])
        # The server relays nothing for them.
        server = await mesh.status("alpha")
        self.assertTrue(all(n.get("path") != "relay" for n in server["nodes"] if not n["this_node"]), server)
        # The server listens on IPv6 as well as IPv4: its API answers there.
        url6 = f"https://[{mesh.lab.addresses6['server']}]:{SERVER_PORT}/health"
        result = await mesh.lab.run("alpha", [sys.executable, "-c", HEALTH_PROBE, url6], timeout=20)
        self.assertEqual(result.rc, 0, result.stderr)

    async def test_a_pair_whose_ipv6_is_blocked_falls_back_to_ipv4_direct(self):
        mesh = MeshLab(reactor, ProcessRunner(reactor), ipv6=True)
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        await mesh.lab.add_router("home", nat="easy")
        await mesh.lab.add_router("office", nat="easy")
        # A broken IPv6 path: the home router drops every UDP datagram over IPv6.
        block = ["nft", "insert", "rule", "ip6", "wire_lab6", "forward", "meta", "l4proto", "udp", "drop"]
        (await mesh.lab.run("home", block, timeout=10)).check()
        await mesh.add_host("alpha", router="home")
        await mesh.add_host("beta", router="office")
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in ("alpha", "beta")])
        seen = {}

        async def direct_over_ipv4() -> bool:
            for me, peer in (("alpha", "beta"), ("beta", "alpha")):
                status = await mesh.status(me)
                (entry,) = [n for n in status["nodes"] if n["node_name"] == peer]
                seen[me] = entry
                if (entry["path"], entry.get("path_phase"), entry.get("endpoint_kind")) != ("direct", "working", "public"):
                    return False
                if entry.get("handshake_age") is None:
                    return False
            return True

        # IPv6 is tried first (15 s to prove itself), then IPv4, not the relay.
        await eventually(direct_over_ipv4, timeout=90, step=1.0, what=f"the pair direct over IPv4 ({seen})")
        self.assertIn("IPv6 gave no handshake: trying IPv4", seen["alpha"]["path_reason"])
        result = await mesh.lab.run("alpha", ["ping", "-c3", "-W2", "-n", "-q", mesh.nodes["beta"].vpn_ip], timeout=20)
        self.assertEqual(result.rc, 0, result.stdout + result.stderr)
