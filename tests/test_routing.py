"""The node's routing (wire.node.routing) between the netmap, its settings,
the planner and the kernel: a peer is given only what the server made it
primary for, and only when this node accepts routes; the exit routes only
for the exit this node chose. Then the daemon carrying it."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fakes import FakeWireGuard, started_daemon
from tests.helpers import body_for
from tests.test_daemon import ScriptedServer, peer_view
from wire.node.config import NodeConfig, save_config
from wire.node.routes import RoutePlan
from wire.node.routing import NodeRouting
from wire.protocol import PeerView


def peer(name: str, number: int, **fields) -> PeerView:
    view = peer_view(name, number)
    view.update(fields)
    return PeerView.from_json(view)


class FakeHostRouting(NodeRouting):
    """NodeRouting with the host's facts given and the kernel in memory."""

    def __init__(self, clock, config):
        super().__init__(clock, None, "wire0", "/nonexistent", config)
        self.applied: list[RoutePlan] = []

    async def _read_host_facts(self):
        from wire.node.routes import Gateway, LocalNetwork

        self._server_addresses = await self._resolve_servers()

        import ipaddress

        local = [LocalNetwork("eth0", ipaddress.ip_interface("192.168.1.10/24"))]
        gateways = [Gateway("eth0", ipaddress.ip_address("192.168.1.1"), 4)]
        self._host_facts = (self._clock.seconds(), local, gateways)
        return local, gateways


class PlanHarness(unittest.TestCase):
    def setUp(self):
        self.config = NodeConfig(server_url="https://203.0.113.5:8787", node_name="laptop", node_id=body_for("laptop")["node_id"])
        self.routing = FakeHostRouting(Clock(), lambda: self.config)
        self.peers = {}
        self.add(peer("r1", 2, routes=["10.5.0.0/24", "192.168.1.0/24"]))
        self.add(peer("x1", 3, exit_node=True))

    def add(self, view: PeerView) -> None:
        self.peers[view.node_id] = view

    def node_id(self, name: str) -> str:
        return body_for(name)["node_id"]

    def plan(self, **settings):
        from dataclasses import replace

        self.config = replace(self.config, **settings)
        self.routing.settings_changed()
        return self.successResultOf(defer.ensureDeferred(self.routing.allowed_ips(self.peers, "198.51.100.1")))



class PlanTests(PlanHarness):
    def test_nothing_is_taken_unless_asked(self):
        self.assertEqual(self.plan(), {})

    def test_accepted_routes_go_to_their_router_except_what_shadows_the_lan(self):
        self.assertEqual(self.plan(accept_routes=True), {self.node_id("r1"): ("10.5.0.0/24",)})
        self.assertIn("overlaps this node's own LAN", self.routing.status()["skipped"][0])

    def test_the_exit_only_for_the_chosen_peer_that_offers_one(self):
        self.assertEqual(self.plan(exit_node="x1"), {self.node_id("x1"): ("0.0.0.0/0", "::/0")})
        self.assertEqual(self.routing.status()["exit_node"], "x1")
        self.assertEqual(self.plan(exit_node="r1"), {})
        self.assertIn("offers no exit node", self.routing.plan.exit_problem)
        self.assertEqual(self.plan(exit_node="nobody"), {})
        self.assertIn("no peer named nobody", self.routing.plan.exit_problem)

    def test_a_peers_lan_address_is_underlay_only_on_the_same_lan(self):
        self.add(peer("r2", 4, routes=["172.16.1.0/24"], lan_ip="172.16.1.5"))
        self.assertEqual(self.plan(accept_routes=True)[self.node_id("r2")], ("172.16.1.0/24",), "another LAN: its address is not our path")
        self.add(peer("r2", 4, routes=["172.16.1.0/24"], lan_ip="172.16.1.5", public_ip="198.51.100.1"))
        self.assertNotIn(self.node_id("r2"), self.plan(accept_routes=True))
        self.assertIn("172.16.1.5", " ".join(self.routing.status()["skipped"]))


class RecordingRouting:
    def __init__(self, config, journal):
        self.config, self.journal = config, journal
        self.started = self.cleared = 0

    async def start(self):
        self.started += 1

    async def allowed_ips(self, peers, my_public_ip="", my_public_ip6=""):
        return {node_id: ("192.168.50.0/24",) for node_id, p in peers.items() if p.node_name == "r1"}

    async def apply(self):
        self.journal.append("routes")

    async def advertise(self):
        self.journal.append(("advertise", self.config().advertise_routes))

    async def set_forwarding(self, rules, problem=None):
        self.forwarding = (rules, problem)

    def offers_exit(self):
        return any(route in ("0.0.0.0/0", "::/0") for route in self.config().advertise_routes)

    def settings_changed(self):
        pass

    async def clear(self):
        self.cleared += 1

    def status(self):
        return {}


class DaemonTests(unittest.TestCase):
    def test_allowed_ips_before_the_kernel_routes_and_undone_on_down(self):
        clock = Clock()
        clock.advance(1_700_000_000)
        server = ScriptedServer(clock)
        server.peers = {"r1": peer_view("r1", 2, routes=["192.168.50.0/24"]), "web": peer_view("web", 3)}
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        config = NodeConfig(server_url="https://wire.test", node_name="laptop", node_id=body_for("laptop")["node_id"])
        save_config(config_dir, config)
        journal: list = []
        made: list[RecordingRouting] = []

        class JournalWireGuard(FakeWireGuard):
            async def apply(self, desired, reassert=()):
                changed = await super().apply(desired, reassert)
                journal.append("wireguard")
                return changed

        def routing_for(current):
            made.append(RecordingRouting(current, journal))
            return made[-1]

        wireguard = JournalWireGuard(clock=clock)
        daemon = started_daemon(self, clock=clock, config_dir=config_dir, config=config, wireguard=wireguard, client=server,
                                routing_for=routing_for)
        clock.advance(0)
        clock.advance(1)
        (routing,) = made
        self.assertEqual(routing.started, 1)
        by_name = {p.node_name: p for p in daemon.netmap.peers.values()}
        held = {key: c.allowed_ips for key, c in wireguard.peers.items()}
        self.assertEqual(held[by_name["r1"].wg_public_key], ("10.99.1.2/32", "192.168.50.0/24"))
        self.assertEqual(held[by_name["web"].wg_public_key], ("10.99.1.3/32",))
        self.assertLess(journal.index("wireguard"), journal.index("routes"), "WireGuard knows the carrier first")
        self.successResultOf(defer.ensureDeferred(daemon.change_settings({"advertise_routes": ("10.7.0.0/16",)})))
        self.assertIn(("advertise", ("10.7.0.0/16",)), journal)
        server.leave = lambda *a: defer.succeed({"ok": True})
        self.successResultOf(defer.ensureDeferred(daemon.leave()))
        self.assertEqual(routing.cleared, 1)


class ReviewedCasesTests(PlanHarness):
    """Cases a review found: the IPv6 mesh guarded like the IPv4 one, and a
    host whose routes cannot be read keeps its peers (without routes)."""

    def test_a_route_inside_the_ipv6_mesh_is_never_installed(self):
        self.add(peer("r6", 5, routes=["fd7a:115c:a1e0:5::/64", "fd00:beef::/64"]))
        plan = self.plan(accept_routes=True, vpn_subnet="10.99.0.0/16", vpn_subnet6="fd7a:115c:a1e0::/48")
        self.assertEqual(plan[self.node_id("r6")], ("fd00:beef::/64",))
        self.assertIn("fd7a:115c:a1e0:5::/64 from peer r6 overlaps the mesh (fd7a:115c:a1e0::/48)", " ".join(self.routing.status()["skipped"]))

    def test_a_host_without_ip_keeps_its_peers_and_says_why(self):
        from wire.node.routes import RouteError

        async def no_ip():
            raise RouteError("cannot list this host's addresses: the 'ip' program is missing")

        self.routing._read_host_facts = no_ip
        self.assertEqual(self.plan(accept_routes=True), {})
        self.assertIn("routes beyond the mesh are not used: cannot list", self.routing.status()["problem"])


class ServerByNameTests(PlanHarness):
    """A server URL naming a host: its address is resolved, and the exit waits for it."""

    def test_a_resolved_name_is_kept_outside_the_tunnel(self):
        from dataclasses import replace

        self.config = replace(self.config, server_url="https://vpn.example.org:8787")
        self.routing._clock.resolve = lambda host, timeout: defer.succeed("203.0.113.9")
        self.assertEqual(self.plan(exit_node="x1"), {self.node_id("x1"): ("0.0.0.0/0", "::/0")})
        self.assertIn("203.0.113.9/32", self.routing.plan.exit.bypass)

    def test_no_exit_while_the_servers_name_does_not_resolve(self):
        from dataclasses import replace

        self.config = replace(self.config, server_url="https://vpn.example.org:8787")
        self.routing._clock.resolve = lambda host, timeout: defer.fail(OSError("no such host"))
        self.assertEqual(self.plan(exit_node="x1"), {})
        self.assertIn("the server's address is not known yet", self.routing.plan.exit_problem)


class ExitPinnedTests(PlanHarness):
    """The exit is the node ``wire set`` chose, not whoever carries its name later."""

    def test_a_rename_moves_nothing(self):
        exit_id = self.node_id("x1")
        self.assertEqual(self.plan(exit_node="x1", exit_node_id=exit_id), {exit_id: ("0.0.0.0/0", "::/0")})
        # x1 renamed, and another node offering an exit takes the name: the exit stays x1's node.
        self.add(peer("x1", 3, exit_node=True, node_name="renamed"))
        impostor = peer("impostor", 7, exit_node=True, node_name="x1")
        self.add(impostor)
        self.assertEqual(self.plan(exit_node="x1", exit_node_id=exit_id), {exit_id: ("0.0.0.0/0", "::/0")})
        self.assertEqual(self.routing.status()["exit_node"], "renamed")
        # Gone from the netmap: no exit (never the impostor).
        del self.peers[exit_id]
        self.assertEqual(self.plan(exit_node="x1", exit_node_id=exit_id), {})


class CheapPathTests(PlanHarness):
    """Every reconcile asks for the plan: a node that uses no routes must not walk its peers for it."""

    def test_no_routes_used_means_no_work(self):
        def walked(*args):
            raise AssertionError("the peers were walked")

        self.routing._wanted = walked
        self.assertEqual(self.plan(), {})

    def test_the_same_netmap_and_settings_reuse_the_plan(self):
        first = self.plan(accept_routes=True)
        self.routing._wanted = lambda *args: (_ for _ in ()).throw(AssertionError("planned again"))
        again = self.successResultOf(defer.ensureDeferred(self.routing.allowed_ips(self.peers, "198.51.100.1")))
        self.assertEqual(again, first)
