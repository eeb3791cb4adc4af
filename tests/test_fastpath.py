"""The relay's kernel fast path: when a session goes on it, the table it
gets, its counters, and every way back to the Python path."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fakes import FakeProcessRunner
from wire.relayproto import TO_SERVER, FrameKey
from wire.runner import CommandNotFound
from wire.server.fastpath import (
    OFF,
    ON,
    POLL_INTERVAL,
    UNAVAILABLE,
    FastSide,
    RelayFastPath,
    counters_of,
    fast_sides,
    ruleset,
)
from wire.server.relay import IDLE_TIMEOUT, RelayTable

PORT = 8788
A, B, C = ("198.51.100.1", 40000), ("203.0.113.2", 50000), ("192.0.2.3", 60000)


def conntrack_delete(address) -> list[str]:
    return ["conntrack", "-D", "-p", "udp", "-s", address[0], "--sport", str(address[1]), "--dport", str(PORT)]


class Pair:
    """Two nodes' grants of one session, and frames they send."""

    def __init__(self, table: RelayTable, a="node-a", b="node-b", fast_a=True, fast_b=True):
        self.table = table
        self.ga = table.grant(a, b, PORT, fresh=True, fastpath=fast_a)
        self.gb = table.grant(b, a, PORT, fresh=True, fastpath=fast_b)
        self.counters = {"a": 0, "b": 0}

    def send(self, side: str, source, payload=b"") -> str:
        grant = self.ga if side == "a" else self.gb
        self.counters[side] += 1
        frame = FrameKey(grant.key).seal(grant.token, TO_SERVER, self.counters[side], payload)
        return self.table.handle(frame, source)[0]


class CandidateTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.table = RelayTable(self.clock)
        self.table.offer_peer_keys = True  # the fast path is on

    def test_both_sides_verified_over_udp_with_new_shims(self):
        pair = Pair(self.table)
        self.assertEqual(pair.gb.peer_token, pair.ga.token, "the second request kept the unused side the first was told of")
        self.assertEqual(pair.ga.peer_token, pair.gb.token)
        self.assertEqual(pair.ga.peer_key, pair.gb.key)
        self.assertEqual(self.table.fastpath_candidates(), [], "no address verified yet")
        pair.send("a", A)
        self.assertEqual(self.table.fastpath_candidates(), [], "one side verified")
        pair.send("b", B)
        [session] = self.table.fastpath_candidates()
        self.assertEqual(
            fast_sides([session], PORT),
            {FastSide(session.session_id, pair.ga.token, A, B, PORT, PORT), FastSide(session.session_id, pair.gb.token, B, A, PORT, PORT)},
        )

    def test_an_old_shim_is_never_on_the_fast_path(self):
        pair = Pair(self.table, fast_b=False)
        self.assertIsNone(pair.gb.peer_token, "an old node's grant is the one it knows")
        pair.send("a", A)
        pair.send("b", B)
        self.assertEqual(self.table.fastpath_candidates(), [])
        # Asking again the old way (a restarted old daemon) takes the word back.
        table2 = RelayTable(self.clock)
        table2.offer_peer_keys = True
        pair2 = Pair(table2)
        pair2.table.grant("node-b", "node-a", PORT, fresh=False, fastpath=False)
        pair2.send("a", A)
        pair2.send("b", B)
        self.assertEqual(pair2.table.fastpath_candidates(), [])

    def test_a_peer_told_a_token_that_is_gone_keeps_it_in_python(self):
        pair = Pair(self.table)
        pair.send("a", A)
        pair.send("b", B)
        # B's daemon restarted: a new side, which A's shim has never heard of.
        pair.gb = self.table.grant("node-b", "node-a", PORT, fresh=True, fastpath=True)
        pair.counters["b"] = 0
        pair.send("b", B)
        self.assertEqual(self.table.fastpath_candidates(), [])
        # A asks for B's side anew, keeping its own (which B was told of).
        kept = self.table.grant("node-a", "node-b", PORT, fresh=True, fastpath=True, held=pair.ga.token)
        self.assertEqual((kept.token, kept.peer_token), (pair.ga.token, pair.gb.token))
        self.assertEqual(len(self.table.fastpath_candidates()), 1)
        # Holding a token that is no longer its side gets a fresh one, as before.
        stale = self.table.grant("node-a", "node-b", PORT, fresh=True, fastpath=True, held=b"x" * 8)
        self.assertNotEqual(stale.token, pair.ga.token)

    def test_a_stream_side_or_a_shared_address_stays_in_python(self):
        pair = Pair(self.table)
        pair.send("a", A)
        pair.send("b", ("relay-tcp", 7))
        self.assertEqual(self.table.fastpath_candidates(), [], "a TCP stream side")
        pair.send("b", B)
        self.assertEqual(len(self.table.fastpath_candidates()), 1)
        other = Pair(self.table, "node-a", "node-c")
        other.send("a", A)  # an old-style shim: one socket for all its sessions
        other.send("b", C)
        self.assertEqual(self.table.fastpath_candidates(), [], "A:PA carries two sessions: neither goes to the kernel")

    def test_an_address_change_or_an_end_is_told(self):
        changes = []
        self.table.on_change = lambda: changes.append(1)
        pair = Pair(self.table)
        before = len(changes)
        pair.send("a", A)
        pair.send("a", A)
        self.assertEqual(len(changes), before + 1, "once per new address, not per frame")
        pair.send("a", C)
        self.assertEqual(len(changes), before + 2)
        self.table.end_sessions_of("node-a")
        self.assertEqual(len(changes), before + 3)


class RulesetTests(unittest.TestCase):
    def test_the_table_text(self):
        side = FastSide("s1", b"T" * 8, A, B, PORT, PORT)
        text = ruleset(PORT, frozenset({side}), 50 * 1024 * 1024, 4 * 1024 * 1024)
        self.assertEqual(
            text,
            "table ip wire_relay_8788\n"
            "delete table ip wire_relay_8788\n"
            "table ip wire_relay_8788 {\n"
            "\tcounter t5454545454545454 { }\n"
            "\tchain prerouting {\n"
            "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
            # UDP header (64 bits), then MAGIC (32): the token is at bit 96.
            "\t\tudp dport 8788 ip saddr 198.51.100.1 udp sport 40000 @th,96,64 0x5454545454545454 dnat to 203.0.113.2:50000\n"
            "\t}\n"
            "\tchain forward {\n"
            "\t\ttype filter hook forward priority filter; policy accept;\n"
            "\t\tip saddr 198.51.100.1 udp sport 40000 ip daddr 203.0.113.2 udp dport 50000 counter name \"t5454545454545454\""
            " limit rate over 52428800 bytes/second burst 4194304 bytes drop\n"
            "\t}\n"
            "\tchain postrouting {\n"
            "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            "\t\tip saddr 198.51.100.1 udp sport 40000 ip daddr 203.0.113.2 udp dport 50000 masquerade to :8788\n"
            "\t}\n"
            "\tchain output {\n"
            "\t\ttype filter hook output priority raw; policy accept;\n"
            "\t\tudp sport 8788 notrack\n"
            "\t}\n"
            "}\n",
        )

    def test_an_empty_table(self):
        text = ruleset(PORT, frozenset(), 1, 1)
        self.assertNotIn("dnat", text)
        self.assertIn("chain forward", text)

    def test_counters_from_nft_json(self):
        listing = {
            "nftables": [
                {"metainfo": {"version": "1.0.6"}},
                {"counter": {"family": "ip", "name": "t00", "table": "wire_relay_8788", "handle": 4, "packets": 3, "bytes": 1200}},
            ]
        }
        self.assertEqual(counters_of(json.dumps(listing).encode()), {"t00": 1200})


class ServiceTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.table = RelayTable(self.clock)
        self.runner = FakeProcessRunner()

    def fastpath(self, root=True, forwarding=True) -> RelayFastPath:
        return RelayFastPath(self.clock, self.runner, self.table, PORT, rate=100, burst=10, is_root=lambda: root, forwarding_on=lambda: forwarding)

    def expect_flushes(self, *addresses) -> None:
        for address in sorted(addresses):
            self.runner.expect(conntrack_delete(address))

    def pair_in_the_kernel(self) -> tuple[RelayFastPath, Pair]:
        """A started fast path with one session whose two sides went into the kernel."""
        fp = self.fastpath()
        self.start(fp)
        pair = Pair(self.table)
        pair.send("a", A)
        pair.send("b", B)
        self.runner.expect(["nft", "-f", "-"])
        self.expect_flushes(A, B)
        self.clock.advance(0)
        return fp, pair

    def start(self, fp: RelayFastPath) -> None:
        self.runner.expect(["conntrack", "--version"], stdout=b"conntrack v1.4.7")
        self.runner.expect(["nft", "-f", "-"])
        self.runner.expect(["conntrack", "-D", "-p", "udp", "--dport", str(PORT)], rc=1)
        fp.startService()
        self.successResultOf(fp.ready)
        self.assertTrue(self.table.offer_peer_keys)

    def test_unavailable_without_root_forwarding_or_tools(self):
        for fp, why in ((self.fastpath(root=False), "root"), (self.fastpath(forwarding=False), "forwarding")):
            fp.startService()
            self.successResultOf(fp.ready)
            self.assertEqual(fp.state, UNAVAILABLE)
            self.assertIn(why, fp.reason)
        self.runner.expect(["conntrack", "--version"], error=CommandNotFound("conntrack"))
        fp = self.fastpath()
        fp.startService()
        self.successResultOf(fp.ready)
        self.assertEqual((fp.state, self.table.on_change, self.table.offer_peer_keys), (UNAVAILABLE, None, False))
        self.assertIsNone(Pair(self.table).ga.peer_key, "no peer keys handed out without the fast path")
        self.table = RelayTable(self.clock)
        self.assertIn("conntrack", fp.reason)
        pair = Pair(self.table)
        pair.send("a", A)
        self.assertEqual(pair.send("b", B), "relay_keepalive", "Python carries on")
        self.runner.assert_all_called()

    def test_install_when_verified_and_flush_the_flows_python_had(self):
        fp = self.fastpath()
        self.start(fp)
        self.assertEqual(fp.state, ON)
        pair = Pair(self.table)
        pair.send("a", A)
        self.clock.advance(0)
        self.runner.assert_all_called()  # one side: nothing to do
        pair.send("b", B)
        self.runner.expect(["nft", "-f", "-"])
        self.runner.expect(conntrack_delete(A), rc=1)  # nothing matched is fine
        self.runner.expect(conntrack_delete(B))
        self.clock.advance(0)
        self.runner.assert_all_called()
        table_text = self.runner.calls[-3].stdin.decode()
        self.assertIn(f"dnat to {B[0]}:{B[1]}", table_text)
        self.assertIn(f"dnat to {A[0]}:{A[1]}", table_text)
        self.assertIn("@th,96,64 0x" + pair.ga.token.hex(), table_text)
        self.assertEqual(fp.sessions_on, 1)

        # A's NAT moved it: back to Python for A's old address, and the new one (verified by this frame) in.
        self.assertEqual(pair.send("a", C), "relay_keepalive")
        self.runner.expect(["nft", "-f", "-"])
        self.expect_flushes(A, B, C)
        self.clock.advance(0)
        self.runner.assert_all_called()
        self.assertNotIn(f"ip saddr {A[0]}", self.runner.calls[-4].stdin.decode())

        # The session ends: its rules and flows go.
        self.table.end_sessions_of("node-b")
        self.runner.expect(["nft", "-f", "-"])
        self.expect_flushes(B, C)
        self.clock.advance(0)
        self.runner.assert_all_called()
        self.assertNotIn("dnat", self.runner.calls[-3].stdin.decode())
        self.assertEqual(fp.sessions_on, 0)

    def test_counters_keep_a_forwarded_session_from_expiring(self):
        fp, pair = self.pair_in_the_kernel()
        counter = "t" + pair.ga.token.hex()
        listing = ["nft", "-j", "list", "counters", "table", "ip", "wire_relay_8788"]
        moved = 0
        for _ in range(int(IDLE_TIMEOUT / POLL_INTERVAL) + 5):
            moved += 1000
            self.runner.expect(listing, stdout=json.dumps({"nftables": [{"counter": {"name": counter, "bytes": moved}}]}).encode())
            self.clock.advance(POLL_INTERVAL)
            self.table.expire()
        self.runner.assert_all_called()
        self.assertEqual(len(self.table), 1, "traffic in the kernel counts as use")
        # Quiet counters: the session expires, and leaves the kernel.
        for _ in range(int(IDLE_TIMEOUT / POLL_INTERVAL) + 1):
            self.runner.expect(listing, stdout=json.dumps({"nftables": [{"counter": {"name": counter, "bytes": moved}}]}).encode())
            self.clock.advance(POLL_INTERVAL)
            if self.table.expire():
                break
        self.assertEqual(len(self.table), 0)
        self.runner.expect(["nft", "-f", "-"])
        self.expect_flushes(A, B)
        self.clock.advance(0)
        self.runner.assert_all_called()

    def test_an_nft_failure_turns_it_off_and_python_carries_on(self):
        fp = self.fastpath()
        self.start(fp)
        pair = Pair(self.table)
        pair.send("a", A)
        pair.send("b", B)
        self.runner.expect(["nft", "-f", "-"], rc=1, stderr=b"Error: Could not process rule")
        self.runner.expect(["nft", "delete", "table", "ip", "wire_relay_8788"])
        self.clock.advance(0)
        self.runner.assert_all_called()
        self.assertEqual(fp.state, OFF)
        self.assertFalse(self.table.offer_peer_keys)
        self.assertIn("Could not process rule", fp.reason)
        self.assertEqual(pair.send("a", A, b"x"), "relay_forwarded")
        self.clock.advance(0)
        self.runner.assert_all_called()

    def test_stopping_deletes_the_table_and_the_flows(self):
        fp, pair = self.pair_in_the_kernel()
        self.runner.expect(["nft", "delete", "table", "ip", "wire_relay_8788"])
        self.expect_flushes(A, B)
        self.successResultOf(fp.stopService())
        self.runner.assert_all_called()
        self.assertEqual(fp.state, OFF)
