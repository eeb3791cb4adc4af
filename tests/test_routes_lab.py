"""Subnet routers for real: twistd nodes in namespaces, wireguard-go, the
kernel's routes and nftables.

A home LAN behind a NAT router holds two wire nodes that both offer the LAN
(gw1, gw2) and a plain host with no wire at all (printer). A laptop on the
internet that accepts routes reaches the printer through the primary router,
which masquerades (the printer sees gw1's LAN address); when gw1 drops off
the network, gw2 carries the traffic within 10 s; ``wire down`` leaves no
route, rule or table behind.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.trial import unittest

from tests.test_dns_lab import ASK, UPSTREAM
from tests.test_e2e import eventually, lab_unavailable
from wire.admin_ops import AdminOps
from wire.demo import MeshLab
from wire.node import launcher
from wire.runner import ProcessRunner

log = Logger()

# Answers each connection with the address it came from.
WHO = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 7070)); s.listen(16)\n"
    "while True:\n"
    "    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()\n"
)
ASK_WHO = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], 7070), timeout=1.5)\n"
    "print(s.recv(64).decode())\n"
)
OFFLINE_AFTER = 5  # the server's --offline-after: failover is bounded by it


class RoutesLabTests(unittest.TestCase):
    timeout = 300
    skip = lab_unavailable()

    async def test_a_lan_behind_two_routers_is_reached_and_fails_over(self):
        mesh = MeshLab(reactor, ProcessRunner(reactor), server_args=("--offline-after", str(OFFLINE_AFTER)))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        lab = mesh.lab
        home = await lab.add_router("home", nat="easy")
        lan = home.lan_network
        assert lan is not None
        for name in ("gw1", "gw2", "printer"):
            await mesh.add_host(name, router="home")
        await mesh.add_host("laptop")
        lab.start("printer", [sys.executable, "-c", WHO], log_prefix="printer")
        printer = lab.hosts["printer"].lan_address
        assert printer is not None
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in ("gw1", "gw2", "laptop")])
        # gw1 offers the LAN first (it becomes the primary), then gw2.
        for name in ("gw1", "gw2"):
            await self.wire_set(mesh, name, "--advertise-routes", lan)
        await self.wire_set(mesh, "laptop", "--accept-routes")
        self.assertFalse(await self.who(mesh, "laptop", printer), "nothing is routed before an admin approves")
        admin = AdminOps(reactor, mesh.server_data_dir)
        for name in ("gw1", "gw2"):
            answer = await admin.route_action("approve", name, lan)
            self.assertTrue(answer["ok"], answer)

        # Through the primary, masqueraded: the printer sees gw1's LAN address.
        seen = await self.until_reached(mesh, timeout=15)
        self.assertEqual(seen, lab.hosts["gw1"].lan_address, await self.logs(mesh, ["laptop", "gw1"]))
        status = await mesh.status("laptop")
        routers = {n["node_name"]: n.get("routes") for n in status["nodes"]}
        self.assertEqual((routers["gw1"], routers.get("gw2")), ([lan], None), "one primary per prefix")

        # gw1 drops off the network: gw2 carries the LAN within 10 s.
        uplink = lab.hosts["gw1"].uplink
        lost = reactor.seconds()
        (await lab.run("gw1", ["ip", "link", "set", "dev", uplink, "down"])).check()
        seen = await self.until_reached(mesh, timeout=30, via=lab.hosts["gw2"].lan_address)
        failover = reactor.seconds() - lost
        log.info("the LAN was reached through gw2 {failover:.1f}s after gw1 dropped off", failover=failover)
        self.assertLessEqual(failover, 10.0, await self.logs(mesh, ["laptop", "gw2"]))

        # wire down: no route, rule or table of wire's left.
        await mesh.down("laptop")
        del mesh.nodes["laptop"]
        routes = await lab.run("laptop", ["ip", "-4", "route", "show", "table", "all", "proto", "87"])
        self.assertEqual(routes.stdout.strip(), b"")
        rules = await lab.run("laptop", ["ip", "-4", "rule", "show"])
        self.assertNotIn(b"proto 87", rules.stdout)
        await mesh.down("gw2")
        del mesh.nodes["gw2"]
        tables = await lab.run("gw2", ["nft", "list", "tables"])
        self.assertNotIn(b"_route", tables.stdout)
        forwarding = await lab.run("gw2", ["sysctl", "-n", "net.ipv4.ip_forward"])
        self.assertEqual(forwarding.stdout.strip(), b"0", "forwarding as it was before wire")

    async def test_an_exit_node_carries_a_clients_internet_traffic(self):
        mesh = MeshLab(reactor, ProcessRunner(reactor))
        self.addCleanup(mesh.teardown)
        await mesh.setup()
        lab = mesh.lab
        for name in ("exit1", "client", "web"):
            await mesh.add_host(name)
        # "web" is a host on the internet with no wire: it tells who connected.
        lab.start("web", [sys.executable, "-c", WHO], log_prefix="web")
        # The resolver the lab's hosts had before wire: the mesh DNS forwards to it.
        upstream = lab.start(
            "internet", [sys.executable, UPSTREAM, lab.resolver_address, "53", "example.test=203.0.113.80"], log_prefix="upstream"
        )
        web, client, exit_address = (lab.hosts[n].address for n in ("web", "client", "exit1"))
        assert web is not None
        await gatherResults([Deferred.fromCoroutine(mesh.up(name)) for name in ("exit1", "client")])
        self.assertEqual(await self.who(mesh, "client", web), client, "straight out, before any exit")
        await self.wire_set(mesh, "exit1", "--advertise-exit-node")
        answer = await AdminOps(reactor, mesh.server_data_dir).route_action("approve", "exit1", "0.0.0.0/0")
        self.assertTrue(answer["ok"], answer)

        await eventually(lambda: self.offers_exit(mesh, "client", "exit1"), timeout=10, what="exit1 offering an exit to client")
        await self.wire_set(mesh, "client", "--exit-node", "exit1")
        # Out through the exit, masqueraded: the web host sees exit1.
        seen: list = [None]

        async def through_the_exit() -> bool:
            seen[0] = await self.who(mesh, "client", web)
            return seen[0] == exit_address

        await eventually(through_the_exit, timeout=15, what="client's traffic leaving through exit1")
        status = await mesh.status("client")
        self.assertEqual(status["routing"]["exit_node"], "exit1")
        # The server and the peers are still reached outside (and inside) the tunnel.
        self.assertTrue(await mesh.ping("client", "exit1", count=2))
        health = await lab.run("client", [sys.executable, "-c", "import ssl, sys, urllib.request; "
                                          "print(urllib.request.urlopen(sys.argv[1], context=ssl._create_unverified_context(), timeout=3).status)",
                                          mesh.server_url + "/health"], timeout=15)
        self.assertEqual(health.stdout.strip(), b"200", health.stderr)
        # DNS keeps working through the exit: the mesh DNS forwards the
        # client's question, and it reaches the upstream from exit1.
        client_dns = mesh.nodes["client"].vpn_ip
        asked = await lab.run("client", [sys.executable, "-c", ASK, client_dns, "example.test/A"], timeout=20)
        (answer,) = json.loads(asked.stdout)
        self.assertEqual((answer["rcode"], answer["answers"]), (0, ["203.0.113.80"]), asked.stderr)
        self.assertIn(f"query from {exit_address}", upstream.tail, f"the question left through the exit: {upstream.tail}")
        self.assertNotIn(f"query from {client}", upstream.tail)

        # No exit again: straight out.
        await self.wire_set(mesh, "client", "--exit-node=")
        await eventually(lambda: self.sees(mesh, "client", web, client), timeout=10, what="client's traffic straight out again")
        await self.wire_set(mesh, "client", "--exit-node", "exit1")
        await eventually(through_the_exit, timeout=15, what="the exit in use again")
        # wire down: the default route as it was, no rule of wire's left.
        await mesh.down("client")
        del mesh.nodes["client"]
        rules = await lab.run("client", ["ip", "-4", "rule", "show"])
        self.assertNotIn(b"proto 87", rules.stdout)
        self.assertEqual(await self.who(mesh, "client", web), client)

    # -- helpers -------------------------------------------------------------

    async def offers_exit(self, mesh: MeshLab, host: str, exit_name: str) -> bool:
        status = await mesh.status(host)
        return any(n["node_name"] == exit_name and n.get("exit_node") for n in status["nodes"])

    async def sees(self, mesh: MeshLab, host: str, address: str, expected: str | None) -> bool:
        return await self.who(mesh, host, address) == expected

    async def wire_set(self, mesh: MeshLab, name: str, *args: str) -> None:
        result = await mesh.cli(name, "set", *args, "--json")
        self.assertEqual(result.rc, 0, result.stdout + result.stderr)

    async def who(self, mesh: MeshLab, host: str, address: str) -> str | None:
        """The address the printer saw this connection come from (None: no connection)."""
        result = await mesh.lab.run(host, [sys.executable, "-c", ASK_WHO, address], timeout=10)
        return result.stdout.decode().strip() if result.rc == 0 else None

    async def until_reached(self, mesh: MeshLab, timeout: float, via: str | None = None) -> str:
        printer = mesh.lab.hosts["printer"].lan_address
        assert printer is not None
        seen: list[str | None] = [None]

        async def reached() -> bool:
            seen[0] = await self.who(mesh, "laptop", printer)
            return seen[0] is not None and (via is None or seen[0] == via)

        await eventually(reached, timeout=timeout, step=0.2, what=f"the printer reached from laptop{f' via {via}' if via else ''}")
        assert seen[0] is not None
        return seen[0]

    async def logs(self, mesh: MeshLab, names: list[str]) -> str:
        return "\n".join(f"--- {n}:\n{launcher.log_tail(mesh.nodes[n].config_dir, lines=40)}" for n in names)
