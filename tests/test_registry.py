from twisted.trial import unittest

from tests.helpers import key_for, make_coordinator, registration_for, settled
from wire.protocol import Cursor
from wire.server.registry import RegistryConflict
from wire.server.store import open_store


class RegistryTests(unittest.TestCase):
    def setUp(self):
        self.coordinator = make_coordinator(self, offline_after=90, expire_after=86400)
        self.registry = self.coordinator.registry
        self.clock = self.coordinator.clock

    def register(self, name, ip="198.51.100.7", **fields):
        return self.registry.register(registration_for(name, **fields), ip, self.clock.seconds())

    def test_new_then_heartbeat_then_change(self):
        self.assertEqual(self.register("web1").outcome, "new")
        serial = self.registry.changes.serial
        self.clock.advance(30)
        self.assertEqual(self.register("web1").outcome, "heartbeat")
        self.assertEqual(self.registry.changes.serial, serial, "a heartbeat must not move the netmap")
        self.assertEqual(self.register("web1", ip="198.51.100.8").outcome, "changed")
        self.assertEqual(self.registry.changes.serial, serial + 1)

    def test_node_keeps_its_address(self):
        first = self.register("web1").record.vpn_ip
        self.assertEqual(self.register("web1", port=4000).record.vpn_ip, first)
        self.assertEqual(self.register("web1", vpn_ip="10.99.200.200").record.vpn_ip, first)

    def test_cannot_take_another_nodes_address_or_key(self):
        a = self.register("web1").record
        b = self.register("web2", vpn_ip=a.vpn_ip).record
        self.assertNotEqual(a.vpn_ip, b.vpn_ip)
        with self.assertRaises(RegistryConflict):
            self.register("web3", wg_public_key=key_for("web1"))
        self.assertEqual(self.registry.get(a.node_id).wg_public_key, key_for("web1"))

    def test_offline_after_silence_and_back(self):
        node_id = self.register("web1").record.node_id
        self.clock.advance(89)
        self.registry.sweep(self.clock.seconds())
        self.assertTrue(self.registry.is_online(node_id))
        self.clock.advance(2)
        self.registry.sweep(self.clock.seconds())
        self.assertFalse(self.registry.is_online(node_id))
        self.assertEqual(self.registry.online_count, 0)
        delta = self.registry.netmap_since(Cursor(self.registry.changes.epoch, 1), self.clock.seconds())
        self.assertEqual([(p["node_name"], p["online"]) for p in delta["upserts"]], [("web1", False)])
        self.register("web1")
        self.assertTrue(self.registry.is_online(node_id))

    def test_expired_nodes_leave_and_free_their_address(self):
        record = self.register("web1").record
        self.clock.advance(86400 + 1)
        self.registry.sweep(self.clock.seconds())
        self.assertIsNone(self.registry.get(record.node_id))
        delta = self.registry.netmap_since(Cursor(self.registry.changes.epoch, 1), self.clock.seconds())
        self.assertEqual(delta["removals"], [record.node_id])
        self.assertEqual(self.register("other", vpn_ip=record.vpn_ip).record.vpn_ip, record.vpn_ip)

    def test_sweep_looks_only_at_silent_nodes(self):
        for i in range(50):
            self.register(f"n{i}")
        self.clock.advance(60)
        self.register("n0")
        self.clock.advance(31)
        self.registry.sweep(self.clock.seconds())
        self.assertEqual(self.registry.online_count, 1)

    def test_seen_is_a_heartbeat_that_changes_nothing(self):
        node_id = self.register("web1").record.node_id
        self.coordinator.store.write_pending()
        serial = self.registry.changes.serial
        self.clock.advance(60)
        self.assertTrue(self.registry.seen(node_id, self.clock.seconds()))
        self.assertEqual(self.registry.get(node_id).last_seen, self.clock.seconds())
        self.assertEqual(self.registry.changes.serial, serial, "an online node seen again moves no netmap")
        self.clock.advance(60)
        self.registry.sweep(self.clock.seconds())
        self.assertTrue(self.registry.is_online(node_id), "seen 60 s ago: still online")
        settled(self.coordinator.store.flush_touches())
        (stored,) = settled(self.coordinator.store.query("SELECT last_seen FROM nodes"))
        self.assertEqual(stored[0], self.clock.seconds() - 60, "the store learns it in its next batch")

    def test_seen_brings_an_offline_node_back(self):
        node_id = self.register("web1").record.node_id
        self.clock.advance(91)
        self.registry.sweep(self.clock.seconds())
        self.assertFalse(self.registry.is_online(node_id))
        cursor = self.registry.changes.cursor
        self.registry.seen(node_id, self.clock.seconds())
        self.assertTrue(self.registry.is_online(node_id))
        delta = self.registry.netmap_since(cursor, self.clock.seconds())
        self.assertEqual([(p["node_name"], p["online"]) for p in delta["upserts"]], [("web1", True)])
        self.assertFalse(self.registry.seen("no-such-node", self.clock.seconds()))

    def test_mark_offline(self):
        node_id = self.register("web1").record.node_id
        self.assertTrue(self.registry.mark_offline(node_id))
        self.assertFalse(self.registry.is_online(node_id))
        self.assertFalse(self.registry.mark_offline(node_id))

    def test_delta_holds_only_changes(self):
        self.register("a")
        self.register("b")
        cursor = self.registry.changes.cursor
        self.register("c")
        self.register("a", ip="203.0.113.9")
        delta = self.registry.netmap_since(cursor, self.clock.seconds())
        self.assertFalse(delta["full"])
        self.assertEqual(sorted(p["node_name"] for p in delta["upserts"]), ["a", "c"])

    def test_unknown_epoch_or_future_serial_gets_a_snapshot(self):
        self.register("a")
        self.register("b")
        for cursor in (Cursor("otherepoch", 1), Cursor(self.registry.changes.epoch, 999)):
            delta = self.registry.netmap_since(cursor, self.clock.seconds())
            self.assertTrue(delta["full"])
            self.assertEqual(len(delta["upserts"]), 2)

    def test_survives_reload_from_store(self):
        record = self.register("web1").record
        self.coordinator.store.write_pending()
        settled(self.coordinator.store.flush_touches())
        from wire.addressing import AddressPool
        from wire.server.registry import Registry

        store = open_store(self.coordinator.data_dir, self.clock)
        self.addCleanup(store.close)
        again = Registry(store, AddressPool(self.registry.pool.network))
        again.load(store.load(), self.clock.seconds())
        self.assertEqual(again.get(record.node_id), record)
        self.assertTrue(again.is_online(record.node_id), "a recently seen node stays online across a restart")

    def test_resets_on_path_facts_coming_online_and_removal_only(self):
        heard = []
        self.registry.on_reset(heard.append)
        node_id = self.register("web1").record.node_id
        self.assertEqual(heard, [node_id], "new")
        self.assertEqual(self.registry.changed_at(node_id), self.clock.seconds())
        self.register("web1")
        self.registry.rename(node_id, "web2")
        self.assertEqual(len(heard), 1, "a heartbeat or a new name changes no path")
        for fields in ({"nat_port": 40000}, {"lan_ip": "192.168.1.9"}, {"nat_type": "hard"}, {"port": 51821}):
            self.clock.advance(1)
            self.register("web1", node_name="web2", **{"nat_port": 40000, **fields})
        self.register("web1", node_name="web2", ip="203.0.113.9", nat_port=40000, port=51821, nat_type="hard", lan_ip="192.168.1.9")
        self.assertEqual(len(heard), 6)
        self.assertEqual(len(self.registry), 1)
        self.assertEqual(self.registry.changed_at(node_id), self.clock.seconds())
        self.registry.mark_offline(node_id)
        self.assertEqual(len(heard), 6, "offline alone resets nothing")
        self.clock.advance(5)
        self.registry.seen(node_id, self.clock.seconds())
        self.assertEqual((len(heard), self.registry.changed_at(node_id)), (7, self.clock.seconds()))
        self.registry.remove(node_id)
        self.assertEqual((len(heard), self.registry.changed_at(node_id)), (8, 0.0))
