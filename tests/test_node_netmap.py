"""The node's copy of the netmap: snapshots replace it, deltas change it, bad entries are skipped."""

from twisted.trial import unittest

from tests.helpers import body_for
from wire.node.netmap import NodeNetmap, Peer
from wire.protocol import NetmapAnswer


_numbers: dict[str, int] = {}


def view(name: str, **fields) -> dict:
    body = body_for(name)
    # Each node its own address: two claiming one is a problem (wire.node.trust).
    vpn_ip = f"10.99.0.{_numbers.setdefault(name, len(_numbers) + 2)}"
    return {"node_id": body["node_id"], "node_name": name, "vpn_ip": vpn_ip, "wg_public_key": body["wg_public_key"], **fields}


class NodeNetmapTests(unittest.TestCase):
    def setUp(self):
        self.me = body_for("me")["node_id"]
        self.netmap = NodeNetmap(self.me)

    def apply(self, **answer) -> list[str]:
        return self.netmap.apply(NetmapAnswer.from_json(answer))

    def names(self) -> list[str]:
        return sorted(p.node_name for p in self.netmap.peers.values())

    def test_snapshot_then_delta(self):
        self.assertEqual(self.apply(cursor="e:2", full=True, upserts=[view("me"), view("web1"), view("db1")]), [])
        self.assertEqual(self.names(), ["db1", "web1"], "this node is no peer of its own")
        self.assertEqual((self.netmap.cursor, self.netmap.epoch), ("e:2", "e"))
        self.apply(cursor="e:4", full=False, upserts=[view("web1", public_ip="203.0.113.9")], removals=[body_for("db1")["node_id"]])
        self.assertEqual(self.names(), ["web1"])
        self.assertIsInstance(self.netmap.peers[body_for("web1")["node_id"]], Peer)
        self.assertEqual(self.netmap.by_name_or_ip("web1").public_ip, "203.0.113.9")
        self.apply(cursor="f:1", full=True, upserts=[view("mail")])
        self.assertEqual(self.names(), ["mail"], "a snapshot replaces the map")

    def test_bad_entries_are_skipped_and_told(self):
        problems = self.apply(cursor="e:1", full=True, upserts=[view("web1"), view("db1", wg_public_key="nope")])
        self.assertEqual(self.names(), ["web1"])
        self.assertEqual(len(problems), 1)
        self.assertIn("skipped a peer entry: wg_public_key", problems[0])

    def test_no_cursor_keeps_ours(self):
        self.apply(cursor="e:3", full=True, upserts=[])
        self.apply(full=False)
        self.assertEqual(self.netmap.cursor, "e:3")
