"""The pair's path on a fake clock: the rule, the server's word, proof, silence and reports."""

from twisted.trial import unittest

from wire.node.peerview import describe_path, endpoint_kind
from wire.node.paths import (
    DEAD_AFTER,
    DEAD_AFTER_WITHOUT_ECHO,
    PROBE_AFTER,
    REPORT_AGAIN,
    SETTLE,
    PathPlanner,
    Phase,
    Seen,
)
from wire.node.wireguard import PeerStatus
from wire.protocol import NatType, PairPath, PathFailure, PathMode, PeerView, pair_rule
from wire.protocol.paths import DIRECT_TIMEOUT, RETRY_TIMEOUT, retry_delay


def node(name, public_ip, nat_type="easy", lan_ip="", nat_port=40000, online=True):
    return PeerView(
        node_id=f"id-{name}",
        node_name=name,
        vpn_ip="10.99.1.2",
        wg_public_key=f"key-{name}",
        public_ip=public_ip,
        nat_port=nat_port,
        port=51820,
        lan_ip=lan_ip,
        nat_type=NatType(nat_type),
        online=online,
    )


WEB1 = node("web1", "198.51.100.1", lan_ip="192.168.9.1")
DB1 = node("db1", "203.0.113.2", lan_ip="192.168.1.2")


class RuleTests(unittest.TestCase):
    def test_the_rule_is_the_same_from_both_sides(self):
        cases = [
            ("none", "hard", PathMode.DIRECT, "direct"),
            ("hard", "none", PathMode.DIRECT, "direct"),
            ("hard", "easy", PathMode.RELAY, "hard NAT on web1"),
            ("easy", "hard", PathMode.RELAY, "hard NAT on db1"),
            ("hard", "hard", PathMode.RELAY, "hard NAT on db1 and web1"),
            ("easy", "unknown", PathMode.DIRECT, "direct"),
            ("hard", "unknown", PathMode.RELAY, "hard NAT on web1"),
        ]
        for mine, theirs, mode, reason in cases:
            a, b = node("web1", "198.51.100.1", mine), node("db1", "203.0.113.2", theirs)
            self.assertEqual(pair_rule(a, b), (mode, reason), (mine, theirs))
            self.assertEqual(pair_rule(b, a), (mode, reason), "symmetric")

    def test_one_public_address_means_the_lan_whatever_the_nat(self):
        a = node("web1", "203.0.113.2", "hard", lan_ip="192.168.1.3")
        b = node("db1", "203.0.113.2", "hard", lan_ip="192.168.1.2")
        self.assertEqual(pair_rule(a, b)[0], PathMode.LAN)
        self.assertEqual(pair_rule(b, a)[0], PathMode.LAN)
        # Without a LAN address on one side there is no LAN path to take.
        self.assertEqual(pair_rule(node("web1", "203.0.113.2", "hard"), b)[0], PathMode.RELAY)

    def test_retry_delays_double_up_to_half_an_hour(self):
        self.assertEqual([retry_delay(n) for n in range(1, 8)], [60, 120, 240, 480, 960, 1800, 1800])


class Side:
    """One node's planner, and what its WireGuard shows of the other."""

    def __init__(self, me: PeerView, peer: PeerView):
        self.me, self.peer = me, peer
        self.planner = PathPlanner()
        self.words: dict[str, PairPath] = {}
        self.rx, self.tx = 100, 200
        self.handshake = 0.0
        self.configured = True
        self.echoing = True
        self.via_relay = False  # WireGuard's endpoint for the peer is the relay's

    def plan(self, now: float):
        seen = {self.peer.wg_public_key: Seen("x", self.handshake, self.rx, self.tx, self.via_relay)} if self.configured else {}
        echoing = {self.peer.node_id} if self.echoing else set()
        return self.planner.plan(self.me, {self.peer.node_id: self.peer}, self.words, seen, now, echoing)

    def path(self):
        return self.planner.paths[self.peer.node_id]


class PlannerTests(unittest.TestCase):
    def setUp(self):
        self.side = Side(WEB1, DB1)

    def test_a_direct_attempt_is_proven_by_what_arrives_after_it_settles(self):
        plan = self.side.plan(100)
        self.assertEqual((self.side.path().mode, self.side.path().phase), (PathMode.DIRECT, Phase.TRYING))
        self.assertEqual(self.side.path().endpoint, "203.0.113.2:40000")
        self.assertEqual(plan.probes, ["id-db1"], "an attempt is probed")
        self.side.rx += 100  # in flight from before: proves nothing
        self.side.plan(100 + SETTLE / 2)
        self.assertEqual(self.side.path().phase, Phase.TRYING)
        self.side.plan(101)
        self.side.rx += 100
        plan = self.side.plan(102)
        self.assertEqual(self.side.path().phase, Phase.WORKING)
        self.assertEqual(plan.probes, [], "a working path is not probed")
        self.assertEqual(self.side.path().summary, "direct: via 203.0.113.2:40000")

    def test_when_our_own_nat_moves_every_path_is_tried_and_probed_again(self):
        self.side.plan(100)
        self.side.plan(101)
        self.side.rx += 100
        self.side.plan(102)
        self.assertEqual(self.side.path().phase, Phase.WORKING)
        self.side.me = node("web1", "198.51.100.1", lan_ip="192.168.9.1", nat_port=30123)  # our mapping moved
        plan = self.side.plan(103)
        self.assertEqual((self.side.path().phase, self.side.path().since, plan.probes), (Phase.TRYING, 103, ["id-db1"]))

    def test_a_new_handshake_proves_it_too(self):
        self.side.plan(100)
        self.side.handshake = 103
        self.side.plan(104)
        self.assertTrue(self.side.path().proven)

    def test_no_proof_within_the_timeout_is_reported_once_and_again_only_if_refused(self):
        self.side.plan(100)
        self.assertEqual(self.side.plan(100 + DIRECT_TIMEOUT - 0.1).reports, [])
        plan = self.side.plan(100 + DIRECT_TIMEOUT)
        self.assertEqual(plan.reports, [("id-db1", PathFailure.NO_PROOF)])
        self.assertEqual(self.side.path().mode, PathMode.DIRECT, "the node never switches alone")
        self.side.planner.reported("id-db1", accepted=False, now=100 + DIRECT_TIMEOUT)
        self.assertEqual(self.side.plan(100 + DIRECT_TIMEOUT + 1).reports, [])
        self.assertEqual(self.side.plan(100 + DIRECT_TIMEOUT + REPORT_AGAIN).reports, [("id-db1", PathFailure.NO_PROOF)])

    def test_the_servers_word_moves_the_pair_and_a_retry_has_the_short_timeout(self):
        self.side.plan(100)
        self.side.words["id-db1"] = PairPath("id-db1", PathMode.RELAY, "no direct handshake within 15s", 116, 1, 176)
        plan = self.side.plan(117)
        self.assertEqual((self.side.path().mode, self.side.path().phase), (PathMode.RELAY, Phase.RELAYED))
        self.assertEqual((plan.probes, plan.reports), ([], []))
        self.side.words["id-db1"] = PairPath("id-db1", PathMode.DIRECT, "trying direct again (retry 1)", 176, 1)
        self.side.plan(176)
        path = self.side.path()
        self.assertEqual((path.mode, path.phase, path.timeout), (PathMode.DIRECT, Phase.TRYING, RETRY_TIMEOUT))
        self.assertEqual(path.reason, "trying direct again (retry 1), via 203.0.113.2:40000")
        self.assertEqual(self.side.plan(176 + RETRY_TIMEOUT).reports, [("id-db1", PathFailure.NO_PROOF)])

    def test_a_retry_is_not_proven_by_what_still_comes_through_the_relay(self):
        # The server's kernel may still forward the session this node just
        # ended, and WireGuard roams to where that traffic comes from.
        self.side.words["id-db1"] = PairPath("id-db1", PathMode.DIRECT, "trying direct again (retry 1)", 176, 1)
        self.side.plan(176)
        self.side.via_relay = True
        for now in (177, 178, 179, 180):
            self.side.rx += 1000
            self.side.plan(now)
            self.assertEqual(self.side.path().phase, Phase.TRYING, now)
        self.assertEqual(self.side.plan(176 + RETRY_TIMEOUT).reports, [("id-db1", PathFailure.NO_PROOF)])

    def test_once_set_back_from_the_relay_what_arrives_proves_the_path(self):
        self.side.plan(100)
        self.side.via_relay = True
        self.side.rx += 1000
        self.side.plan(101)
        self.side.via_relay = False  # the reconciler pointed WireGuard back
        self.side.plan(102)
        self.assertEqual(self.side.path().phase, Phase.TRYING, "the relayed bytes are behind the baseline")
        self.side.rx += 100
        self.side.plan(103)
        self.assertEqual(self.side.path().phase, Phase.WORKING)

    def test_a_word_for_direct_where_the_rule_says_relay_is_not_followed(self):
        side = Side(WEB1, node("db1", "203.0.113.2", "hard"))
        side.words["id-db1"] = PairPath("id-db1", PathMode.DIRECT, "trying direct again (retry 1)", 100, 1)
        side.plan(100)
        self.assertEqual((side.path().mode, side.path().reason), (PathMode.RELAY, "hard NAT on db1"))

    def test_a_working_path_that_goes_silent_is_probed_then_reported(self):
        self.side.plan(100)
        self.side.plan(101)
        self.side.rx += 100
        self.side.plan(102)
        self.side.tx += 500  # we send; nothing comes back
        self.side.plan(103)
        self.assertEqual(self.side.plan(103 + PROBE_AFTER).probes, ["id-db1"])
        self.assertEqual(self.side.path().phase, Phase.SILENT)
        self.assertEqual(self.side.plan(103 + DEAD_AFTER - 0.1).reports, [])
        self.assertEqual(self.side.plan(103 + DEAD_AFTER).reports, [("id-db1", PathFailure.STOPPED)])
        # An answer after all: working again, nothing more to report.
        self.side.rx += 50
        self.side.plan(110)
        self.assertEqual(self.side.path().phase, Phase.WORKING)

    def test_a_peer_that_never_answered_a_probe_gets_wireguards_own_ten_seconds(self):
        self.side.echoing = False
        self.side.plan(100)
        self.side.plan(101)
        self.side.rx += 100
        self.side.plan(102)
        self.side.tx += 500
        self.side.plan(103)
        self.assertEqual(self.side.plan(103 + DEAD_AFTER).reports, [])
        self.assertEqual(self.side.plan(103 + DEAD_AFTER_WITHOUT_ECHO).reports, [("id-db1", PathFailure.STOPPED)])

    def test_a_working_peer_is_probed_now_and_then_until_it_is_known_to_answer(self):
        self.side.echoing = False
        self.side.plan(100)
        self.side.plan(101)
        self.side.rx += 100
        self.assertEqual(self.side.plan(102).probes, [], "probed while trying, a second ago")
        self.assertEqual(self.side.path().phase, Phase.WORKING)
        self.assertEqual(self.side.plan(111).probes, ["id-db1"])
        self.assertEqual(self.side.plan(112).probes, [])
        self.side.echoing = True
        self.assertEqual(self.side.plan(125).probes, [])

    def test_keepalives_alone_are_not_traffic_that_needs_an_answer(self):
        self.side.plan(100)
        self.side.plan(101)
        self.side.rx += 100
        self.side.plan(102)
        for t in range(103, 160):
            if t % 25 == 0:
                self.side.tx += 32
            self.assertEqual(self.side.plan(t).reports, [])
        self.assertEqual(self.side.path().phase, Phase.WORKING)

    def test_a_new_wireguard_starts_its_counters_again(self):
        self.side.plan(100)
        self.side.plan(101)
        self.side.rx += 100
        self.side.plan(102)
        self.side.rx, self.side.tx = 0, 0  # wireguard-go restarted
        self.side.plan(103)
        self.side.tx += 300
        self.side.plan(104)
        self.side.rx += 90
        self.side.plan(105)
        self.assertEqual(self.side.path().phase, Phase.WORKING)

    def test_an_offline_peer_is_neither_timed_nor_reported(self):
        side = Side(WEB1, node("db1", "203.0.113.2", online=False))
        side.plan(100)
        self.assertEqual(side.plan(100 + 3 * DIRECT_TIMEOUT).reports, [])
        side.peer = node("db1", "203.0.113.2")
        side.plan(200)
        self.assertEqual(side.path().since, 200, "the attempt starts when it is back")
        self.assertEqual(side.plan(200 + DIRECT_TIMEOUT - 1).reports, [])

    def test_a_server_that_gives_no_word_lets_this_node_decide_with_backoff(self):
        self.side.plan(100)
        self.side.planner.decide_locally("id-db1", PathFailure.NO_PROOF, 115)
        self.side.plan(116)
        self.assertEqual((self.side.path().mode, self.side.path().reason), (PathMode.RELAY, "no direct handshake within 15s"))
        self.side.plan(115 + retry_delay(1))
        self.assertEqual((self.side.path().mode, self.side.path().timeout), (PathMode.DIRECT, RETRY_TIMEOUT))
        plan = self.side.plan(115 + retry_delay(1) + RETRY_TIMEOUT)
        self.side.planner.decide_locally("id-db1", plan.reports[0][1], 115 + retry_delay(1) + RETRY_TIMEOUT)
        word = self.side.planner.local_words["id-db1"]
        self.assertEqual((word.tries, word.retry_at - word.since), (2, retry_delay(2)))


class AgreementTests(unittest.TestCase):
    """Two nodes of a pair, each with its own planner, fed the same facts and
    words at different moments: once their inputs agree, their modes do."""

    def interleavings(self):
        # (delay before A sees a change, delay before B sees it)
        return [(0, 0), (0, 3), (3, 0), (0.2, 9), (9, 0.2)]

    def test_both_sides_follow_every_word_whatever_the_order(self):
        words = [
            PairPath("?", PathMode.RELAY, "no direct handshake within 15s", 10, 1, 70),
            PairPath("?", PathMode.DIRECT, "trying direct again (retry 1)", 70, 1),
            PairPath("?", PathMode.RELAY, "direct retry 1 failed", 75, 2, 195),
            PairPath("?", None),
        ]
        for delay_a, delay_b in self.interleavings():
            a, b = Side(WEB1, DB1), Side(DB1, WEB1)
            t = 0.0
            for word in words:
                for side, delay in sorted(((a, delay_a), (b, delay_b)), key=lambda x: x[1]):
                    side.plan(t + delay)
                    peer_word = PairPath(side.peer.node_id, word.mode, word.reason, word.since, word.tries, word.retry_at)
                    if word.mode is None:
                        side.words.pop(side.peer.node_id, None)
                    else:
                        side.words[side.peer.node_id] = peer_word
                t += 10
                a.plan(t)
                b.plan(t)
                self.assertEqual(a.path().mode, b.path().mode, (delay_a, delay_b, word))

    def test_a_restarted_side_agrees_at_once(self):
        a, b = Side(WEB1, DB1), Side(DB1, WEB1)
        relay = PairPath("id-db1", PathMode.RELAY, "the direct path stopped working", 5, 1, 65)
        a.words["id-db1"] = relay
        b.words["id-web1"] = PairPath("id-web1", relay.mode, relay.reason, relay.since, relay.tries, relay.retry_at)
        a.plan(10)
        b.plan(10)
        a = Side(WEB1, DB1)  # a new daemon: its first netmap carries the word
        a.words["id-db1"] = relay
        a.plan(11)
        self.assertEqual((a.path().mode, b.path().mode), (PathMode.RELAY, PathMode.RELAY))

    def test_facts_that_arrive_at_different_moments_agree_once_both_arrived(self):
        a, b = Side(WEB1, DB1), Side(DB1, WEB1)
        a.plan(0)
        b.plan(0)
        hard_db1 = node("db1", "203.0.113.2", "hard", lan_ip="192.168.1.2")
        a.peer = hard_db1  # a learns db1 went behind a hard NAT first
        a.plan(1)
        b.me = hard_db1
        b.plan(3)
        self.assertEqual((a.path().mode, b.path().mode), (PathMode.RELAY, PathMode.RELAY))


class DescribeTests(unittest.TestCase):
    def status(self, endpoint, handshake=0.0):
        return PeerStatus("key-db1", endpoint, ("10.99.1.2/32",), handshake, 0, 0, 25)

    def test_the_endpoint_is_named_by_what_it_is(self):
        self.assertEqual(endpoint_kind("127.0.0.1:40001", DB1, {"127.0.0.1:40001"}), "relay-shim")
        self.assertEqual(endpoint_kind("127.0.0.1:40009", DB1), "relay-shim", "a loopback that is not the peer's")
        self.assertEqual(endpoint_kind("203.0.113.2:40000", DB1), "public")
        self.assertEqual(endpoint_kind("192.168.1.2:51820", DB1), "lan")
        self.assertEqual(endpoint_kind(None, DB1), "none")
        on_loopback = node("db1", "127.0.0.1")
        self.assertEqual(endpoint_kind("127.0.0.1:51820", on_loopback), "public", "the peer's own address")

    def test_what_wireguard_has_wins_over_what_was_chosen(self):
        side = Side(WEB1, DB1)
        side.words["id-db1"] = PairPath("id-db1", PathMode.RELAY, "the direct path stopped working", 90, 1, 150)
        side.plan(100)
        # WireGuard still has the public endpoint (the relay session is not ready).
        shown = describe_path(side.path(), self.status("203.0.113.2:40000"), DB1, 100)
        self.assertEqual((shown["path"], shown["endpoint_kind"]), (PathMode.CONNECTING, "public"))
        self.assertIn("the relay session is not ready", shown["reason"])
        shown = describe_path(side.path(), self.status("127.0.0.1:40001"), DB1, 100, {"127.0.0.1:40001"})
        self.assertEqual((shown["path"], shown["endpoint_kind"]), (PathMode.RELAY, "relay-shim"))
        self.assertEqual(shown["reason"], "relay: the direct path stopped working; direct tried again in 50s")
        self.assertEqual((shown["decided_by"], shown["since"]), ("server", 100))

    def test_the_relays_kernel_path_is_the_relay_too(self):
        side = Side(WEB1, DB1)
        side.words["id-db1"] = PairPath("id-db1", PathMode.RELAY, "the direct path stopped working", 90, 1, 150)
        side.plan(100)
        kernel = "192.0.2.1:8790"
        self.assertEqual(endpoint_kind(kernel, DB1, {"127.0.0.1:40001"}, {kernel}), "relay-kernel")
        self.assertEqual(endpoint_kind(kernel, DB1, {"127.0.0.1:40001"}), "public", "not told: the server's port is just an address")
        shown = describe_path(side.path(), self.status(kernel), DB1, 100, {"127.0.0.1:40001"}, kernels={kernel})
        self.assertEqual((shown["path"], shown["endpoint_kind"]), (PathMode.RELAY, "relay-kernel"))

    def test_a_direct_path_on_a_shim_is_not_called_direct(self):
        side = Side(WEB1, DB1)
        side.plan(100)
        side.plan(101)
        side.rx += 10
        side.plan(102)
        shown = describe_path(side.path(), self.status("127.0.0.1:40001", 101), DB1, 102)
        self.assertEqual(shown["path"], PathMode.CONNECTING)
        self.assertIn("WireGuard still sends to the relay shim 127.0.0.1:40001", shown["reason"])
        shown = describe_path(side.path(), self.status("203.0.113.2:40000", 101), DB1, 102)
        self.assertEqual((shown["path"], shown["reason"]), (PathMode.DIRECT, "direct: via 203.0.113.2:40000"))
