from twisted.trial import unittest

from wire.node.netmap import Peer
from wire.node.control import describe_path
from wire.node.paths import DIRECT_TIMEOUT, HANDSHAKE_STALE, Me, PathChoice, PathPlanner, nat_rule
from wire.node.wireguard import PeerStatus
from wire.protocol import PathMode


def peer(name="db1", public_ip="203.0.113.2", nat_type="easy", lan_ip="192.168.1.2", nat_port=40000):
    return Peer(
        node_id=f"id-{name}", node_name=name, vpn_ip="10.99.1.2", wg_public_key=f"key-{name}",
        public_ip=public_ip, nat_port=nat_port, port=51820, lan_ip=lan_ip, nat_type=nat_type, online=True,
    )


ME_EASY = Me("web1", "198.51.100.1", "easy")


class NatRuleTests(unittest.TestCase):
    def test_rules(self):
        cases = [
            (Me("web1", "198.51.100.1", "none"), peer(nat_type="hard"), None),
            (Me("web1", "198.51.100.1", "hard"), peer(nat_type="none"), None),
            (Me("web1", "198.51.100.1", "hard"), peer(nat_type="easy"), "relay: hard NAT on web1"),
            (ME_EASY, peer(nat_type="hard"), "relay: hard NAT on db1"),
            (Me("web1", "198.51.100.1", "hard"), peer(nat_type="hard"), "relay: hard NAT on web1"),
            (ME_EASY, peer(nat_type="unknown"), None),
            # Same NAT: the LAN path works whatever the NAT type.
            (Me("web1", "203.0.113.2", "hard"), peer(nat_type="hard"), None),
        ]
        for me, other, expected in cases:
            # The rule gives the reason; its mode is always the relay.
            why = nat_rule(me, other)
            self.assertEqual(None if why is None else f"{PathMode.RELAY}: {why}", expected, (me, other.nat_type))


class PlannerTests(unittest.TestCase):
    def setUp(self):
        self.planner = PathPlanner()
        self.peer = peer()

    def plan(self, now, handshake=0.0, me=ME_EASY, p=None):
        p = p or self.peer
        return self.planner.plan(me, {p.node_id: p}, {p.wg_public_key: handshake}, now)[p.node_id]

    def test_direct_then_relay_without_handshake(self):
        self.assertEqual(self.plan(100).mode, "direct")
        self.assertEqual(self.plan(100 + DIRECT_TIMEOUT).mode, "direct")
        choice = self.plan(101 + DIRECT_TIMEOUT)
        self.assertEqual((choice.mode, choice.summary), ("relay", "relay: no direct handshake within 15s"))
        self.assertIs(choice.mode, PathMode.RELAY)
        self.assertEqual(choice.reason, "no direct handshake within 15s", "the reason does not repeat the mode")
        self.assertEqual(self.plan(500).mode, "relay", "relay holds while nothing changes")

    def test_verified_direct_stays_until_stale(self):
        self.plan(100)
        self.assertTrue(self.plan(105, handshake=104).verified)
        self.assertEqual(self.plan(104 + HANDSHAKE_STALE, handshake=104).mode, "direct")
        choice = self.plan(105 + HANDSHAKE_STALE, handshake=104)
        self.assertEqual((choice.mode, choice.summary), ("relay", "relay: the direct path stopped working"))

    def test_changed_facts_try_direct_again(self):
        self.plan(100)
        self.assertEqual(self.plan(200).mode, "relay")
        moved = peer(public_ip="203.0.113.99")
        choice = self.plan(201, handshake=150, p=moved)
        self.assertEqual(choice.mode, "direct")
        self.assertFalse(choice.verified, "a handshake from the relay days proves nothing")
        self.assertTrue(self.plan(203, handshake=202, p=moved).verified)

    def test_hard_nat_relays_at_once_and_forgets_departed_peers(self):
        hard = peer(nat_type="hard")
        self.assertEqual(self.plan(100, p=hard).summary, "relay: hard NAT on db1")
        self.planner.plan(ME_EASY, {}, {}, 101)
        self.assertEqual(self.planner.choices, {})

    def test_restart_with_live_tunnel_counts_recent_handshake(self):
        self.assertTrue(self.plan(1000, handshake=950).verified)


class DescribePathTests(unittest.TestCase):
    """What the control socket says of a path: the mode, and the reason with and without it."""

    def status(self, handshake: float) -> PeerStatus:
        return PeerStatus("key-db1", "127.0.0.1:40100", ("10.99.1.2/32",), handshake, 0, 0, 25)

    def test_relay(self):
        choice = PathChoice(PathMode.RELAY, "hard NAT on db1", 100.0, ())
        described = describe_path(choice, self.status(195.0), 200.0)
        self.assertEqual(described, {"path": "relay", "reason": "relay: hard NAT on db1", "why": "hard NAT on db1", "handshake_age": 5.0})
        self.assertIs(described["path"], PathMode.RELAY)

    def test_direct_unproven_is_connecting(self):
        choice = PathChoice(PathMode.DIRECT, "via 203.0.113.2:40000", 100.0, ())
        described = describe_path(choice, self.status(0.0), 200.0)
        self.assertEqual(
            (described["path"], described["reason"], described["why"]),
            (PathMode.CONNECTING, "trying direct: via 203.0.113.2:40000 (no handshake yet)", "via 203.0.113.2:40000"),
        )

    def test_not_configured(self):
        self.assertEqual(describe_path(None, None, 200.0)["path"], PathMode.NONE)
