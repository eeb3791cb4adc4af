"""The cluster's change stream in memory (wire.server.cluster): two
replicas, each a coordinator with its own store, on one SQLite file and a
fake clock each. Their stores answer at once (they do not serve), a commit
is a turn of the replica's clock, and "NOTIFY" is a call of ``wake``: the
ordering and apply logic without a PostgreSQL. (tests.test_replicas runs two
real servers on a real one.)"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers import registration_for, settled
from wire.addressing import AddressPool, Ipv6Pool, parse_subnet, parse_subnet6
from wire.protocol import Cursor
from wire.server.cluster import ChangeStream
from wire.server.coordinator import Coordinator
from wire.server.netmap import CATCH_UP_CHECK, ChangeLog
from wire.server.registry import Registry
from wire.server.store import StoreError, open_store

SUBNET6 = "fd7a:115c:a1e0:ab12::/64"


def _clock() -> Clock:
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


class Leading:
    def __init__(self, leader: bool):
        self.leader = leader
        self.applied = self.lag = 0

    def health(self) -> dict:
        return {}


class Replica:
    def __init__(self, test: unittest.TestCase, data_dir: str, clock: Clock, name: str, leader: bool = False):
        self.store = open_store(data_dir, clock)
        test.addCleanup(self.store.close)
        self.store.streaming = True
        self.store.origin = name
        changes = ChangeLog(epoch=self.store.draw_meta("epoch", name * 12), serial=self.store.cluster_serial(), shared=True)
        self.registry = Registry(
            self.store,
            AddressPool(parse_subnet("10.99.0.0/24")),
            pool6=Ipv6Pool(parse_subnet6(SUBNET6)),
            changes=changes,
            offline_after=30,
        )
        self.registry.load(self.store.load(), clock.seconds(), sweep=False)
        self.coordinator = Coordinator(clock, self.store, self.registry)
        self.coordinator.cluster = Leading(leader)
        self.stream = ChangeStream(self.store, self.registry, clock, None, self.coordinator.policy, self.coordinator.dns)
        self.store.committed_changes.append(self.stream.wake)
        self.clock = clock

    def register(self, name: str, **fields):
        return settled(self.coordinator.register(registration_for(name, **fields), "198.51.100.7"))

    @property
    def cursor(self) -> Cursor:
        return self.registry.changes.cursor


class ClusterStreamTests(unittest.TestCase):
    def setUp(self):
        data_dir = self.mktemp()
        self.a = Replica(self, data_dir, _clock(), "a", leader=True)
        self.b = Replica(self, data_dir, _clock(), "b")

    def advance(self, seconds: float) -> None:
        for replica in (self.a, self.b):
            replica.clock.advance(seconds)

    def register(self, replica: Replica, name: str, **fields):
        d = Deferred.fromCoroutine(replica.coordinator.register(registration_for(name, **fields), "198.51.100.7"))
        replica.clock.advance(0)  # its group commit
        return settled(d)

    def test_one_epoch_for_every_replica(self):
        self.assertEqual(self.a.cursor.epoch, self.b.cursor.epoch)
        self.assertEqual(self.a.cursor.epoch, "a" * 12)  # drawn by the first, kept for all

    def test_a_change_is_recorded_where_it_was_made_only_when_the_stream_reaches_it(self):
        before = self.a.cursor
        self.assertEqual(self.register(self.a, "web1").outcome, "new")
        # Committed with serial 1; the stream (woken by the commit) recorded it.
        self.assertEqual(self.a.cursor, Cursor(before.epoch, 1))
        self.assertEqual(self.a.store.read_now("SELECT serial, kind, origin FROM changes"), [(1, "online", "a")])

    def test_another_replicas_change_reaches_this_one_under_the_same_serial(self):
        heard = []
        self.b.registry.on_change(heard.append)
        record = self.register(self.a, "web1").record
        self.assertIsNone(self.b.registry.get(record.node_id))
        self.b.stream.wake()  # its NOTIFY
        adopted = self.b.registry.get(record.node_id)
        self.assertEqual((adopted.vpn_ip, adopted.node_name), (record.vpn_ip, "web1"))
        self.assertTrue(self.b.registry.is_online(record.node_id))
        self.assertEqual(self.b.cursor, self.a.cursor)
        self.assertEqual(heard, [record.node_id])
        # Applied, never written back: no second change, nothing queued.
        self.assertEqual(self.b.store.cluster_serial(), 1)
        self.assertFalse(self.b.store.is_pending(record.node_id))

    def test_a_cursor_from_one_replica_is_a_delta_at_the_other(self):
        self.register(self.a, "web1")
        self.register(self.a, "web2")
        cursor = self.a.cursor
        self.register(self.a, "web3")
        self.b.stream.wake()
        answer = self.b.registry.netmap_since(cursor, self.b.clock.seconds())
        self.assertFalse(answer["full"])
        self.assertEqual([n["node_name"] for n in answer["upserts"]], ["web3"])
        self.assertEqual(answer["cursor"], str(self.a.cursor))

    def test_a_cursor_from_a_replica_further_along_waits_for_this_one_to_read_as_far(self):
        self.register(self.a, "web1")
        self.b.stream.wake()
        self.register(self.a, "web2")
        ahead = str(self.a.cursor)  # b has not read serial 2 yet
        answer = settled(self.b.coordinator.netmap(ahead, 0))
        self.assertFalse(answer["full"])
        self.assertEqual(answer["cursor"], str(self.b.cursor))
        waiting = self.b.coordinator.netmap(ahead, 20)
        self.assertFalse(waiting.called, "it waits for b to read as far as its cursor")
        self.b.stream.wake()
        self.b.clock.advance(CATCH_UP_CHECK)
        self.assertFalse(waiting.called, "b read as far: web2, which the node has, is not sent again")
        self.register(self.a, "web3")
        self.b.stream.wake()
        self.b.clock.advance(0)
        answer = settled(waiting)
        self.assertEqual(([n["node_name"] for n in answer["upserts"]], answer["full"]), (["web3"], False))

    def test_changes_of_both_replicas_apply_in_serial_order_on_both(self):
        self.register(self.a, "web1")
        self.register(self.b, "web2")  # b has not heard of web1 yet
        self.register(self.a, "web3")
        for replica in (self.a, self.b):
            replica.stream.wake()
        for replica in (self.a, self.b):
            self.assertEqual(sorted(r.node_name for r in replica.registry.records()), ["web1", "web2", "web3"])
            self.assertEqual(replica.registry.changes.serial, 3)
            self.assertEqual(replica.stream.lag, 0)

    def test_an_address_another_replica_gave_is_known_to_the_pool(self):
        first = self.register(self.a, "web1").record
        self.b.stream.wake()
        second = self.register(self.b, "web2").record
        self.assertNotEqual(first.vpn_ip, second.vpn_ip)
        self.assertNotEqual(first.vpn_ip6, second.vpn_ip6)

    def test_the_same_address_given_at_once_by_both_is_refused_to_the_second_and_undone(self):
        first = self.register(self.a, "web1").record
        # b gives the same address before it heard: the database refuses it.
        with self.assertRaises(StoreError):
            self.register(self.b, "web2", vpn_ip=first.vpn_ip)
        web2 = registration_for("web2").node_id
        self.assertIsNone(self.b.registry.get(web2))
        self.b.stream.wake()
        # Once it heard, the node's retry gets another address.
        again = self.register(self.b, "web2", vpn_ip=first.vpn_ip).record
        self.assertNotEqual(again.vpn_ip, first.vpn_ip)
        self.a.stream.wake()
        self.assertEqual(self.a.registry.get(web2).vpn_ip, again.vpn_ip)

    def test_a_removal_reaches_the_other_replica(self):
        record = self.register(self.a, "web1").record
        self.b.stream.wake()
        settled(self.a.coordinator.remove_node(record))
        self.b.stream.wake()
        self.assertIsNone(self.b.registry.get(record.node_id))
        answer = self.b.registry.netmap_since(Cursor(self.b.cursor.epoch, 1), self.b.clock.seconds())
        self.assertEqual(answer["removals"], [record.node_id])

    def test_a_write_of_ours_still_pending_keeps_ours(self):
        record = self.register(self.a, "web1").record
        self.b.stream.wake()
        # b's own change of the node is queued (not committed) when a's next one arrives.
        self.b.registry.set_tags(record.node_id, ("tag:b",))
        self.register(self.a, "web1", port=4000)
        self.b.stream.wake()
        self.assertEqual(self.b.registry.get(record.node_id).tags, ("tag:b",))
        self.b.clock.advance(0)  # b's commit: the last word (the whole row), for everyone
        self.a.stream.wake()
        for replica in (self.a, self.b):
            self.assertEqual(_facts(replica, record.node_id), (51820, ("tag:b",)))
            self.assertEqual(replica.registry.changes.serial, 3)

    def test_only_the_leader_takes_silent_nodes_offline_and_the_other_hears_it(self):
        record = self.register(self.b, "web1").record
        self.a.stream.wake()
        self.advance(31)
        self.b.coordinator.sweep()  # not the leader: nothing
        self.assertTrue(self.b.registry.is_online(record.node_id))
        self.a.coordinator.sweep()
        self.assertFalse(self.a.registry.is_online(record.node_id))  # in memory at once
        self.a.clock.advance(0)
        self.b.stream.wake()
        self.assertFalse(self.b.registry.is_online(record.node_id))
        self.assertEqual(self.a.store.read_now("SELECT kind FROM changes WHERE serial = 2"), [("offline",)])
        self.a.coordinator.sweep()
        self.a.clock.advance(0)
        self.assertEqual(self.a.store.cluster_serial(), 2, "a node goes offline once")

    def test_the_leader_takes_offline_by_the_heartbeats_other_replicas_wrote(self):
        record = self.register(self.b, "web1").record
        self.a.stream.wake()
        self.advance(20)
        self.b.registry.seen(record.node_id, self.b.clock.seconds())
        settled(self.b.store.flush_touches())
        self.advance(15)  # silent for 35 s at a, 15 s in truth
        self.a.registry.refresh_seen(self.a.store.read_now("SELECT node_id, last_seen FROM nodes"))
        self.a.coordinator.sweep()
        self.assertTrue(self.a.registry.is_online(record.node_id))

    def test_a_stale_row_is_read_again(self):
        record = self.register(self.a, "web1").record
        self.b.stream.wake()
        self.register(self.a, "web1", port=4000)
        query = self.b.store.query

        def meanwhile(sql, parameters=()):
            # A change made at b while its stream reads a's row.
            if sql.startswith("SELECT node_id"):
                self.b.store.query = query  # type: ignore[method-assign]
                self.b.registry.set_tags(record.node_id, ("tag:b",))
                self.b.clock.advance(0)  # committed (serial 3) before a's row is applied
            return query(sql, parameters)

        self.b.store.query = meanwhile  # type: ignore[method-assign]
        self.b.stream.wake()
        self.a.stream.wake()
        # The row read before b's change is not applied over it: both end as the database did.
        stored = self.a.store.read_now("SELECT port, tags FROM nodes")
        self.assertEqual(stored, [(51820, "tag:b")])
        for replica in (self.a, self.b):
            self.assertEqual(_facts(replica, record.node_id), (51820, ("tag:b",)))
            self.assertEqual(replica.registry.changes.serial, 3)


def _facts(replica: Replica, node_id: str) -> tuple:
    record = replica.registry.get(node_id)
    return record.port, record.tags


class ClusterBooksTests(unittest.TestCase):
    """The access policy and the DNS settings set through one replica are in force at the other."""

    def setUp(self):
        data_dir = self.mktemp()
        self.a = Replica(self, data_dir, _clock(), "a")
        self.b = Replica(self, data_dir, _clock(), "b")

    def test_a_policy_set_at_one_is_in_force_at_the_other(self):
        settled(self.a.coordinator.policy.set(POLICY, "test", self.a.coordinator.audit))
        self.b.stream.wake()
        policy = self.b.coordinator.policy
        self.assertEqual((policy.current.version, policy.active), (1, True))
        self.assertEqual(self.b.registry.changes.serial, 1)
        settled(self.b.coordinator.policy.clear(self.b.coordinator.audit))
        self.a.stream.wake()
        self.assertEqual((self.a.coordinator.policy.current.version, self.a.coordinator.policy.active), (2, False))

    def test_dns_settings_set_at_one_are_in_force_at_the_other(self):
        settled(self.a.coordinator.dns.add_record("printer", "A", "192.0.2.9", self.a.coordinator.audit))
        self.b.stream.wake()
        self.assertEqual(self.b.coordinator.dns.digest, self.a.coordinator.dns.digest)
        self.assertEqual(self.b.coordinator.dns.version, 1)


POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'


class SharedChangeLogTests(unittest.TestCase):
    def test_serials_are_the_clusters_and_several_nodes_may_change_at_one(self):
        log = ChangeLog(epoch="e", serial=10, shared=True)
        log.record("a", 11)
        log.record("b", 11)
        log.record("c", 14)
        self.assertEqual(log.cursor, Cursor("e", 14))
        self.assertEqual(log.changed_since(Cursor("e", 10)), {"a", "b", "c"})
        self.assertEqual(log.changed_since(Cursor("e", 11)), {"c"})
        with self.assertRaises(ValueError):
            log.record("d", 12)

    def test_a_cursor_from_before_the_load_gets_a_snapshot(self):
        log = ChangeLog(epoch="e", serial=10, shared=True)
        self.assertIsNone(log.changed_since(Cursor("e", 9)))
        self.assertEqual(log.changed_since(Cursor("e", 10)), set())

    def test_a_change_of_this_replica_alone_does_not_move_the_cursor(self):
        log = ChangeLog(epoch="e", serial=10, shared=True)
        self.assertEqual(log.advance(), 11)  # a stamp every cursor held now is before
        self.assertEqual(log.serial, 10)
        alone = ChangeLog()
        self.assertEqual((alone.advance(), alone.serial), (1, 1))
