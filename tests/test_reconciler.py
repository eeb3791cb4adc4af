"""The reconciler on its own: given its dependencies, with no daemon around it."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial import unittest

from tests.fakes import FakeFirewall, FakeWireGuard, UDPClock
from tests.helpers import body_for, key_for
from tests.test_daemon import ScriptedServer, grant_for, peer_view
from wire.node.netmap import PERSISTENT_KEEPALIVE, NodeNetmap
from wire.node.paths import Me
from wire.node.reconciler import Reconciler
from wire.node.relay import RelayShim
from wire.node.trust import Mesh, PeerScreen, mesh_subnet, mesh_subnet6
from wire.protocol import NatType, NetmapAnswer, PathMode, RelayGrant
from wire.protocol.filter import FilterRule, PortRange


class ReconcilerTests(unittest.TestCase):
    def setUp(self):
        self.clock = UDPClock()
        self.clock.advance(1_700_000_000)
        self.server = ScriptedServer(self.clock)
        self.wireguard = FakeWireGuard(clock=self.clock, auto_handshake=False)
        self.netmap = NodeNetmap(body_for("web1")["node_id"])
        self.shim = RelayShim(self.clock, "192.0.2.1", 3479, 51820)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.shim.stop()))
        self.up = True
        self.stopping = False
        self.tracked: list[Deferred] = []
        self.reconciler = Reconciler(
            clock=self.clock,
            wireguard=self.wireguard,
            netmap=self.netmap,
            client=self.server,
            node_id=body_for("web1")["node_id"],
            public_key=key_for("web1"),
            me=lambda: Me("web1", "198.51.100.7", NatType.EASY),
            track=self.track,
            interface_up=lambda: self.up,
            stopping=lambda: self.stopping,
            relay=self.shim,
        )

    def track(self, coroutine) -> Deferred:
        d = Deferred.fromCoroutine(coroutine)
        self.tracked.append(d)
        return d

    def mesh(self, *views: dict, removals: tuple[str, ...] = ()) -> None:
        answer = {"cursor": "e:1", "full": False, "upserts": list(views), "removals": list(removals)}
        self.netmap.apply(NetmapAnswer.from_json(answer))

    def reconcile(self) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.reconciler.reconcile()))

    def test_the_netmap_becomes_wireguard_peers(self):
        self.mesh(peer_view("db1", 2))
        self.reconcile()
        self.assertEqual(self.wireguard.peers[key_for("db1")].endpoint, "203.0.113.2:40002")
        self.assertEqual(self.wireguard.peers[key_for("db1")].allowed_ips, ("10.99.1.2/32",))
        self.assertIs(self.reconciler.paths.paths[body_for("db1")["node_id"]].mode, PathMode.DIRECT)
        self.mesh(removals=(body_for("db1")["node_id"],))
        self.reconcile()
        self.assertEqual(self.wireguard.peers, {})

    def test_nothing_changes_while_the_interface_is_down_or_the_node_stops(self):
        self.mesh(peer_view("db1", 2))
        self.up = False
        self.reconcile()
        self.up, self.stopping = True, True
        self.reconcile()
        self.assertEqual(self.wireguard.applies, [])

    def test_a_relayed_peer_is_fetched_in_the_background_and_applied_when_it_comes(self):
        self.server.grants_hang = True
        self.mesh(peer_view("db1", 2, nat_type="hard"))
        self.reconcile()
        db1 = body_for("db1")["node_id"]
        self.assertEqual(self.server.relay_requests, [db1])
        db1_config = self.wireguard.peers[key_for("db1")]
        self.assertEqual(
            (db1_config.endpoint, db1_config.persistent_keepalive),
            (None, 0),
            "relayed from the start, no grant yet: no endpoint a handshake could go to in vain",
        )
        self.assertFalse(self.reconciler.reconciling, "no reconcile waits on the grant")
        self.assertEqual(len(self.tracked), 1, "the fetch is handed to track, so stopping can cancel it")
        self.server.hanging[db1].callback(RelayGrant.from_json(grant_for(db1)))
        self.assertEqual(self.wireguard.peers[key_for("db1")].endpoint, self.shim.sessions()[db1].endpoint)
        self.assertEqual(self.wireguard.peers[key_for("db1")].persistent_keepalive, PERSISTENT_KEEPALIVE)

    def test_a_tracked_fetch_cancelled_on_stopping_starts_no_session(self):
        self.server.grants_hang = True
        self.mesh(peer_view("db1", 2, nat_type="hard"))
        self.reconcile()
        (fetching,) = self.tracked
        fetching.cancel()
        self.failureResultOf(fetching, CancelledError)
        self.assertEqual(self.shim.sessions(), {})


SUBNET6 = "fd7a:115c:a1e0::/48"


class DualStackTests(unittest.TestCase):
    """A mesh with IPv6 addresses: each peer's /128 beside its /32, in the filter and the probe sources."""

    def setUp(self):
        self.clock = UDPClock()
        self.clock.advance(1_700_000_000)
        self.wireguard = FakeWireGuard(clock=self.clock)
        self.firewall = FakeFirewall()
        self.subnet6 = mesh_subnet6(SUBNET6)
        # What the daemon's mesh says: the subnets fixed at enrollment (the test may take IPv6 away).
        screen = PeerScreen(lambda: Mesh(mesh_subnet("10.99.0.0/16"), "10.99.0.5", key_for("web1"), subnet6=self.subnet6))
        self.netmap = NodeNetmap(body_for("web1")["node_id"], screen)
        self.reconciler = Reconciler(
            clock=self.clock,
            wireguard=self.wireguard,
            netmap=self.netmap,
            client=ScriptedServer(self.clock),
            node_id=body_for("web1")["node_id"],
            public_key=key_for("web1"),
            me=lambda: Me("web1", "198.51.100.7", NatType.EASY),
            track=Deferred.fromCoroutine,
            interface_up=lambda: True,
            stopping=lambda: False,
            firewall=self.firewall,
        )

    def mesh(self, *views: dict, filter_rules=None) -> None:
        answer = {"cursor": "e:1", "full": True, "upserts": list(views)}
        if filter_rules is not None:
            answer["filter"] = filter_rules
        self.netmap.apply(NetmapAnswer.from_json(answer))

    def reconcile(self) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.reconciler.reconcile()))

    def allowed(self, name: str) -> tuple[str, ...]:
        return self.wireguard.peers[key_for(name)].allowed_ips

    def test_each_peer_gets_its_ipv6_address_beside_its_ipv4_one(self):
        self.mesh(peer_view("db1", 2, vpn_ip6="fd7a:115c:a1e0::2"), peer_view("old", 3))
        self.reconcile()
        self.assertEqual(self.allowed("db1"), ("10.99.1.2/32", "fd7a:115c:a1e0::2/128"))
        self.assertEqual(self.allowed("old"), ("10.99.1.3/32",), "a peer with no IPv6 address: IPv4 only")

    def test_an_ipv6_address_outside_the_mesh_never_reaches_wireguard(self):
        self.mesh(peer_view("db1", 2, vpn_ip6="fd7a:115c:a1e0::2"))
        # Past the screen somehow (defence in depth): the IPv6 entry is left out, the IPv4 one kept.
        db1 = body_for("db1")["node_id"]
        self.netmap.peers[db1] = replace(self.netmap.peers[db1], vpn_ip6="fd00:9::2")
        self.reconcile()
        self.assertEqual(self.allowed("db1"), ("10.99.1.2/32",))
        # The mesh without IPv6 (a seed server's): no IPv6 entry at all.
        self.subnet6 = None
        self.netmap.peers[db1] = replace(self.netmap.peers[db1], vpn_ip6="fd7a:115c:a1e0::2")
        self.reconcile()
        self.assertEqual(self.allowed("db1"), ("10.99.1.2/32",))

    def test_the_filter_admits_a_named_peer_from_both_its_addresses_and_both_may_probe(self):
        rule = {"peers": ["tag:web"], "proto": "tcp", "ports": [[5432, 5432]]}
        self.mesh(
            peer_view("db1", 2, vpn_ip6="fd7a:115c:a1e0::2", tags=["tag:web"]),
            peer_view("old", 3, tags=["tag:web"]),
            filter_rules=[rule],
        )
        self.reconcile()
        self.assertEqual(
            self.firewall.rules,
            (FilterRule(("10.99.1.2/32", "10.99.1.3/32", "fd7a:115c:a1e0::2/128"), "tcp", (PortRange(5432, 5432),)),),
        )
        self.assertEqual(self.firewall.probe_sources, {"10.99.1.2", "fd7a:115c:a1e0::2", "10.99.1.3"})
