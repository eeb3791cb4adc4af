"""IPv6 underlay paths: a pair where both nodes have IPv6 goes direct over it,
whatever their IPv4 NATs; when IPv6 fails the pair falls back to IPv4
(direct where the IPv4 rule allows, else the relay), and stays there."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers import key_for, make_coordinator, registration_for, settled
from tests.test_pathbook import T0, BookTestCase, Facts
from tests.test_paths import Side, node
from wire.node import lan
from wire.node.paths import SETTLE, Phase
from wire.node.routing import NodeRouting
from wire.protocol import NatType, PairPath, PathFailure, PathMode, PeerView, ProtocolError, pair_rule
from wire.protocol.fields import parse_underlay_ipv6
from wire.protocol.registration import Registration, parse_registration
from wire.server.pathbook import FORGET_AFTER
from wire.server.store import SCHEMA_VERSION, open_store

V6_A, V6_B = "2001:db8:a::2", "2001:db8:b::2"


class UnderlayAddressTests(unittest.TestCase):
    def test_only_addresses_a_peer_elsewhere_can_reach_are_taken(self):
        self.assertEqual(parse_underlay_ipv6("2001:DB8:A::2", "public_ip6"), "2001:db8:a::2")
        for bad, why in (
            ("fe80::1", "link-local"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("ff02::1", "multicast"),
            ("fec0::1", "site-local"),
            ("::ffff:192.0.2.1", "IPv4-mapped"),
            ("192.0.2.1", "not an IPv6 address"),
            ("2001:db8::/64", "network"),
            ("fe80::1%eth0", "zone"),
            ("host.example", "not an IP address"),
        ):
            with self.assertRaises(ProtocolError) as caught:
                parse_underlay_ipv6(bad, "public_ip6")
            self.assertIn(why, str(caught.exception), bad)
            self.assertEqual(caught.exception.field, "public_ip6")

    def test_a_registration_carries_it_and_a_peer_view_reads_it(self):
        body = Registration("n1", "web1", key_for("web1"), public_ip6=V6_A).as_body()
        self.assertEqual(body["public_ip6"], V6_A)
        self.assertEqual(parse_registration(body).public_ip6, V6_A)
        self.assertNotIn("public_ip6", Registration("n1", "web1", key_for("web1")).as_body(), "as the seed's")
        with self.assertRaises(ProtocolError):
            parse_registration({**body, "public_ip6": "fe80::1"})
        view = {"node_id": "n2", "node_name": "db1", "vpn_ip": "10.99.0.3", "wg_public_key": key_for("db1")}
        self.assertEqual(PeerView.from_json({**view, "public_ip6": V6_B}).public_ip6, V6_B)
        self.assertEqual(PeerView.from_json(view).public_ip6, "", "a seed server's view")
        with self.assertRaises(ProtocolError):
            PeerView.from_json({**view, "public_ip6": "::1"})

    def test_the_host_reports_a_global_address_and_nothing_else(self):
        for source, reported in (
            ("2001:db8:a::2", "2001:db8:a::2"),
            ("2a01:4f8::5", "2a01:4f8::5"),
            ("fd00::2", ""),  # a unique local address reaches no one beyond its site
            ("fd7a:115c:a1e0::5", ""),  # the mesh's own (ULA) address, with an exit node's default route
            ("fe80::1", ""),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", ""),  # Teredo
            ("", ""),  # no IPv6 route
        ):
            self.patch(lan, "route_source", lambda address, s=source: s)
            self.assertEqual(lan.underlay_ipv6(), reported, source)


class RuleTests(unittest.TestCase):
    def test_both_with_ipv6_go_direct_over_it_behind_hard_nats(self):
        a = replace(node("web1", "198.51.100.1", "hard"), public_ip6=V6_A)
        b = replace(node("db1", "203.0.113.2", "hard"), public_ip6=V6_B)
        self.assertEqual(pair_rule(a, b), (PathMode.DIRECT, "both have IPv6"))
        self.assertEqual(pair_rule(b, a), (PathMode.DIRECT, "both have IPv6"))
        # One side without IPv6: the IPv4 rule, as before.
        self.assertEqual(pair_rule(a, replace(b, public_ip6="")), (PathMode.RELAY, "hard NAT on db1 and web1"))
        # Behind one NAT the LAN still comes first.
        c = replace(node("app1", "198.51.100.1", "hard", lan_ip="192.168.9.2"), public_ip6=V6_B)
        d = replace(a, lan_ip="192.168.9.1")
        self.assertEqual(pair_rule(d, c)[0], PathMode.LAN)

    def test_the_planner_sends_to_the_peers_ipv6_wireguard_port(self):
        me = replace(node("web1", "198.51.100.1", "hard"), public_ip6=V6_A)
        peer = replace(node("db1", "203.0.113.2", "hard"), public_ip6=V6_B)
        side = Side(me, peer)
        side.plan(100)
        path = side.path()
        self.assertEqual((path.mode, path.endpoint), (PathMode.DIRECT, f"[{V6_B}]:51820"))
        self.assertEqual(path.summary, f"direct: both have IPv6, via [{V6_B}]:51820")
        side.plan(101)
        side.rx += 100
        side.plan(102)
        self.assertEqual(side.path().phase, Phase.WORKING)
        # Our IPv6 address moved: the attempt starts again.
        side.me = replace(me, public_ip6="2001:db8:a::9")
        side.plan(103)
        self.assertEqual((side.path().phase, side.path().since), (Phase.TRYING, 103))

    def test_the_servers_ipv4_word_sends_the_pair_to_the_ipv4_endpoint(self):
        me = replace(node("web1", "198.51.100.1"), public_ip6=V6_A)
        peer = replace(node("db1", "203.0.113.2"), public_ip6=V6_B)
        side = Side(me, peer)
        side.plan(100)
        self.assertEqual(side.path().endpoint, f"[{V6_B}]:51820")
        side.words[peer.node_id] = PairPath(peer.node_id, PathMode.DIRECT, "IPv6 gave no handshake: trying IPv4", 115, 0, None, 4)
        side.plan(116)
        path = side.path()
        self.assertEqual((path.mode, path.endpoint, path.since), (PathMode.DIRECT, "203.0.113.2:40000", 116))
        self.assertEqual(path.reason, "IPv6 gave no handshake: trying IPv4, via 203.0.113.2:40000")
        # The word is heard as sent, and is one the seed never sends.
        self.assertEqual(PairPath.from_json(side.words[peer.node_id].to_json()).family, 4)
        self.assertNotIn("family", PairPath(peer.node_id, PathMode.RELAY).to_json())
        with self.assertRaises(ProtocolError):
            PairPath.from_json({**side.words[peer.node_id].to_json(), "family": 6})

    def test_an_ipv4_word_the_ipv4_rule_relays_is_not_followed(self):
        me = replace(node("web1", "198.51.100.1", "hard"), public_ip6=V6_A)
        peer = replace(node("db1", "203.0.113.2", "hard"), public_ip6=V6_B)
        side = Side(me, peer)
        side.words[peer.node_id] = PairPath(peer.node_id, PathMode.DIRECT, "x", 100, 0, None, 4)
        side.plan(100)
        self.assertEqual(side.path().mode, PathMode.RELAY)


class FallbackTests(BookTestCase):
    def setUp(self):
        super().setUp()
        self.a6 = Facts("a", public_ip="198.51.100.1", public_ip6=V6_A)
        self.b6 = Facts("b", public_ip="203.0.113.2", public_ip6=V6_B)

    def test_ipv6_failing_moves_the_pair_to_ipv4_then_the_relay(self):
        answer = self.book.report(self.a6, self.b6, PathFailure.NO_PROOF, T0 + 15)
        self.assertTrue(answer.accepted)
        self.assertEqual(
            answer.path, PairPath("b", PathMode.DIRECT, "IPv6 gave no handshake: trying IPv4", T0 + 15, 0, None, 4)
        )
        self.assertEqual(self.book.word("b", "a").family, 4, "the same word for both")
        # Too soon for the IPv4 attempt to have failed.
        self.assertFalse(self.book.report(self.b6, self.a6, PathFailure.NO_PROOF, T0 + 20).accepted)
        answer = self.book.report(self.b6, self.a6, PathFailure.NO_PROOF, T0 + 30)
        self.assertEqual((answer.path.mode, answer.path.family, answer.path.tries), (PathMode.RELAY, 0, 1))
        # The retry goes over IPv6 first again.
        self.book.tick(T0 + 30 + 60)
        word = self.book.word("a", "b")
        self.assertEqual((word.mode, word.family, word.tries), (PathMode.DIRECT, 0, 1))

    def test_ipv6_failing_behind_hard_nats_goes_to_the_relay_at_once(self):
        a = replace(self.a6, nat_type=NatType.HARD)
        b = replace(self.b6, nat_type=NatType.HARD)
        answer = self.book.report(a, b, PathFailure.STOPPED, T0)
        self.assertEqual((answer.path.mode, answer.path.reason), (PathMode.RELAY, "the direct path stopped working"))

    def test_an_ipv4_word_is_kept_while_the_facts_stay(self):
        self.book.report(self.a6, self.b6, PathFailure.STOPPED, T0)
        self.assertEqual(self.book.tick(T0 + FORGET_AFTER * 10), 0)
        self.assertEqual(self.book.word("a", "b").family, 4, "forgetting it would stall the pair on IPv6 again")
        self.book.forget_node("a", T0 + FORGET_AFTER * 10)
        self.assertIsNone(self.book.word("a", "b"), "new facts: the rule again, IPv6 first")


class ServerTests(unittest.TestCase):
    def test_the_server_keeps_it_shows_it_and_refuses_one_inside_the_mesh(self):
        coordinator = make_coordinator(self)
        registry = coordinator.registry
        record = registry.register(registration_for("web1", public_ip6=V6_A), "198.51.100.7", coordinator.now()).record
        self.assertEqual(record.public_ip6, V6_A)
        self.assertEqual(registry.view(record, coordinator.now())["public_ip6"], V6_A)
        plain = registry.register(registration_for("db1"), "198.51.100.8", coordinator.now()).record
        self.assertNotIn("public_ip6", registry.view(plain, coordinator.now()), "left out, as a seed's view")
        inside = str(next(registry.pool6.network.hosts()) + 77)
        with self.assertRaises(ProtocolError) as caught:
            registry.register(registration_for("app1", public_ip6=inside), "198.51.100.9", coordinator.now())
        self.assertIn("inside the mesh's own prefix", str(caught.exception))
        self.assertEqual(len(registry), 2, "nothing of app1 kept")

    def test_a_moved_ipv6_address_forgets_the_pairs_words(self):
        coordinator = make_coordinator(self)
        registry, now = coordinator.registry, coordinator.now()
        a = registry.register(registration_for("web1", public_ip6=V6_A), "198.51.100.7", now).record
        b = registry.register(registration_for("db1", public_ip6=V6_B), "198.51.100.8", now).record
        coordinator.paths.report(a, b, PathFailure.STOPPED, now)
        self.assertIsNotNone(coordinator.paths.word(a.node_id, b.node_id))
        registry.register(registration_for("db1", public_ip6="2001:db8:b::77"), "198.51.100.8", now)
        self.assertIsNone(coordinator.paths.word(a.node_id, b.node_id))

    def test_the_address_and_an_ipv4_word_survive_a_restart(self):
        data_dir = self.mktemp()
        coordinator = make_coordinator(self, data_dir=data_dir)
        now = coordinator.now()
        a = coordinator.registry.register(registration_for("web1", public_ip6=V6_A), "198.51.100.7", now).record
        b = coordinator.registry.register(registration_for("db1", public_ip6=V6_B), "198.51.100.8", now).record
        coordinator.paths.report(a, b, PathFailure.STOPPED, now)
        coordinator.store.write_pending()
        settled(coordinator.store.close())
        again = make_coordinator(self, data_dir=data_dir)
        self.assertEqual(again.registry.get(a.node_id).public_ip6, V6_A)
        self.assertEqual(again.paths.word(a.node_id, b.node_id).family, 4)

    def test_a_schema_8_database_gains_the_columns(self):
        data_dir = self.mktemp()
        coordinator = make_coordinator(self, data_dir=data_dir)
        coordinator.registry.register(registration_for("web1"), "198.51.100.7", coordinator.now())
        coordinator.store.write_pending()
        settled(coordinator.store.close())
        db = sqlite3.connect(os.path.join(data_dir, "registry.sqlite3"))
        db.execute("ALTER TABLE nodes DROP COLUMN public_ip6")
        db.execute("ALTER TABLE pair_paths DROP COLUMN family")
        db.execute("PRAGMA user_version = 8")
        db.commit()
        db.close()
        store = open_store(data_dir, coordinator.clock)
        self.addCleanup(store.close)
        self.assertEqual(settled(store.query("PRAGMA user_version"))[0][0], SCHEMA_VERSION)
        self.assertEqual([(r.node_name, r.public_ip6) for r in store.load()], [("web1", "")])
        self.assertEqual(store.load_pairs(), [])


class RoutingTests(unittest.TestCase):
    def test_an_exit_keeps_the_peers_ipv6_endpoints_outside_the_tunnel(self):
        routing = NodeRouting.__new__(NodeRouting)
        routing._server_addresses = ()
        peer = replace(node("db1", "203.0.113.2"), public_ip6=V6_B)
        found = routing._underlay({"id-db1": peer}, None, "198.51.100.1", V6_A)  # type: ignore[arg-type]
        self.assertEqual(
            {str(u.address) for u in found}, {"203.0.113.2", V6_B}, "kept off an exit's default routes, IPv4 and IPv6"
        )
        # A node without IPv6 never sends to the peer's IPv6 address: an IPv6
        # subnet route that holds it is no loop for it, and stays usable.
        found = routing._underlay({"id-db1": peer}, None, "198.51.100.1", "")  # type: ignore[arg-type]
        self.assertEqual({str(u.address) for u in found}, {"203.0.113.2"})


class SameFamilyTests(unittest.TestCase):
    """The server listens on IPv6 too: a dual-stack node's request may come over it."""

    def test_a_request_over_ipv6_keeps_the_known_ipv4_address(self):
        from twisted.internet.defer import Deferred

        from wire.server.auth import Authority

        coordinator = make_coordinator(self)
        coordinator.authority = Authority(coordinator.store, coordinator.clock)  # polls are heartbeats
        registration = registration_for("web1", nat_port=40001, nat_type="easy", public_ip6=V6_A)
        first = Deferred.fromCoroutine(coordinator.register(registration, "198.51.100.7"))
        coordinator.clock.advance(0)
        self.successResultOf(first)
        again = Deferred.fromCoroutine(coordinator.register(registration, V6_A))
        coordinator.clock.advance(0)
        record = self.successResultOf(again).record
        self.assertEqual((record.public_ip, record.public_ip6), ("198.51.100.7", V6_A))
        # A long-poll over IPv6 is no move: no "register again", no reset of its pairs.
        poll = coordinator.netmap("x:0", 0, node_id=record.node_id, public_ip=V6_A)
        coordinator.clock.advance(0)
        self.assertNotIn("register", self.successResultOf(poll))
        moved = coordinator.netmap("x:0", 0, node_id=record.node_id, public_ip="203.0.113.9")
        coordinator.clock.advance(0)
        self.assertTrue(self.successResultOf(moved).get("register"), "a real IPv4 move still asks it to register")

    def test_a_node_known_only_over_ipv6_keeps_that(self):
        from wire.server.coordinator import _same_family

        self.assertEqual(_same_family(V6_A, ""), V6_A)
        self.assertEqual(_same_family(V6_A, "198.51.100.7"), "198.51.100.7")
        self.assertEqual(_same_family("203.0.113.9", "198.51.100.7"), "203.0.113.9", "a real IPv4 move is one")


class GiveUpTests(unittest.TestCase):
    """IPv6 that reaches no peer is given up, so pairs stop paying for it one by one."""

    def daemon(self, detected: list[str]):
        from wire.keys import load_or_create_keys
        from wire.node.config import NodeConfig
        from wire.node.daemon import NodeDaemon
        from tests.fakes import FakeWireGuard, fixed_nat

        clock = Clock()
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        config = NodeConfig(server_url="https://198.51.100.1:8787", node_name="web1", node_id="a" * 32)
        return NodeDaemon(
            clock=clock, config_dir=config_dir, config=config, keys=load_or_create_keys(config_dir),
            wireguard=FakeWireGuard(clock=clock), client=None, probe_nat=fixed_nat(),  # type: ignore[arg-type]
            lan_ip=lambda: "192.168.1.10", public_ip6=lambda: detected[0],
        )

    def test_after_three_fallbacks_and_no_ipv6_path_it_is_offered_no_more(self):
        from wire.node.daemon import IPV6_GIVE_UP_AFTER

        detected = [V6_A]
        daemon = self.daemon(detected)
        self.assertEqual(daemon.registration_body().public_ip6, V6_A)
        for n in range(IPV6_GIVE_UP_AFTER - 1):
            daemon.netmap.words[f"p{n}"] = PairPath(f"p{n}", PathMode.DIRECT, "IPv6 failed", 0, 0, None, 4)
        daemon._give_up_broken_ipv6()
        self.assertEqual(daemon.registration_body().public_ip6, V6_A, "two pairs may be theirs")
        daemon.netmap.words["p9"] = PairPath("p9", PathMode.DIRECT, "IPv6 failed", 0, 0, None, 4)
        daemon._give_up_broken_ipv6()
        self.assertIsNone(daemon.registration_body().public_ip6)
        self.assertEqual(daemon.me().public_ip6, "")
        # A new address (another network): offered again.
        detected[0] = "2001:db8:c::9"
        self.assertEqual(daemon.registration_body().public_ip6, "2001:db8:c::9")

    def test_ipv6_that_works_with_some_peer_is_kept(self):
        from wire.node.daemon import IPV6_GIVE_UP_AFTER
        from wire.node.paths import PeerPath

        daemon = self.daemon([V6_A])
        for n in range(IPV6_GIVE_UP_AFTER + 2):
            daemon.netmap.words[f"p{n}"] = PairPath(f"p{n}", PathMode.DIRECT, "IPv6 failed", 0, 0, None, 4)
        working = PeerPath(PathMode.DIRECT, "both have IPv6", f"[{V6_B}]:51820", 0.0, 15.0, proven_at=1.0)
        daemon.reconciler.paths.paths["ok"] = working
        daemon._give_up_broken_ipv6()
        self.assertEqual(daemon.registration_body().public_ip6, V6_A)
