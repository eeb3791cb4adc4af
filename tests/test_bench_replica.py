"""The replica benches' helpers (bench/replica_scale.py, bench/nodes.py,
bench/relay_ping.py, bench/procstat.py): how figures are read and split,
how a simulated node fails over; the relay pinger against the server's
real relay protocol on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os

from twisted.internet import reactor, threads
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from bench import procstat, relay_ping
from bench.httpload import HttpError, NotSent
from bench.nodes import Answered, Fleet, fails_over, registration_for
from bench.replica_scale import metric_value, parse_args, per_minute, percentiles, split_rounds
from wire.protocol.registration import parse_registration
from wire.server.relay import RelayTable
from wire.stun.server import StunServerProtocol

METRICS = """# HELP wire_longpolls_open Netmap long-polls waiting
# TYPE wire_longpolls_open gauge
wire_longpolls_open 333.0
wire_longpolls_open_total{x="1"} 9.0
wire_nodes 1001.0
"""


class MetricsAndPhases(unittest.TestCase):
    def test_an_unlabelled_sample_is_read_by_its_exact_name(self):
        self.assertEqual(metric_value(METRICS, "wire_longpolls_open"), 333.0)
        self.assertEqual(metric_value(METRICS, "wire_nodes"), 1001.0)
        self.assertIsNone(metric_value(METRICS, "wire_nodes_online"))

    def test_round_trips_are_split_at_the_burst_and_losses_counted(self):
        rounds = [[1.0, 0.001], [2.0, None], [5.0, 0.050], [5.5, 0.030], [6.0, None], [9.0, 0.002]]
        phases = split_rounds(rounds, burst_from=5.0, burst_to=6.0)
        self.assertEqual((phases["before"]["sent"], phases["before"]["lost"]), (2, 1))
        self.assertEqual(phases["before"]["rtt_ms"]["max"], 1.0)
        self.assertEqual((phases["during"]["sent"], phases["during"]["lost"]), (3, 1))
        self.assertEqual(phases["during"]["rtt_ms"]["p50"], 30.0)
        self.assertEqual(phases["during"]["rtt_ms"]["max"], 50.0)
        self.assertEqual(phases["after"]["rtt_ms"]["count"], 1)

    def test_percentiles_are_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(percentiles(values), {"count": 100, "p50": 50, "p95": 95, "p99": 99, "max": 100})
        self.assertEqual(percentiles([]), {"count": 0})

    def test_database_counters_become_rates_per_minute_and_per_node(self):
        rates = per_minute({"commits": 100, "changes_appended": 5}, {"commits": 340, "changes_appended": 5}, 120, 1000)
        self.assertEqual(rates, {"commits": 120.0, "commits_per_node": 0.12, "changes_appended": 0.0, "changes_appended_per_node": 0.0})
        self.assertIsNone(per_minute(None, None, 60, 10))

    def test_replicas_need_postgresql(self):
        with self.assertRaises(SystemExit):
            parse_args(["spread", "--database", "sqlite"])
        with self.assertRaises(SystemExit):
            parse_args(["failover", "--replicas", "1"])
        self.assertEqual(parse_args(["relay_latency", "--database", "sqlite"]).database, "sqlite")


class SimulatedFailover(unittest.TestCase):
    def fleet(self, replicas: int, count: int = 6) -> Fleet:
        servers = [("127.0.0.1", 9000 + 10 * i) for i in range(1, replicas)]
        return Fleet(MemoryReactorClock(), "127.0.0.1", 9000, "wire", "t", range(count), replicas=servers)

    def test_nodes_start_spread_over_the_replicas(self):
        fleet = self.fleet(3)
        self.assertEqual([n.server for n in fleet.nodes], [0, 1, 2, 0, 1, 2])

    def test_a_node_moves_round_robin_and_its_first_answer_there_is_noted(self):
        fleet = self.fleet(3)
        fleet.mark_moves()
        node = fleet.nodes[2]
        node.cursor = "e:41"
        self.assertTrue(node.fail_over())
        self.assertTrue(node.fail_over())
        self.assertEqual(node.server, 1)  # 2 -> 0 -> 1
        self.assertEqual(node.cursor, "e:41")  # kept: the next replica gets a delta
        node.sent_at = 12.5
        fleet.answered(node, full=False, at=13.0)
        report = fleet.moves_report()
        (move,) = report["moves"]
        self.assertEqual((move["left"], move["to"], move["tries"], move["first_full"]), (2, 1, 2, False))
        self.assertEqual((move["polling_at"], move["answered_at"]), (12.5, 13.0))
        self.assertEqual(report["answers"], {"full": 0, "delta": 1})
        self.assertEqual(report["moving"], [])
        # Answers after the first are counted, not taken for a move.
        fleet.answered(node, full=True, at=14.0)
        self.assertEqual(len(fleet.moves_report()["moves"]), 1)
        self.assertEqual(fleet.moves_report()["answers"], {"full": 1, "delta": 1})

    def test_a_single_server_fleet_does_not_move(self):
        fleet = self.fleet(1)
        self.assertFalse(fleet.nodes[0].fail_over())
        self.assertIsNone(fleet.nodes[0].move)

    def test_what_makes_a_node_move(self):
        self.assertTrue(fails_over(HttpError("connect failed")))
        self.assertTrue(fails_over(NotSent("gone")))
        self.assertTrue(fails_over(Answered(503, "no database")))
        self.assertFalse(fails_over(Answered(401, "unknown credential")))
        self.assertFalse(fails_over(ValueError("bad JSON")))

    def test_a_moved_registration_is_a_change_and_still_valid(self):
        first, moved = registration_for("t", 5), registration_for("t", 5, moved=1)
        self.assertNotEqual(first.nat_port, moved.nat_port)
        self.assertEqual(first.node_id, moved.node_id)
        self.assertEqual(parse_registration(moved.as_body()).nat_port, moved.nat_port)


class TreeCpu(unittest.TestCase):
    def test_the_cpu_of_a_reaped_child_is_counted(self):
        before = procstat.tree_cpu_seconds(os.getpid())
        pid = os.fork()
        if pid == 0:
            # Burn CPU until this child has used 0.1 s of it (no timing asserted).
            while sum(os.times()[:2]) < 0.1:
                pass
            os._exit(0)
        _, _, usage = os.wait4(pid, 0)
        child = usage.ru_utime + usage.ru_stime
        self.assertGreaterEqual(child, 0.1)
        # Clock ticks are coarser than rusage: allow two of them.
        self.assertGreaterEqual(procstat.tree_cpu_seconds(os.getpid()) - before, child - 2 / procstat.CLOCK_TICKS)

    def test_live_children_are_found(self):
        self.assertIn(os.getpid(), procstat.children_of(os.getppid()))


class RelayPingAgainstTheRelay(unittest.TestCase):
    async def test_every_frame_comes_back_through_the_relay(self):
        table = RelayTable(reactor)
        a, b = table.grant("a", "b"), table.grant("b", "a")
        port = reactor.listenUDP(0, StunServerProtocol(reactor, relay=table.handle), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        relay = ("127.0.0.1", port.getHost().port)

        def text(grant) -> str:
            return f"{grant.token.hex()}:{base64.b64encode(grant.key).decode()}"

        result = await threads.deferToThread(relay_ping.ping, relay, text(a), text(b), 0.5, 40)
        json.dumps(result)  # what the bench reads
        rounds = result["rounds"]
        self.assertGreaterEqual(len(rounds), 10)
        self.assertEqual([r for r in rounds if r[1] is None], [])
        self.assertTrue(all(r[1] > 0 for r in rounds))
