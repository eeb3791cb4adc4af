"""Path reports (``POST /report``): the message, the server's book of them,
the node's reporter, and a daemon reporting to a real server over TCP."""

from __future__ import annotations

import json
import math
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers import body_for, key_for, make_coordinator, registration_for, settled
from tests.test_api import AuthenticatedTestCase
from tests.fakes import FakeWireGuard
from tests.test_daemon import real_http_daemon, settle
from wire.protocol import PathMode, ProtocolError
from wire.protocol.report import MAX_REPORTED_PEERS, NodeReport, PeerReport
from wire.server import reports as server_reports
from wire.server.reports import ReportBook, ReportTooSoon, mesh_edges
from wire.node.config import NodeConfig
from wire.node.report import CHECK_EVERY, REPORT_EVERY, PathReporter, peer_reports
from wire.server.api import build_site


def peer_json(peer_node_id="db1", **fields):
    return {
        "peer_node_id": peer_node_id,
        "path": "direct",
        "endpoint_kind": "public",
        "endpoint": "203.0.113.7:51820",
        "handshake_age": 12.5,
        "rx_bytes": 1000,
        "tx_bytes": 2000,
        **fields,
    }


def report_json(node="web1", peers=None):
    return {"node_id": node, "wg_public_key": key_for(node), "peers": [peer_json()] if peers is None else peers}


def peer(peer_node_id, path=PathMode.DIRECT, age=1.0, rx=10, tx=10, kind="public", endpoint="203.0.113.7:51820"):
    return PeerReport(peer_node_id, path, kind, endpoint, age, rx, tx)


class ReportMessageTests(unittest.TestCase):
    def test_round_trip(self):
        report = NodeReport.from_json(report_json())
        self.assertEqual(NodeReport.from_json(report.to_json()), report)
        self.assertEqual(report.peers[0].path, PathMode.DIRECT)

    def test_an_ipv6_endpoint_is_normalised_and_none_is_allowed(self):
        report = NodeReport.from_json(report_json(peers=[peer_json(endpoint="[2001:DB8:0::1]:51820"), peer_json("x1", endpoint=None, handshake_age=None)]))
        self.assertEqual(report.peers[0].endpoint, "[2001:db8::1]:51820")
        self.assertIsNone(report.peers[1].handshake_age)

    def test_bad_fields_are_named(self):
        cases = {
            "peers[0].path": peer_json(path="teleport"),
            "peers[0].endpoint_kind": peer_json(endpoint_kind="carrier-pigeon"),
            "peers[0].endpoint": peer_json(endpoint="example.com:51820"),
            "peers[0].handshake_age": peer_json(handshake_age=-1),
            "peers[0].rx_bytes": peer_json(rx_bytes=-5),
            "peers[0].tx_bytes": peer_json(tx_bytes=2**64),
            "peers[0].peer_node_id": peer_json(peer_node_id="a b; rm -rf /"),
        }
        for field, entry in cases.items():
            with self.assertRaises(ProtocolError) as caught:
                NodeReport.from_json(report_json(peers=[entry]))
            self.assertEqual(caught.exception.field, field, entry)

    def test_the_version_is_optional_and_checked(self):
        self.assertEqual(NodeReport.from_json(report_json()).version, "")
        report = NodeReport.from_json({**report_json(), "version": "0.1.0+dev"})
        self.assertEqual(NodeReport.from_json(report.to_json()).version, "0.1.0+dev")
        for bad in ("0.1 0", "x" * 41, 1, "$(reboot)"):  # "" is absent, as everywhere
            with self.assertRaises(ProtocolError) as caught:
                NodeReport.from_json({**report_json(), "version": bad})
            self.assertEqual(caught.exception.field, "version")

    def test_nan_infinity_and_huge_integers_are_no_age(self):
        for value in (math.nan, math.inf, 10**400, -(10**400)):
            with self.assertRaises(ProtocolError):
                NodeReport.from_json(report_json(peers=[peer_json(handshake_age=value)]))

    def test_too_many_peers_or_one_twice_is_refused(self):
        many = [peer_json(f"n{i}") for i in range(MAX_REPORTED_PEERS + 1)]
        with self.assertRaises(ProtocolError) as caught:
            NodeReport.from_json(report_json(peers=many))
        self.assertEqual(caught.exception.field, "peers")
        with self.assertRaises(ProtocolError):
            NodeReport.from_json(report_json(peers=[peer_json(), peer_json()]))

    def test_a_full_report_fits_the_api_body_limit(self):
        from wire.protocol import MAX_BODY_BYTES

        longest = "n" + "x" * 63
        entries = [
            peer_json(longest[:-4] + f"{i:04d}", path="relay-tcp", endpoint_kind="relay-kernel",
                      endpoint="[2001:db8:1234:5678:9abc:def0:1234:5678]:65535", handshake_age=31535999.9,
                      rx_bytes=2**64 - 1, tx_bytes=2**64 - 1)
            for i in range(MAX_REPORTED_PEERS)
        ]
        body = json.dumps({**report_json(node=longest), "peers": entries}).encode()
        self.assertLess(len(body), MAX_BODY_BYTES)

    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=15), children, max_size=5),
                        max_leaves=20))
    def test_garbage_is_a_protocol_error_or_a_report(self, garbage):
        for body in (garbage, {"node_id": "web1", "wg_public_key": key_for("web1"), "peers": garbage},
                     report_json(peers=[garbage])):
            if not isinstance(body, dict):
                continue
            try:
                NodeReport.from_json(body)
            except ProtocolError:
                pass


class ReportBookTests(unittest.TestCase):
    """Node ids here are the registered ones: ``body_for(name)["node_id"]`` is ``name``."""

    def setUp(self):
        self.coordinator = make_coordinator(self)
        self.clock = self.coordinator.clock
        for name in ("web1", "db1", "cache1"):
            self.coordinator.registry.register(registration_for(name, node_id=name), "203.0.113.9", self.clock.seconds())
        self.book = self.coordinator.reports

    def test_only_existing_visible_peers_are_kept(self):
        hidden = {("web1", "cache1")}
        book = ReportBook(self.coordinator.store, self.clock, lambda n: self.coordinator.registry.get(n) is not None,
                          lambda a, b: (a, b) not in hidden)
        kept = book.accept(NodeReport("web1", key_for("web1"), (peer("db1"), peer("cache1"), peer("ghost1"), peer("web1"))))
        self.assertEqual(kept, 1)
        self.assertEqual(book.dropped, 3)
        found = settled(Deferred.fromCoroutine(book.all()))
        self.assertEqual([p.peer_node_id for p in found["web1"].peers], ["db1"])

    def test_a_node_reports_at_most_every_min_gap(self):
        self.book.accept(NodeReport("web1", key_for("web1"), (peer("db1"),)))
        with self.assertRaises(ReportTooSoon):
            self.book.accept(NodeReport("web1", key_for("web1"), (peer("db1"),)))
        self.clock.advance(server_reports.MIN_GAP)
        self.assertEqual(self.book.accept(NodeReport("web1", key_for("web1"), (peer("db1", path=PathMode.RELAY),))), 1)
        self.assertEqual(settled(Deferred.fromCoroutine(self.book.all()))["web1"].peers[0].path, PathMode.RELAY)

    def test_the_mesh_wide_bound_keeps_the_most_recently_active(self):
        self.patch(server_reports, "MAX_ENTRIES", 3)
        self.book.accept(NodeReport("web1", key_for("web1"), (peer("db1"), peer("cache1"))))
        kept = self.book.accept(NodeReport("db1", key_for("db1"), (peer("web1", age=90.0), peer("cache1", age=2.0))))
        self.assertEqual(kept, 1)
        found = settled(Deferred.fromCoroutine(self.book.all()))
        self.assertEqual([p.peer_node_id for p in found["db1"].peers], ["cache1"])
        # A node's new report replaces its old one within the bound.
        self.clock.advance(server_reports.MIN_GAP)
        self.assertEqual(self.book.accept(NodeReport("web1", key_for("web1"), (peer("db1"), peer("cache1")))), 2)

    def test_reports_are_written_and_read_back_by_another_replica(self):
        self.book.accept(NodeReport("web1", key_for("web1"), (peer("db1", path=PathMode.LAN, kind="lan", endpoint="192.168.1.5:51820"),), "0.1.0"))
        settled(self.book.flush())
        other = ReportBook(self.coordinator.store, self.clock, lambda n: True, lambda a, b: True)
        found = settled(Deferred.fromCoroutine(other.all()))
        self.assertEqual(found["web1"].peers[0].endpoint, "192.168.1.5:51820")
        self.assertEqual((found["web1"].reported_at, found["web1"].version), (self.clock.seconds(), "0.1.0"))

    def test_a_corrupt_stored_row_is_skipped_not_fatal(self):
        settled(self.coordinator.store.query_write(
            "INSERT INTO node_reports (node_id, reported_at, peers) VALUES (?, ?, ?)", ("db1", 1.0, "{not json")))
        settled(self.coordinator.store.query_write(
            "INSERT INTO node_reports (node_id, reported_at, peers) VALUES (?, ?, ?)", ("cache1", 1.0, '[{"path": "x"}]')))
        self.assertEqual(settled(Deferred.fromCoroutine(self.book.all())), {})

    def test_a_failed_flush_keeps_the_reports_for_the_next(self):
        from wire.server.store import StoreError

        self.book.accept(NodeReport("web1", key_for("web1"), (peer("db1"),)))
        self.patch(self.coordinator.store, "transaction", lambda writes: fail(StoreError("database away")))
        settled(self.book.flush())
        self.patch(self.coordinator.store, "transaction", type(self.coordinator.store).transaction.__get__(self.coordinator.store))
        settled(self.book.flush())
        self.clock.advance(1)
        other = ReportBook(self.coordinator.store, self.clock, lambda n: True, lambda a, b: True)
        self.assertIn("web1", settled(Deferred.fromCoroutine(other.all())))

    def test_removing_a_node_removes_its_report(self):
        self.book.accept(NodeReport("web1", key_for("web1"), (peer("db1"),)))
        settled(self.book.flush())
        record = self.coordinator.registry.get("web1")
        d = Deferred.fromCoroutine(self.coordinator.remove_node(record))
        self.clock.advance(0)
        settled(d)
        self.assertEqual(settled(self.coordinator.store.query("SELECT node_id FROM node_reports")), [])
        self.assertNotIn("web1", settled(Deferred.fromCoroutine(self.book.all())))

    def test_edges_carry_both_sides_and_the_relayed_kind_wins(self):
        reports = {
            "web1": server_reports.StoredReport(100.0, (peer("db1", path=PathMode.RELAY, kind="relay-kernel"),)),
            "db1": server_reports.StoredReport(101.0, (peer("web1", path=PathMode.DIRECT), peer("gone1"))),
        }
        (edge,) = mesh_edges(reports, {"web1", "db1"}, now=110.0)
        self.assertEqual((edge["a"], edge["b"], edge["kind"]), ("db1", "web1", "relay"))
        self.assertEqual(set(edge["sides"]), {"web1", "db1"})
        self.assertEqual(edge["sides"]["db1"]["reported_ago"], 9.0)


class ReportApiTests(AuthenticatedTestCase):
    def test_a_node_reports_only_as_itself_and_not_too_often(self):
        web, db = self.enroll("web1"), self.enroll("db1")
        body = report_json(peers=[peer_json(db["node_id"])])
        body["node_id"] = web["node_id"]
        as_db = {b"authorization": [b"Bearer " + db["credential"].encode()]}
        code, answer = self.run_async(self.json_call("POST", "/report", body, headers=as_db))
        self.assertEqual(code, 403, answer)
        code, answer = self.run_async(self.json_call("POST", "/report", body))
        self.assertEqual(code, 401, answer)
        as_web = {b"authorization": [b"Bearer " + web["credential"].encode()]}
        code, answer = self.run_async(self.json_call("POST", "/report", body, headers=as_web))
        self.assertEqual((code, answer), (200, {"ok": True, "kept": 1}))
        code, answer = self.run_async(self.json_call("POST", "/report", body, headers=as_web))
        self.assertEqual(code, 429, answer)
        self.assertIn("send the next in", answer["error"])

    def test_bad_bodies_are_400_naming_the_field(self):
        web = self.enroll("web1")
        as_web = {b"authorization": [b"Bearer " + web["credential"].encode()]}
        body = {**report_json(peers=[peer_json(rx_bytes="lots")]), "node_id": web["node_id"]}
        code, answer = self.run_async(self.json_call("POST", "/report", body, headers=as_web))
        self.assertEqual(code, 400)
        self.assertIn("peers[0].rx_bytes", answer["error"])
        code, answer = self.run_async(self.json_call("POST", "/report", raw=b"[1,2", headers=as_web))
        self.assertEqual(code, 400, answer)
        self.assertEqual(self.coordinator.reports.dropped, 0)
        self.assertEqual(settled(Deferred.fromCoroutine(self.coordinator.reports.all())), {})


def status_entry(node_id, path="direct", kind="public", endpoint="203.0.113.7:51820", age=3.25, rx=5, tx=6):
    return {"node_id": node_id, "path": path, "endpoint_kind": kind, "endpoint": endpoint, "handshake_age": age, "rx_bytes": rx, "tx_bytes": tx}


class PeerReportsTests(unittest.TestCase):
    def test_only_peers_that_shook_hands_most_recent_first_and_no_shim_address(self):
        built = peer_reports([
            status_entry("old1", age=300.0),
            status_entry("never1", age=None, path="connecting", kind="none", endpoint=None),
            status_entry("relayed1", path="relay", kind="relay-shim", endpoint="127.0.0.1:40001", age=1.04),
        ])
        self.assertEqual([p.peer_node_id for p in built], ["relayed1", "old1"])
        self.assertIsNone(built[0].endpoint)
        self.assertEqual(built[0].handshake_age, 1.0)
        self.assertEqual(built[1].endpoint, "203.0.113.7:51820")

    def test_at_most_the_limit(self):
        built = peer_reports([status_entry(f"n{i}", age=float(i)) for i in range(MAX_REPORTED_PEERS + 10)])
        self.assertEqual(len(built), MAX_REPORTED_PEERS)
        self.assertEqual(built[-1].peer_node_id, f"n{MAX_REPORTED_PEERS - 1}")


class PathReporterTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.peers = (peer("db1"),)
        self.sent: list[NodeReport] = []
        self.answer = lambda: succeed(1)
        self.reporter = PathReporter(self.clock, lambda: NodeReport("web1", key_for("web1"), self.peers), self.send)
        self.reporter.start()
        self.addCleanup(self.reporter.stop)

    def send(self, report):
        self.sent.append(report)
        return self.answer()

    def test_sends_once_then_on_change_then_every_minute_while_counters_move(self):
        self.clock.advance(CHECK_EVERY)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(CHECK_EVERY)
        self.peers = (peer("db1", rx=999),)  # counters alone: not yet
        self.clock.advance(CHECK_EVERY)
        self.assertEqual(len(self.sent), 1)
        self.peers = (peer("db1", path=PathMode.RELAY, kind="relay-kernel"),)
        self.clock.advance(CHECK_EVERY)
        self.assertEqual(len(self.sent), 2)
        self.assertEqual(self.sent[-1].peers[0].path, PathMode.RELAY)
        self.peers = (peer("db1", path=PathMode.RELAY, kind="relay-kernel", rx=5000),)
        self.clock.pump([CHECK_EVERY] * int(REPORT_EVERY / CHECK_EVERY))
        self.assertEqual(len(self.sent), 3)
        self.clock.pump([CHECK_EVERY] * int(2 * REPORT_EVERY / CHECK_EVERY))
        self.assertEqual(len(self.sent), 3, "nothing moved: nothing sent")

    def test_a_failed_send_is_tried_again_at_the_next_check(self):
        self.answer = lambda: fail(RuntimeError("server away"))
        self.clock.advance(CHECK_EVERY)
        self.assertEqual(self.reporter.failing, "server away")
        self.answer = lambda: succeed(1)
        self.clock.advance(CHECK_EVERY)
        self.assertEqual((len(self.sent), self.reporter.failing, self.reporter.sent), (2, None, 1))

    def test_one_send_at_a_time_and_a_cancelled_one_is_quiet(self):
        pending = Deferred()
        self.answer = lambda: pending
        self.clock.advance(CHECK_EVERY)
        self.peers = (peer("db1", path=PathMode.LAN, kind="lan"),)
        self.clock.advance(CHECK_EVERY)
        self.assertEqual(len(self.sent), 1)
        pending.cancel()
        self.assertIsNone(self.reporter.failing)
        self.clock.advance(CHECK_EVERY)
        self.assertEqual(len(self.sent), 2)

    def test_moving_to_another_replica_sends_at_once(self):
        self.clock.advance(CHECK_EVERY)
        self.reporter.moved()
        self.clock.advance(CHECK_EVERY)
        self.assertEqual(len(self.sent), 2)

    def test_nothing_to_report_sends_nothing(self):
        reporter = PathReporter(self.clock, lambda: None, self.send)
        self.assertIsNone(reporter.check())
        self.assertEqual(self.sent, [])


class DaemonReportTests(unittest.TestCase):
    """A daemon reports its paths to a real server over TCP (both on one fake clock)."""

    timeout = 30

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.coordinator = make_coordinator(self, clock=self.clock)
        port = reactor.listenTCP(0, build_site(self.coordinator), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)

    async def test_the_server_learns_how_the_daemon_reaches_its_peer(self):
        other = registration_for("db1")
        self.coordinator.registry.register(other, "203.0.113.9", self.clock.seconds())
        config = NodeConfig(server_url=self.url, node_name="web1", node_id=body_for("web1")["node_id"])
        wireguard = FakeWireGuard(clock=self.clock)
        daemon = real_http_daemon(self, self.clock, self.config_dir, config, wireguard, "192.168.1.10")
        await settle(self.clock, lambda: daemon.contact.registered and other.node_id in daemon.netmap.peers)
        wireguard.count(key_for("db1"), rx=4096, tx=8192)
        await settle(self.clock, lambda: daemon.reporter.sent > 0 or daemon.reporter.failing is not None, advance=1.0)
        self.assertIsNone(daemon.reporter.failing)
        (reported,) = settled(Deferred.fromCoroutine(self.coordinator.reports.all()))[config.node_id].peers
        self.assertEqual(reported.peer_node_id, other.node_id)
        self.assertEqual((reported.rx_bytes, reported.tx_bytes), (100 + 4096, 200 + 8192))  # the fake starts at 100, 200
        self.assertIsNotNone(reported.handshake_age)
