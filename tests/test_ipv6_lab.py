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
from wire.demo import MeshLab
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
