"""The access policy on the node: the server's packet filter is in force
before the peers it concerns, a node that cannot enforce it holds no peers
(closed, never open), and ``wire down`` takes the filter with the interface."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fakes import FakeFirewall, FakeWireGuard, started_daemon
from tests.helpers import body_for
from tests.test_daemon import ScriptedServer, peer_view
from wire.node.config import NodeConfig, save_config
from wire.node.control import node_status, policy_state
from wire.node.daemon import NodeDaemon
from wire.protocol import NetmapAnswer
from wire.protocol.filter import FilterRule, PortRange

DB_RULE = {"sources": ["10.99.1.2/32"], "proto": "tcp", "ports": [[5432, 5432]]}


class JournalWireGuard(FakeWireGuard):
    """A FakeWireGuard noting each peer change into a shared journal."""

    def __init__(self, journal: list, **kwargs):
        super().__init__(**kwargs)
        self.journal = journal

    async def apply(self, desired, reassert=()) -> int:
        changed = await super().apply(desired, reassert)
        if changed:
            self.journal.append(("peers", len(desired)))
        return changed


class LeavingServer(ScriptedServer):
    async def leave(self, node_id: str, wg_public_key: str) -> dict:
        return {"ok": True}


class NodePolicyTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = LeavingServer(self.clock)
        self.journal: list = []
        self.wireguard = JournalWireGuard(self.journal, clock=self.clock)
        self.firewall = FakeFirewall(self.journal)
        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)
        self.server.peers = {"db": peer_view("db", 2), "ops": peer_view("ops", 3)}

    def start(self, firewall="default") -> NodeDaemon:
        config = NodeConfig(server_url="https://wire.test", node_name="web1", node_id=body_for("web1")["node_id"])
        save_config(self.config_dir, config)
        self.daemon = started_daemon(
            self,
            clock=self.clock,
            config_dir=self.config_dir,
            config=config,
            wireguard=self.wireguard,
            client=self.server,
            firewall=self.firewall if firewall == "default" else firewall,
        )
        self.clock.advance(0)
        self.clock.advance(1)
        return self.daemon

    def push_filter(self, rules) -> None:
        """The server's next answer carries this filter (None: no policy)."""
        self.server.next_answer_extra = {"filter": rules}
        self.server.push()
        self.clock.advance(0)
        self.clock.advance(1)

    def test_no_policy_removes_a_left_table_once_and_holds_every_peer(self):
        self.start()
        self.clock.advance(5)
        self.assertEqual(len(self.wireguard.peers), 2)
        self.assertEqual(self.firewall.removals, 1, "a table a crashed daemon left is removed, once")
        self.assertEqual(policy_state(self.daemon), {"in_force": False, "rules": None, "problem": None})

    def test_the_filter_is_in_force_before_the_peers_it_concerns(self):
        self.server.next_answer_extra = {"filter": [DB_RULE]}
        self.start()
        first_filter = self.journal.index(("filter", (FilterRule(("10.99.1.2/32",), "tcp", (PortRange(5432, 5432),)),)))
        first_peers = next(i for i, entry in enumerate(self.journal) if entry[0] == "peers")
        self.assertLess(first_filter, first_peers)
        self.assertEqual(self.firewall.probe_sources, {"10.99.1.2", "10.99.1.3"}, "the peers may probe the path")
        self.assertEqual(policy_state(self.daemon), {"in_force": True, "rules": 1, "problem": None})
        # A new filter: applied; the same again: nothing runs.
        applies = self.firewall.applies
        self.push_filter([DB_RULE, {"sources": ["10.99.1.3/32"]}])
        self.assertEqual(self.firewall.applies, applies + 1)
        self.clock.advance(5)
        self.assertEqual(self.firewall.applies, applies + 1)
        # The policy goes: the table goes, the peers stay.
        self.push_filter(None)
        self.assertIsNone(self.firewall.rules)
        self.assertEqual(len(self.wireguard.peers), 2)

    def test_peers_named_by_tag_or_name_are_resolved_from_the_netmap(self):
        self.server.peers = {
            "db": peer_view("db", 2, tags=["tag:web"]),
            "ops": peer_view("ops", 3),
            "lab": peer_view("lab", 4, tags=["tag:db"]),
        }
        by_tag = {"peers": ["tag:web"], "proto": "tcp", "ports": [[5432, 5432]], "rules": [0]}
        by_name = {"peers": ["ops", "nobody"], "sources": ["192.168.7.0/24"], "rules": [1]}
        self.server.next_answer_extra = {"filter": [by_tag, by_name]}
        self.start()
        self.assertEqual(self.firewall.rules, (
            FilterRule(("10.99.1.2/32",), "tcp", (PortRange(5432, 5432),), rules=(0,)),
            FilterRule(("10.99.1.3/32", "192.168.7.0/24"), rules=(1,)),
        ))
        # The daemon's status says what each peer may open here, and by which rule.
        status = self.successResultOf(ensureDeferred(node_status(self.daemon)))
        may_open = {p["node_name"]: p["may_open_here"] for p in status["peers"]}
        self.assertEqual(may_open, {"db": ["tcp 5432 (acls[0])"], "ops": ["everything (acls[1])"], "lab": []})
        # A tagged peer joins: the same filter admits it, with no new filter from the server.
        applies = self.firewall.applies
        self.server.next_answer_extra = {}
        self.server.push([peer_view("web9", 9, tags=["tag:web"])])
        self.clock.advance(0)
        self.clock.advance(1)
        self.assertEqual(self.firewall.applies, applies + 1)
        self.assertEqual(self.firewall.rules[0].sources, ("10.99.1.2/32", "10.99.1.9/32"))
        # It loses the tag: it loses the port.
        self.server.push([peer_view("web9", 9)])
        self.clock.advance(0)
        self.clock.advance(1)
        self.assertEqual(self.firewall.rules[0].sources, ("10.99.1.2/32",))
        # Nothing but names that match no peer: the rule admits nothing and is left out.
        self.push_filter([{"peers": ["nobody"], "proto": "udp"}])
        self.assertEqual(self.firewall.rules, ())

    def test_a_filter_that_cannot_be_put_in_force_means_no_peers(self):
        self.firewall.fail_with = "nft: command not found"
        self.server.next_answer_extra = {"filter": [DB_RULE]}
        self.start()
        self.clock.advance(3)
        self.assertEqual(self.wireguard.peers, {}, "closed, never open")
        state = policy_state(self.daemon)
        self.assertFalse(state["in_force"])
        self.assertIn("cannot be put in force: nft: command not found", state["problem"])
        self.firewall.fail_with = None
        self.clock.advance(2)  # the next path check tries again
        self.assertEqual(len(self.wireguard.peers), 2)
        self.assertIsNone(policy_state(self.daemon)["problem"])

    def test_a_node_without_a_packet_filter_holds_no_peers_under_a_policy(self):
        self.server.next_answer_extra = {"filter": [DB_RULE]}
        self.start(firewall=None)
        self.clock.advance(3)
        self.assertEqual(self.wireguard.peers, {})
        self.assertIn("no packet filter", policy_state(self.daemon)["problem"])

    def test_a_bad_filter_keeps_the_one_in_force_and_is_counted(self):
        self.server.next_answer_extra = {"filter": [DB_RULE]}
        self.start()
        in_force = self.firewall.rules
        refused = self.daemon.bad_answers.count
        self.push_filter([{"sources": ["0.0.0.0/0"], "proto": "icmp", "ports": [[1, 2]]}])
        self.push_filter([{"sources": "everyone"}])
        self.assertEqual(self.firewall.rules, in_force)
        self.assertEqual(self.daemon.bad_answers.count, refused + 2)
        self.assertEqual(len(self.wireguard.peers), 2)

    def test_an_unreadable_filter_and_none_in_force_means_no_peers(self):
        # A policy this node cannot read (an older node, a broken server): closed, never open.
        self.server.next_answer_extra = {"filter": [{"sources": "everyone"}]}
        self.start()
        self.clock.advance(3)
        self.assertEqual(self.wireguard.peers, {})
        self.assertIn("cannot read", policy_state(self.daemon)["problem"])
        # A readable one later: in force, and the peers come.
        self.push_filter([DB_RULE])
        self.clock.advance(2)
        self.assertEqual(len(self.wireguard.peers), 2)
        self.assertIsNone(policy_state(self.daemon)["problem"])

    def test_wire_down_removes_the_filter_with_the_interface(self):
        self.server.next_answer_extra = {"filter": [DB_RULE]}
        self.start()
        d = Deferred.fromCoroutine(self.daemon.leave())
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertTrue(self.wireguard.is_down)
        self.assertIsNone(self.firewall.rules)


class FilterAnswerTests(unittest.TestCase):
    def test_absent_null_and_given(self):
        base = {"cursor": "e:1", "full": True, "upserts": []}
        self.assertEqual((NetmapAnswer.from_json(base).filter_given, NetmapAnswer.from_json(base).filter), (False, None))
        answer = NetmapAnswer.from_json(base | {"filter": None})
        self.assertEqual((answer.filter_given, answer.filter), (True, None))
        answer = NetmapAnswer.from_json(base | {"filter": [DB_RULE]})
        self.assertEqual(answer.filter, (FilterRule(("10.99.1.2/32",), "tcp", (PortRange(5432, 5432),)),))
        answer = NetmapAnswer.from_json(base | {"filter": [DB_RULE, {"sources": []}]})
        self.assertFalse(answer.filter_given, "all or nothing")
        self.assertIn("skipped the packet filter", answer.skipped[0])
