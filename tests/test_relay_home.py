"""Relaying across replicas in memory (issue 19): a pair's home by
rendezvous hashing, grants forwarded to the home over the signed replica
call (a fake peer replica: another coordinator behind StubTreq), forged
calls refused, and the node side: a relay host that is none of its servers
refused, each session sent to its own relay, and a change of the live
relays re-granted at once on a fake clock. (tests.test_relay_replicas runs
two real replicas on a real PostgreSQL.)"""

from __future__ import annotations

import base64
import os
from dataclasses import replace

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from tests.fakes import FakeWireGuard, UDPClock
from tests.helpers import body_for, key_for, make_coordinator, registration_for
from tests.test_daemon import ScriptedServer, peer_view
from wire.node.netmap import NodeNetmap
from wire.node.paths import Me
from wire.node.reconciler import Reconciler
from wire.node.relay import RelayHostRefused, RelayShim
from wire.protocol import NatType, NetmapAnswer, ProtocolError, RelayEndpoint, RelayGrant, RelayRequest
from wire.relayproto import TO_NODE, FrameKey
from wire.server.api import build_root
from wire.server.replicacall import MAX_SKEW, PATH, HomeUnreachable, ReplicaCallRefused, ReplicaCaller, sign, verify
from wire.server.replicas import ClusterReplicas, Replica, ReplicaSet, home_of, live_from, lock_key

SECRET = bytes(range(32))
PAIRS = [(f"{i:032x}", f"{i + 1000:032x}") for i in range(300)]


class RendezvousTests(unittest.TestCase):
    def test_the_home_is_the_same_for_either_order_and_any_order_of_names(self):
        for lo, hi in PAIRS[:50]:
            self.assertEqual(home_of(lo, hi, ["a", "b", "c"]), home_of(hi, lo, ["c", "a", "b"]))
        self.assertIsNone(home_of("x", "y", []))
        self.assertEqual(home_of("x", "y", ["only"]), "only")

    def test_a_replicas_death_moves_only_its_pairs_and_spreads_them(self):
        before = {pair: home_of(*pair, ["a", "b", "c"]) for pair in PAIRS}
        counts = {name: list(before.values()).count(name) for name in "abc"}
        # Each replica relays a share (300 pairs over 3: far from none).
        self.assertTrue(all(count > 50 for count in counts.values()), counts)
        after = {pair: home_of(*pair, ["a", "c"]) for pair in PAIRS}
        for pair in PAIRS:
            if before[pair] != "b":
                self.assertEqual(after[pair], before[pair], "a pair not homed at the dead replica stays")
            else:
                self.assertIn(after[pair], ("a", "c"))
        moved_to = {after[p] for p in PAIRS if before[p] == "b"}
        self.assertEqual(moved_to, {"a", "c"}, "the dead one's pairs spread over the survivors")

    def test_the_live_set_is_the_rows_whose_lock_is_granted(self):
        rows = [("a", "https://a:8443", "a", 8444), ("b", "https://b:8443", "b", 8444), ("c", "https://c:8443", "c", 8444)]
        # pg_locks shows the signed int4 key as an unsigned objid.
        granted = [lock_key("a") & 0xFFFFFFFF, lock_key("c") & 0xFFFFFFFF]
        live = live_from(rows, granted)
        self.assertEqual(sorted(live), ["a", "c"])
        self.assertEqual(live["c"], Replica("c", "https://c:8443", "c", 8444))
        for name in ("a", "b", "replica-with-a-long-name"):
            self.assertTrue(-(1 << 31) <= lock_key(name) < (1 << 31))

    def test_a_set_tells_its_listeners_only_of_a_change(self):
        me = Replica("a", "https://a:8443", "a", 8444)
        replicas = ClusterReplicas(me)
        told = []
        replicas.listeners.append(lambda: told.append(sorted(replicas.live)))
        other = Replica("b", "https://b:8443", "b", 8444)
        self.assertTrue(replicas.update({"a": me, "b": other}))
        self.assertFalse(replicas.update({"a": me, "b": other}))
        self.assertTrue(replicas.update({"a": me}))
        self.assertEqual(told, [["a", "b"], ["a"]])
        self.assertTrue(replicas.ready)
        self.assertFalse(ClusterReplicas(me).ready, "not before the first read")
        self.assertEqual(replicas.relays_json(), [{"replica": "a", "host": "a", "port": 8444}])

    def test_one_server_alone_is_always_its_own_home(self):
        single = ReplicaSet(Replica("", "", "", 0))
        self.assertFalse(single.shared)
        self.assertEqual(single.home_of("x", "y").name, "")


class CallTests(unittest.TestCase):
    """The replica call's authentication, on its own."""

    request = RelayRequest(body_for("x")["node_id"], key_for("x"), body_for("y")["node_id"], fastpath=True)

    def test_a_signed_call_verifies(self):
        caller, asked, fresh = verify(SECRET, sign(SECRET, "a", 1000.0, self.request, fresh=False), 1010.0)
        self.assertEqual((caller, asked, fresh), ("a", self.request, False))

    def test_a_call_under_another_secret_or_changed_on_the_way_is_refused(self):
        signed = sign(SECRET, "a", 1000.0, self.request)
        with self.assertRaises(ReplicaCallRefused):
            verify(os.urandom(32), signed, 1000.0)
        for changed in (
            {**signed, "from": "b"},
            {**signed, "at": 1001.0},
            {**signed, "fresh": False},
            {**signed, "request": {**signed["request"], "peer_node_id": body_for("z")["node_id"]}},
            {**signed, "extra": 1},
            {k: v for k, v in signed.items() if k != "mac"},
            {**signed, "at": True},
            "not an object",
        ):
            with self.assertRaises(ReplicaCallRefused):
                verify(SECRET, changed, 1000.0)

    def test_a_call_too_old_or_from_the_future_is_refused(self):
        signed = sign(SECRET, "a", 1000.0, self.request)
        for now in (1000.0 + MAX_SKEW + 1, 1000.0 - MAX_SKEW - 1):
            with self.assertRaises(ReplicaCallRefused):
                verify(SECRET, signed, now)


def _replica(test, name: str, port: int) -> tuple:
    coordinator = make_coordinator(test)
    me = Replica(name, f"https://{name}.wire.test:{port}", f"{name}.wire.test", port + 1)
    return coordinator, me


class ForwardingTests(unittest.TestCase):
    """Two coordinators, A and B, each knowing both nodes; B's calls reach
    A's API in memory (StubTreq), and A's reach B's."""

    def setUp(self):
        self.a, a_me = _replica(self, "a", 8443)
        self.b, b_me = _replica(self, "b", 9443)
        self.stubs = {}
        for coordinator, me in ((self.a, a_me), (self.b, b_me)):
            replicas = ClusterReplicas(me)
            replicas.update({"a": a_me, "b": b_me})
            coordinator.use_replicas(replicas, ReplicaCaller(coordinator.clock, SECRET, me.name, _ByHost(self.stubs)))
        for coordinator, me in ((self.a, a_me), (self.b, b_me)):
            self.stubs[me.api_url] = StubTreq(build_root(coordinator))
        for coordinator in (self.a, self.b):
            for name in ("x", "y"):
                coordinator.registry.register(registration_for(name), "198.51.100.7", coordinator.now())
        self.x, self.y = body_for("x")["node_id"], body_for("y")["node_id"]
        self.home = self.a if home_of(self.x, self.y, ["a", "b"]) == "a" else self.b
        self.other = self.b if self.home is self.a else self.a

    def ask(self, coordinator, name: str, peer: str) -> RelayGrant:
        d = ensureDeferred(coordinator.relay_grant(body_for(name)["node_id"], key_for(name), body_for(peer)["node_id"]))
        return self.successResultOf(d)

    def test_both_sides_asking_their_own_replicas_get_the_homes_one_session(self):
        at_home = self.ask(self.home, "x", "y")
        elsewhere = self.ask(self.other, "y", "x")
        self.assertEqual(at_home.session_id, elsewhere.session_id)
        self.assertEqual(at_home.relay_host, elsewhere.relay_host)
        self.assertEqual(at_home.relay_replica, self.home.replicas.me.name)
        self.assertEqual(elsewhere.relay_port, self.home.replicas.me.relay_port)
        self.assertEqual((len(self.home.relay), len(self.other.relay)), (1, 0), "one session, at the home")
        self.assertEqual(self.other.metrics.relay_grants.labels("forwarded")._value.get(), 1)

    def test_the_home_keeps_a_held_side_for_a_forwarded_request(self):
        first = self.ask(self.other, "x", "y")
        held = ensureDeferred(
            self.other.relay_grant(self.x, key_for("x"), self.y, held=first.token)
        )
        self.assertEqual(self.successResultOf(held).token, first.token)

    def test_a_home_that_cannot_be_reached_is_a_clear_refusal(self):
        self.stubs.clear()
        failure = self.failureResultOf(ensureDeferred(self.other.relay_grant(self.x, key_for("x"), self.y)), HomeUnreachable)
        self.assertIn(f"replica {self.home.replicas.me.name}", str(failure.value))
        self.assertEqual(self.other.metrics.relay_grants.labels("failed")._value.get(), 1)

    def test_the_punch_paths_grant_comes_from_the_home_too(self):
        from wire.protocol import PunchRequest
        from wire.server.punch import PUNCH_RETRY_AFTER

        x, y = self.other.registry.get(self.x), self.other.registry.get(self.y)
        asked = PunchRequest(from_vpn_ip=x.vpn_ip, to_vpn_ip=y.vpn_ip)
        answers = []
        for _ in range(8):
            answers.append(self.successResultOf(ensureDeferred(self.other.punch(asked))))
            for coordinator in (self.a, self.b):  # the replicas' clocks agree
                coordinator.clock.advance(PUNCH_RETRY_AFTER + 1)
        relayed = [a.relay for a in answers if a.relay is not None]
        self.assertTrue(relayed, "the seed's counter says relay after a few attempts")
        self.assertEqual(relayed[-1].relay_replica, self.home.replicas.me.name)
        self.assertEqual(len(self.other.relay), 0)

    def test_a_forged_call_is_refused_with_403_and_no_session(self):
        stub = self.stubs[self.home.replicas.me.api_url]
        forged = sign(os.urandom(32), "b", self.home.now(), RelayRequest(self.x, key_for("x"), self.y))
        response = self.successResultOf(stub.post(self.home.replicas.me.api_url + PATH, json=forged))
        self.assertEqual(response.code, 403)
        self.assertIn("MAC", self.successResultOf(response.json())["error"])
        for body in (b"not json", b"[]", b'{"from": "b"}'):
            response = self.successResultOf(stub.post(self.home.replicas.me.api_url + PATH, data=body))
            self.assertIn(response.code, (400, 403))
            self.assertIn("error", self.successResultOf(response.json()))
        self.assertEqual(len(self.home.relay), 0)

    def test_a_replica_that_has_not_read_the_live_set_grants_nothing(self):
        self.other.replicas.ready = False
        failure = self.failureResultOf(ensureDeferred(self.other.relay_grant(self.x, key_for("x"), self.y)), HomeUnreachable)
        self.assertIn("not read which replicas live", str(failure.value))
        self.assertEqual((len(self.a.relay), len(self.b.relay)), (0, 0))

    def test_a_server_alone_has_no_replica_call(self):
        single = make_coordinator(self)
        stub = StubTreq(build_root(single))
        response = self.successResultOf(stub.post("http://wire.test" + PATH, json={}))
        self.assertEqual(response.code, 404)

    def test_the_long_poll_answer_lists_the_live_relays_and_a_change_wakes_it(self):
        cursor = self.a.registry.changes.cursor
        waiting = self.a.longpolls.poll(cursor, 25, self.x)
        self.assertNoResult(waiting)
        self.a.replicas.update({"a": self.a.replicas.me})
        self.a.clock.advance(0)
        answer = self.successResultOf(waiting)
        self.assertEqual(answer["relays"], [{"replica": "a", "host": "a.wire.test", "port": 8444}])
        self.assertEqual((answer["upserts"], answer["removals"]), ([], []))
        # And its pairs are all homed at the one left.
        self.assertEqual(self.ask(self.a, "x", "y").relay_replica, "a")

    def test_a_node_removed_at_another_replica_loses_its_sessions_here(self):
        self.ask(self.home, "x", "y")
        self.assertEqual(len(self.home.relay), 1)
        self.assertEqual(self.home.end_relay_of(self.x), 1)
        self.assertEqual(len(self.home.relay), 0)


class _ByHost:
    """An HTTP client that hands each request to the StubTreq of its URL's replica."""

    def __init__(self, stubs: dict):
        self._stubs = stubs

    def request(self, method, url, **kwargs):
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        for base, stub in self._stubs.items():
            if url.startswith(base):
                kwargs.pop("unbuffered", None)
                return stub.request(method, url, **kwargs)
        return fail(ConnectionRefusedError("no such replica"))


def _grant(peer: str, relay_host: str | None = None, relay_port: int | None = None, **fields) -> RelayGrant:
    body = {
        "session_id": "s-" + peer, "peer_node_id": body_for(peer)["node_id"], "token": os.urandom(8).hex(),
        "key": base64.b64encode(os.urandom(32)).decode(), "relay_port": relay_port, **fields,
    }
    if relay_host is not None:
        body["relay_host"] = relay_host
    return RelayGrant.from_json(body)


class ShimPerSessionTests(unittest.TestCase):
    def setUp(self):
        self.clock = UDPClock()
        self.shim = RelayShim(self.clock, "192.0.2.1", 3479, 51820, relay_hosts=("192.0.2.1", "192.0.2.2"))
        self.addCleanup(lambda: Deferred.fromCoroutine(self.shim.stop()))

    def add(self, grant: RelayGrant) -> str:
        return self.successResultOf(Deferred.fromCoroutine(self.shim.add(grant)))

    def upstream(self):
        (port,) = [p for p in self.clock.listening() if p.host != "127.0.0.1"]
        return port

    def test_each_session_sends_to_its_own_relay(self):
        self.add(_grant("db1"))
        self.add(_grant("db2", "192.0.2.2", 4479))
        self.assertEqual(
            sorted(addr for _, addr in self.upstream().written), [("192.0.2.1", 3479), ("192.0.2.2", 4479)]
        )
        self.assertEqual(self.shim.sessions()[body_for("db2")["node_id"]].relay, ("192.0.2.2", 4479))

    def test_a_relay_host_that_is_none_of_the_nodes_servers_is_refused(self):
        self.add(_grant("db1"))
        refused = self.failureResultOf(Deferred.fromCoroutine(self.shim.add(_grant("db1", "198.51.100.66", 3479))), RelayHostRefused)
        self.assertIn("198.51.100.66", str(refused.value))
        session = self.shim.sessions()[body_for("db1")["node_id"]]
        self.assertEqual(session.relay, ("192.0.2.1", 3479), "the session held goes on")
        self.assertEqual([addr for _, addr in self.upstream().written], [("192.0.2.1", 3479)], "nothing sent there")

    def test_frames_are_taken_only_from_the_sessions_own_relay(self):
        grant = _grant("db2", "192.0.2.2", 4479)
        self.add(grant)
        session = self.shim.sessions()[body_for("db2")["node_id"]]
        frame = FrameKey(grant.key).seal(grant.token, TO_NODE, 1, b"")
        self.shim.from_server(frame, ("192.0.2.1", 3479))  # the node's own server: not this session's relay
        self.assertEqual(session.last_heard, 0.0)
        self.shim.from_server(frame, ("192.0.2.2", 4479))
        self.assertEqual(session.last_heard, self.clock.seconds())

    def test_a_grant_without_a_relay_host_is_the_nodes_own_server_as_before(self):
        self.add(_grant("db1", relay_port=9999))
        self.assertEqual(self.shim.sessions()[body_for("db1")["node_id"]].relay, ("192.0.2.1", 3479))

    def test_a_grant_naming_no_relay_host_is_not_refused_and_an_empty_one_is_not_a_host(self):
        with self.assertRaises(ProtocolError):
            RelayGrant.from_json({**_grant("db1").to_json(), "relay_host": "evil host/../"})


class RelayedReconcilerTests(unittest.TestCase):
    """The reconciler with a shim whose grants name replicas' relays."""

    def setUp(self):
        self.clock = UDPClock()
        self.clock.advance(1_700_000_000)
        self.server = _ReplicaServer(self.clock)
        self.netmap = NodeNetmap(body_for("web1")["node_id"])
        self.shim = RelayShim(self.clock, "192.0.2.1", 3479, 51820, relay_hosts=("192.0.2.1", "192.0.2.2"))
        self.addCleanup(lambda: Deferred.fromCoroutine(self.shim.stop()))
        self.tracked: list[Deferred] = []
        self.reconciler = Reconciler(
            clock=self.clock, wireguard=FakeWireGuard(clock=self.clock, auto_handshake=False), netmap=self.netmap,
            client=self.server, node_id=body_for("web1")["node_id"], public_key=key_for("web1"),
            me=lambda: Me("web1", "198.51.100.7", NatType.EASY), track=self.track, interface_up=lambda: True,
            stopping=lambda: False, relay=self.shim,
        )
        self.netmap.apply(NetmapAnswer.from_json({"cursor": "e:1", "full": False, "upserts": [peer_view("db1", 2, nat_type="hard")]}))
        self.db1 = body_for("db1")["node_id"]

    def track(self, coroutine) -> Deferred:
        d = Deferred.fromCoroutine(coroutine)
        self.tracked.append(d)
        return d

    def reconcile(self) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.reconciler.reconcile()))

    def relays(self, *hosts: str):
        return tuple(RelayEndpoint(f"r{i}", host, 3479 if host == "192.0.2.1" else 4479) for i, host in enumerate(hosts))

    def told(self, *hosts: str) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.reconciler.relays_live(self.relays(*hosts))))

    def test_a_session_whose_relay_died_is_asked_for_again_at_once(self):
        self.server.relay_at = ("192.0.2.2", 4479)
        self.told("192.0.2.1", "192.0.2.2")
        self.reconcile()
        self.assertEqual(self.shim.sessions()[self.db1].relay, ("192.0.2.2", 4479))
        asked = len(self.server.relay_requests)
        # The home at .2 dies: its pairs are homed at .1 now. A second later, not 30.
        self.server.relay_at = ("192.0.2.1", 3479)
        self.clock.advance(1)
        self.told("192.0.2.1")
        self.clock.advance(0)
        self.assertEqual(len(self.server.relay_requests), asked + 1, "asked again at once")
        self.assertEqual(self.server.relay_asked[-1][2], None, "a fresh side: the old one died with its relay")
        self.assertEqual(self.shim.sessions()[self.db1].relay, ("192.0.2.1", 3479))

    def test_a_session_whose_relay_lives_on_is_asked_for_keeping_its_side(self):
        self.server.relay_at = ("192.0.2.1", 3479)
        self.told("192.0.2.1")
        self.reconcile()
        token = self.shim.sessions()[self.db1].token
        asked = len(self.server.relay_requests)
        self.told("192.0.2.1", "192.0.2.2")  # a replica came: the pair may be homed there now
        self.clock.advance(0)
        self.assertEqual(len(self.server.relay_requests), asked + 1)
        self.assertEqual(self.server.relay_asked[-1][2], token, "held: kept if its home is the same")
        self.assertEqual(self.shim.sessions()[self.db1].token, token)
        self.told("192.0.2.1", "192.0.2.2")
        self.assertEqual(len(self.server.relay_requests), asked + 1, "the same list asks nothing")

    def test_a_listed_relay_that_is_none_of_the_nodes_servers_is_ignored_and_said(self):
        said = []
        observer = lambda event: said.append(event)  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.server.relay_at = ("192.0.2.1", 3479)
        self.told("192.0.2.1")
        self.reconcile()
        asked = len(self.server.relay_requests)
        self.told("192.0.2.1", "198.51.100.66")
        self.assertEqual(len(self.server.relay_requests), asked, "nothing changed that the node takes")
        self.assertTrue(any(e.get("log_level") == LogLevel.warn and "198.51.100.66" in str(e.get("host")) for e in said))

    def test_a_hostile_servers_grant_naming_a_foreign_relay_is_refused_with_a_clear_line(self):
        said = []
        observer = lambda event: said.append(event)  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.server.relay_at = ("203.0.113.99", 3479)
        self.reconcile()
        self.clock.advance(0)
        self.assertEqual(self.shim.sessions(), {})
        refused = [e for e in said if "refused" in e.get("log_format", "")]
        self.assertTrue(refused and "203.0.113.99" in str(refused[0]["error"]), said[-3:])


class _ReplicaServer(ScriptedServer):
    """The scripted server, its grants naming a replica's relay (``relay_at``)."""

    relay_at: tuple[str, int] | None = None

    def relay(self, *args, **kwargs) -> Deferred:
        d = super().relay(*args, **kwargs)
        if self.relay_at is not None:
            host, port = self.relay_at
            d.addCallback(lambda grant: replace(grant, relay_host=host, relay_port=port, relay_replica=host))
        return d



class RemovedElsewhereTests(unittest.TestCase):
    """The change stream (two replicas on one SQLite file, tests.test_cluster):
    a node removed at A ends its relay sessions at B when B applies the change."""

    def test_a_gone_change_from_the_stream_ends_the_nodes_sessions(self):
        from tests.test_cluster import Replica as StreamReplica, _clock

        data_dir = self.mktemp()
        a, b = StreamReplica(self, data_dir, _clock(), "a", leader=True), StreamReplica(self, data_dir, _clock(), "b")
        b.stream.on_gone = b.coordinator.end_relay_of
        records = {}
        for name in ("x", "y", "z"):
            d = Deferred.fromCoroutine(a.coordinator.register(registration_for(name), "198.51.100.7"))
            a.clock.advance(0)
            records[name] = self.successResultOf(d).record
        b.stream.wake()
        x, y, z = (records[n].node_id for n in ("x", "y", "z"))
        b.coordinator.relay.grant(x, y)
        b.coordinator.relay.grant(y, z)
        removing = Deferred.fromCoroutine(a.coordinator.remove_node(records["x"]))
        a.clock.advance(0)
        self.successResultOf(removing)
        self.assertEqual(len(b.coordinator.relay), 2, "not yet: B has not read the stream")
        b.stream.wake()
        self.assertIsNone(b.registry.get(x))
        self.assertEqual([set(s.sides) for s in b.coordinator.relay.sessions()], [{y, z}], "x's session ended, y-z's goes on")


class RelaysInTheAnswerTests(unittest.TestCase):
    def test_the_live_relays_are_read_and_a_bad_entry_is_skipped_and_named(self):
        answer = NetmapAnswer.from_json(
            {"cursor": "e:1", "full": False, "upserts": [], "removals": [],
             "relays": [{"replica": "a", "host": "a.example.org", "port": 8788}, {"replica": "b", "host": "b b", "port": 8788},
                        {"replica": "c", "host": "c.example.org", "port": 0}]}
        )
        self.assertEqual(answer.relays, (RelayEndpoint("a", "a.example.org", 8788),))
        self.assertEqual(len(answer.skipped), 2)
        self.assertIn("relay", answer.skipped[0])
        # A server alone lists none: nothing for the node to follow.
        self.assertIsNone(NetmapAnswer.from_json({"cursor": "e:1", "upserts": [], "removals": []}).relays)

    def test_a_grant_round_trips_its_relay(self):
        grant = _grant("db1", "b.example.org", 8788, relay_replica="b")
        self.assertEqual(RelayGrant.from_json(grant.to_json()), grant)
        self.assertEqual((grant.relay_host, grant.relay_port, grant.relay_replica), ("b.example.org", 8788, "b"))
